"""The layout rules of docs/design.md, checked from the source text.

- No import circle among the Rust core's top-level modules (a folder module such as `serve/`
  counts as one module; a module's own `#[cfg(test)]` code is left out, since tests may reach
  up a layer).
- No import circle among the Python package's top-level modules and subpackages
  (`serving.frontend`, `serving.loaders`, ...), lazy imports inside functions included.

`tests/test_suite_layout.py` checks the test suite's own layout. Run alone with
`.venv/bin/python -m pytest -q tests/test_layout.py`; a failure prints the circle
and the lines that make it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUST_SRC = ROOT / "rust_core" / "src"
PY_PKG = ROOT / "serving"

Graph = dict[str, dict[str, list[str]]]  # module -> imported module -> where (file:line)


def circles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(graph: Graph, component: list[str]) -> str:
    members = set(component)
    lines = [" <-> ".join(component)]
    for a in component:
        for b, where in sorted(graph.get(a, {}).items()):
            if b in members:
                lines.append(f"  {a} -> {b}: {', '.join(where[:3])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Rust


_CRATE = re.compile(r"\bcrate::")


def crate_modules(line: str) -> list[str]:
    """The top-level modules a line names after `crate::`, grouped uses included:
    `use crate::{row::Row, store::{Store, lookup}};` -> ["row", "store"]."""
    names: list[str] = []
    for m in _CRATE.finditer(line):
        rest = line[m.end() :]
        if not rest.startswith("{"):
            head = re.match(r"[a-z_][a-z0-9_]*", rest)
            if head:
                names.append(head.group(0))
            continue
        depth, item, items = 0, "", []
        for ch in rest:
            if ch == "{":
                depth += 1
                if depth == 1:
                    continue
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            if ch == "," and depth == 1:
                items.append(item)
                item = ""
            else:
                item += ch
        items.append(item)
        names.extend(i.strip().split("::")[0] for i in items if i.strip())
    return names


def rust_module_of(path: Path) -> str | None:
    rel = path.relative_to(RUST_SRC)
    if rel.parts == ("lib.rs",):
        return None
    return rel.parts[0].removesuffix(".rs")


def rust_graph() -> Graph:
    graph: Graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(RUST_SRC.rglob("*.rs")):
        module = rust_module_of(path)
        if module is None:
            continue
        graph[module]  # every module is a node, even one that imports nothing
        text = path.read_text()
        # the module's own tests come last and may reach up a layer
        text = text.split("#[cfg(test)]", 1)[0]
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue
            for name in crate_modules(line):
                if name and name != module and name not in {"self", "invalid"}:
                    graph[module][name].append(f"{path.relative_to(ROOT)}:{lineno}")
    return graph


# --------------------------------------------------------------------------------------------
# Python


def py_unit_of(module: str) -> str | None:
    """`serving.frontend.node` -> `serving.frontend`; generated protobuf code is left out."""
    parts = module.split(".")
    if parts[0] != "serving" or len(parts) < 2 or parts[1] == "_proto":
        return None
    return ".".join(parts[:2])


def py_module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def py_imports(path: Path) -> list[tuple[str, int]]:
    """Absolute names of the modules a file imports, with their line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = py_module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from serving import cluster` names a module too
            found.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
    return found


def python_graph() -> Graph:
    graph: Graph = defaultdict(lambda: defaultdict(list))
    units = {py_unit_of(py_module_name(p)) for p in PY_PKG.rglob("*.py")} - {None}
    for path in sorted(PY_PKG.rglob("*.py")):
        unit = py_unit_of(py_module_name(path))
        if unit is None:
            continue
        graph[unit]
        for target, lineno in py_imports(path):
            other = py_unit_of(target)
            if other and other != unit and other in units:
                graph[unit][other].append(f"{path.relative_to(ROOT)}:{lineno}")
    return graph


# --------------------------------------------------------------------------------------------
# tests


def test_circle_finder_finds_a_circle() -> None:
    graph: Graph = {"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}, "d": {"a": ["w"]}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b": ["x"]}, "b": {}}) == []


def test_rust_uses_are_read_with_their_groups() -> None:
    line = "use crate::{row::Row, store::{Store, lookup}, error}; let x = crate::key::encode(k);"
    assert crate_modules(line) == ["row", "store", "error", "key"]


def test_no_import_circle_among_rust_modules() -> None:
    graph = rust_graph()
    assert len(graph) > 5, "the Rust sources were not found"
    found = circles(graph)
    assert not found, "import circles among rust_core modules:\n" + "\n".join(
        describe(graph, c) for c in found
    )


def test_no_import_circle_among_python_subpackages() -> None:
    graph = python_graph()
    assert "serving.errors" in graph, "the Python package was not found"
    found = circles(graph)
    assert not found, "import circles among serving's modules:\n" + "\n".join(
        describe(graph, c) for c in found
    )
