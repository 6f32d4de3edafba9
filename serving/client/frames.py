"""Answers as data frames: ``to_pandas()`` / ``to_polars()`` / ``to_arrow()`` of
:class:`~serving.client.results.DenseResult` and :class:`~serving.client.results.ColumnsResult`.

An answer becomes a list of :class:`Column` (join keys first, then each feature, optionally
its status and event timestamp), and each backend builds its frame from numpy arrays and a
validity mask, without a Python object per numeric value. pandas, polars and pyarrow are the
client's optional extras, imported here only, on first use.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidArgumentError

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    from serving.client.results import ColumnsResult, DenseResult

#: FieldStatus names by number (serving.client.results.FieldStatus)
STATUS_NAMES = ("INVALID", "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
_PRESENT, _NOT_FOUND, _INVALID = 1, 3, 0
#: the extra of the client wheel that brings each backend
_EXTRAS = {"pandas": "pandas", "polars": "polars", "pyarrow": "arrow"}


@dataclass(frozen=True)
class Column:
    name: str
    #: a feature type (``int64``, ``string``, ``timestamp``, ``float32_array``, ...) or
    #: ``status`` (FieldStatus numbers)
    kind: str
    #: a numpy array (``[n]``, or ``[n x dim]`` for ``float32_array``) or a list (strings,
    #: bytes)
    values: Any
    #: False where the value is null; None: no nulls
    valid: npt.NDArray[np.bool_] | None = None


def _backend(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRAS[module]
        raise ImportError(
            f"this needs {module}, which is not installed: pip install "
            f"'feature-serving-client[{extra}]' (or pip install {module})"
        ) from None


def column_names(
    refs: Sequence[str], full_feature_names: bool, join_keys: Sequence[str]
) -> list[str]:
    """Feast's column names for feature references ``view:feature``: ``feature``, or
    ``view__feature`` with ``full_feature_names``; names that collide are an error, as in
    Feast (``FeatureNameCollisionError``)."""
    names = [
        ref.replace(":", "__", 1) if full_feature_names else ref.split(":", 1)[-1] for ref in refs
    ]
    counts = Counter([*join_keys, *names])
    dup = sorted(n for n, c in counts.items() if c > 1)
    if dup:
        hint = "" if full_feature_names else "; pass full_feature_names=True"
        raise InvalidArgumentError(
            f"data frame column names collide: {dup} (from {list(refs)}){hint}"
        )
    return names


def key_columns(entities: Mapping[str, Any]) -> list[Column]:
    out = []
    for name, values in entities.items():
        vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if vals and all(isinstance(v, str) for v in vals):
            out.append(Column(name, "string", vals))
        elif vals and all(isinstance(v, bytes) for v in vals):
            out.append(Column(name, "bytes", vals))
        else:
            out.append(Column(name, "int64", np.asarray(vals, dtype=np.int64)))
    return out


def dense_columns(r: DenseResult, full_feature_names: bool, statuses: bool) -> list[Column]:
    cols = key_columns(r.entities)
    names = column_names(r.feature_names, full_feature_names, [c.name for c in cols])
    for j, name in enumerate(names):
        st = r.statuses[:, j]
        cols.append(Column(name, "float32", r.values[:, j], st == _PRESENT))
        if statuses:
            cols.append(Column(f"{name}__status", "status", st))
    return cols


def _kind_of(values: Any) -> str:
    """A column's type from its values, for answers built without ``dtypes``."""
    if isinstance(values, np.ndarray):
        return "float32_array" if values.ndim == 2 else str(values.dtype)
    return "bytes" if values and isinstance(values[0], bytes) else "string"


def typed_columns(
    r: ColumnsResult, full_feature_names: bool, statuses: bool, event_timestamps: bool
) -> list[Column]:
    cols = key_columns(r.entities)
    names = column_names(r.feature_names, full_feature_names, [c.name for c in cols])
    for j, (ref, name) in enumerate(zip(r.feature_names, names, strict=True)):
        st = r.statuses[:, j]
        values = r.columns[ref]
        cols.append(Column(name, r.dtypes.get(ref) or _kind_of(values), values, st == _PRESENT))
        if statuses:
            cols.append(Column(f"{name}__status", "status", st))
        if event_timestamps:
            ts = (
                r.event_timestamps[:, j]
                if r.event_timestamps is not None
                else np.zeros(len(st), np.int64)
            )
            has_row = (st != _NOT_FOUND) & (st != _INVALID)
            cols.append(Column(f"{name}__event_timestamp", "timestamp", ts, has_row))
    return cols


