"""Every import the README and docs/ show a user still works (the package's layout may change
beneath them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
IMPORT = re.compile(r"^\s*((?:from serving[\w.]* import [\w, ]+)|(?:import serving[\w.]*))\s*$")

LINES = sorted(
    {
        m.group(1)
        for doc in DOCS
        for line in doc.read_text(encoding="utf-8").splitlines()
        if (m := IMPORT.match(line))
    }
)


def test_the_docs_show_imports() -> None:
    assert any("serving.client" in line for line in LINES), LINES


@pytest.mark.parametrize("line", LINES)
def test_documented_import_works(line: str) -> None:
    # a fresh interpreter: an import another test made cannot hide a missing module
    done = subprocess.run(
        [sys.executable, "-c", line],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
