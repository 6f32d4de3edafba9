"""Sending a job to a running server's admin API, for CLI commands whose store is held by it.

RocksDB allows one writer process: while a server owns a data directory, `materialize` and
`snapshot create` cannot open it and ask the server to do the work instead.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from serving.errors import StorageError

_IN_USE_MESSAGE = (
    "error: the data directory {dir} is in use by another process, and no feature-serving "
    "server answered at {server} ({why}). Point --server at the server that owns the store "
    "(with an admin key in FS_API_KEY or --api-key), or stop it and rerun this command."
)


def store_in_use(e: StorageError) -> bool:
    """Whether opening the store failed because another process holds its lock."""
    return "in use by another process" in e.message or "LOCK" in e.message


def send_admin_job(
    server: str,
    api_key: str | None,
    path: str,
    body: dict[str, Any],
    *,
    what: str,
    data_dir: str,
    held: bool = True,
) -> tuple[int, dict[str, Any] | None]:
    """POSTs ``body`` to ``server + path``; returns the CLI exit code and the answer.

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
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            return 0, dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(e)
        print(f"error: the server refused the {what} (HTTP {e.code}): {message}", file=sys.stderr)
        return 1, None
    except (urllib.error.URLError, OSError) as e:
        if held:
            print(_IN_USE_MESSAGE.format(dir=data_dir, server=server, why=e), file=sys.stderr)
        else:
            print(f"error: no feature-serving server answered at {server} ({e})", file=sys.stderr)
        return 2, None