def _masked_list(values: Sequence[Any], valid: npt.NDArray[np.bool_] | None) -> list[Any]:
    if valid is None:
        return list(values)
    return [v if ok else None for v, ok in zip(values, valid.tolist(), strict=True)]


# -- pandas -----------------------------------------------------------------------------------


def _pandas_column(pd: Any, c: Column) -> Any:
    valid = c.valid
    if c.kind == "status":
        return pd.Categorical.from_codes(c.values.astype(np.int8), categories=list(STATUS_NAMES))
    if c.kind in ("string", "bytes"):
        return pd.array(
            _masked_list(c.values, valid), dtype="string" if c.kind == "string" else object
        )
    if c.kind == "float32_array":
        rows = list(c.values)
        return pd.array(_masked_list(rows, valid), dtype=object)
    if c.kind == "timestamp":
        ts = np.asarray(c.values, dtype=np.int64).astype("datetime64[us]")
        if valid is not None:
            ts = np.where(valid, ts, np.datetime64("NaT", "us"))
        return pd.DatetimeIndex(ts).tz_localize("UTC").array
    values = np.asarray(c.values)
    if valid is None:
        return values
    if c.kind in ("float32", "float64"):
        return np.where(valid, values, np.nan).astype(values.dtype)
    if c.kind == "bool":
        return pd.arrays.BooleanArray(values.astype(np.bool_), ~valid)
    return pd.arrays.IntegerArray(values, ~valid)


def to_pandas(cols: Sequence[Column]) -> pd.DataFrame:
    pandas = _backend("pandas")
    df: pd.DataFrame = pandas.DataFrame({c.name: _pandas_column(pandas, c) for c in cols})
    return df


# -- polars -----------------------------------------------------------------------------------

_POLARS_TYPES = {
    "bool": "Boolean",
    "int32": "Int32",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
    "string": "String",
    "bytes": "Binary",
}


def _polars_column(pl: Any, c: Column) -> Any:
    if c.kind == "status":
        codes = pl.Series(c.name, c.values.astype(np.uint32))
        names = pl.Series(STATUS_NAMES, dtype=pl.Enum(STATUS_NAMES))
        return names.gather(codes).alias(c.name)
    if c.kind in ("string", "bytes"):
        return pl.Series(
            c.name, _masked_list(c.values, c.valid), dtype=getattr(pl, _POLARS_TYPES[c.kind])
        )
    if c.kind == "timestamp":
        s = pl.Series(c.name, np.asarray(c.values, dtype=np.int64)).cast(pl.Datetime("us", "UTC"))
    elif c.kind == "float32_array":
        s = pl.Series(c.name, np.asarray(c.values, dtype=np.float32))
    else:
        s = pl.Series(c.name, np.asarray(c.values), dtype=getattr(pl, _POLARS_TYPES[c.kind]))
    if c.valid is None or c.valid.all():
        return s
    return pl.select(pl.when(pl.Series(c.valid)).then(s).otherwise(None).alias(c.name)).to_series()


def to_polars(cols: Sequence[Column]) -> pl.DataFrame:
    polars = _backend("polars")
    df: pl.DataFrame = polars.DataFrame([_polars_column(polars, c) for c in cols])
    return df


# -- pyarrow ----------------------------------------------------------------------------------


def _arrow_column(pa: Any, c: Column) -> Any:
    mask = None if c.valid is None else ~c.valid
    if c.kind == "status":
        return pa.DictionaryArray.from_arrays(
            pa.array(c.values.astype(np.int8)), pa.array(STATUS_NAMES)
        )
    if c.kind in ("string", "bytes"):
        typ = pa.string() if c.kind == "string" else pa.binary()
        return pa.array(_masked_list(c.values, c.valid), type=typ)
    if c.kind == "timestamp":
        return pa.array(
            np.asarray(c.values, dtype=np.int64), type=pa.timestamp("us", tz="UTC"), mask=mask
        )
    if c.kind == "float32_array":
        values = np.asarray(c.values, dtype=np.float32)
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(
            flat, values.shape[1], mask=None if mask is None else pa.array(mask)
        )
    return pa.array(np.asarray(c.values), mask=mask)


def to_arrow(cols: Sequence[Column]) -> pa.Table:
    pyarrow = _backend("pyarrow")
    table: pa.Table = pyarrow.table({c.name: _arrow_column(pyarrow, c) for c in cols})
    return table
