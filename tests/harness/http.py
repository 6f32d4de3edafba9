"""HTTP calls to a serving process: JSON in, (status, parsed JSON) out, and a client that tells
a complete answer from a refused request and from a cut one."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http import client as http_client
from typing import Any, Literal


def http(
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """GET (no body) or POST a JSON (or bytes) body, with ``key`` as a bearer API key;
    (status, parsed JSON, or the raw bytes when the answer is not JSON)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **auth, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


@dataclass
class Outcome:
    """How one request ended, seen from the client.

    - ``answered``: a status line and a whole body (exactly its Content-Length, or every chunk);
    - ``refused``: not a byte of an answer came back (connection refused, or reset or closed
      before the status line): the caller knows nothing was half-done;
    - ``cut``: an answer began and did not end (short body, bad status line, reset mid-read).
    """

    kind: Literal["answered", "refused", "cut"]
    status: int | None
    body: Any
    #: time.monotonic() when the outcome was known
    at: float


def post_whole(url: str, body: Any, timeout: float = 10.0) -> Outcome:
    """POSTs a JSON body on a fresh connection and classifies the ending (:class:`Outcome`).

    urllib would not do: it reports a reset before the answer and one in the middle of the body
    alike (``ConnectionResetError``), and reads a body without a length to the end silently."""
    parts = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode()
    conn = http_client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        try:
            conn.request(
                "POST", parts.path, body=data, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as e:
            # (http.client.RemoteDisconnected, a ConnectionResetError: closed before a byte of
            # the status line)
            return Outcome("refused", None, repr(e), time.monotonic())
        except http_client.HTTPException as e:  # a partial or garbled status line
            return Outcome("cut", None, repr(e), time.monotonic())
        # An answer has begun: anything short of all of it is a cut answer.
        framed = resp.getheader("Content-Length") is not None or resp.chunked
        try:
            raw = resp.read()
        except (http_client.HTTPException, OSError) as e:
            return Outcome("cut", resp.status, repr(e), time.monotonic())
        if not framed:  # ended by the close alone: a cut could not be told from the end
            return Outcome(
                "cut", resp.status, f"no Content-Length: {raw[:200]!r}", time.monotonic()
            )
        try:
            parsed = json.loads(raw)
        except ValueError:
            return Outcome("cut", resp.status, f"not JSON: {raw[:200]!r}", time.monotonic())
        return Outcome("answered", resp.status, parsed, time.monotonic())
    finally:
        conn.close()
