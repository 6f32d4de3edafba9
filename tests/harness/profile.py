"""The reliability tests' data: one view ``profile`` (int64 ``user_id``, float32 ``f0..``)
written in generations (every feature of generation ``g`` equals ``g``), so that any answer
shows which write it came from and whether it is a whole row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from serving import Registry, Store

#: 2024-01-01T00:00:00Z in microseconds; generation g is event time BASE_US + g seconds
BASE_US = 1_704_067_200_000_000


def registry_text(
    n_features: int = 10,
    *,
    bootstrap: str | None = None,
    batch_source: Path | None = None,
    marker: bool = False,
) -> str:
    """One view ``profile`` (int64 ``user_id``, float32 ``f0..``), optionally fed by a Kafka
    topic ``profile`` or a Parquet file; ``marker`` adds a one-feature view whose served-value
    counter shows whether a request's work was done."""
    src = ""
    if bootstrap is not None:
        src += (
            f'    stream_source: {{type: kafka, topic: profile, bootstrap_servers: "{bootstrap}",'
            " format: json}\n"
        )
    if batch_source is not None:
        src += f'    batch_source: {{type: parquet, path: "{batch_source}"}}\n'
    text = f"""
project: reliability
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: profile
    entities: [user]
    features: [{{name: "f{{0..{n_features - 1}}}", dtype: float32}}]
{src}"""
    if marker:
        text += """  - name: marker
    entities: [user]
    features: [{name: m, dtype: float32}]
"""
    return text


def write_config(tmp: Path, **kw: Any) -> Path:
    path = tmp / "features.yaml"
    path.write_text(registry_text(**kw))
    return path


def generation_table(users: np.ndarray, g: int, n_features: int) -> pa.Table:
    """Every feature of every user equals ``g``, event time BASE_US + g s."""
    ts = pa.array(np.full(len(users), BASE_US + g * 1_000_000, np.int64)).cast(
        pa.timestamp("us", tz="UTC")
    )
    cols: dict[str, Any] = {"user_id": pa.array(users.astype(np.int64)), "event_timestamp": ts}
    vals = np.full(len(users), g, np.float32)
    for i in range(n_features):
        cols[f"f{i}"] = pa.array(vals)
    return pa.table(cols)


def preload(
    config: Path, data_dir: Path, n_users: int, g: int, n_features: int, *, flush: bool = True
) -> None:
    """Writes generation ``g`` of users 0..n_users-1, flushed to SST files by default."""
    with Store(data_dir, Registry.from_yaml(config)) as store:
        for start in range(0, n_users, 50_000):
            users = np.arange(start, min(start + 50_000, n_users))
            store.write("profile", generation_table(users, g, n_features))
        if flush:
            store.flush()


def feast_body(users: list[int], n_features: int, view: str = "profile") -> dict[str, Any]:
    prefix = "f" if view == "profile" else "m"
    feats = (
        [f"{view}:{prefix}{i}" for i in range(n_features)] if view == "profile" else ["marker:m"]
    )
    return {"features": feats, "entities": {"user_id": users}}


def columns(answer: dict[str, Any]) -> list[list[Any]]:
    """Feature columns (values) of a Feast JSON answer, the entity column left out."""
    return [c["values"] for c in answer["results"][1:]]
