"""Reading a plan: record batches over the row groups with a read-ahead thread, the validating
first pass and the load into the store."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from serving.errors import InvalidArgumentError
from serving.loaders.batch.convert import Prepared, _prepare
from serving.loaders.batch.meta import MAX_REPORTED_ERRORS, READ_AHEAD, OnError
from serving.loaders.batch.plan import Plan, Unit
from serving.loaders.batch.summary import RowError, ViewSummary
from serving.loaders.progress import Progress, format_count
from serving.store import Store, WriteStats


def _scan(unit: Unit, columns: list[str], batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first row within the file, batch)`` over the unit's row groups, in file order."""
    if unit.reader is not None:
        row = 0
        try:
            for batch in unit.reader(columns, batch_rows):
                if batch.num_rows:
                    yield row, batch
                    row += batch.num_rows
        except InvalidArgumentError:
            raise
        except Exception as e:  # the format's reader raises its own hierarchy
            raise InvalidArgumentError(f"cannot read {unit.label}: {e}") from None
        return
    for rg in unit.row_groups:
        fragment = unit.fragment.subset(row_group_ids=[rg.id])
        row = rg.first_row
        try:
            batches = fragment.to_batches(
                schema=unit.scan_schema, columns=columns, batch_size=batch_rows, use_threads=True
            )
            for batch in batches:
                if batch.num_rows:
                    yield row, batch
                    row += batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise InvalidArgumentError(
                f"cannot read {unit.label} (row group {rg.id}): {e}"
            ) from None


def _read_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Runs ``items`` on a background thread, ``depth`` items ahead (pyarrow releases the GIL,
    so reading and decoding overlap the store's writes)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
        except BaseException as e:
            put(("error", e))
            return
        put(("done", None))

    thread = threading.Thread(target=run, name="batch-loader-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def _prepared(plan: Plan, *, build: bool, batch_rows: int) -> Iterator[tuple[Unit, Prepared]]:
    for unit in plan.units:
        if build:
            columns = [c.source for c in unit.columns]
        else:
            columns = [c.source for c in unit.columns if c.kind in ("key", "ts") or c.check]
        for row0, batch in _scan(unit, columns, batch_rows):
            yield unit, _prepare(plan, unit, row0, batch, build=build)


def _fail(plan: Plan, prep: Prepared) -> InvalidArgumentError:
    first = prep.errors[0]
    more = prep.bad - 1
    tail = f" ({more} more bad rows in this batch)" if more > 0 else ""
    return InvalidArgumentError(
        f"feature view '{plan.fv.name}': {first}{tail}; nothing was written "
        f"(--on-error skip skips bad rows)"
    )


def _note_errors(summary: ViewSummary, prep: Prepared) -> None:
    summary.errors += prep.bad
    room = MAX_REPORTED_ERRORS - len(summary.first_errors)
    if room > 0:
        summary.first_errors.extend(prep.errors[:room])


def _note_skipped_files(plan: Plan) -> None:
    for unit, column, reason in plan.skipped_files:
        plan.summary.errors += unit.rows
        if len(plan.summary.first_errors) < MAX_REPORTED_ERRORS:
            plan.summary.first_errors.append(
                RowError(unit.label, None, column, f"{reason}; file skipped")
            )


def _validate(
    plan: Plan, *, on_error: OnError, progress: bool, batch_rows: int, count: bool
) -> None:
    """Validation pass: reads only the columns that need per-row checks."""
    bar = Progress(f"validate {plan.fv.name}", plan.total_rows, enabled=progress)
    try:
        for _unit, prep in _read_ahead(
            _prepared(plan, build=False, batch_rows=batch_rows), READ_AHEAD
        ):
            bar.update(prep.scanned)
            if prep.bad and on_error == "fail":
                raise _fail(plan, prep)
            if count:
                plan.summary.rows_read += prep.in_window
                _note_errors(plan.summary, prep)
    finally:
        bar.close()


def _load(store: Store, plan: Plan, *, on_error: OnError, progress: bool, batch_rows: int) -> None:
    """Load pass: writes every batch; the meta rides with the last one."""
    summary, view = plan.summary, plan.fv.name
    bar = Progress(f"load {view}", plan.total_rows, enabled=progress)
    stats = WriteStats()
    pending: pa.RecordBatch | None = None
    seen: set[str] = set()
    try:
        for unit, prep in _read_ahead(
            _prepared(plan, build=True, batch_rows=batch_rows), READ_AHEAD
        ):
            seen.add(unit.label)
            summary.rows_read += prep.in_window
            if prep.bad:
                if on_error == "fail":
                    raise _fail(plan, prep)
                _note_errors(summary, prep)
            if prep.batch is not None:
                if pending is not None:
                    stats += store.write(view, pending)
                pending = prep.batch
            bar.update(prep.scanned)
        deletes = plan.deletes if plan.deletes is not None and plan.deletes.num_rows else None
        if deletes is not None:
            # the rows first, then the tombstones with the meta: a crash in between leaves the
            # old version recorded, and the rerun finds the same deletes again
            if pending is not None:
                stats += store.write(view, pending)
            dstats = store.delete(view, deletes, meta=plan.meta or None)
            summary.deleted += dstats.written
        elif pending is not None or plan.meta:
            if pending is None:
                pending = pa.RecordBatch.from_pylist([], schema=plan.schema)
            stats += store.write(view, pending, meta=plan.meta or None)
    finally:
        bar.close(
            f"load {view}: {format_count(summary.rows_read)} rows in window, "
            f"{format_count(stats.written)} written, {format_count(stats.skipped_older)} "
            f"skipped as older, {format_count(summary.errors)} bad rows"
        )
        summary.written += stats.written
        summary.skipped_older += stats.skipped_older
    summary.files_read = len(seen)
