"""The ``logging:`` block of a feature service (issue 19): parsed with its defaults and paths
relative to the registry file; every bad entry fails at load naming its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import Registry
from serving.errors import RegistryError

BASE = """\
project: t
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: u0, dtype: float32}]
feature_services:
  - name: ranking
    features: ["users:*"]
    logging:
"""


def load(tmp_path: Path, block: str) -> Registry:
    path = tmp_path / "features.yaml"
    path.write_text(BASE + block)
    return Registry.from_yaml(path)


def test_a_logging_block_with_defaults_and_both_destinations(tmp_path: Path) -> None:
    reg = load(
        tmp_path,
        "      sample_rate: 0.25\n"
        "      destination:\n"
        "        - {type: delta, path: logs/ranking}\n"
        "        - {type: kafka, topic: served, bootstrap_servers: '127.0.0.1:9092'}\n",
    )
    cfg = reg.service("ranking").logging
    assert cfg is not None
    assert cfg.sample_rate == 0.25
    assert (cfg.flush_interval_seconds, cfg.flush_rows, cfg.buffer_rows) == (5.0, 65536, 262144)
    delta, kafka = cfg.destinations
    assert (delta.type, delta.path) == ("delta", str(tmp_path / "logs" / "ranking"))
    assert (kafka.type, kafka.topic, kafka.bootstrap_servers) == (
        "kafka",
        "served",
        "127.0.0.1:9092",
    )


def test_one_destination_as_a_mapping_and_tuned_flushes(tmp_path: Path) -> None:
    reg = load(
        tmp_path,
        "      sample_rate: 1\n      destination: {type: parquet, path: /data/logs}\n"
        "      flush_interval_seconds: 0.5\n      flush_rows: 1000\n      buffer_rows: 5000\n",
    )
    cfg = reg.service("ranking").logging
    assert cfg is not None
    assert cfg.destinations[0].path == "/data/logs"
    assert (cfg.flush_interval_seconds, cfg.flush_rows, cfg.buffer_rows) == (0.5, 1000, 5000)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "      sample_rate: 1.5\n      destination: {type: delta, path: x}\n",
            ["features.yaml:12", "sample_rate must be a number from 0.0 to 1.0, got 1.5"],
        ),
        (
            "      sample_rate: yes\n      destination: {type: delta, path: x}\n",
            ["features.yaml:12", "sample_rate must be a number", "True"],
        ),
        (
            "      sample_rate: 0.1\n      destination: {type: s3, path: x}\n",
            ["features.yaml:13", "unknown log destination type 's3'", "delta, parquet, kafka"],
        ),
        (
            "      sample_rate: 0.1\n      destination:\n        - {type: delta, path: x}\n"
            "        - {type: kafka, topic: t}\n",
            ["features.yaml:15", "missing required key 'bootstrap_servers'"],
        ),
        (
            "      sample_rate: 0.1\n      destination: {type: delta, topic: x}\n",
            ["features.yaml:13", "'topic' is not an option of a delta log"],
        ),
        (
            "      sample_rate: 0.1\n      destination:\n        - {type: delta, path: a}\n"
            "        - {type: parquet, path: b}\n",
            ["features.yaml:13", "at most one table destination"],
        ),
        (
            "      sample_rate: 0.1\n      destination: {type: delta, path: x}\n"
            "      flush_rows: 0\n",
            ["features.yaml:14", "flush_rows must be a positive integer, got 0"],
        ),
        (
            "      sample_rate: 0.1\n      destinations: {type: delta, path: x}\n",
            ["features.yaml:13", "unknown key 'destinations'"],
        ),
        (
            "      destination: {type: delta, path: x}\n",
            ["features.yaml:11", "missing required key 'sample_rate'"],
        ),
    ],
)
def test_bad_logging_blocks_name_file_and_line(
    tmp_path: Path, block: str, expected: list[str]
) -> None:
    with pytest.raises(RegistryError) as e:
        load(tmp_path, block)
    for part in expected:
        assert part in str(e.value), str(e.value)
