"""No module of the apps imports a module that imports it back, at any depth (STYLE.md: one home per concept).

The graph is read from the source with `ast`, not by importing: every `import` statement
counts, at module level or inside a function (a local import written to dodge a circle
is still a circle). `from a.b import c` imports `a.b`, and `a.b.c` too when `c` is a
module. Importing `a.b.c` first runs the packages `a` and `a.b` (their `__init__`), so
those count as well, except the packages the importing module sits in: they are already
running when it does.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("conversations", "modelhub")


def project_modules(root=ROOT, apps=APPS):
    """{dotted name: path} of every module of `apps`; a package is its `__init__.py`."""
    modules = {}
    for app in apps:
        for path in sorted((root / app).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_names(name, path, is_package):
    """Every module name an import statement of the module `name` mentions (relative imports resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # kept only where it is a module


def ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(modules):
    """{module: set of the project modules it imports}, with the packages that importing them runs."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(name, path, path.name == "__init__.py"):
            if imported in modules:
                targets.add(imported)
                targets |= {package for package in ancestors(imported) if package in modules}
        graph[name] = targets - ancestors(name) - {name}
    return graph


def cycles(graph):
    """One cycle ([a, b, ..., a]) per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_cycle_through(node, component, graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(start, component, graph):
    """A shortest path from `start` back to itself inside `component` (breadth first)."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & component):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                paths.append(path + [target])
    raise AssertionError(f"{start} is in no cycle")


def test_the_graph_sees_module_level_function_level_and_submodule_imports(tmp_path):
    (tmp_path / "app" / "sub").mkdir(parents=True)
    sources = {
        "app/__init__.py": "",
        "app/a.py": "from app import b\n",
        "app/b.py": "def later():\n    from app.sub.c import thing\n",
        "app/sub/__init__.py": "from . import c\n",
        "app/sub/c.py": "import os\nfrom ..a import x\n",
    }
    for name, source in sources.items():
        (tmp_path / name).write_text(source)
    graph = import_graph(project_modules(tmp_path, ["app"]))
    assert graph == {"app": set(), "app.a": {"app.b"}, "app.b": {"app.sub", "app.sub.c"},
                     "app.sub": {"app.sub.c"}, "app.sub.c": {"app.a"}}
    assert cycles(graph) == [["app.a", "app.b", "app.sub.c", "app.a"]]


def test_the_graph_covers_the_apps():
    graph = import_graph(project_modules())
    assert {"conversations.models", "conversations.turns", "modelhub.api"} <= graph["conversations.replies"]


@pytest.mark.parametrize("app", APPS)
def test_no_module_imports_a_module_that_imports_it(app):
    found = [cycle for cycle in cycles(import_graph(project_modules())) if any(m.startswith(app + ".") or m == app
                                                                               for m in cycle)]
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
