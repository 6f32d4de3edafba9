"""The inverse error tables are read off the serving.errors classes: every class round-trips
through its code, and a status shared by several classes reads back as the documented one."""

from __future__ import annotations

import pytest

from serving import errors
from serving.errors import (
    ERROR_CLASSES,
    DeadlineExceededError,
    FeatureServingError,
    InvalidArgumentError,
    LimitExceededError,
    RegistryError,
    ShardAnswerError,
    ShardUnavailableError,
    StorageError,
    WrongShardError,
    error_class,
    grpc_status_of,
)


def test_every_class_is_listed_once_with_a_unique_code() -> None:
    declared = {
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, FeatureServingError)
    }
    assert set(ERROR_CLASSES) == declared
    assert len({c.code for c in ERROR_CLASSES}) == len(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_a_json_code_names_its_class_whatever_the_status(cls: type[FeatureServingError]) -> None:
    assert error_class(code=cls.code, http_status=500, grpc_status="INTERNAL") is cls
    assert grpc_status_of(code=cls.code, http_status=418) == cls.grpc_status


@pytest.mark.parametrize(
    ("http_status", "grpc_status", "cls"),
    [
        (400, "INVALID_ARGUMENT", InvalidArgumentError),
        (409, "FAILED_PRECONDITION", WrongShardError),
        (503, "UNAVAILABLE", StorageError),
        (504, "DEADLINE_EXCEEDED", DeadlineExceededError),
        (500, "INTERNAL", FeatureServingError),
    ],
)
def test_a_shared_status_reads_back_as_the_first_listed_class(
    http_status: int, grpc_status: str, cls: type[FeatureServingError]
) -> None:
    assert error_class(http_status=http_status) is cls
    assert error_class(grpc_status=grpc_status) is cls


def test_unknown_codes_fall_back_to_the_status_then_to_the_base() -> None:
    assert error_class(code="message_too_large", http_status=502) is ShardAnswerError
    assert error_class(code="nope", grpc_status="UNAVAILABLE") is StorageError
    assert error_class(code="nope", http_status=418, grpc_status="UNKNOWN") is FeatureServingError
    # aiohttp's own body-size refusal has no class of ours; 413 is a limit, as LimitExceededError
    assert grpc_status_of(code="message_too_large", http_status=413) == "RESOURCE_EXHAUSTED"
    assert error_class(code="message_too_large", http_status=413) is LimitExceededError
    assert grpc_status_of(code="nope", http_status=418) is None
    # a router's own classes, named by their codes, not their (shared) statuses
    assert error_class(code="shard_unavailable", http_status=503) is ShardUnavailableError
    assert error_class(code="invalid_registry", http_status=400) is RegistryError
