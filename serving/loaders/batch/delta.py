"""Planning a batch run over a Delta Lake table: the files live at the target version, less those
already synced (the table's log since the last synced version)."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import pyarrow as pa

from serving.errors import InvalidArgumentError
from serving.loaders.batch.meta import OnError
from serving.loaders.batch.plan import Plan, _build_units


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise InvalidArgumentError(
            "Delta Lake sources need the deltalake package: pip install 'feature-serving[delta]'"
        ) from None
    return deltalake


def _open_delta(path: str, version: int | None, view: str) -> Any:
    deltalake = _deltalake()
    if "://" not in path and not os.path.exists(path):
        raise InvalidArgumentError(f"feature view '{view}': batch source {path} does not exist")
    try:
        if not deltalake.DeltaTable.is_deltatable(path):
            raise InvalidArgumentError(
                f"feature view '{view}': batch source {path} is not a Delta table (no _delta_log)"
            )
        return deltalake.DeltaTable(path, version=version)
    except InvalidArgumentError:
        raise
    except Exception as e:  # deltalake raises its own hierarchy (TableNotFoundError, ...)
        what = f" at version {version}" if version is not None else ""
        raise InvalidArgumentError(
            f"feature view '{view}': cannot open Delta table {path}{what}: {e}"
        ) from None


def _live_files(table: Any) -> set[str]:
    actions = pa.table(table.get_add_actions(flatten=True))
    return {urllib.parse.unquote(p) for p in actions.column("path").to_pylist()}


def _log_actions(path: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of one commit from ``_delta_log`` (local tables only), or None."""
    if "://" in path and not path.startswith("file://"):
        return None
    local = path[len("file://") :] if path.startswith("file://") else path
    name = os.path.join(local, "_delta_log", f"{version:020d}.json")
    try:
        with open(name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None


def _already_synced(path: str, synced: int, target: int, live_then: set[str]) -> set[str]:
    """Files live at ``target`` whose rows were all live at version ``synced``.

    A commit whose added files all carry ``dataChange: false`` (OPTIMIZE / compaction, Z-order)
    only rewrites the rows of the files it removes; if every removed file was already synced,
    its new files hold nothing new and are skipped. A file rewritten together with unsynced
    files (or any commit whose log entry is unavailable) is read again: idempotent, just work.
    """
    synced_files = set(live_then)
    for version in range(synced + 1, target + 1):
        actions = _log_actions(path, version)
        if actions is None:
            continue
        adds = [a["add"] for a in actions if "add" in a]
        removes = [urllib.parse.unquote(a["remove"]["path"]) for a in actions if "remove" in a]
        if (
            adds
            and removes
            and all(a.get("dataChange", True) is False for a in adds)
            and all(r in synced_files for r in removes)
        ):
            synced_files.update(urllib.parse.unquote(a["path"]) for a in adds)
    return synced_files


def _history_note(table: Any, synced: int, target: int) -> str:
    try:
        entries = table.history(limit=max(target - synced, 1))
    except Exception:  # informational only
        return ""
    ops = []
    for h in sorted(entries, key=lambda h: h.get("version", 0)):
        v = h.get("version")
        if v is None or v <= synced:
            continue
        op = str(h.get("operation", "?"))
        mode = (h.get("operationParameters") or {}).get("mode")
        ops.append(f"{v} {op}" + (f"({mode})" if mode else ""))
    return ", ".join(ops)


def _plan_delta(
    plan: Plan,
    *,
    version: int | None,
    synced: int | None,
    incremental: bool,
    prune_partitions: bool,
    on_error: OnError,
) -> int:
    """Plans a Delta source; returns the table version read."""
    path, view = plan.summary.path, plan.fv.name
    table = _open_delta(path, version, view)
    target = int(table.version())
    plan.summary.delta_version = target
    only: set[str] | None = None
    if incremental and synced is not None:
        if synced >= target:
            plan.summary.notes.append(
                f"Delta table at version {target}, already synced to version {synced}"
            )
            only = set()
        else:
            history = _history_note(table, synced, target)
            try:
                live_then = _live_files(_deltalake().DeltaTable(path, version=synced))
            except Exception:
                plan.summary.notes.append(
                    f"synced version {synced} is no longer in the Delta log (vacuumed or "
                    f"checkpointed away): full reload of version {target}"
                )
            else:
                live_now = _live_files(table)
                only = live_now - _already_synced(path, synced, target, live_then)
                plan.summary.notes.append(
                    f"Delta versions {synced + 1}..{target} [{history}]: "
                    f"{len(only)} of {len(live_now)} live files new or rewritten"
                )
    try:
        dataset = table.to_pyarrow_dataset()
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{view}': cannot read Delta table {path}: {e}"
        ) from None
    fragments = [
        f
        for f in dataset.get_fragments()
        if only is None or urllib.parse.unquote(str(f.path)) in only
    ]
    base = path[len("file://") :] if path.startswith("file://") else path
    _build_units(
        plan,
        fragments,
        table_schema=dataset.schema,
        partition_schema=None,
        base=base,
        prune_partitions=prune_partitions,
        on_error=on_error,
    )
    return target
