"""Our modules import one way: no cycle among neural_attn/, dsl/, backends/, server/ and
client/, counting imports inside functions too (a lazy import is still a loop).

The one loop by design: `backends.base.get_backend` loads a backend's build module, which
implements `base`'s interface."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The package each folder is (pyproject.toml's package-dir).
FOLDERS = {
    "neural_attn": "neural_attn",
    "neural_attn.dsl": "dsl",
    "neural_attn.backends": "backends",
    "neural_attn.server": "server",
    "neural_attn.client": "client",
}
GENERATED = "neural_attn.v1"  # `make proto`'s stubs


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        root = REPO / folder
        paths = root.rglob("*.py") if package != "neural_attn" else root.glob("*.py")
        for path in paths:
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path, submodules: frozenset[str] = frozenset()) -> set[str]:
    """Every module `name` imports, at the top or inside functions (relative ones resolved)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(p for p in (base, node.module) if p) if node.level else node.module
            for alias in node.names if module else ():
                # `from package import module` imports that module (and the package's
                # __init__ first, which is not an edge back); `from module import name`, it.
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in submodules else module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {
        name: {m for m in imports(name, path, frozenset(known)) if m in known and m != name}
        for name, path in known.items()
    }
    base = "neural_attn.backends.base"
    for build in ("neural_attn.backends.tensorflow.build", "neural_attn.backends.pytorch.build"):
        edges[base].add(build)  # get_backend's importlib call
        edges[build].discard(base)  # the interface it implements: the loop by design
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[str]:
    done: set[str] = set()
    cycles: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycles.append(" -> ".join((*path[path.index(name) :], name)))
            return
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, (*path, name))
        done.add(name)

    for name in sorted(edges):
        visit(name, ())
    return cycles


def test_no_import_cycle_among_our_modules():
    edges = graph()
    assert {"neural_attn.client.cli", "neural_attn.dsl.parser", "neural_attn.server.app"} <= set(
        edges
    )  # the walk found every folder
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_a_lazy_import_back_is_a_cycle(tmp_path):
    lazy = tmp_path / "b.py"
    lazy.write_text("def f():\n    from neural_attn.client.a import x\n")
    assert imports("neural_attn.client.b", lazy) >= {"neural_attn.client.a"}
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == ["a -> b -> a"]
