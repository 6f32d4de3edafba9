"""Planning a batch run over a Delta Lake table: the files live at the target version, less those
already synced (the table's log since the last synced version)."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.parse
from typing import Any

import pyarrow as pa

from serving.errors import InvalidArgumentError
from serving.loaders.batch.changes import deleted_entities
from serving.loaders.batch.meta import OnError
from serving.loaders.batch.plan import Plan, _build_units
from serving.registry import FeatureView


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


def _removes_data(path: str, synced: int, target: int) -> bool:
    """Whether a commit after ``synced`` removed files with a data change (DELETE, MERGE,
    UPDATE, overwrite); True when a log entry is not available."""
    for version in range(synced + 1, target + 1):
        actions = _log_actions(path, version)
        if actions is None:
            return True
        if any(a["remove"].get("dataChange", True) for a in actions if "remove" in a):
            return True
    return False


def _delete_time(path: str, table: Any, synced: int, target: int) -> dt.datetime:
    """When the first commit after ``synced`` that removed rows was made (its commitInfo
    timestamp; the table's history, or now, when the log entry is not available)."""
    for version in range(synced + 1, target + 1):
        actions = _log_actions(path, version)
        if actions is None:
            break
        removes = [a["remove"] for a in actions if "remove" in a]
        if not any(r.get("dataChange", True) for r in removes):
            continue
        for a in actions:
            ts = (a.get("commitInfo") or {}).get("timestamp")
            if isinstance(ts, int):
                return dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC)
        break
    try:
        for h in sorted(table.history(), key=lambda h: h.get("version", 0)):
            if h.get("version", -1) > synced and isinstance(h.get("timestamp"), int):
                return dt.datetime.fromtimestamp(h["timestamp"] / 1000, tz=dt.UTC)
    except Exception:  # informational fallback below
        pass
    return dt.datetime.now(dt.UTC)


def _deletes(plan: Plan, then: Any, table: Any, synced: int, target: int) -> None:
    """Tombstones for the entities live at version ``synced`` and gone at ``target``: a key
    diff of the two snapshots (a Delta log only says which files were replaced)."""
    fv, path = plan.fv, plan.summary.path
    assert fv.batch_source is not None
    keys = [k.name for k in fv.join_keys]
    ts_field = fv.batch_source.timestamp_field
    try:
        old = then.to_pyarrow_dataset().to_table(columns=[*keys, ts_field])
        new = table.to_pyarrow_dataset().to_table(columns=keys)
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': cannot read Delta table {path} for its deletes: {e}"
        ) from None
    at = _delete_time(path, table, synced, target)
    plan.deletes = deleted_entities(fv, old, new, at)
    plan.summary.notes.append(
        f"{plan.deletes.num_rows} entities deleted after version {synced} (key diff of "
        f"versions {synced} and {target}): tombstones timed "
        f"{at.isoformat().replace('+00:00', 'Z')} or their row's later event time"
    )


def read_version(fv: FeatureView, version: int | None, columns: list[str]) -> pa.Table:
    """The table's rows at ``version`` (latest if None), only ``columns``."""
    assert fv.batch_source is not None
    table = _open_delta(fv.batch_source.path, version, fv.name)
    try:
        return table.to_pyarrow_dataset().to_table(columns=columns)
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': cannot read Delta table {fv.batch_source.path}: {e}"
        ) from None


def latest_version(fv: FeatureView) -> int | None:
    assert fv.batch_source is not None
    return int(_open_delta(fv.batch_source.path, None, fv.name).version())


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
    if synced is not None and synced < target:
        history = _history_note(table, synced, target)
        try:
            then = _deltalake().DeltaTable(path, version=synced)
            live_then = _live_files(then)
        except Exception:
            plan.summary.notes.append(
                f"synced version {synced} is no longer in the Delta log (vacuumed or "
                f"checkpointed away): full reload of version {target}, no deletes applied"
            )
        else:
            live_now = _live_files(table)
            rewritten = _already_synced(path, synced, target, live_then)
            if incremental:
                only = live_now - rewritten
                plan.summary.notes.append(
                    f"Delta versions {synced + 1}..{target} [{history}]: "
                    f"{len(only)} of {len(live_now)} live files new or rewritten"
                )
            # files removed without a data change (OPTIMIZE, Z-order) delete nothing
            if live_then - live_now and _removes_data(path, synced, target):
                _deletes(plan, then, table, synced, target)
    elif incremental and synced is not None:
        plan.summary.notes.append(
            f"Delta table at version {target}, already synced to version {synced}"
        )
        only = set()
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
