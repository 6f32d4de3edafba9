"""Request bodies with a Content-Encoding, against a real server process: a body that is not
valid in its encoding answers 400, an encoding the server does not decode 415, both with the
JSON error body naming the header (they answered 500 before)."""

from __future__ import annotations

import gzip
import http.client
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from serving import Registry, Store
from tests.harness import TEST_REGISTRY, Server, start_server, stop_server

pytestmark = pytest.mark.integration

FEAST_BODY = {"features": ["user_profile:f001"], "entities": {"user_id": [1]}}
V1_BODY = {"features": ["user_profile:f001"], "entities": {"user_id": [1]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("encoding")
    config = tmp / "features.yaml"
    config.write_text(TEST_REGISTRY)
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        store.write(
            "user_profile",
            pa.table(
                {
                    "user_id": pa.array([1], pa.int64()),
                    "event_timestamp": pa.array([int(time.time() * 1e6)], pa.int64()).cast(
                        pa.timestamp("us", tz="UTC")
                    ),
                    **{f"f{i:03d}": pa.array([float(i)], pa.float32()) for i in range(200)},
                }
            ),
        )
    s = start_server(config, tmp / "db", tmp / "server.log")
    try:
        yield s
    finally:
        stop_server(s)


def post(
    s: Server, path: str, body: bytes, encoding: str, ctype: str = "application/json"
) -> tuple[int, str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", s.http, timeout=10)
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": ctype, "Content-Encoding": encoding}
        )
        r = conn.getresponse()
        raw = r.read()
        ctype_back = r.getheader("Content-Type") or ""
        return r.status, ctype_back, json.loads(raw) if "json" in ctype_back else raw
    finally:
        conn.close()


ROUTES = [
    ("/get-online-features", "application/json"),
    ("/v1/feature-vector", "application/json"),
    ("/v1/cells", "application/octet-stream"),
    ("/v1/push", "application/json"),
    ("/admin/registry/reload", "application/json"),
]


@pytest.mark.parametrize(("path", "ctype"), ROUTES)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_body_not_valid_in_its_encoding_answers_400(
    server: Server, path: str, ctype: str, encoding: str
) -> None:
    status, back, body = post(server, path, b"this is not compressed", encoding, ctype)
    assert status == 400, body
    assert back.startswith("application/json")
    assert body["error"]["code"] == "invalid_argument"
    assert f"Content-Encoding: {encoding}" in body["error"]["message"]


@pytest.mark.parametrize(("path", "ctype"), ROUTES)
def test_encoding_not_decoded_answers_415(server: Server, path: str, ctype: str) -> None:
    # aiohttp passes an encoding it does not know through as it came: the core would read the
    # compressed bytes as the body
    status, back, body = post(server, path, gzip.compress(b"{}"), "x-gzip", ctype)
    assert status == 415, body
    assert back.startswith("application/json")
    assert body["error"]["code"] == "unsupported_media_type"
    assert "Content-Encoding 'x-gzip'" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "request_body", "check"),
    [
        ("/get-online-features", FEAST_BODY, lambda b: b["results"][1]["values"] == [1.0]),
        ("/v1/feature-vector", V1_BODY, lambda b: b["feature_names"] == ["user_profile:f001"]),
    ],
)
@pytest.mark.parametrize(
    "compress", [("gzip", gzip.compress), ("deflate", zlib.compress)], ids=["gzip", "deflate"]
)
def test_valid_encoded_bodies_are_answered(
    server: Server, path: str, request_body: Any, check: Any, compress: Any
) -> None:
    encoding, fn = compress
    status, _, body = post(server, path, fn(json.dumps(request_body).encode()), encoding)
    assert status == 200, body
    assert check(body), body


def test_encoding_errors_leave_no_internal_error_in_the_log(server: Server) -> None:
    post(server, "/get-online-features", b"garbage", "gzip")
    status, _, _ = post(server, "/get-online-features", gzip.compress(b"{}"), "gzip")
    assert status == 400  # an empty request, decoded: the core's own message
    assert "internal error" not in server.log.read_text()
