"""Every flag's `--help` states its default (issue 25): the flags of `serve`, `demo` and
`route` default to None so that env and settings files can fill them, so their real default is
the ``ServeSettings`` field of the same name; every other flag's is argparse's."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import fields

from serving.cli import build_parser
from serving.config import ServeSettings
from tests.harness import run_cli

SETTINGS = {f.name: getattr(ServeSettings(), f.name) for f in fields(ServeSettings)}
#: the commands whose flags are settings
SETTINGS_COMMANDS = ("feature-serving serve", "feature-serving demo", "feature-serving route")
#: settings whose default is a "not set" marker, said in words
UNSET = {"shard_index": -1, "shard_count": 0, "topic_partitions": 0}


def _commands(
    parser: argparse.ArgumentParser, path: str = "feature-serving"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def _renderings(value: object) -> list[str]:
    """The ways a help text may write ``value``."""
    if isinstance(value, bool):
        return [str(value).lower(), "on" if value else "off"]
    if isinstance(value, int | float):
        out = [f"{value:g}", f"{value:,}", str(value)]
        if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
            out.append(f"{value >> 20} MiB")
        if value == 0:
            out.append("off")
        return out
    return [str(value)]


def _default_of(path: str, action: argparse.Action) -> object:
    if action.default is None and path in SETTINGS_COMMANDS and action.dest in SETTINGS:
        return SETTINGS[action.dest]
    return action.default


def test_every_flag_says_its_default() -> None:
    missing: list[str] = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(
                action,
                argparse._HelpAction
                | argparse._VersionAction
                | argparse._StoreTrueAction
                | argparse._StoreConstAction,
            ):
                continue  # a switch: its default is its absence
            default = _default_of(path, action)
            text = action.help or ""
            if action.dest in UNSET and UNSET[action.dest] == default:
                if "default: " not in text:
                    missing.append(f"{path} {action.option_strings[0]} (unset): {text}")
                continue
            if default is None or default == "":
                continue  # nothing unless given
            if "default" not in text or not any(r in text for r in _renderings(default)):
                missing.append(f"{path} {action.option_strings[0]} (default {default!r}): {text}")
    assert missing == [], "\n".join(missing)


def test_max_ready_lag_help_says_what_ready_means() -> None:
    r = run_cli("serve", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--max-ready-lag" in text
    assert "at most this many messages behind the log end" in text
    assert "default 1000" in text
