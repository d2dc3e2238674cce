"""The backends' neutral modules import no framework (cycles among every module of ours,
the backends' included, are tests/test_import_cycles.py's)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "backends"
FRAMEWORKS = ("torch", "tensorflow", "keras", "h5py")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    "module",
    ["base", "neutral", "weights", "weight_files", "codegen", "streaming", "info"],
)
def test_neutral_modules_import_no_framework(module):
    imported = _imports(ROOT / f"{module}.py")
    assert not {m for m in imported if m.split(".")[0] in FRAMEWORKS}
