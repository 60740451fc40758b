"""fuq's modules import one another without a circle, lazy (in-function) imports included.

The graph is read from the source with ``ast`` (no import is run): an edge ``a -> b`` for every
``import`` / ``from ... import`` of a fuq module in ``a``, at module level or inside a function,
except under ``if TYPE_CHECKING:``. A lazy import hides a circle at import time but still
ties the two modules together (``trace -> adaptive -> scores -> trace`` was one). Importing
modules one by one in a fresh interpreter would not show it: importing any ``fuq.X`` runs
``fuq/__init__.py`` first, which imports them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package name -> source folder, as pyproject.toml's [tool.setuptools.package-dir] maps them
PACKAGES = {"fuq": ROOT / "fuq", "fuq.triton_kernels": ROOT / "triton_kernels"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts]) if parts else pkg] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The fuq modules ``name`` imports (the deepest module each import statement names)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def resolve(mod: str) -> str | None:
        while mod and mod not in mods:  # ``from .ops import LogitStats`` -> fuq.ops
            mod = mod.rsplit(".", 1)[0] if "." in mod else ""
        return mod or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (m := resolve(alias.name)) is not None:
                    out.add(m)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for alias in node.names:  # ``from . import scores`` names a module
                if f"{src}.{alias.name}" in mods:
                    out.add(f"{src}.{alias.name}")
                elif (m := resolve(src)) is not None:
                    out.add(m)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    out.discard(name)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state and (c := dfs(v)) is not None:
                return c
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (c := dfs(u)) is not None:
            return c
    return None


def test_graph_reader_sees_lazy_imports_and_cycles():
    mods = _modules()
    assert {"fuq", "fuq.scores", "fuq.forced", "fuq.prune._compress", "fuq.triton_kernels.truncate"} <= set(mods)
    # the reader follows function-level and relative imports, and the cycle finder finds a circle
    assert "fuq.triton_kernels.truncate" in _imports("fuq._library", mods["fuq._library"], mods)
    assert "fuq.forced" in _imports("fuq.prune._compress", mods["fuq.prune._compress"], mods)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_module_import_graph_is_acyclic():
    mods = _modules()
    graph = {name: _imports(name, path, mods) - {"fuq"} for name, path in mods.items()}
    # ``fuq`` (the package __init__) imports the public modules; a module that imports ``from .
    # import __version__`` runs under it, which is not a circle of the modules' own code.
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_scores_and_trace_stay_below_the_model_runners():
    """The pure scores import nothing of fuq; the Trace record needs only ops and scores."""
    mods = _modules()
    assert _imports("fuq.scores", mods["fuq.scores"], mods) == set()
    assert _imports("fuq.trace", mods["fuq.trace"], mods) == {"fuq.ops", "fuq.scores"}

