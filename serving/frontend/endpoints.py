"""THE endpoint table: every serving endpoint of a frontend, HTTP and gRPC, and what it does.

A serving request's body goes to the Rust core as bytes, with the endpoint's core ``api``
(``serve(store, api, body, config, caller)`` in ``rust_core``), and the core's answer bytes go
back with the endpoint's content type; the metric labels are the endpoint's. A node answers
every endpoint here (through ``serving.frontend.admission``); a router answers those that are
not ``node_only`` (through ``FeatureRouter.route``). The other endpoints (health, metrics,
listings, admin) are not core calls; ``serving.frontend.base`` and the frontends add them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.cluster.rpc import CELLS_PATH

FEAST_SERVICE = "feast.serving.ServingService"
V1_SERVICE = "feature_serving.v1.FeatureService"
#: Feast's Python gRPC feature server (`feast listen`; feast/serving/GrpcServer.proto declares no
#: package): its GetOnlineFeatures takes and returns ServingService's messages
FEAST_GRPC_SERVER = "GrpcFeatureServer"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
#: HTTP paths answered without a key when `open_health` is set
OPEN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: the web console (serving/frontend/console/): its page and static files hold no data and are
#: answered without a key (the page asks for one); ``/ui/api/...`` needs a key like any route
CONSOLE_PATH = "/ui"
CONSOLE_STATIC_PREFIX = "/ui/static/"
CONSOLE_OPEN_PATHS = frozenset({"/", CONSOLE_PATH, CONSOLE_PATH + "/"})
#: gRPC methods answered without a key when `open_health` is set
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Endpoint:
    """One serving endpoint: an HTTP POST path or a gRPC method, and the core call behind it."""

    transport: Literal["http", "grpc"]
    #: the HTTP path, or the gRPC service's name
    path: str
    #: gRPC method name ("" for HTTP)
    grpc_method: str
    #: what the Rust core parses the body as and encodes the answer as
    api: str
    #: metric labels: the ``api`` and ``method`` of ``feature_serving_requests_total``
    label: str
    method: str
    #: HTTP: the answer's content type (gRPC answers are protobuf bytes)
    content_type: str = JSON
    #: only nodes answer it (a router's part of a request: raw cells, rust_core/src/route.rs)
    node_only: bool = False


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("http", "/get-online-features", "", "feast_http", "feast-http", "get-online-features"),
    Endpoint("http", "/v1/feature-vector", "", "v1_http", "http", "feature-vector"),
    Endpoint("http", CELLS_PATH, "", "cells", "http", "cells", OCTET_STREAM, node_only=True),
    Endpoint(
        "grpc", FEAST_SERVICE, "GetOnlineFeatures", "feast_grpc", "feast-grpc", "GetOnlineFeatures"
    ),
    Endpoint(
        "grpc",
        FEAST_GRPC_SERVER,
        "GetOnlineFeatures",
        "feast_grpc",
        "feast-grpc",
        "GrpcFeatureServer.GetOnlineFeatures",
    ),
    Endpoint("grpc", V1_SERVICE, "GetFeatureVector", "v1_grpc", "grpc", "GetFeatureVector"),
    Endpoint("grpc", V1_SERVICE, "GetCells", "cells", "grpc", "GetCells", node_only=True),
    # vector search (docs/vector-search.md): nearest entities and their features in one call.
    # Nodes only for now: the router's exact top-k merge of the shards is not built yet.
    Endpoint(
        "http", "/v1/search-nearest", "", "v1_search_http", "http", "search-nearest", node_only=True
    ),
    Endpoint(
        "grpc",
        V1_SERVICE,
        "SearchNearest",
        "v1_search_grpc",
        "grpc",
        "SearchNearest",
        node_only=True,
    ),
    Endpoint(
        "http",
        "/retrieve-online-documents",
        "",
        "feast_documents",
        "feast-http",
        "retrieve-online-documents",
        node_only=True,
    ),
)

#: HTTP path -> its endpoint
HTTP_ENDPOINTS = {e.path: e for e in ENDPOINTS if e.transport == "http"}

#: the write endpoints (not core calls: serving.frontend.feast_routes, admin), counted in the
#: request metrics like the serving endpoints: path -> (``api``, ``method``) labels
WRITE_METRIC_LABELS = {
    "/push": ("feast-http", "push"),
    "/write-to-online-store": ("feast-http", "write-to-online-store"),
    "/materialize": ("feast-http", "materialize"),
    "/materialize-incremental": ("feast-http", "materialize-incremental"),
    "/v1/push": ("http", "push"),
}

#: HTTP path -> its request-metric labels (the request metrics middleware looks paths up here)
HTTP_METRIC_LABELS = {
    p: (e.label, e.method) for p, e in HTTP_ENDPOINTS.items()
} | WRITE_METRIC_LABELS
