"""Planning a batch run over an Apache Iceberg table (pyiceberg): the data files live at the
target snapshot, less those already live at the synced one; deletes found by a key diff.

The table is named in a catalog (``table`` + ``catalog``: SQL on SQLite, REST, Glue... any
catalog ``pyiceberg.catalog.load_catalog`` builds from properties) or by its metadata file
(``path``: a ``*.metadata.json``, or the table directory, whose newest metadata file is used).
Files are read through pyiceberg's own Arrow scan, one unit per data file, so columns are
resolved by field id (renames, added columns) and positional / equality delete files apply.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from serving.errors import InvalidArgumentError
from serving.loaders.batch.changes import deleted_entities, source_columns
from serving.loaders.batch.meta import OnError
from serving.loaders.batch.plan import Plan, _build_units, _reader_unit
from serving.registry import FeatureView

#: snapshot operations that only add rows: a range of only these deletes nothing
_APPEND_ONLY = {"append"}
_METADATA_VERSION = re.compile(r"^(?:v)?(\d+)[-.]")


def _pyiceberg() -> Any:
    try:
        import pyiceberg
    except ImportError:
        raise InvalidArgumentError(
            "Iceberg sources need the pyiceberg package: pip install 'feature-serving[iceberg]'"
        ) from None
    return pyiceberg


def _metadata_file(path: str, view: str) -> str:
    """A table directory's newest metadata file (the highest version number)."""
    if path.endswith(".metadata.json") or "://" in path:
        if "://" not in path and not os.path.exists(path):
            raise InvalidArgumentError(
                f"feature view '{view}': Iceberg metadata file {path} does not exist"
            )
        return path
    if not os.path.isdir(path):
        raise InvalidArgumentError(f"feature view '{view}': batch source {path} does not exist")
    found = glob.glob(os.path.join(path, "metadata", "*.metadata.json"))
    if not found:
        raise InvalidArgumentError(
            f"feature view '{view}': batch source {path} is not an Iceberg table "
            f"(no metadata/*.metadata.json)"
        )

    def version(name: str) -> tuple[int, float]:
        m = _METADATA_VERSION.match(os.path.basename(name))
        return (int(m.group(1)) if m else -1, os.path.getmtime(name))

    return max(found, key=version)


def open_table(fv: FeatureView) -> Any:
    """The view's Iceberg table, freshly loaded (its latest metadata)."""
    _pyiceberg()
    from pyiceberg.catalog import load_catalog
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
    from pyiceberg.table import StaticTable

    src, view = fv.batch_source, fv.name
    assert src is not None
    if not src.table:
        location = _metadata_file(src.path, view)
        try:
            return StaticTable.from_metadata(location)
        except Exception as e:  # pyiceberg raises OSError, ValidationError, ...
            raise InvalidArgumentError(
                f"feature view '{view}': cannot open Iceberg table {location}: {e}"
            ) from None
    props = dict(src.catalog)
    name = props.pop("name", "default")
    uri = props.get("uri", "")
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        # SQLAlchemy would create an empty database, and pyiceberg its tables, for a typo
        if db != ":memory:" and not os.path.exists(db):
            raise InvalidArgumentError(
                f"feature view '{view}': Iceberg catalog {uri} does not exist (no file {db})"
            )
        props.setdefault("init_catalog_tables", "false")
    try:
        catalog = load_catalog(name, **props)
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{view}': cannot open Iceberg catalog {props.get('type', '')} {uri}: {e}"
        ) from None
    try:
        return catalog.load_table(src.table)
    except (NoSuchTableError, NoSuchNamespaceError):
        raise InvalidArgumentError(
            f"feature view '{view}': Iceberg table {src.table} not found in catalog "
            f"{props.get('type', '')} {uri}"
        ) from None
    except Exception as e:
        raise InvalidArgumentError(
            f"feature view '{view}': cannot load Iceberg table {src.table} from catalog {uri}: {e}"
        ) from None


