"""The serving processes' frontends: gRPC (grpc.aio) and HTTP (aiohttp) on one asyncio loop.

Python handles the envelope only (routing, content type, deadline, errors). The request body goes
to the Rust core as bytes and the response body comes back as bytes: decoding entity keys,
lookups, TTL and encoding happen in one call with the GIL released.

- ``endpoints``: THE endpoint table (HTTP path or gRPC method -> core API, metric labels,
  content type);
- ``base``: what both frontends share (middlewares, gRPC wrapping, health, lifecycle);
- ``node``: ``FeatureServer``, a node over one store (``feature-serving serve``), with its admin
  routes (``admin``) and its admission (``admission``: loop-lag guard, batcher, one dispatch);
- ``router``: ``FeatureRouter``, one endpoint in front of a sharded cluster
  (``feature-serving route``);
- Feast's writes: ``feast_routes`` (the ``/push``, ``/write-to-online-store`` and gRPC
  ``GrpcFeatureServer`` write handlers of node and router) over ``feast_plan`` (a request
  checked whole), ``feast_columns`` (``df`` to Arrow), ``feast_grpc_write`` (Feast's gRPC
  messages) and ``feast_publish`` (stream-backed views to their topic); ``feast_write`` (how a
  node writes, materialize), ``router_writes`` (how a router writes), ``write_shards`` (a
  shard's check of a direct write);
- ``auth`` (API keys, scopes), ``grpc_auth`` (the interceptor), ``tls``.
"""
