"""On-demand feature views at run time: the user's transform over a whole batch, once per
request (request-time) or once per written batch (write-time). docs/on-demand.md.

The Rust core does everything around the transform: for a request it reads the stored inputs
and hands them over as one Arrow batch (``PendingAnswer.inputs``), takes the output columns
back (``PendingAnswer.set_output``: types and length checked against the registry) and encodes
the whole answer. This module only calls the function, in the view's mode:

- ``pyarrow`` (the default): a ``pyarrow.RecordBatch`` in, a ``RecordBatch`` (or ``Table``, or
  a mapping of column name to array) out. The inputs cross from Rust without a copy and the
  outputs go back the same way, so the mode costs the function's own work and little else
  (docs/benchmarks.md, "On-demand views").
- ``pandas``: Feast's semantics, a ``DataFrame`` in and out; the conversion both ways is what
  this mode costs on top.

Inputs that are NOT_FOUND, expired or null reach the function as nulls (``None`` / ``NaN`` in
pandas); an output null is answered ``NULL_VALUE``, any other output ``PRESENT``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from serving.errors import FeatureServingError, TransformError
from serving.registry import (
    EVENT_TIMESTAMP,
    OnDemandFeatureView,
    Registry,
    _feature_arrow_type,
)

if TYPE_CHECKING:
    from serving import _rust_core

__all__ = ["Observer", "OnDemandRunner", "TransformStats"]

_UTC_US = pa.timestamp("us", tz="UTC")

#: called after every transform run: (view, seconds, failed)
Observer = Callable[[str, float, bool], None]


@dataclass
class TransformStats:
    """Per view: runs, failures and the time spent in the function (seconds)."""

    runs: int = 0
    errors: int = 0
    seconds: float = 0.0


class OnDemandRunner:
    """The on-demand views of one registry, ready to run: static artifacts loaded (once, when
    the runner is made: at server start and on a registry reload)."""

    def __init__(self, registry: Registry, observe: Observer | None = None) -> None:
        self.registry = registry
        self._observe = observe
        self.stats: dict[str, TransformStats] = {}
        self._artifacts: dict[str, Any] = {}
        self._schemas: dict[str, pa.Schema] = {}
        for o in registry.on_demand_views.values():
            self.stats[o.name] = TransformStats()
            self._schemas[o.name] = pa.schema(
                [pa.field(f.name, _feature_arrow_type(f)) for f in o.features]
            )
            if o.artifacts_function is not None:
                try:
                    self._artifacts[o.name] = o.artifacts_function()
                except Exception as e:
                    raise TransformError(
                        f"on-demand feature view '{o.name}' ({o.where}): static_artifacts "
                        f"'{o.static_artifacts}' raised {type(e).__name__}: {e}"
                    ) from e

    def __bool__(self) -> bool:
        return bool(self.stats)

    # -- one batch ---------------------------------------------------------------------------

    def compute(
        self,
        name: str,
        inputs: pa.RecordBatch,
        check: Callable[[pa.RecordBatch], None] | None = None,
    ) -> pa.RecordBatch:
        """Runs view ``name``'s transform over ``inputs``; the output's columns in the
        registry's order. ``check`` (the core's, which checks types and length and names the
        column) counts as part of the run: its failure is the transform's."""
        o = self.registry.on_demand_views[name]
        st = self.stats[name]
        t0 = time.perf_counter()
        failed = True
        try:
            out = self._call(o, inputs)
            if check is not None:
                check(out)
            failed = False
            return out
        finally:
            dt = time.perf_counter() - t0
            st.runs += 1
            st.seconds += dt
            if failed:
                st.errors += 1
            if self._observe is not None:
                self._observe(name, dt, failed)

    def _call(self, o: OnDemandFeatureView, inputs: pa.RecordBatch) -> pa.RecordBatch:
        args: tuple[Any, ...] = (inputs,)
        if o.mode == "pandas":
            args = (inputs.to_pandas(),)
        if o.artifacts_function is not None:
            args = (*args, self._artifacts[o.name])
        try:
            result = o.function(*args)
        except FeatureServingError:
            raise
        except Exception as e:
            raise TransformError(
                f"on-demand feature view '{o.name}': the transform '{o.transform}' raised "
                f"{type(e).__name__}: {e}"
            ) from e
        if o.mode == "pandas":
            return self._from_pandas(o, result)
        return self._from_arrow(o, result, inputs.num_rows)

    def _fail(self, o: OnDemandFeatureView, what: str) -> TransformError:
        return TransformError(f"on-demand feature view '{o.name}': the transform's output {what}")

    def _from_arrow(self, o: OnDemandFeatureView, result: Any, n: int) -> pa.RecordBatch:
        if isinstance(result, pa.Table):
            result = result.combine_chunks().to_batches()[0] if result.num_rows else None
            if result is None:
                result = pa.RecordBatch.from_pylist([], schema=self._schemas[o.name])
        if isinstance(result, Mapping):
            return self._from_mapping(o, result)
        if not isinstance(result, pa.RecordBatch):
            raise self._fail(
                o,
                f"is {type(result).__name__}; a pyarrow-mode transform returns a "
                "pyarrow.RecordBatch, a Table or a mapping of column name to array",
            )
        names = result.schema.names
        columns = []
        for f in o.features:
            if f.name not in names:
                raise self._fail(o, f"has no column '{f.name}' (it has {', '.join(names)})")
            columns.append(result.column(f.name))
        return pa.RecordBatch.from_arrays(columns, names=[f.name for f in o.features])

    def _from_mapping(self, o: OnDemandFeatureView, result: Mapping[str, Any]) -> pa.RecordBatch:
        """Column name -> pyarrow array, numpy array or list: the registry's columns taken
        straight into one batch (measured: a quarter of the time of ``from_pydict`` and
        picking the columns again, at W2's 100 rows x 10 outputs)."""
        columns = []
        for f in o.features:
            try:
                col = result[f.name]
            except KeyError:
                have = ", ".join(map(str, result))
                raise self._fail(o, f"has no column '{f.name}' (it has {have})") from None
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            elif not isinstance(col, pa.Array):
                try:
                    col = pa.array(col)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                    raise self._fail(o, f"column '{f.name}' is no array: {e}") from None
            columns.append(col)
        try:
            return pa.RecordBatch.from_arrays(columns, names=[f.name for f in o.features])
        except (pa.ArrowInvalid, TypeError, ValueError) as e:
            raise self._fail(o, f"mapping does not make a record batch: {e}") from None

    def _from_pandas(self, o: OnDemandFeatureView, df: Any) -> pa.RecordBatch:
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise self._fail(
                o, f"is {type(df).__name__}; a pandas-mode transform returns a pandas.DataFrame"
            )
        for f in o.features:
            if f.name not in df.columns:
                have = ", ".join(map(str, df.columns))
                raise self._fail(o, f"has no column '{f.name}' (it has {have})")
        schema = self._schemas[o.name]
        try:
            return pa.RecordBatch.from_pandas(
                df[[f.name for f in o.features]], schema=schema, preserve_index=False
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise self._fail(o, f"does not convert to the registry's types: {e}") from None

    def _check_types(self, o: OnDemandFeatureView, out: pa.RecordBatch) -> None:
        """The core's check of a request-time output, for a write-time one (whose rows go
        through the write path, which would answer a mismatch as the writer's fault)."""
        for f, col in zip(self._schemas[o.name], out.columns, strict=True):
            if col.type != f.type:
                raise self._fail(
                    o, f"column '{f.name}' has type {col.type} but the registry declares {f.type}"
                )

    # -- request time ------------------------------------------------------------------------

    def complete(self, pending: _rust_core.PendingAnswer) -> bytes:
        """Runs every on-demand view of a request and returns the encoded answer."""
        for k, name in enumerate(pending.views):
            self.compute(name, pending.inputs(k), partial(pending.set_output, k))
        return pending.finish()

    # -- write time --------------------------------------------------------------------------

    def derive(
        self,
        core: _rust_core.Store,
        view: str,
        entities: pa.RecordBatch,
        meta: list[tuple[str, bytes]] | None,
    ) -> tuple[int, int]:
        """After rows of ``view`` were written: recompute its write-time views for those
        entities from the stored (winning) rows, and write them with the winner's event time,
        ``meta`` (loader progress) in the last write. An entity whose row is gone (a
        tombstone won) gets a tombstone in each derived view, at its ``event_timestamp``
        column's time. Returns ``(written, skipped_older)`` of the derived rows."""
        derived = self.registry.write_time_views(view)
        written = skipped = 0
        src = self.registry.view(view)
        key_names = [k.name for k in src.join_keys]
        keys = pa.RecordBatch.from_arrays([entities.column(n) for n in key_names], names=key_names)
        n = keys.num_rows
        last = len(derived) - 1
        for i, o in enumerate(derived):
            m = meta if i == last else None
            refs = [str(r) for r in o.sources]
            _, values, _, ts = core.get(keys, features=refs, max_entities=max(n, 1))
            # Row-major [entity][feature] event times: a stored row sets every cell's, an
            # entity without a row (or whose tombstone won) has 0.
            row_us = np.frombuffer(ts, dtype=np.int64).reshape(n, len(refs))[:, 0]
            found = row_us != 0
            present = pa.array(np.flatnonzero(found))
            gone = pa.array(np.flatnonzero(~found))
            if len(present):
                inputs = pa.RecordBatch.from_arrays(
                    values.columns, names=[r.feature for r in o.sources]
                ).take(present)
                outputs = self.compute(o.name, inputs, partial(self._check_types, o))
                row_ts = pa.array(row_us[found]).cast(_UTC_US)
                batch = _with_keys(keys.take(present), row_ts, outputs)
                _, w, s = core.write(o.name, batch, None if len(gone) else m)
                written, skipped = written + w, skipped + s
            if len(gone):
                tomb = pa.RecordBatch.from_arrays(
                    [*keys.take(gone).columns, entities.column(EVENT_TIMESTAMP).take(gone)],
                    names=[*key_names, EVENT_TIMESTAMP],
                )
                _, w, s = core.delete(o.name, tomb, m)
                written, skipped = written + w, skipped + s
            elif not len(present) and m:
                empty = pa.RecordBatch.from_pylist([], schema=self.registry.arrow_schema(o.name))
                core.write(o.name, empty, m)
        return written, skipped


def _with_keys(keys: pa.RecordBatch, ts: pa.Array, outputs: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*keys.columns, ts, *outputs.columns],
        names=[*keys.schema.names, EVENT_TIMESTAMP, *outputs.schema.names],
    )
