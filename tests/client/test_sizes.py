"""The thin client stays thin to read: no module of client/ over 420 lines and no function
(nested ones and docstrings included) over 65."""

from __future__ import annotations

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client"
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 65


def test_no_client_module_is_too_long():
    long = {
        path.name: n
        for path in sorted(CLIENT.glob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"client modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_no_client_function_is_too_long():
    long = {}
    for path in sorted(CLIENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.name}:{node.lineno} {node.name}"] = lines
    assert not long, f"client functions over {MAX_FUNCTION_LINES} lines (name their steps): {long}"
