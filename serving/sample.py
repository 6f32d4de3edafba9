"""Sample offline data for the demo and the benchmarks.

``python -m serving.sample --out DIR --entities N [--seed S]`` writes one Parquet file per view of
the repository's ``features.yaml`` plus ``ids.txt``, the shuffled id pool the benchmarks draw
from. ``user_profile`` follows WORKLOADS.md exactly, so any served value can be checked against
:func:`user_profile_value`. Every value except the id shuffle, the ``user_item`` pairs and the
``item_stats`` timestamp is a pure function of the row's key, so a row can be checked in
isolation (see :func:`user_account_values`).

Tables are produced in chunks of :data:`CHUNK_ROWS` rows, one Parquet row group each, so memory
stays bounded at N = 1,000,000. Each file is written under a temporary name and renamed, so an
interrupted run never leaves a truncated file where a loader would read it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "BASE_TIME",
    "CHUNK_ROWS",
    "N_FEATURES",
    "SampleInfo",
    "generate",
    "main",
    "user_account_schema",
    "user_account_values",
    "user_profile_schema",
    "user_profile_value",
]

#: event time of every user_profile row, 2024-01-01T00:00:00Z
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
CHUNK_ROWS = 65_536
N_FEATURES = 200
N_ITEMS = 1000
N_USER_ITEM = 5000
EMBEDDING_DIM = 8
COUNTRIES = ("US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "IT", "NL", "SE")

_TS = pa.timestamp("us", tz="UTC")
_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]

# value of fNNN for user u is float32(((u*31 + NNN*17) % 1000) / 10): it depends only on
# (u*31 % 1000 + NNN*17 % 1000), which is < 2000, so one lookup table replaces the arithmetic.
_PROFILE_LUT = (np.arange(2000, dtype=np.float64) % 1000 / 10.0).astype(np.float32)
_PROFILE_OFFSETS = (np.arange(N_FEATURES, dtype=np.int64) * 17) % 1000


def user_profile_value(user_id: int, feature_index: int) -> float:
    """The float32 value of ``f{feature_index:03d}`` for ``user_id``, widened to a Python float."""
    return float(np.float32(((user_id * 31 + feature_index * 17) % 1000) / 10.0))


def user_profile_schema() -> pa.Schema:
    fields = [pa.field("user_id", pa.int64()), pa.field("event_timestamp", _TS)]
    fields.extend(pa.field(f"f{i:03d}", pa.float32()) for i in range(N_FEATURES))
    return pa.schema(fields)


def user_account_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.int64()),
            pa.field("event_timestamp", _TS),
            pa.field("country", pa.string()),
            pa.field("age", pa.int32()),
            pa.field("lifetime_orders", pa.int64()),
            pa.field("is_premium", pa.bool_()),
            pa.field("balance", pa.float64()),
            pa.field("signup_ts", _TS),
            pa.field("avatar_sha", pa.binary()),
            pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ]
    )


def item_stats_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string()),
            pa.field("event_timestamp", _TS),
            pa.field("ctr", pa.float32()),
            pa.field("impressions", pa.int64()),
            pa.field("category", pa.string()),
        ]
    )


def user_item_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.int64()),
            pa.field("item_id", pa.string()),
            pa.field("event_timestamp", _TS),
            pa.field("affinity", pa.float32()),
            pa.field("last_click_ts", _TS),
        ]
    )


@dataclass(frozen=True)
class SampleInfo:
    out_dir: str
    n_entities: int
    seed: int
    ids_path: str
    #: view name -> absolute path of its Parquet file
    paths: Mapping[str, str]
    #: view name -> number of rows written
    rows: Mapping[str, int]
    #: event time stamped on every item_stats row
    item_stats_time: datetime = field(default=BASE_TIME)
    #: event time of every user_profile row (user_account's spread over the day after it)
    base_time: datetime = field(default=BASE_TIME)

    @property
    def user_profile_path(self) -> str:
        return self.paths["user_profile"]

    @property
    def user_account_path(self) -> str:
        return self.paths["user_account"]

    @property
    def item_stats_path(self) -> str:
        return self.paths["item_stats"]

    @property
    def user_item_path(self) -> str:
        return self.paths["user_item"]


# --------------------------------------------------------------------------------------------
# deterministic hashing


def _mix(x: _U64) -> _U64:
    """splitmix64's finalizer: a bijective, well-spread hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(ids: _I64, salt: int) -> _U64:
    # The salt goes through the multiplier so different columns get unrelated streams.
    salted = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    return _mix(salted)


def _nulls(ids: _I64, salt: int, percent: int = 5) -> npt.NDArray[np.bool_]:
    return (_hash(ids, salt) % np.uint64(100)) < np.uint64(percent)


