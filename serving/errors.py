"""The one exception hierarchy of feature-serving.

Every error the package raises derives from :class:`FeatureServingError`, which knows the gRPC
status and the HTTP status it is answered with. The Rust core raises these same classes (its one
error enum is mapped here, in ``rust_core/src/py.rs``), the gRPC interceptor and the HTTP
middleware translate them in one place each.
"""

from __future__ import annotations

from typing import ClassVar


class FeatureServingError(Exception):
    """Base of every error raised by feature-serving."""

    #: name of the ``grpc.StatusCode`` member this error is answered with
    grpc_status: ClassVar[str] = "INTERNAL"
    #: HTTP status code this error is answered with
    http_status: ClassVar[int] = 500
    #: stable machine-readable code, used in JSON error bodies
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidArgumentError(FeatureServingError):
    """The request or input data is malformed (bad JSON, wrong type, missing join key, ...)."""

    grpc_status = "INVALID_ARGUMENT"
    http_status = 400
    code = "invalid_argument"


class NotFoundError(FeatureServingError):
    """A named view, feature, feature service or entity does not exist."""

    grpc_status = "NOT_FOUND"
    http_status = 404
    code = "not_found"


class RegistryError(InvalidArgumentError):
    """``features.yaml`` is invalid; the message names the bad entry."""

    code = "invalid_registry"


class SchemaError(FeatureServingError):
    """A registry change is incompatible with what is stored (removed feature, changed type)."""

    grpc_status = "FAILED_PRECONDITION"
    http_status = 409
    code = "schema_conflict"


class WrongShardError(FeatureServingError):
    """A sharded node was asked for an entity that another shard owns; the message names the
    owning shard (``docs/scale-out.md``). Retrying on this node cannot help."""

    grpc_status = "FAILED_PRECONDITION"
    http_status = 409
    code = "wrong_shard"


class StorageError(FeatureServingError):
    """The store cannot be opened, read or written (I/O error, corruption, lock held)."""

    grpc_status = "UNAVAILABLE"
    http_status = 503
    code = "storage_error"


class UnauthenticatedError(FeatureServingError):
    grpc_status = "UNAUTHENTICATED"
    http_status = 401
    code = "unauthenticated"


class PermissionDeniedError(FeatureServingError):
    grpc_status = "PERMISSION_DENIED"
    http_status = 403
    code = "permission_denied"


class ResourceExhaustedError(FeatureServingError):
    """A limit was hit (too many entities, message too large, overload)."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
    code = "resource_exhausted"


class DeadlineExceededError(FeatureServingError):
    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 504
    code = "deadline_exceeded"


class ShardAnswerError(FeatureServingError):
    """A router got an answer from a shard it cannot use (a node running another registry, or a
    malformed answer)."""

    grpc_status = "INTERNAL"
    http_status = 502
    code = "bad_shard_answer"


class ShardUnavailableError(FeatureServingError):
    """A router could not reach any replica of a shard within the deadline."""

    grpc_status = "UNAVAILABLE"
    http_status = 503
    code = "shard_unavailable"


__all__ = [
    "DeadlineExceededError",
    "FeatureServingError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RegistryError",
    "ResourceExhaustedError",
    "SchemaError",
    "ShardAnswerError",
    "ShardUnavailableError",
    "StorageError",
    "UnauthenticatedError",
    "WrongShardError",
]
