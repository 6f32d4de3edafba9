"""API keys on gRPC: one interceptor checks ``authorization: Bearer <key>`` for every method and
hands the verified caller to the handler (:data:`principal`)."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.config import ServeSettings
from serving.errors import FeatureServingError
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
        await context.abort(grpc.StatusCode[error.grpc_status], error.message)
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(handler)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks ``authorization: Bearer <key>`` for every gRPC method, in one place."""

    def __init__(
        self, auth: Authenticator, settings: ServeSettings, metrics: ServingMetrics
    ) -> None:
        self._auth = auth
        self._open = settings.open_health
        self._metrics = metrics

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
        for k, v in details.invocation_metadata or ():
            if k == "authorization":
                header = v if isinstance(v, str) else v.decode()
                break
        try:
            principal.set(self._auth.authenticate(header))
        except FeatureServingError as e:
            api = "feast-grpc" if method.startswith("/feast.") else "grpc"
            self._metrics.rejected.labels(api, "auth").inc()
            self._metrics.auth_failures.inc()
            return _deny(e, self._metrics, api, method.rsplit("/", 1)[-1])
        return await continuation(details)
