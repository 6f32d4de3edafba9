"""gRPC plumbing the cluster's callers share: the internal method paths, blocking channels, and
failed calls read back as :class:`~serving.errors.FeatureServingError`."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from serving.errors import FeatureServingError, error_class

#: full gRPC path of the node metadata RPC
NODE_INFO_METHOD = "/feature_serving.v1.FeatureService/GetNodeInfo"
#: the node method that answers a router's part of a request (raw cells, see
#: rust_core/src/route.rs), and the same over a node's HTTP port
CELLS_METHOD = "/feature_serving.v1.FeatureService/GetCells"
CELLS_PATH = "/v1/cells"


def error_from_rpc(e: grpc.RpcError) -> FeatureServingError:
    """The :class:`FeatureServingError` of a failed gRPC call (``UNAVAILABLE`` ->
    :class:`StorageError`, ``FAILED_PRECONDITION`` -> :class:`WrongShardError`, ...); the
    message is ``"<CODE>: <details>"``."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    cls = error_class(grpc_status=code.name)
    details = e.details() if hasattr(e, "details") else str(e)
    return cls(f"{code.name}: {details}")


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def open_channel(
    endpoint: str, credentials: grpc.ChannelCredentials | None = None, options: Any = ()
) -> grpc.Channel:
    """A blocking channel to ``endpoint``: TLS with ``credentials``
    (``grpc.ssl_channel_credentials(ca, key, cert)``), else plaintext."""
    if credentials is not None:
        return grpc.secure_channel(endpoint, credentials, options)
    return grpc.insecure_channel(endpoint, options)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)
