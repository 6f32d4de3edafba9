"""Sending a job to a running server's admin API, for CLI commands whose store is held by it.

RocksDB allows one writer process: while a server owns a data directory, `materialize` and
`snapshot create` cannot open it and ask the server to do the work instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serving.errors import StorageError

#: the server asked about a held store when nothing better is known
DEFAULT_SERVER = "http://127.0.0.1:6566"

_IN_USE_MESSAGE = (
    "error: the data directory {dir} is in use by another process, and no feature-serving "
    "server answered at {server} ({how}; {why}). Point --server at the server that owns the "
    "store (with an admin key in FS_API_KEY or --api-key), or stop it and rerun this command."
)
_NO_KEY_MESSAGE = (
    "error: the server at {server} requires an admin API key for the {what}: give --api-key "
    "KEY or set FS_API_KEY (create one with `feature-serving keys create --name NAME --admin`)"
)


def server_file(data_dir: str | os.PathLike[str]) -> Path:
    """``<data_dir>.server.json``: the HTTP address of the server holding the store, written
    by the server at start, so that commands finding the store held ask that server, on
    whatever port it was started."""
    p = Path(data_dir)
    return p.with_name(p.name + ".server.json")


def record_server(data_dir: str | os.PathLike[str], url: str) -> None:
    """Notes ``url`` as the address of the server holding ``data_dir`` (atomically)."""
    path = server_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".server.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"http": url, "pid": os.getpid()}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forget_server(data_dir: str | os.PathLike[str]) -> None:
    """Removes the note of :func:`record_server` if this process wrote it."""
    path = server_file(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def held_store_server(data_dir: str | os.PathLike[str]) -> tuple[str, str]:
    """The server to ask when ``data_dir`` is held by another process, and how it was found:
    the address that server recorded, else ``FS_SERVER_URL``, else ``FS_HOST`` /
    ``FS_HTTP_PORT`` (as `serve` reads them), else the default."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        url = json.loads(server_file(data_dir).read_text()).get("http")
        if isinstance(url, str) and url:
            return url, f"the address recorded in {server_file(data_dir)}"
    if url := os.environ.get("FS_SERVER_URL"):
        return url, "FS_SERVER_URL"
    host, port = os.environ.get("FS_HOST"), os.environ.get("FS_HTTP_PORT")
    if host or port:
        return f"http://{host or '127.0.0.1'}:{port or 6566}", "FS_HOST / FS_HTTP_PORT"
    return DEFAULT_SERVER, "the default; FS_SERVER_URL sets another"


def store_in_use(e: StorageError) -> bool:
    """Whether opening the store failed because another process holds its lock."""
    return "in use by another process" in e.message or "LOCK" in e.message


def send_admin_job(
    server: str,
    api_key: str | None,
    path: str,
    body: dict[str, Any] | None,
    *,
    what: str,
    data_dir: str,
    held: bool = True,
    how: str = "",
) -> tuple[int, dict[str, Any] | None]:
    """POSTs ``body`` to ``server + path`` (GET without one); returns the CLI exit code and
    the answer. ``how``: how ``server`` was chosen, for the error when none answers.

    ``held``: the local store was found held by another process (else the server was named
    on the command line). Exit codes: 0 done, 1 the server refused (its message is printed), 2
    no server answered.
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = server.rstrip("/") + path
    if held:
        print(
            f"the store is held by a running server; sending the {what} to {url}", file=sys.stderr
        )
    else:
        print(f"sending the {what} to {url}", file=sys.stderr)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            return 0, dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(e)
        if e.code == 401 and not api_key:
            print(_NO_KEY_MESSAGE.format(server=server, what=what), file=sys.stderr)
            return 1, None
        print(f"error: the server refused the {what} (HTTP {e.code}): {message}", file=sys.stderr)
        return 1, None
    except (urllib.error.URLError, OSError) as e:
        if held:
            print(
                _IN_USE_MESSAGE.format(dir=data_dir, server=server, how=how or "asked", why=e),
                file=sys.stderr,
            )
        else:
            print(f"error: no feature-serving server answered at {server} ({e})", file=sys.stderr)
        return 2, None
