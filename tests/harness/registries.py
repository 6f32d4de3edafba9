"""Registries several test modules serve (one a module uses alone stays in that module)."""

from __future__ import annotations

from serving import Store

#: two views keyed by different entities, a TTL, an embedding, a service across both views
#: (tests/integration/test_server.py, test_auth.py, test_metrics.py)
TEST_REGISTRY = """
project: servetest
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: string}]}
feature_views:
  - name: user_profile
    entities: [user]
    features: [{name: "f{000..199}", dtype: float32}]
  - name: item_stats
    entities: [item]
    ttl: 3600
    features:
      - {name: ctr, dtype: float32}
      - {name: title, dtype: string}
      - {name: embedding, dtype: float32_array, dim: 3}
feature_services:
  - name: ranking
    features: ["user_profile:f000", "user_profile:f001", "item_stats:ctr", "item_stats:title"]
"""


def scale_out_registry(bootstrap: str) -> str:
    """One view ``users`` (int64 ``seq``) fed by the topic ``users`` on ``bootstrap``, no dead
    letters: the scale-out tests' registry (test_scale_out.py, test_scale_out_serve.py)."""
    return f"""
project: scaleout
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: users
    entities: [user]
    features: [{{name: seq, dtype: int64}}]
    stream_source: {{type: kafka, topic: users, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
"""


def present(store: Store, users: list[int]) -> dict[int, int]:
    """User -> ``users:seq`` of the users a store holds (of a registry with that view)."""
    got = store.get({"user_id": users}, ["users:seq"]).column("users:seq")
    return {u: v for u, v in zip(users, got, strict=True) if v is not None}
