"""The sample data generator: WORKLOADS.md values, registry schemas, the id pool."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import sample
from serving.registry import Registry
from serving.sample import SampleInfo, generate, user_account_values, user_profile_value

REPO = Path(__file__).resolve().parent.parent
N = 500
STATS_TIME = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return generate(
        tmp_path_factory.mktemp("sample"), n_entities=N, seed=7, item_stats_time=STATS_TIME
    )


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_yaml(REPO / "features.yaml")


def test_user_profile_value_formula() -> None:
    # The figure WORKLOADS.md quotes: f001 of user 1 is float32(4.8) widened to a double.
    assert user_profile_value(1, 1) == 4.800000190734863
    assert user_profile_value(0, 0) == 0.0
    assert user_profile_value(999_999, 199) == float(
        np.float32(((999_999 * 31 + 199 * 17) % 1000) / 10)
    )


def test_files_and_counts(info: SampleInfo) -> None:
    assert sorted(p.name for p in Path(info.out_dir).iterdir()) == [
        "ids.txt",
        "item_stats.parquet",
        "user_account.parquet",
        "user_item.parquet",
        "user_profile.parquet",
    ]
    assert dict(info.rows) == {
        "user_profile": N,
        "user_account": N,
        "item_stats": 1000,
        "user_item": 5000,
    }
    for view, path in info.paths.items():
        assert pq.ParquetFile(path).metadata.num_rows == info.rows[view]
    assert info.user_profile_path == str(Path(info.out_dir) / "user_profile.parquet")


@pytest.mark.parametrize("view", ["user_profile", "user_account", "item_stats", "user_item"])
def test_schema_matches_registry(info: SampleInfo, registry: Registry, view: str) -> None:
    schema = pq.read_schema(info.paths[view]).remove_metadata()
    expected = registry.arrow_schema(view)
    assert schema.equals(expected), f"{view}:\n{schema}\n!=\n{expected}"


def test_registry_batch_sources_name_the_sample_files(registry: Registry) -> None:
    for view in registry.feature_views.values():
        if view.derived_by:  # a write-time on-demand view: filled from item_stats' rows
            continue
        assert view.batch_source is not None
        assert view.batch_source.path == str(REPO / ".data" / "sample" / f"{view.name}.parquet")


def test_user_profile_values(info: SampleInfo) -> None:
    table = pq.read_table(info.user_profile_path)
    assert table["user_id"].to_pylist() == list(range(N))
    timestamps = table["event_timestamp"].cast(pa.int64()).to_numpy()
    assert (timestamps == 1_704_067_200_000_000).all()
    assert table["f001"][1].as_py() == 4.800000190734863
    # Every value of every feature, against the formula evaluated independently.
    u = np.arange(N, dtype=np.int64)
    for k in range(200):
        column = table[f"f{k:03d}"].to_numpy()
        assert column.dtype == np.float32
        expected = (((u * 31 + k * 17) % 1000) / 10.0).astype(np.float32)
        np.testing.assert_array_equal(column, expected, err_msg=f"f{k:03d}")
    assert table.num_columns == 202
    assert all(table[c].null_count == 0 for c in table.column_names)


def test_user_profile_chunks_into_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sample, "CHUNK_ROWS", 64)
    info = generate(tmp_path, n_entities=200, seed=0)
    meta = pq.ParquetFile(info.user_profile_path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [64, 64, 64, 8]
    table = pq.read_table(info.user_profile_path)
    assert table["user_id"].to_pylist() == list(range(200))
    assert table["f123"][199].as_py() == user_profile_value(199, 123)
    ids = [int(line) for line in Path(info.ids_path).read_text().splitlines()]
    assert sorted(ids) == list(range(200))


def test_ids_is_a_seeded_permutation(info: SampleInfo, tmp_path: Path) -> None:
    text = Path(info.ids_path).read_text()
    assert text.endswith("\n")
    ids = [int(line) for line in text.splitlines()]
    assert sorted(ids) == list(range(N))
    assert ids != list(range(N))
    again = generate(tmp_path / "again", n_entities=N, seed=7, item_stats_time=STATS_TIME)
    assert Path(again.ids_path).read_text() == text
    other = generate(tmp_path / "other", n_entities=N, seed=8, item_stats_time=STATS_TIME)
    assert Path(other.ids_path).read_text() != text


def test_user_account(info: SampleInfo) -> None:
    table = pq.read_table(info.user_account_path)
    assert table["user_id"].to_pylist() == list(range(N))
    event = table["event_timestamp"].cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(event, 1_704_067_200_000_000 + np.arange(N) * 1_000_000)
    for column in (
        "country",
        "age",
        "is_premium",
        "balance",
        "signup_ts",
        "avatar_sha",
        "embedding",
    ):
        share = table[column].null_count / N
        assert 0.01 < share < 0.10, (column, share)
    assert table["user_id"].null_count == 0
    assert table["lifetime_orders"].null_count == 0
    rows = table.to_pylist()
    for user in (0, 1, 2, 123, N - 1):
        assert rows[user] == user_account_values(user)
    for row in rows:
        if row["avatar_sha"] is not None:
            assert len(row["avatar_sha"]) == 32
        if row["embedding"] is not None:
            assert len(row["embedding"]) == 8
            assert all(-1.0 <= x < 1.0 for x in row["embedding"])
        if row["age"] is not None:
            assert 18 <= row["age"] <= 80


def test_user_account_is_a_function_of_user_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunking and seed must not change a row; the store's tests rely on recomputing it.
    monkeypatch.setattr(sample, "CHUNK_ROWS", 50)
    small = generate(tmp_path, n_entities=120, seed=3)
    rows = pq.read_table(small.user_account_path).to_pylist()
    assert rows == [user_account_values(u) for u in range(120)]


def test_item_stats(info: SampleInfo) -> None:
    table = pq.read_table(info.item_stats_path)
    assert table["item_id"].to_pylist() == [f"item-{i:04d}" for i in range(1000)]
    stamps = set(table["event_timestamp"].to_pylist())
    assert stamps == {STATS_TIME}
    ctr = table["ctr"].to_numpy()
    assert ((ctr >= 0) & (ctr < 0.2)).all()
    assert set(table["category"].to_pylist()) <= {
        "books",
        "music",
        "games",
        "garden",
        "toys",
        "tools",
        "food",
    }


def test_item_stats_time_defaults_to_now(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    info = generate(tmp_path, n_entities=3)
    after = datetime.now(UTC)
    assert before <= info.item_stats_time <= after
    assert pq.read_table(info.item_stats_path)["event_timestamp"][0].as_py() == info.item_stats_time


def test_user_item_composite_keys(info: SampleInfo) -> None:
    table = pq.read_table(info.user_item_path)
    users = table["user_id"].to_pylist()
    items = table["item_id"].to_pylist()
    assert len(set(zip(users, items, strict=True))) == 5000
    assert all(0 <= u < N for u in users)
    assert all(i.startswith("item-") and 0 <= int(i[5:]) < 1000 for i in items)
    affinity = table["affinity"].to_numpy()
    assert ((affinity >= 0) & (affinity < 1)).all()


def test_small_n_caps_user_item_pairs(tmp_path: Path) -> None:
    info = generate(tmp_path, n_entities=2)
    assert info.rows["user_item"] == 2000
    assert pq.read_table(info.ids_path.replace("ids.txt", "user_item.parquet")).num_rows == 2000


def test_no_temporary_files_left(info: SampleInfo) -> None:
    assert not [p for p in Path(info.out_dir).iterdir() if ".tmp" in p.name]


def test_rejects_empty_population(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(tmp_path, n_entities=0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert sample.main(["--out", str(out), "--entities", "50", "--seed", "1"]) == 0
    assert "user_profile 50 rows" in capsys.readouterr().out
    assert pq.read_table(out / "user_profile.parquet").num_rows == 50
    assert len((out / "ids.txt").read_text().splitlines()) == 50
    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--out", str(out), "--entities", "0"])
    assert exit_info.value.code == 2


def test_base_time_now_stamps_the_demo_fresh(tmp_path: Path) -> None:
    """`make sample` passes --base-time now: nothing a fresh demo serves is older than a day
    (FeatureViewDataStale's default threshold is 48 h) and nothing lies in the future."""
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "serving.sample", "--out", str(tmp_path), "--entities", "30",
         "--base-time", "now"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for view in ("user_profile", "user_account", "user_item"):
        ts = pq.read_table(tmp_path / f"{view}.parquet").column("event_timestamp")
        newest = max(t.timestamp() for t in ts.to_pylist())
        oldest = min(t.timestamp() for t in ts.to_pylist())
        assert oldest >= before - 86400 - 1, view
        assert newest <= time.time(), view
    bad = subprocess.run(
        [sys.executable, "-m", "serving.sample", "--out", str(tmp_path), "--base-time", "soon"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "error: --base-time:" in bad.stderr
