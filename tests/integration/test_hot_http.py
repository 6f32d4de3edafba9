"""The hot HTTP path (serving.frontend.hot_http) against aiohttp's own route, side by side: two
real server processes over copies of one store, one with the hot path (the default), one with
``--no-hot-http``; the same raw bytes sent to both must get the same raw answer (``Date``
aside), and the same request metrics. Plus what only a raw socket shows: keep-alive,
pipelining, a connection handed to aiohttp mid-way, a client that does not read."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.frontend.auth import KeyFile
from serving.sample import generate
from tests.harness import TEST_REGISTRY, Server, copy_store, samples, start_server, stop_server

pytestmark = pytest.mark.integration

N_USERS = 300
FEATURES = [f"user_profile:f{i:03d}" for i in range(200)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("hot")
    config = tmp / "features.yaml"
    config.write_text(TEST_REGISTRY)
    sample = generate(tmp / "sample", N_USERS)
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        store.write("user_profile", pq.read_table(sample.user_profile_path))
        store.write(
            "item_stats",
            pa.table(
                {
                    "item_id": ["item-1"],
                    "event_timestamp": pa.array([int(time.time() * 1e6)], pa.int64()).cast(
                        pa.timestamp("us", tz="UTC")
                    ),
                    "ctr": pa.array([0.25], type=pa.float32()),
                    "title": ['Red "shoe" ü'],
                    "embedding": pa.array([[1.0, 2.0, 3.0]], type=pa.list_(pa.float32(), 3)),
                }
            ),
        )
    keys = KeyFile(tmp / "keys.json")
    token = keys.create("all", read=["*"])[0]
    profile_only = keys.create("profile", read=["user_profile"])[0]
    copy_store(tmp / "db", tmp / "db2")
    flags = ("--keys-file", str(tmp / "keys.json"), "--max-entities", "200")
    hot = start_server(config, tmp / "db", tmp / "hot.log", *flags)
    plain = start_server(config, tmp / "db2", tmp / "plain.log", *flags, "--no-hot-http")
    try:
        yield {
            "hot": hot,
            "plain": plain,
            "token": token,
            "profile_only": profile_only,
            "tmp": tmp,
        }
    finally:
        stop_server(hot)
        stop_server(plain)


def _read_answer(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole HTTP answer (head and Content-Length body) from ``sock``; the rest stays in
    ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed before an answer's head: {bytes(buf)!r}")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", bytes(buf[:end]))
    assert m is not None, bytes(buf[:end])
    total = end + int(m.group(1))
    while len(buf) < total:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed mid-body")
        buf += chunk
    out = bytes(buf[:total])
    del buf[:total]
    return out


def _exchange(server: Server, raw: bytes, answers: int = 1) -> list[bytes]:
    """Sends ``raw`` on a new connection; the ``answers`` answers, Date normalized, then
    whether the server closed the connection (b"closed" / b"open") as a last item."""
    with socket.create_connection(("127.0.0.1", server.http), timeout=10) as s:
        s.sendall(raw)
        buf = bytearray()
        out = [_read_answer(s, buf) for _ in range(answers)]
        s.settimeout(0.3)
        try:
            closed = s.recv(1) == b""
        except TimeoutError:
            closed = False
    out = [re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: X", a) for a in out]
    return [*out, b"closed" if closed else b"open"]


def _post(path: str, body: bytes, *headers: str, token: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _feast(ids: list[int], features: list[str] = FEATURES) -> bytes:
    return json.dumps({"features": features, "entities": {"user_id": ids}}).encode()


def _cases(token: str, profile_only: str) -> dict[str, bytes]:
    w2 = _feast(list(range(100)))
    return {
        "w1": _post("/get-online-features", _feast([7], FEATURES[:100]), token=token),
        "w2 (1 MB answer)": _post("/get-online-features", w2, token=token),
        "unknown entity and json type": _post(
            "/get-online-features",
            _feast([10**9, 3]),
            "Content-Type: application/json; charset=utf-8",
            token=token,
        ),
        "strings, arrays, full names": _post(
            "/get-online-features",
            json.dumps(
                {
                    "features": ["item_stats:title", "item_stats:embedding", "item_stats:ctr"],
                    "entities": {"item_id": ["item-1", "nope"]},
                    "full_feature_names": True,
                }
            ).encode(),
            token=token,
        ),
        "v1 dense": _post(
            "/v1/feature-vector",
            json.dumps(
                {"features": FEATURES[:5], "entities": {"user_id": [1, 2]}, "layout": "dense"}
            ).encode(),
            token=token,
        ),
        "v1 columns, statuses": _post(
            "/v1/feature-vector",
            json.dumps(
                {
                    "features": FEATURES[:3],
                    "entities": {"user_id": [1, 999999]},
                    "include_statuses": True,
                    "include_event_timestamps": True,
                }
            ).encode(),
            token=token,
        ),
        "connection close": _post(
            "/get-online-features", _feast([1], FEATURES[:2]), "Connection: close", token=token
        ),
        "malformed json": _post("/get-online-features", b'{"features": [', token=token),
        "empty body": _post("/get-online-features", b"", token=token),
        "unknown feature": _post(
            "/get-online-features", _feast([1], ["user_profile:nope"]), token=token
        ),
        "too many entities": _post("/get-online-features", _feast(list(range(201))), token=token),
        "no key": _post("/get-online-features", _feast([1])),
        "bad key": _post("/get-online-features", _feast([1]), token="fs_nope_nope"),
        "malformed auth header": _post(
            "/get-online-features", _feast([1]), "Authorization: Basic abc"
        ),
        "out of scope": _post(
            "/get-online-features",
            json.dumps(
                {"features": ["item_stats:ctr"], "entities": {"item_id": ["item-1"]}}
            ).encode(),
            token=profile_only,
        ),
        "text/plain": _post(
            "/get-online-features", _feast([1]), "Content-Type: text/plain", token=token
        ),
        "gzip body that is not gzip": _post(
            "/get-online-features", b"not gzip", "Content-Encoding: gzip", token=token
        ),
        "chunked": _post(
            "/get-online-features",
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(_feast([1])), _feast([1])),
            "Transfer-Encoding: chunked",
            token=token,
        ),
        "no host": b"POST /get-online-features HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        "http/1.0": b"POST /get-online-features HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        "query string": _post("/get-online-features?x=1", _feast([1]), token=token),
        "GET of a serving path": b"GET /get-online-features HTTP/1.1\r\nHost: x\r\n\r\n",
        "two content lengths": _post(
            "/get-online-features", b"{}", "Content-Length: 2", "Content-Length: 2", token=token
        ),
        "header with a control character": _post(
            "/get-online-features", _feast([1]), "X-Thing: a\x01b", token=token
        ),
        "cells on a node (protobuf garbage)": _post(
            "/v1/cells",
            b"\xff\xff\xff",
            "Content-Type: application/octet-stream",
            token=token,
        ),
    }


def test_raw_answers_match_aiohttp_byte_for_byte(pair: dict[str, Any]) -> None:
    cases = _cases(pair["token"], pair["profile_only"])
    before = {name: _counts(pair[name]) for name in ("hot", "plain")}
    for name, raw in cases.items():
        got = {which: _exchange(pair[which], raw) for which in ("hot", "plain")}
        assert got["hot"] == got["plain"], name
        assert got["hot"][0].startswith(b"HTTP/1."), name
    # the same requests were counted the same way by both
    after = {name: _counts(pair[name]) for name in ("hot", "plain")}
    delta = {
        name: {k: v - before[name].get(k, 0.0) for k, v in after[name].items()}
        for name in ("hot", "plain")
    }
    delta = {n: {k: v for k, v in d.items() if v} for n, d in delta.items()}
    assert delta["hot"] == delta["plain"]
    assert any("get-online-features" in str(k) and "401" in str(k) for k in delta["hot"])
    # W2's answer is the 1 MB Feast text, whole
    w2 = _exchange(pair["hot"], cases["w2 (1 MB answer)"])[0]
    body = json.loads(w2.split(b"\r\n\r\n", 1)[1])
    assert len(body["results"]) == 201
    assert len(body["results"][1]["values"]) == 100


def _counts(server: Server) -> dict[str, float]:
    """Request, rejection and auth-failure counters of the serving routes."""
    out: dict[str, float] = {}
    for (name, labels), v in samples(server.url).items():
        if name in (
            "feature_serving_requests_total",
            "feature_serving_rejected_requests_total",
            "feature_serving_auth_failures_total",
        ) or (name == "feature_serving_request_duration_seconds_count"):
            out[f"{name}{labels}"] = v
    return out


def test_keep_alive_pipelining_and_hand_over(pair: dict[str, Any]) -> None:
    """Three pipelined requests answered in order on one connection; after a GET (handed to
    aiohttp) the same connection goes on answering serving requests."""
    token = pair["token"]
    reqs = [
        _post("/get-online-features", _feast([i], FEATURES[:3]), token=token) for i in (1, 2, 3)
    ]
    with socket.create_connection(("127.0.0.1", pair["hot"].http), timeout=10) as s:
        # split mid-head and mid-body: the parser waits for whole requests
        blob = b"".join(reqs)
        for part in (blob[:10], blob[10:300], blob[300:]):
            s.sendall(part)
            time.sleep(0.05)
        buf = bytearray()
        ids = [
            json.loads(_read_answer(s, buf).split(b"\r\n\r\n")[1])["results"][0]["values"][0]
            for _ in reqs
        ]
        assert ids == [1, 2, 3]
        time.sleep(0.2)
        s.sendall(reqs[0])
        assert b" 200 OK" in _read_answer(s, buf)[:20]
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + reqs[1])
        assert b'"alive"' in _read_answer(s, buf)
        second = _read_answer(s, buf)
        assert json.loads(second.split(b"\r\n\r\n")[1])["results"][0]["values"] == [2]


def test_a_client_that_does_not_read_is_not_read(pair: dict[str, Any]) -> None:
    """40 MB of pipelined W1 requests (200 MB of answers) from a client that reads nothing:
    the server stops reading that connection (what the kernel buffers is all that is sent)
    and goes on answering others."""
    token = pair["token"]
    w1 = _post("/get-online-features", _feast([3], FEATURES[:100]), token=token)
    with socket.create_connection(("127.0.0.1", pair["hot"].http), timeout=10) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        data = w1 * (40_000_000 // len(w1))
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += stuck.send(memoryview(data)[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < len(data), "the server read every request without its answers being read"
        t0 = time.monotonic()
        got = _exchange(pair["hot"], _post("/get-online-features", _feast([5]), token=token))
        assert b" 200 OK" in got[0][:20]
        assert time.monotonic() - t0 < 5
    rss = _rss_mb(pair["hot"])
    assert rss < 1024, f"server RSS {rss:.0f} MB"


def _rss_mb(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
