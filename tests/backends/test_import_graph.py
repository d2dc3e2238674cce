"""The backends import one way: no cycle among their modules, counting imports inside
functions too (a lazy import is still a loop), and the neutral modules import no framework.

The one loop by design: `base.get_backend` loads a backend's build module, which implements
`base`'s interface. Nothing else a build module imports may reach back to `base` (that was the
hidden loop base -> backend -> weight_files -> base)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "backends"
PACKAGE = "neural_attn.backends"
FRAMEWORKS = ("torch", "tensorflow", "keras", "h5py")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((PACKAGE, *parts))] = path
    return out


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}
    builds = {f"{PACKAGE}.tensorflow.build", f"{PACKAGE}.pytorch.build"}
    # get_backend's importlib call reaches each build module; their import of base is the
    # interface they implement, the loop by design.
    graph[f"{PACKAGE}.base"] |= builds
    for build in builds:
        graph[build].discard(f"{PACKAGE}.base")
    return graph


def test_no_import_cycle_among_the_backends_modules():
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            pytest.fail(f"import cycle: {cycle}")
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize(
    "module",
    ["base", "neutral", "weights", "weight_files", "codegen", "streaming", "info"],
)
def test_neutral_modules_import_no_framework(module):
    imported = _imports(ROOT / f"{module}.py")
    assert not {m for m in imported if m.split(".")[0] in FRAMEWORKS}
