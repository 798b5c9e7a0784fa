"""The layout's rules, checked from the source: the core never imports a built-in plugin or
the measurement package, no two modules import each other (directly or round a loop), and
importing the core loads no plugin and no heavy dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package name -> its folder; the packages whose import graph must have no cycle
PACKAGES = {
    "frip_engine": ROOT / "frip_engine",
    "frip_plugins": ROOT / "plugins" / "frip_plugins",
    "frip_eval": ROOT / "plugins" / "frip_eval",
    "frip_adapter_acme": ROOT / "adapters" / "frip-adapter-acme" / "frip_adapter_acme",
}
OUTSIDE_THE_CORE = ("frip_plugins", "frip_eval", "frip_adapter_")
HEAVY = ("tenseal", "Pyfhel", "onnxruntime", "cv2", "insightface", "matplotlib", "numba", "faiss")


def _modules() -> dict[str, Path]:
    """Every module of PACKAGES: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(imported dotted name, line) for every import that runs (at module level or inside a
    function), skipping ``if TYPE_CHECKING:`` blocks. ``from a import b`` yields ``a.b``
    as well as ``a`` (b may be a submodule)."""
    base = module if is_package else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                source = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source, node.lineno
            for alias in node.names:
                yield f"{source}.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, node.lineno
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports (within PACKAGES): first line}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for target, line in _runtime_imports(tree, name, path.name == "__init__.py"):
            if target in modules and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_core_never_imports_a_builtin_plugin_or_the_measurement_package() -> None:
    graph_modules = _modules()
    offending = []
    for name, path in graph_modules.items():
        if not name.startswith("frip_engine"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for target, line in _runtime_imports(tree, name, path.name == "__init__.py"):
            if target.startswith(OUTSIDE_THE_CORE):
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offending, "\n".join(offending)


def _defined_names(path: Path) -> set[str] | None:
    """The names a module defines at its top level (None: it has a module ``__getattr__``,
    so any name may exist)."""
    names: set[str] = set()
    stack: list[ast.stmt] = list(ast.parse(path.read_text(), str(path)).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try):
            stack.extend(node.body + node.orelse)
            stack.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)
    return None if "__getattr__" in names else names


def test_every_first_party_import_names_something_that_exists() -> None:
    """A module or name moved or renamed leaves no import behind (mypy cannot see these: it
    ignores missing imports), in the packages, the benchmarks and the tests."""
    modules = _modules()
    files = list(modules.values())
    files += sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    stale = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                wanted = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in wanted:
                if not module.startswith(tuple(PACKAGES)):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if module not in modules:
                    stale.append(f"{where} imports {module}, which does not exist")
                    continue
                defined = _defined_names(modules[module])
                missing = name and defined is not None and name not in defined
                if missing and f"{module}.{name}" not in modules:
                    stale.append(f"{where} imports {name} from {module}, which has none")
    assert not stale, "\n".join(stale)


def test_there_are_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle() -> None:
    """The checker itself: a two-module loop and a three-module loop are found, a chain is not."""
    graph = {"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"e": 1}, "e": {"c": 1}, "f": {}}
    assert _cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) == []


def test_relative_and_function_level_imports_are_seen() -> None:
    tree = ast.parse(
        "from . import x\nfrom .y import z\nif TYPE_CHECKING:\n    import hidden\n"
        "def f():\n    import frip_plugins.a\n    importlib.import_module('frip_eval.b')\n"
    )
    seen = {t for t, _ in _runtime_imports(tree, "pkg.mod", is_package=False)}
    assert {"pkg.x", "pkg.y.z", "frip_plugins.a", "frip_eval.b"} <= seen
    assert "hidden" not in seen


def test_importing_the_core_loads_no_plugin_and_nothing_heavy() -> None:
    code = (
        "import sys, frip_engine, frip_engine.engine, frip_engine.profile, frip_engine.plugins;"
        f"print(sorted(m for m in sys.modules if m.startswith({OUTSIDE_THE_CORE!r})"
        f" or m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
