"""Where things are: the clone, the tests, the test registries."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: the clone's root: the working directory of every process the tests start
ROOT = TESTS.parent
REGISTRIES = TESTS / "registries"
