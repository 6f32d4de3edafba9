"""tests.harness.post_whole, which the graceful-shutdown tests rely on to tell a whole answer
from a refused request and from a cut one, against a loopback listener that answers each way."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import free_port, post_whole

BODY = b'{"ok": true}'


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += conn.recv(65536)


def _whole(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def _chunked(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(BODY), BODY)
    )


def _closed_before_answering(conn: socket.socket) -> None:
    _read_request(conn)


def _reset_before_answering(conn: socket.socket) -> None:
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _short_body(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY[:5]))


def _reset_mid_body(conn: socket.socket) -> None:
    _short_body(conn)
    # Linux drops received but unread bytes on a reset: give the client time to read the
    # status line first, so that the reset lands in the body as intended
    time.sleep(0.5)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _unframed(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY)


def _half_status_line(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 2")


@pytest.fixture
def listener() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``listener(answer)``: a URL whose one connection ``answer`` handles, then closes."""
    threads: list[threading.Thread] = []
    socks: list[socket.socket] = []

    def start(answer: Callable[[socket.socket], None]) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        socks.append(srv)

        def run() -> None:
            conn, _ = srv.accept()
            with conn:
                answer(conn)

        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
        return f"http://127.0.0.1:{srv.getsockname()[1]}/x"

    yield start
    for t in threads:
        t.join(5)
    for s in socks:
        s.close()


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (_whole, "answered"),
        (_chunked, "answered"),
        (_closed_before_answering, "refused"),
        (_reset_before_answering, "refused"),
        (_short_body, "cut"),
        (_reset_mid_body, "cut"),
        (_unframed, "cut"),
        (_half_status_line, "cut"),
    ],
)
def test_post_whole_tells_how_a_request_ended(
    listener: Callable[[Callable[[socket.socket], None]], str],
    answer: Callable[[socket.socket], None],
    kind: str,
) -> None:
    got = post_whole(listener(answer), {"q": 1}, timeout=5)
    assert got.kind == kind, got
    if kind == "answered":
        assert (got.status, got.body) == (200, {"ok": True})


def test_post_whole_nothing_listening_is_refused() -> None:
    got = post_whole(f"http://127.0.0.1:{free_port()}/x", {"q": 1}, timeout=5)
    assert (got.kind, got.status) == ("refused", None), got
