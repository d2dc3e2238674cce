"""server/convert.py is the server's one module that builds messages: the RPC modules only
read requests and hand plain values to it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"


def _built_messages(path: Path) -> list[str]:
    """`pb.<Name>(...)` calls in `path`, as "line: pb.Name"."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{node.lineno}: pb.{node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "pb"
    ]


@pytest.mark.parametrize("module", ["analyses.py", "servicer.py"])
def test_rpc_modules_build_no_message(module):
    built = _built_messages(SERVER / module)
    assert not built, f"server/{module} builds messages (move them to server/convert.py): {built}"


def test_the_scan_sees_a_built_message(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("x = pb.Progress(done=1)\ny = request.pb_field\nz = pb.MEAN\n")
    assert _built_messages(sample) == ["1: pb.Progress"]
