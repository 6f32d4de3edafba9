"""``feature-serving diff``: the rows added, changed and deleted between two versions of a
view's table-format source, or between a version and what the online store holds."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from serving.client.results import FieldStatus
from serving.errors import InvalidArgumentError
from serving.loaders.batch.changes import Diff, diff_rows, entity_rows, source_columns
from serving.loaders.batch.formats import TABLE_FORMATS, TableFormat
from serving.registry import EVENT_TIMESTAMP, FeatureView, Registry
from serving.store import Store


def _format(fv: FeatureView) -> TableFormat:
    assert fv.batch_source is not None
    fmt = TABLE_FORMATS.get(fv.batch_source.type)
    if fmt is None:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': diff needs a versioned source (delta, iceberg, hudi); "
            f"its source is {fv.batch_source.type}"
        )
    return fmt


def _view(registry: Registry, view: str) -> FeatureView:
    fv = registry.view(view)
    if fv.batch_source is None:
        raise InvalidArgumentError(f"feature view '{view}' has no batch_source")
    return fv


def _typed(fv: FeatureView, registry: Registry, rows: pa.Table) -> pa.Table:
    """Entity rows with the registry's types (source column names kept)."""
    schema = registry.arrow_schema(fv.name)
    cols = {}
    for name in rows.column_names:
        col = rows.column(name)
        if name in schema.names and col.type != schema.field(name).type:
            try:
                col = col.cast(schema.field(name).type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise InvalidArgumentError(
                    f"feature view '{fv.name}': column '{name}' has type {col.type}, which "
                    f"cannot be converted to {schema.field(name).type}: {e}"
                ) from None
        cols[name] = col
    return pa.table(cols)


def _version_rows(
    fmt: TableFormat, fv: FeatureView, registry: Registry, version: int | None
) -> pa.Table:
    raw = fmt.read_version(fv, version, source_columns(fv, features=True))
    return _typed(fv, registry, entity_rows(fv, raw))


def _label(fmt: TableFormat, version: int | None) -> str:
    return f"{fmt.version_word} {version}" if version is not None else f"latest {fmt.version_word}"


def diff_versions(
    registry: Registry, view: str, from_version: int, to_version: int | None = None
) -> Diff:
    """Rows added, changed (values or event time) and deleted from ``from_version`` to
    ``to_version`` (latest if None) of the view's source, one row per entity (the one the
    merge rule keeps)."""
    fv = _view(registry, view)
    fmt = _format(fv)
    assert fv.batch_source is not None
    old = _version_rows(fmt, fv, registry, from_version)
    new = _version_rows(fmt, fv, registry, to_version)
    added, changed_old, changed_new, deleted = diff_rows(fv, old, new)
    return Diff(
        view,
        fv.batch_source.location,
        _label(fmt, from_version),
        _label(fmt, to_version),
        added,
        changed_old,
        changed_new,
        deleted,
        keys=[k.name for k in fv.join_keys],
    )


def _online_rows(store: Store, fv: FeatureView, keys: pa.Table) -> pa.Table:
    """The online rows of ``keys`` (present ones only), in the entity-row layout."""
    names = [k.name for k in fv.join_keys]
    if keys.num_rows == 0:
        return keys.select(names)
    refs = [f"{fv.name}:{f}" for f in fv.feature_names]
    res = store.get({n: keys.column(n).combine_chunks() for n in names}, refs)
    present = (res.statuses != FieldStatus.NOT_FOUND).any(axis=1)
    ts = res.event_timestamps.max(axis=1)
    cols: dict[str, Any] = {n: res.table.column(n) for n in names}
    cols[EVENT_TIMESTAMP] = pa.array(ts.astype("datetime64[us]"), pa.timestamp("us")).cast(
        pa.timestamp("us", tz="UTC")
    )
    for f, ref in zip(fv.feature_names, refs, strict=True):
        cols[f] = res.table.column(ref)
    return pa.table(cols).filter(pa.array(np.asarray(present, dtype=bool)))


def diff_online(store: Store, view: str, version: int | None = None) -> Diff:
    """How the online store differs from ``version`` (latest if None) of the view's source:
    ``added``: rows of the version the store lacks; ``changed``: rows it holds with other
    values or event time (old = online, new = the version's); ``deleted``: rows it holds
    for keys the version does not have. The store has no key scan, so those are looked for
    among the keys of the latest version too."""
    registry = store.registry
    fv = _view(registry, view)
    fmt = _format(fv)
    assert fv.batch_source is not None
    new = _version_rows(fmt, fv, registry, version)
    names = [k.name for k in fv.join_keys]
    probe = new.select(names)
    notes = []
    if version is not None:
        latest = fmt.read_version(fv, None, names)
        extra = _typed(fv, registry, latest)
        probe = pa.concat_tables([probe, extra.select(names).cast(probe.schema)])
        probe = probe.group_by(names, use_threads=False).aggregate([])
        notes.append(f"online keys looked up: those of {_label(fmt, version)} and the latest")
    online = _online_rows(store, fv, probe)
    added, changed_old, changed_new, deleted = diff_rows(fv, online, new)
    return Diff(
        view,
        fv.batch_source.location,
        "online store",
        _label(fmt, version),
        added,
        changed_old,
        changed_new,
        deleted,
        notes,
        keys=names,
    )


def format_diff(d: Diff, *, show: bool, limit: int = 50) -> str:
    """The text ``feature-serving diff`` prints."""
    c = d.counts()
    lines = [
        f"{d.view} ({d.source}): {d.old} -> {d.new}: {c['added']} added, {c['changed']} "
        f"changed, {c['deleted']} deleted"
    ]
    lines.extend(d.notes)
    if not show:
        return "\n".join(lines)

    def rows(tag: str, table: pa.Table) -> None:
        for i, row in enumerate(table.to_pylist()):
            if i == limit:
                lines.append(f"  ... {table.num_rows - limit} more {tag} rows (--limit)")
                return
            lines.append(f"{tag} {_show_row(row)}")

    rows("+", d.added)
    old_rows = d.changed_old.to_pylist()
    for i, new_row in enumerate(d.changed_new.to_pylist()):
        if i == limit:
            lines.append(f"  ... {d.changed_new.num_rows - limit} more changed rows (--limit)")
            break
        old_row = old_rows[i]
        changed = {k: v for k, v in new_row.items() if old_row.get(k) != v}
        keys = {k: new_row[k] for k in d.keys}
        delta = ", ".join(f"{k}: {_show(old_row.get(k))} -> {_show(v)}" for k, v in changed.items())
        lines.append(f"~ {_show_row(keys)} {delta}")
    rows("-", d.deleted)
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"  # float32 values, without their binary noise
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return repr(value)


def _show_row(row: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in row.items()) + "}"
