"""Frameworks stay in their packages: outside backends/pytorch/ and backends/tensorflow/ no
module imports torch, TensorFlow or Keras, and none branches on a backend's name (what
differs by framework is a method of the backend or of its built model)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"torch", "tensorflow", "keras", "h5py"}
NAMES = {"pytorch", "tensorflow"}


def _outside() -> list[Path]:
    files = []
    for folder in ("neural_attn", "dsl", "backends", "server", "client"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).parts
            if rel[:2] in (("backends", "pytorch"), ("backends", "tensorflow")) or "v1" in rel:
                continue
            files.append(path)
    return files


def _branches_on_a_name(node: ast.AST) -> bool:
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    named = any(isinstance(s, ast.Constant) and s.value in NAMES for s in sides)
    return named and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)


@pytest.mark.parametrize("path", _outside(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_framework_outside_its_package(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & FRAMEWORKS
    branches = [node.lineno for node in ast.walk(tree) if _branches_on_a_name(node)]
    assert not branches, f"{path.name} branches on a backend's name at lines {branches}"
