"""The package's imports run one way: no cycle among study's modules, counting the imports
inside functions too (an import moved into a function to dodge a circle is still a circle),
and no private (underscore) name imported from another file or reached through another
module (``densenet._Bottleneck``). See docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import study

PACKAGE = Path(study.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import statement of a module,
    wherever it stands (top level, a function, a class), relative ones resolved."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # `from study import train`: the module itself
                    out.append((submodule, None))
                else:
                    out.append((base, alias.name))
    return [(m, n) for m, n in out if m == "study" or m.startswith("study.")]


def _private_attributes(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """``module._name`` where ``module`` is a name bound to another of the package's modules
    (``from study.models import densenet`` then ``densenet._Bottleneck``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in modules:
                    bound[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    bound[alias.asname] = alias.name
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and bound[node.value.id] != name
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{name} uses {bound[node.value.id]}.{node.attr}")
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """The import graph among the package's modules, and the private names imported."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, imported in _imports(name, path, modules):
            # `import study.a.b` runs study, study.a and study.a.b; the package's own
            # __init__ is an edge only where it is named
            if target not in modules:
                continue
            if target != name:
                graph[name].add(target)
            if imported is not None and imported.startswith("_") and target != name:
                if not imported.startswith("__"):  # __version__ and the like are public
                    private.append(f"{name} imports {target}.{imported}")
        private += _private_attributes(name, path, modules)
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in order), None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_imports_have_no_cycle() -> None:
    graph, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_is_imported_or_used_from_another_file() -> None:
    _, private = _graph()
    assert private == []


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path) -> None:
    """The checker itself: a circle closed by an import inside a function, or by a relative
    import, or by ``from study import x``, is found."""
    graph = {"study.a": {"study.b"}, "study.b": set()}
    assert _cycle(graph) is None
    graph["study.b"].add("study.a")
    assert _cycle(graph) == ["study.a", "study.b", "study.a"]
    source = tmp_path / "study" / "sub" / "mod.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "def f():\n    from study import train\n    from ..plan import expand\n"
        "    from . import other\n    from .other import _hidden\n"
    )
    modules = {
        "study.sub.mod": source,
        "study.train": source,
        "study.plan": source,
        "study.sub.other": source,
    }
    hidden = tmp_path / "study" / "user.py"
    hidden.write_text("from study.sub import other\nx = other._hidden\n")
    assert _private_attributes("study.user", hidden, modules) == [
        "study.user uses study.sub.other._hidden"
    ]
    assert _imports("study.sub.mod", source, modules) == [
        ("study.train", None),
        ("study.plan", "expand"),
        ("study.sub.other", None),
        ("study.sub.other", "_hidden"),
    ]