def _snapshot(table: Any, version: int | None, view: str) -> Any | None:
    if version is None:
        return table.current_snapshot()
    snap = table.snapshot_by_id(version)
    if snap is None:
        known = ", ".join(str(s.snapshot_id) for s in table.snapshots()[-5:]) or "none"
        raise InvalidArgumentError(
            f"feature view '{view}': Iceberg table {fv_location(table)} has no snapshot "
            f"{version} (latest: {known})"
        )
    return snap


def fv_location(table: Any) -> str:
    ident = getattr(table, "name", None)
    try:
        return ".".join(ident()) if callable(ident) else str(table.metadata_location)
    except Exception:
        return str(table.metadata_location)


def _schema(table: Any, snap: Any) -> Any:
    if snap is not None and snap.schema_id is not None:
        s = table.schemas().get(snap.schema_id)
        if s is not None:
            return s
    return table.schema()


def _tasks(table: Any, snap: Any | None) -> dict[str, Any]:
    """The scan tasks (a data file with its delete files) live at a snapshot, by path."""
    if snap is None:
        return {}
    return {t.file.file_path: t for t in table.scan(snapshot_id=snap.snapshot_id).plan_files()}


def _reader(table: Any, schema: Any, task: Any) -> Any:
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    def read(columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        scan = ArrowScan(table.metadata, table.io, schema.select(*columns), AlwaysTrue())
        for batch in scan.to_record_batches([task]):
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)

    return read


def read_version(fv: FeatureView, version: int | None, columns: list[str]) -> pa.Table:
    """The table's rows at a snapshot (latest if None), only ``columns``."""
    table = open_table(fv)
    snap = _snapshot(table, version, fv.name)
    schema = _schema(table, snap)
    missing = [c for c in columns if c not in schema.column_names]
    if missing:
        raise InvalidArgumentError(
            f"feature view '{fv.name}': Iceberg table {fv_location(table)}: missing column "
            f"'{missing[0]}'"
        )
    if snap is None:
        return schema.select(*columns).as_arrow().empty_table()
    scan = table.scan(snapshot_id=snap.snapshot_id, selected_fields=tuple(columns))
    return scan.to_arrow()


def latest_version(fv: FeatureView) -> int | None:
    snap = open_table(fv).current_snapshot()
    return int(snap.snapshot_id) if snap is not None else None


def _range(table: Any, synced: int, target: Any) -> list[Any] | None:
    """The snapshots after ``synced`` up to ``target`` (oldest first), None when ``synced`` is
    not an ancestor of ``target`` (expired, or a rollback to another branch)."""
    from pyiceberg.table.snapshots import ancestors_of

    out: list[Any] = []
    for snap in ancestors_of(target, table.metadata):
        if snap.snapshot_id == synced:
            return list(reversed(out))
        out.append(snap)
    return None


def _operation(snap: Any) -> str:
    op = getattr(snap.summary, "operation", None) if snap.summary is not None else None
    return str(getattr(op, "value", op or "?"))


def _deletes(plan: Plan, table: Any, synced: Any, target: Any, snaps: list[Any]) -> None:
    """Tombstones for the entities live at ``synced`` and gone at ``target``."""
    fv = plan.fv
    changing = [s for s in snaps if _operation(s) not in _APPEND_ONLY]
    if not changing:
        return
    keys = [k.name for k in fv.join_keys]
    assert fv.batch_source is not None
    ts_field = fv.batch_source.timestamp_field
    old = table.scan(snapshot_id=synced.snapshot_id, selected_fields=(*keys, ts_field)).to_arrow()
    new = table.scan(snapshot_id=target.snapshot_id, selected_fields=tuple(keys)).to_arrow()
    at = dt.datetime.fromtimestamp(changing[0].timestamp_ms / 1000, tz=dt.UTC)
    plan.deletes = deleted_entities(fv, old, new, at)
    plan.summary.notes.append(
        f"{plan.deletes.num_rows} entities deleted in snapshots "
        f"{', '.join(str(s.snapshot_id) for s in changing)} (key diff of snapshot "
        f"{synced.snapshot_id} and {target.snapshot_id}): tombstones timed "
        f"{at.isoformat().replace('+00:00', 'Z')} or their row's later event time"
    )


