"""What a client is told when a request is out of bounds, through a real server (issue 25):
an integer past int64 says so and names the join key; every size limit names the server flag
that changes it."""

from __future__ import annotations

import pytest

from tests.harness import REGISTRIES, Server, Servers

pytestmark = pytest.mark.integration

REGISTRY = REGISTRIES / "store_test.yaml"


@pytest.fixture
def node(servers: Servers) -> Server:
    return servers.serve(
        REGISTRY, "node", "--no-auth", "--max-entities", "2", "--max-features", "2",
        "--max-message-bytes", "4096",
    )  # fmt: skip


@pytest.mark.parametrize("user_ids", [[1, 1e20], [1, 100000000000000000000], [9223372036854775808]])
def test_an_integer_past_int64_is_named_as_such(node: Server, user_ids: list[object]) -> None:
    status, body = node.post(
        "/get-online-features",
        {"features": ["all_types:i64"], "entities": {"user_id": user_ids}},
    )
    assert status == 400, body
    message = body["error"]["message"]
    assert "join key 'user_id'" in message, message
    assert "out of range for int64" in message, message
    assert "non-integer" not in message, message


def test_every_size_limit_names_its_flag(node: Server) -> None:
    status, body = node.post(
        "/get-online-features", {"features": ["all_types:i64"], "entities": {"user_id": [1, 2, 3]}}
    )
    assert status == 413, body
    assert "3 entities requested; the limit is 2 (the server's --max-entities)" in str(body)
    status, body = node.post(
        "/get-online-features",
        {
            "features": ["all_types:i64", "all_types:f32", "all_types:b"],
            "entities": {"user_id": [1]},
        },
    )
    assert status == 413, body
    assert "3 features requested; the limit is 2 (the server's --max-features)" in str(body)
    status, body = node.post(
        "/get-online-features",
        {"features": ["all_types:i64"], "entities": {"user_id": list(range(2000))}},
    )
    assert status == 413, body
    assert "exceeds 4096 bytes (the server's --max-message-bytes)" in str(body)
