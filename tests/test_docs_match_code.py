"""The docs against the code they describe, where a machine can check it:

- every flag the README and docs/ give a ``feature-serving`` (or ``python -m serving``) command,
  in a code block or inline code, is a flag of that command's parser (a renamed or removed flag
  fails here, naming the doc and the line);
- the default of ``--max-ready-lag`` the docs state is the parser's (``ServeSettings``);
- what docs/observability.md says ``--no-request-metrics`` skips is what a server started with
  it skips (the three request series absent from ``/metrics``, the Rust-side series present).
"""

from __future__ import annotations

import argparse
import re
import urllib.request
from pathlib import Path

import pytest

from serving.cli import build_parser
from serving.config import ServeSettings
from tests.harness import TEST_REGISTRY, Servers
from tests.harness.paths import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a command line of the CLI inside a doc: the rest of the line or of the inline code span
COMMAND = re.compile(r"(?:feature-serving|python -m serving)\s+([a-z][\w-]*)([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings if o.startswith("--")}


def command_lines() -> list[tuple[str, int, str, str]]:
    """(doc, line number, subcommand, the rest of its command line) of every CLI command the
    docs show in a code block (``\\`` continuations joined) or in inline code."""
    out = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        fenced = False
        i = 0
        while i < len(lines):
            text, start = lines[i], i + 1
            i += 1
            if text.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                while text.endswith("\\") and i < len(lines):
                    text = text[:-1] + " " + lines[i].strip()
                    i += 1
                spans = [text]
            else:
                spans = re.findall(r"`([^`]+)`", text)
            for span in spans:
                for m in COMMAND.finditer(span):
                    out.append((doc.name, start, m.group(1), m.group(2)))
    return out


COMMANDS = command_lines()


def test_the_docs_show_commands() -> None:
    subs = {sub for _, _, sub, _ in COMMANDS}
    assert {"serve", "route", "keys", "ingest", "materialize"} <= subs, subs


def test_every_flag_the_docs_give_a_command_exists() -> None:
    top = _subparsers(build_parser())
    wrong = []
    for doc, line, sub, rest in COMMANDS:
        if sub not in top:
            if sub in ("dev",):  # python -m serving.dev.*: its own module
                continue
            wrong.append(f"{doc}:{line}: no command '{sub}'")
            continue
        parser = top[sub]
        words = rest.split()
        nested = _subparsers(parser)
        if nested and words and words[0] in nested:
            parser = nested[words[0]]
        known = _flags(parser)
        for flag in FLAG.findall(rest):
            if flag not in known:
                wrong.append(f"{doc}:{line}: `{sub}` has no flag {flag}")
    assert not wrong, "\n".join(wrong)


def test_documented_max_ready_lag_default_is_the_parsers() -> None:
    default = ServeSettings().max_ready_lag
    said = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8").replace("\n", " ")
        for m in re.finditer(r"`--max-ready-lag`[^.]{0,80}?default[^\d]{0,20}([\d,]+)", text):
            said.append((doc.name, int(m.group(1).replace(",", ""))))
        for m in re.finditer(r"default `--max-ready-lag` is ([\d,]+)", text):
            said.append((doc.name, int(m.group(1).replace(",", ""))))
    assert said, "no doc states the default of --max-ready-lag"
    assert {n for _, n in said} == {default}, said


@pytest.mark.integration
def test_no_request_metrics_skips_what_the_doc_says(tmp_path: Path, servers: Servers) -> None:
    doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    skipped = {"requests_total", "request_duration_seconds", "requests_in_flight"}
    for name in skipped:
        assert f"`feature_serving_{name}`" in doc
    config = tmp_path / "features.yaml"
    config.write_text(TEST_REGISTRY)

    scraped: dict[str, str] = {}

    def off_values(prefix: str) -> list[float]:
        return [
            float(ln.rsplit(" ", 1)[1])
            for ln in scraped["off"].splitlines()
            if ln.startswith(prefix)
        ]

    def series(*flags: str) -> set[str]:
        node = servers.serve(config, f"db{len(flags)}", "--no-auth", *flags)
        body = {"features": ["user_profile:f000"], "entities": {"user_id": [1]}}
        assert node.post("/get-online-features", body)[0] == 200
        with urllib.request.urlopen(node.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        servers.stop(node)
        scraped["off" if flags else "on"] = text
        return {
            ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if not ln.startswith("#")
        }

    on, off = series(), series("--no-request-metrics")
    for name in skipped:
        prefix = f"feature_serving_{name}"
        assert any(s.startswith(prefix) for s in on), name
        if name == "requests_in_flight":  # the gauge exists, and is never moved
            assert all(v == 0 for v in off_values(prefix)), name
        else:
            assert not any(s.startswith(prefix) for s in off), name
    # the Rust-side answer-quality series stay
    assert any(s.startswith("feature_serving_feature_values_total") for s in off)