def plan_iceberg(
    plan: Plan,
    *,
    version: int | None,
    synced: int | None,
    incremental: bool,
    prune_partitions: bool,
    on_error: OnError,
) -> int | None:
    """Plans an Iceberg source; returns the snapshot id read (None: the table has none).

    ``synced`` (a snapshot id) with ``incremental``: only the data files added since, and
    tombstones for what was deleted since; without ``incremental`` (a full load of the
    latest snapshot over an older synced one) every file, and the same tombstones.
    """
    del prune_partitions  # no hive layout: partitions are Iceberg's, pruned by the scan
    view = plan.fv.name
    table = open_table(plan.fv)
    target = _snapshot(table, version, view)
    if target is None:
        plan.summary.notes.append("Iceberg table has no snapshot yet: nothing to load")
        return None
    tid = int(target.snapshot_id)
    plan.summary.table_version = tid
    schema = _schema(table, target)
    live = _tasks(table, target)
    only: set[str] | None = None
    if synced is not None and synced != tid:
        snaps = _range(table, synced, target)
        old = table.snapshot_by_id(synced)
        if snaps is None or old is None:
            plan.summary.notes.append(
                f"synced snapshot {synced} is not an ancestor of snapshot {tid} (expired, or "
                f"the table was rolled back): full reload, no deletes applied"
            )
        else:
            ops = ", ".join(f"{s.snapshot_id} {_operation(s)}" for s in snaps)
            if incremental:
                only = set(live) - set(_tasks(table, old))
                plan.summary.notes.append(
                    f"Iceberg snapshots after {synced} [{ops}]: {len(only)} of {len(live)} "
                    f"live data files added"
                )
            _deletes(plan, table, old, target, snaps)
    elif synced is not None and incremental:
        plan.summary.notes.append(f"Iceberg table at snapshot {tid}, already synced")
        only = set()
    arrow_schema = schema.as_arrow()
    wanted = source_columns(plan.fv, features=True)
    plain: list[Any] = []
    for path, task in live.items():
        if only is not None and path not in only:
            continue
        label = path[len("file://") :] if path.startswith("file://") else path
        fragment = _plain_fragment(label, task, schema, wanted)
        if fragment is not None:
            plain.append(fragment)
            continue
        _reader_unit(
            plan,
            label,
            arrow_schema,
            int(task.file.record_count),
            _reader(table, schema, task),
            on_error=on_error,
        )
    if plain:
        _build_units(
            plan,
            plain,
            table_schema=None,
            partition_schema=None,
            base=None,
            prune_partitions=False,
            on_error=on_error,
        )
    return tid


def _plain_fragment(label: str, task: Any, schema: Any, wanted: list[str]) -> Any | None:
    """The data file as a plain Parquet fragment when reading it as Parquet gives what
    pyiceberg's scan would: a local file without delete files whose columns carry the field
    ids of the view's columns under their current names (no rename since it was written).
    Parquet's own reader is ~4x faster than the scan's per-file projection (1M x 200 float32:
    3.8 s against 16 s to read and convert), and it prunes row groups by statistics."""
    if task.delete_files or "://" in label:
        return None
    try:
        fragment = next(iter(pads.dataset(label, format="parquet").get_fragments()))
        physical = fragment.physical_schema
    except (OSError, pa.ArrowException, StopIteration):
        return None
    for name in wanted:
        if name not in schema.column_names or name not in physical.names:
            return None
        meta = physical.field(name).metadata or {}
        if meta.get(b"PARQUET:field_id") != str(schema.find_field(name).field_id).encode():
            return None
    return fragment