def _unit(h: _U64) -> npt.NDArray[np.float64]:
    """Uniform in [0, 1) from the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _timestamps(micros: _I64, mask: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    return pa.array(micros, type=pa.int64(), mask=mask).cast(_TS)


# --------------------------------------------------------------------------------------------
# tables


def _user_profile_batch(ids: _I64, base_us: int) -> pa.RecordBatch:
    base = (ids * 31) % 1000
    columns: list[pa.Array] = [
        pa.array(ids, type=pa.int64()),
        _timestamps(np.full(len(ids), base_us, dtype=np.int64)),
    ]
    columns.extend(pa.array(_PROFILE_LUT[base + off]) for off in _PROFILE_OFFSETS)
    return pa.RecordBatch.from_arrays(columns, schema=user_profile_schema())


def _user_account_batch(ids: _I64, base_us: int) -> pa.RecordBatch:
    n = len(ids)
    country = np.array(COUNTRIES)[(_hash(ids, 1) % np.uint64(len(COUNTRIES))).astype(np.intp)]
    age = (18 + _hash(ids, 2) % np.uint64(63)).astype(np.int32)
    orders = (_hash(ids, 3) % np.uint64(500)).astype(np.int64)
    premium = (_hash(ids, 4) % np.uint64(5)) == np.uint64(0)
    balance = np.round(_unit(_hash(ids, 5)) * 10_000.0, 2)
    # Sign-ups spread over 2015-01-01 .. 2023-12-31 at whole seconds.
    signup_s = 1_420_070_400 + (_hash(ids, 6) % np.uint64(9 * 365 * 86400)).astype(np.int64)
    digest = np.stack([_hash(ids, 70 + k) for k in range(4)], axis=1)  # 4 x 8 = 32 bytes
    emb = np.stack([_unit(_hash(ids, 80 + k)) for k in range(EMBEDDING_DIM)], axis=1)
    emb = (emb * 2.0 - 1.0).astype(np.float32)
    event_us = base_us + (ids % 86400) * 1_000_000

    avatar_nulls = _nulls(ids, 17)
    avatar = pa.Array.from_buffers(
        pa.binary(),
        n,
        [
            pa.py_buffer(np.packbits(~avatar_nulls, bitorder="little")),
            pa.py_buffer(np.arange(0, 32 * (n + 1), 32, dtype=np.int32)),
            pa.py_buffer(np.ascontiguousarray(digest).view(np.uint8)),
        ],
    )
    emb_nulls = _nulls(ids, 18)
    embedding = pa.Array.from_buffers(
        pa.list_(pa.float32(), EMBEDDING_DIM),
        n,
        [pa.py_buffer(np.packbits(~emb_nulls, bitorder="little"))],
        children=[pa.array(emb.reshape(-1))],
    )
    columns = [
        pa.array(ids, type=pa.int64()),
        _timestamps(event_us),
        pa.array(country, type=pa.string(), mask=_nulls(ids, 11)),
        pa.array(age, mask=_nulls(ids, 12)),
        pa.array(orders),
        pa.array(premium, mask=_nulls(ids, 14)),
        pa.array(balance, mask=_nulls(ids, 15)),
        _timestamps(signup_s * 1_000_000, _nulls(ids, 16)),
        avatar,
        embedding,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=user_account_schema())


def user_account_values(user_id: int, base_time: datetime = BASE_TIME) -> dict[str, object]:
    """The user_account row of ``user_id`` as Python values (None for nulls), for tests."""
    base_us = int(base_time.timestamp()) * 1_000_000
    row = _user_account_batch(np.array([user_id], dtype=np.int64), base_us).to_pylist()[0]
    return dict(row)


def _item_stats_table(at: datetime) -> pa.Table:
    ids = np.arange(N_ITEMS, dtype=np.int64)
    at_us = int(at.timestamp()) * 1_000_000
    categories = np.array(["books", "music", "games", "garden", "toys", "tools", "food"])
    columns = [
        pa.array([f"item-{i:04d}" for i in range(N_ITEMS)], type=pa.string()),
        _timestamps(np.full(N_ITEMS, at_us, dtype=np.int64)),
        pa.array((_unit(_hash(ids, 21)) * 0.2).astype(np.float32)),
        pa.array((_hash(ids, 22) % np.uint64(1_000_000)).astype(np.int64)),
        pa.array(categories[(_hash(ids, 23) % np.uint64(len(categories))).astype(np.intp)]),
    ]
    return pa.Table.from_arrays(columns, schema=item_stats_schema())


def _user_item_table(n_entities: int, rng: np.random.Generator, base_us: int) -> pa.Table:
    n = min(N_USER_ITEM, n_entities * N_ITEMS)
    # Distinct pairs, so the file holds one row per composite key as a real export would.
    pairs = np.sort(rng.choice(n_entities * N_ITEMS, size=n, replace=False)).astype(np.int64)
    users, items = pairs // N_ITEMS, pairs % N_ITEMS
    clicks = base_us - (_hash(pairs, 32) % np.uint64(30 * 86400)).astype(np.int64) * 1_000_000
    columns = [
        pa.array(users, type=pa.int64()),
        pa.array([f"item-{i:04d}" for i in items.tolist()], type=pa.string()),
        _timestamps(np.full(n, base_us, dtype=np.int64)),
        pa.array(_unit(_hash(pairs, 31)).astype(np.float32)),
        _timestamps(clicks, _nulls(pairs, 33)),
    ]
    return pa.Table.from_arrays(columns, schema=user_item_schema())


# --------------------------------------------------------------------------------------------
# writing


def _chunks(n: int) -> Iterator[_I64]:
    for start in range(0, n, CHUNK_ROWS):
        yield np.arange(start, min(start + CHUNK_ROWS, n), dtype=np.int64)


def _write(path: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch] | pa.Table) -> int:
    tmp = f"{path}.tmp-{os.getpid()}"
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            if isinstance(batches, pa.Table):
                writer.write_table(batches, row_group_size=CHUNK_ROWS)
                rows = batches.num_rows
            else:
                for batch in batches:
                    writer.write_batch(batch, row_group_size=CHUNK_ROWS)
                    rows += batch.num_rows
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return rows


def _write_ids(path: str, n: int, rng: np.random.Generator) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    perm = rng.permutation(n)
    with open(tmp, "w", encoding="ascii") as f:
        for start in range(0, n, CHUNK_ROWS):
            f.write("\n".join(map(str, perm[start : start + CHUNK_ROWS].tolist())))
            f.write("\n")
    os.replace(tmp, path)


def generate(
    out_dir: str | os.PathLike[str],
    n_entities: int = 20000,
    seed: int = 0,
    *,
    item_stats_time: datetime | None = None,
    base_time: datetime = BASE_TIME,
) -> SampleInfo:
    """Write the sample tables and ``ids.txt`` into ``out_dir`` (created if missing).

    ``item_stats_time`` stamps the item_stats rows; it defaults to now (whole seconds) because
    that view has a 7-day TTL, so a fixed date would make the demo serve only expired values.
    ``base_time`` stamps the other views (default :data:`BASE_TIME`, which the tests compute
    with; the demo passes :func:`fresh_base_time`).
    """
    if n_entities < 1:
        raise ValueError(f"n_entities must be at least 1, got {n_entities}")
    out = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out, exist_ok=True)
    if item_stats_time is None:
        item_stats_time = datetime.fromtimestamp(int(time.time()), tz=UTC)
    rng = np.random.default_rng(seed)
    base_us = int(base_time.timestamp()) * 1_000_000

    paths = {
        view: os.path.join(out, f"{view}.parquet")
        for view in ("user_profile", "user_account", "item_stats", "user_item")
    }
    makers: dict[str, Callable[[], int]] = {
        "user_profile": lambda: _write(
            paths["user_profile"],
            user_profile_schema(),
            (_user_profile_batch(ids, base_us) for ids in _chunks(n_entities)),
        ),
        "user_account": lambda: _write(
            paths["user_account"],
            user_account_schema(),
            (_user_account_batch(ids, base_us) for ids in _chunks(n_entities)),
        ),
        "item_stats": lambda: _write(
            paths["item_stats"], item_stats_schema(), _item_stats_table(item_stats_time)
        ),
        "user_item": lambda: _write(
            paths["user_item"], user_item_schema(), _user_item_table(n_entities, rng, base_us)
        ),
    }
    rows = {view: make() for view, make in makers.items()}
    ids_path = os.path.join(out, "ids.txt")
    # A separate stream, so the id pool does not depend on how many draws the tables used.
    _write_ids(ids_path, n_entities, np.random.default_rng([seed, 1]))
    return SampleInfo(
        out_dir=out,
        n_entities=n_entities,
        seed=seed,
        ids_path=ids_path,
        paths=MappingProxyType(paths),
        rows=MappingProxyType(rows),
        item_stats_time=item_stats_time,
        base_time=base_time,
    )


def fresh_base_time(now: float | None = None) -> datetime:
    """A base time for a demo started now: one day ago (whole seconds), so that user_account's
    rows, spread over the day after the base, end now; nothing is older than a day, within
    the default FeatureViewDataStale threshold (48 h, docs/ops/alerts.yml), and none is in
    the future."""
    t = int(time.time() if now is None else now) - 86400
    return datetime.fromtimestamp(t, tz=UTC)


def _parse_base_time(text: str) -> datetime:
    if text == "now":
        return fresh_base_time()
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--base-time: expected 'now' or an ISO 8601 time, got {text!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.sample",
        description="Write the sample offline data (Parquet per view, ids.txt) of features.yaml.",
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--entities", type=int, default=20000, help="number of users N (ids 0 .. N-1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the id shuffle and pairs")
    parser.add_argument(
        "--base-time",
        default=BASE_TIME.isoformat(),
        help="event time of the rows: an ISO 8601 time (default 2024-01-01T00:00:00+00:00, "
        "which the tests compute with) or 'now' (a day ago, so a fresh demo reads nothing "
        "as stale; `make sample` passes it)",
    )
    args = parser.parse_args(argv)
    if args.entities < 1:
        parser.error(f"--entities must be at least 1, got {args.entities}")
    try:
        base_time = _parse_base_time(args.base_time)
    except ValueError as e:
        parser.error(str(e))
    started = time.perf_counter()
    info = generate(args.out, args.entities, args.seed, base_time=base_time)
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{view} {n} rows" for view, n in info.rows.items())
    print(f"wrote {info.out_dir} in {elapsed:.1f} s: {summary}, ids.txt {info.n_entities} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
