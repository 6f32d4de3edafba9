"""The test suite's own layout (issue 24): one import root (``tests``, a package), the shared
harness in tests/harness/ importing no test module, fixtures from conftest.py rather than
imported, and no test module importing another."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import TESTS

#: the packages below tests/ that are not test folders of their own
SUPPORT = {"harness"}


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path, package: list[str] | None = None) -> list[tuple[int, str]]:
    """(line, absolute name) of every import in ``path``, relative ones resolved against
    ``package`` (by default the package of ``path`` below tests/); a ``from M import n`` gives
    both ``M`` and ``M.n``, since ``n`` may be a module."""
    tree = ast.parse(path.read_text(), str(path))
    if package is None:
        package = ["tests", *path.relative_to(TESTS).parent.parts]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return out


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") or p == "conftest" for p in parts[1:])


def test_every_folder_is_a_package_of_the_one_root() -> None:
    folders = {p.parent for p in _modules()}
    missing = [
        str(d.relative_to(TESTS.parent)) for d in folders if not (d / "__init__.py").exists()
    ]
    assert missing == [], f"not packages (imports would get a second root): {missing}"


def test_no_module_imports_a_test_module_or_a_second_root() -> None:
    roots = {p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    roots |= {p.stem for p in TESTS.glob("*.py")}
    bad: list[str] = []
    for path in _modules():
        where = path.relative_to(TESTS.parent)
        for line, name in _imports(path):
            first = name.split(".")[0]
            if first in roots:
                bad.append(f"{where}:{line}: {name} (import it as tests.{name})")
            elif _is_test_module(name):
                bad.append(f"{where}:{line}: {name} is a test module (move it to tests/harness)")
    assert bad == [], "\n".join(bad)


def test_the_harness_imports_only_itself_from_tests() -> None:
    bad = [
        f"{path.relative_to(TESTS.parent)}:{line}: {name}"
        for path in _modules()
        if path.relative_to(TESTS).parts[0] in SUPPORT
        for line, name in _imports(path)
        if name.split(".")[0] == "tests" and not name.startswith("tests.harness")
    ]
    assert bad == [], bad


def test_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """The import reader finds every shape a cross-import takes (else the checks above would
    pass whatever the tree holds)."""
    src = tmp_path / "x.py"
    src.write_text(
        "import tests.integration.test_server\n"
        "from tests.integration import test_server\n"
        "from .test_store import loaded\n"
        "from tests.harness import Server\n"
    )
    names = [n for _, n in _imports(src, ["tests", "integration"])]
    flagged = {n for n in names if _is_test_module(n)}
    assert flagged == {
        "tests.integration.test_server",
        "tests.integration.test_store",
        "tests.integration.test_store.loaded",
    }
