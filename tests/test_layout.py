"""The package's shape, checked: no import circles (lazy imports inside functions count too), imports
point one way (cli -> library; outputs -> stages -> kernels), no module over 500 lines, and the old
flat module paths still import for one release."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import spikesort
from spikesort import _moved

PACKAGE = Path(spikesort.__file__).parent
MAX_LINES = 500

# lower layers never import higher ones; a module may import its own layer (circles are caught below)
LAYERS = {
    "spikesort.errors": 0,
    "spikesort.params": 0,
    "spikesort.atomic": 0,
    "spikesort.memory": 0,
    "spikesort.layout": 0,
    "spikesort._moved": 0,
    "spikesort.chunks": 0,
    "spikesort.kernels": 1,
    "spikesort.io": 1,
    "spikesort.stages": 2,
    "spikesort.outputs": 3,
    "spikesort.tracking": 3,
    "spikesort.pipeline": 4,
    "spikesort.si": 5,
    "spikesort.demo": 5,
    "spikesort.batch": 5,
    "spikesort.job": 5,
    "spikesort.online": 5,
    "spikesort.cli": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every spikesort module that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("spikesort") and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(name, path, known) for name, path in mods.items()}
    # a package's __init__ is imported on the way to any of its modules: that edge is no circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def _layer(name: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_walker_sees_a_circle(tmp_path, monkeypatch):
    # the walker itself must find lazy imports: a test that cannot fail proves nothing
    pkg = tmp_path / "spikesort"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from spikesort.a import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert "spikesort.b" in _graph()["spikesort.a"] and "spikesort.a" in _graph()["spikesort.b"]


def test_every_module_has_a_layer_and_imports_point_down():
    graph = _graph()
    unplaced = [m for m in graph if m != "spikesort" and _layer(m) is None]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"
    upward = [
        f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
        for a, targets in graph.items()
        if a != "spikesort"
        for b in targets
        if b != "spikesort" and _layer(b) > _layer(a)
    ]
    assert not upward, "imports pointing up:\n" + "\n".join(sorted(upward))


def test_library_never_imports_the_cli():
    graph = _graph()
    bad = sorted(
        f"{a} -> {b}"
        for a, t in graph.items()
        if not a.startswith("spikesort.cli")
        for b in t
        if b.startswith("spikesort.cli")
    )
    assert not bad, bad


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_module_paths_still_import(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    homes = [importlib.import_module(h) for h in _moved.MOVED[old]]
    public = [n for n in module.__all__ if not n.startswith("_")]
    assert public, f"{old} forwards nothing"
    for n in public:
        assert any(getattr(h, n, None) is getattr(module, n) for h in homes)
