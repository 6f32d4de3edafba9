"""Where the frontends write the audit log (``serving.security.audit``): an HTTP middleware
(installed only when an audit log is configured, so that without one no request pays for it)
and the gRPC counterparts, called from the method wrapper and the auth interceptor.

Which requests are audited is decided by path / method here, in one place: the serving
endpoints are reads (sampled), the write endpoints writes, ``/admin/...`` and the
materializations admin actions; any request refused 401 / 403 is a ``denied`` line.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from serving.errors import FeatureServingError, PermissionDeniedError, UnauthenticatedError
from serving.frontend.auth import Principal
from serving.frontend.endpoints import HTTP_ENDPOINTS, WRITE_METRIC_LABELS
from serving.security import audit

if TYPE_CHECKING:
    from serving.frontend.base import Frontend

_ADMIN_WRITES = frozenset({"/materialize", "/materialize-incremental"})
_WRITE_PATHS = frozenset(WRITE_METRIC_LABELS) - _ADMIN_WRITES
#: gRPC method (last part) -> event
GRPC_EVENTS = {
    "GetOnlineFeatures": "read",
    "GrpcFeatureServer.GetOnlineFeatures": "read",
    "GetFeatureVector": "read",
    "GetCells": "read",
    "GrpcFeatureServer.Push": "write",
    "GrpcFeatureServer.WriteToOnlineStore": "write",
}


def http_event(path: str) -> str | None:
    if path in HTTP_ENDPOINTS:
        return "read"
    if path in _WRITE_PATHS:
        return "write"
    if path in _ADMIN_WRITES or "/admin/" in path:
        return "admin"
    return None


def _json_read(body: bytes) -> tuple[list[str], int | None]:
    """Views and entity count of a sampled JSON read (Feast's or the v1 body)."""
    try:
        d = json.loads(body)
    except ValueError:
        return [], None
    if not isinstance(d, dict):
        return [], None
    views: list[str] = []
    if isinstance(d.get("feature_service"), str):
        views.append(d["feature_service"])
    features = d.get("features")
    if isinstance(features, dict):  # v1: {"refs": [...]}
        features = features.get("refs")
    if isinstance(features, list):
        views += sorted({str(f).partition(":")[0] for f in features})
    entities = d.get("entities")
    count = None
    if isinstance(entities, dict) and entities:
        first = next(iter(entities.values()))
        count = len(first) if isinstance(first, list) else None
    return views, count


def _grpc_read(method: str, body: bytes) -> tuple[list[str], int | None]:
    """Views and entity count of a sampled gRPC read."""
    from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
    from serving._proto.feature_serving.v1 import feature_service_pb2 as v1_pb2

    try:
        if "GetOnlineFeatures" in method:
            f = feast_pb2.GetOnlineFeaturesRequest.FromString(body)
            views = (
                [f.feature_service]
                if f.HasField("feature_service")
                else sorted({r.partition(":")[0] for r in f.features.val})
            )
            counts = [len(v.val) for v in f.entities.values()]
        elif method == "GetFeatureVector":
            v = v1_pb2.GetFeatureVectorRequest.FromString(body)
            views = sorted({r.partition(":")[0] for r in v.features.refs})
            counts = []
        else:
            return [], None
    except Exception:  # a body the core refused: the line still says who and when
        return [], None
    return views, counts[0] if counts else None


def _identity(p: Principal | None, err: FeatureServingError | None) -> tuple[str, str, str]:
    """(identity, kind, role) of the caller: the principal, else what the refusal named."""
    if p is not None:
        return p.identity, p.kind, p.role
    identity = getattr(err, "identity", "")
    return identity, getattr(err, "kind", "api_key" if identity else "none"), ""


def http_middleware(frontend: Frontend, log: audit.AuditLog) -> Middleware:
    @web.middleware
    async def audit_layer(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        event = http_event(request.path)
        if event == "read" and not log.sampled():
            # the common case, kept short: only a refusal gets a line
            resp = await handler(request)
            if resp.status in (401, 403):
                _denied_line(frontend, log, request, str(resp.status))
            return resp
        noted = audit.Noted()
        token = audit.current.set(noted)
        status = "500"
        try:
            resp = await handler(request)
            status = str(resp.status)
            return resp
        finally:
            audit.current.reset(token)
            err = request.get("error")
            denied = isinstance(err, UnauthenticatedError | PermissionDeniedError)
            if denied or event in ("read", "write", "admin"):
                if event == "read" and not denied and not noted.views:
                    with_body = request.content_type == "application/json"
                    noted.views, noted.entities = (
                        _json_read(await request.read()) if with_body else ([], None)
                    )
                p = frontend._principal(request)
                identity, kind, role = _identity(p, err)
                log.record(
                    "denied" if denied else str(event),
                    identity=identity,
                    kind=kind,
                    project=frontend.project_name,
                    role=role,
                    api=request.method,
                    method=request.path,
                    status=status,
                    views=noted.views,
                    entities=noted.entities,
                    request_id=request.headers.get("X-Request-Id"),
                    reason=err.message if denied and err is not None else None,
                )

    return audit_layer


def _denied_line(
    frontend: Frontend, log: audit.AuditLog, request: web.Request, status: str
) -> None:
    err = request.get("error")
    identity, kind, role = _identity(frontend._principal(request), err)
    log.record(
        "denied",
        identity=identity,
        kind=kind,
        project=frontend.project_name,
        role=role,
        api=request.method,
        method=request.path,
        status=status,
        request_id=request.headers.get("X-Request-Id"),
        reason=err.message if isinstance(err, FeatureServingError) else None,
    )


def grpc_record(
    frontend: Frontend,
    log: audit.AuditLog,
    method: str,
    *,
    status: str,
    p: Principal | None,
    err: FeatureServingError | None,
    noted: audit.Noted,
    body: bytes | None,
    request_id: str | None,
) -> None:
    """The audit line of one gRPC call (the method wrapper and the auth interceptor)."""
    denied = isinstance(err, UnauthenticatedError | PermissionDeniedError)
    event = "denied" if denied else GRPC_EVENTS.get(method)
    if event is None:
        return
    if event == "read" and body is not None and not noted.views:
        noted.views, noted.entities = _grpc_read(method, body)
    identity, kind, role = _identity(p, err)
    log.record(
        event,
        identity=identity,
        kind=kind,
        project=frontend.project_name,
        role=role,
        api="grpc",
        method=method,
        status=status,
        views=noted.views,
        entities=noted.entities,
        request_id=request_id,
        reason=err.message if denied and err is not None else None,
    )
