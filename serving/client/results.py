"""The answers a client (and :meth:`serving.Store.get_dense`) returns: numpy arrays, with
``to_pandas()`` / ``to_polars()`` / ``to_arrow()`` for data frames (``serving.client.frames``;
pandas, polars and pyarrow are optional and imported only there).

Kept free of the Rust extension: the client wheel (``feature-serving-client``) ships this module
without ``serving._rust_core``, and ``serving.store`` re-exports these classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl
    import pyarrow as pa


class FieldStatus(IntEnum):
    """Status of one answered value; the numbers are Feast's ``FieldStatus``."""

    INVALID = 0
    PRESENT = 1
    NULL_VALUE = 2
    NOT_FOUND = 3
    OUTSIDE_MAX_AGE = 4


@dataclass(frozen=True)
class DenseResult:
    """Numeric features as one ``[entities x features]`` float32 matrix, NaN where a value is
    not PRESENT (see ``statuses``)."""

    #: ``view:feature`` references, in answer order
    feature_names: list[str]
    values: npt.NDArray[np.float32]
    #: ``[entities x features]`` :class:`FieldStatus` values
    statuses: npt.NDArray[np.uint8]
    #: the request's entity columns (join key -> values, request order), which the data
    #: frames put first; empty when the answer was built without them
    entities: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_pandas(
        self, *, full_feature_names: bool = False, statuses: bool = False
    ) -> pd.DataFrame:
        """A pandas DataFrame: join-key columns, then one float32 column per feature (NaN
        where not PRESENT). Feature columns are named ``feature`` or, with
        ``full_feature_names``, ``view__feature`` (Feast's ``get_online_features`` names);
        ``statuses`` adds a ``<column>__status`` column of :class:`FieldStatus` names after
        each feature. Needs pandas (``pip install 'feature-serving-client[pandas]'``)."""
        from serving.client import frames

        return frames.to_pandas(frames.dense_columns(self, full_feature_names, statuses))

    def to_polars(
        self, *, full_feature_names: bool = False, statuses: bool = False
    ) -> pl.DataFrame:
        """:meth:`to_pandas` as a polars DataFrame (NaN values are null). Needs polars
        (``pip install 'feature-serving-client[polars]'``)."""
        from serving.client import frames

        return frames.to_polars(frames.dense_columns(self, full_feature_names, statuses))

    def to_arrow(self, *, full_feature_names: bool = False, statuses: bool = False) -> pa.Table:
        """:meth:`to_pandas` as a pyarrow Table (null where not PRESENT). Needs pyarrow
        (``pip install 'feature-serving-client[arrow]'``)."""
        from serving.client import frames

        return frames.to_arrow(frames.dense_columns(self, full_feature_names, statuses))


@dataclass(frozen=True)
class ColumnsResult:
    """Typed columns, the same types over gRPC and HTTP: one numpy array per feature (bool,
    int32, int64, float32, float64; ``timestamp`` as int64 microseconds since the Unix epoch,
    UTC; ``float32_array`` as a ``[entities x dim]`` float32 matrix) or a list (string: ``str``,
    bytes: ``bytes``). A value that is not PRESENT is the type's zero (``""``, ``b""``, ``False``,
    ``0``) in the arrays: read ``statuses`` (the data frames put nulls there)."""

    feature_names: list[str]
    columns: dict[str, Any]
    #: ``[entities x features]`` FieldStatus values
    statuses: npt.NDArray[np.uint8]
    #: ``[entities x features]`` event timestamps in microseconds (0 where none)
    event_timestamps: npt.NDArray[np.int64] | None
    #: feature reference -> its type (``int32``, ``timestamp``, ``float32_array``, ...)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    #: the request's entity columns (join key -> values, request order)
    entities: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_pandas(
        self,
        *,
        full_feature_names: bool = False,
        statuses: bool = False,
        event_timestamps: bool = False,
    ) -> pd.DataFrame:
        """A pandas DataFrame: join-key columns first, then one column per feature, null where
        not PRESENT (pandas' nullable ``Int32`` / ``Int64`` / ``boolean`` dtypes, ``NaN`` for
        floats, ``None`` for strings, bytes and arrays, ``NaT`` for timestamps, which are
        ``datetime64[us, UTC]``). Names as :meth:`DenseResult.to_pandas`; ``event_timestamps``
        adds a ``<column>__event_timestamp`` column after each feature. Needs pandas
        (``pip install 'feature-serving-client[pandas]'``)."""
        from serving.client import frames

        cols = frames.typed_columns(self, full_feature_names, statuses, event_timestamps)
        return frames.to_pandas(cols)

    def to_polars(
        self,
        *,
        full_feature_names: bool = False,
        statuses: bool = False,
        event_timestamps: bool = False,
    ) -> pl.DataFrame:
        """:meth:`to_pandas` as a polars DataFrame (``float32_array`` as ``Array(Float32,
        dim)``). Needs polars (``pip install 'feature-serving-client[polars]'``)."""
        from serving.client import frames

        cols = frames.typed_columns(self, full_feature_names, statuses, event_timestamps)
        return frames.to_polars(cols)

    def to_arrow(
        self,
        *,
        full_feature_names: bool = False,
        statuses: bool = False,
        event_timestamps: bool = False,
    ) -> pa.Table:
        """:meth:`to_pandas` as a pyarrow Table (``float32_array`` as a fixed-size list).
        Needs pyarrow (``pip install 'feature-serving-client[arrow]'``)."""
        from serving.client import frames

        cols = frames.typed_columns(self, full_feature_names, statuses, event_timestamps)
        return frames.to_arrow(cols)
