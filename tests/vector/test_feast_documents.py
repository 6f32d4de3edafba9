"""The real Feast 0.67 SDK's ``retrieve_online_documents_v2`` (its ``remote`` online store)
against a real server: the SDK's request reaches ``/retrieve-online-documents`` and the answer
it parses holds the nearest entities, their requested features and distances."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from tests.harness import start_server, stop_server
from tests.harness.feast import FEAST_PY, FEAST_VENV, feast_env, require_feast_venv
from tests.harness.vectors import DIM, item_table, registry_text, vectors

pytestmark = pytest.mark.integration

DEFINITIONS = f"""
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Array, Float32, Int64, String

item = Entity(name="item", join_keys=["item_id"])
item_vec = FeatureView(
    name="item_vec",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=Int64),
        Field(name="emb", dtype=Array(Float32), vector_index=True,
              vector_search_metric="cosine", vector_length={DIM}),
        Field(name="category", dtype=String),
        Field(name="price", dtype=Float32),
    ],
    source=FileSource(path="ITEMS", timestamp_field="event_timestamp"),
    online=True,
)
"""

STORE_YAML = """
project: vectors
registry: {registry}
provider: local
online_store:
  type: remote
  path: {url}
offline_store:
  type: file
entity_key_serialization_version: 3
"""

CLIENT = r"""
import json, sys
from feast import FeatureStore
q = json.load(sys.stdin)
store = FeatureStore(repo_path=".")
resp = store.retrieve_online_documents_v2(
    features=["item_vec:price", "item_vec:category", "item_vec:emb"], query=q, top_k=5
)
json.dump(resp.to_dict(), sys.stdout)
"""


def test_feast_sdk_retrieve_online_documents_v2(tmp_path: Path) -> None:
    require_feast_venv()
    cfg = tmp_path / "features.yaml"
    cfg.write_text(registry_text(tmp_path))
    vecs = vectors(200)
    table = item_table(np.arange(200), vecs)
    with Store(tmp_path / "db", Registry.from_yaml(cfg)) as store:
        store.write("item_vec", table)
    pq.write_table(table, tmp_path / "items.parquet")
    server = start_server(cfg, tmp_path / "db", tmp_path / "server.log", "--no-auth")
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(
            STORE_YAML.format(registry=repo / "registry.db", url=server.url)
        )
        (repo / "definitions.py").write_text(
            DEFINITIONS.replace("ITEMS", str(tmp_path / "items.parquet"))
        )
        env = feast_env()
        proc = subprocess.run(
            [str(FEAST_VENV / "bin" / "feast"), "apply"],
            check=False, capture_output=True, text=True, cwd=repo, env=env, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run(
            [str(FEAST_PY), "-c", CLIENT],
            check=False, input=json.dumps(vecs[33].tolist()), capture_output=True, text=True,
            cwd=repo, env=env, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        # Feast regroups the rows by entity (its order, not ours); the content is ours
        v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        nearest = np.argsort(1.0 - v @ v[33], kind="stable")[:5]
        assert sorted(got["item_id"]) == sorted(int(i) for i in nearest)
        assert sorted(got["price"]) == sorted(float(i % 100) for i in nearest)
        assert min(got["distance"]) == pytest.approx(0.0, abs=1e-5)
        assert len(got["distance"]) == 5
    finally:
        stop_server(server)
