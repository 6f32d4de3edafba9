"""API keys on gRPC: one interceptor checks ``authorization: Bearer <key>`` for every method and
hands the verified caller to the handler (:data:`principal`)."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.config import ServeSettings
from serving.errors import FeatureServingError, RateLimitedError
from serving.frontend.auth import Authenticator, Principal
from serving.frontend.endpoints import OPEN_GRPC_PREFIXES
from serving.metrics import ServingMetrics

#: the verified caller of the gRPC call being handled (set by the auth interceptor)
principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def _deny(
    error: FeatureServingError, metrics: ServingMetrics, api: str, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def handler(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        metrics.observe(api, method, error.grpc_status, 0.0)
        if isinstance(error, RateLimitedError):
            context.set_trailing_metadata((("retry-after", str(error.retry_after_seconds)),))
        await context.abort(grpc.StatusCode[error.grpc_status], error.message)
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(handler)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks ``authorization: Bearer <key>`` for every gRPC method, in one place."""

    def __init__(
        self,
        auth: Authenticator,
        settings: ServeSettings,
        metrics: ServingMetrics,
        on_denied: Callable[[str, FeatureServingError, str | None], None] | None = None,
    ) -> None:
        self._auth = auth
        self._open = settings.open_health
        self._metrics = metrics
        #: told (method, error, request id) of every refused call: the audit log
        self._on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method or ""
        if self._open and method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(details)
        header = None
        request_id = None
        for k, v in details.invocation_metadata or ():
            if k == "authorization":
                header = v if isinstance(v, str) else v.decode()
            elif k == "x-request-id":
                request_id = v if isinstance(v, str) else v.decode()
        try:
            principal.set(self._auth.authenticate(header))
        except FeatureServingError as e:
            api = "feast-grpc" if method.startswith("/feast.") else "grpc"
            if isinstance(e, RateLimitedError):
                self._metrics.rejected.labels(api, "rate_limit").inc()
                return _deny(e, self._metrics, api, method.rsplit("/", 1)[-1])
            self._metrics.rejected.labels(api, "auth").inc()
            self._metrics.auth_failures.inc()
            service, _, short = method.lstrip("/").partition("/")
            if self._on_denied is not None:
                label = f"{service}.{short}" if service == "GrpcFeatureServer" else short
                self._on_denied(label, e, request_id)
            return _deny(e, self._metrics, api, short)
        return await continuation(details)
