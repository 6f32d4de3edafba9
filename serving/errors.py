"""The one exception hierarchy of feature-serving.

Every error the package raises derives from :class:`FeatureServingError`, which knows the gRPC
status and the HTTP status it is answered with. The Rust core raises these same classes (its one
error enum is mapped to them in ``rust_core/src/py/errors.rs``), the gRPC interceptor and the HTTP
middleware translate them in one place each.
"""

from __future__ import annotations

from typing import Any, ClassVar


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every HTTP error answer: ours under ``error``, the text also under
    FastAPI's ``detail`` (where Feast's feature server puts it, for clients that read it there)."""
    return {"error": {"code": code, "message": message}, "detail": message}


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

    def to_json(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


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
    """The server is out of capacity (overload, a queue full): retrying later can succeed."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
    code = "resource_exhausted"


class RateLimitedError(ResourceExhaustedError):
    """A caller is over its request-rate limit or its concurrent-request cap
    (docs/security.md, "Limits"): answered 429 / RESOURCE_EXHAUSTED with ``Retry-After``
    (HTTP header; gRPC trailing metadata ``retry-after``) in whole seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class LimitExceededError(ResourceExhaustedError):
    """A request is over a per-request limit (entities or features per request,
    ``--max-entities`` / ``--max-features``): the same request will always be refused, so it is
    answered 413 over HTTP rather than 429, and RESOURCE_EXHAUSTED over gRPC like every size
    limit of gRPC itself."""

    http_status = 413
    code = "limit_exceeded"


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


class ShardUnavailableError(StorageError):
    """A router could not reach any replica of a shard within the deadline. A StorageError, so
    that a caller catching what one node answers when its store is unavailable catches this too,
    over gRPC and HTTP alike."""

    grpc_status = "UNAVAILABLE"
    http_status = 503
    code = "shard_unavailable"


class TransformError(FeatureServingError):
    """An on-demand feature view's transform raised, or returned output that does not match the
    registry (a missing column, a wrong type or length): the server's fault, not the caller's.
    The message names the view (and the column, or the exception)."""

    grpc_status = "INTERNAL"
    http_status = 500
    code = "transform_failed"


#: every class of the hierarchy. Where several share a status, the first listed is the one a
#: status alone is read back as (a client or a router sees only the status, or a JSON body whose
#: ``code`` is unknown to it):
#:
#: - INVALID_ARGUMENT / 400: InvalidArgumentError (RegistryError is a special case of it);
#: - FAILED_PRECONDITION / 409: WrongShardError, since on the serving path (the only calls
#:   clients and routers make) a node answers it only for an entity another shard owns;
#:   SchemaError comes from registry changes (admin routes, ``Store.apply_registry``);
#: - UNAVAILABLE / 503: StorageError, what a node answers; ShardUnavailableError is made by a
#:   router (``serving.frontend.router`` reads a node's UNAVAILABLE as one itself);
#: - INTERNAL / 500: FeatureServingError (ShardAnswerError has its own HTTP status, 502).
#:
#: A JSON error body names its class exactly (``code`` is unique): read it first where a body
#: is at hand (:func:`error_class`).
ERROR_CLASSES: tuple[type[FeatureServingError], ...] = (
    FeatureServingError,
    InvalidArgumentError,
    RegistryError,
    NotFoundError,
    WrongShardError,
    SchemaError,
    StorageError,
    ShardUnavailableError,
    UnauthenticatedError,
    PermissionDeniedError,
    ResourceExhaustedError,
    LimitExceededError,
    RateLimitedError,
    DeadlineExceededError,
    ShardAnswerError,
    TransformError,
)

_BY_CODE: dict[str, type[FeatureServingError]] = {c.code: c for c in ERROR_CLASSES}
_BY_GRPC: dict[str, type[FeatureServingError]] = {}
_BY_HTTP: dict[int, type[FeatureServingError]] = {}
for _cls in ERROR_CLASSES:
    _BY_GRPC.setdefault(_cls.grpc_status, _cls)
    _BY_HTTP.setdefault(_cls.http_status, _cls)
del _cls
assert len(_BY_CODE) == len(ERROR_CLASSES), "error codes must be unique"


def error_class(
    *, code: str | None = None, http_status: int | None = None, grpc_status: str | None = None
) -> type[FeatureServingError]:
    """The class an answer's error is raised as: by its JSON ``code`` when known, else by its
    HTTP status, else by its gRPC status name (``"UNAVAILABLE"``); FeatureServingError when
    none of them names a class (see :data:`ERROR_CLASSES` for shared statuses)."""
    cls = _BY_CODE.get(code) if code is not None else None
    if cls is None and http_status is not None:
        cls = _BY_HTTP.get(http_status)
    if cls is None and grpc_status is not None:
        cls = _BY_GRPC.get(grpc_status)
    return cls or FeatureServingError


def grpc_status_of(*, code: str | None = None, http_status: int | None = None) -> str | None:
    """The gRPC status name an HTTP error answer stands for (its JSON ``code`` first, then its
    HTTP status); None when neither names a class."""
    cls = _BY_CODE.get(code) if code is not None else None
    if cls is None and http_status is not None:
        cls = _BY_HTTP.get(http_status)
    return None if cls is None else cls.grpc_status


__all__ = [
    "ERROR_CLASSES",
    "DeadlineExceededError",
    "FeatureServingError",
    "InvalidArgumentError",
    "LimitExceededError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RegistryError",
    "ResourceExhaustedError",
    "SchemaError",
    "ShardAnswerError",
    "ShardUnavailableError",
    "StorageError",
    "TransformError",
    "UnauthenticatedError",
    "WrongShardError",
    "error_body",
    "error_class",
    "grpc_status_of",
]
