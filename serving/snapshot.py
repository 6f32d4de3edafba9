"""Snapshots of a store: bootstrapping a new replica without replaying the whole topic.

``feature-serving snapshot create --data-dir DIR OUT`` writes a RocksDB checkpoint of the store
to ``OUT`` (:meth:`serving.store.Store.checkpoint`): consistent across every view and the meta
column family, so the stored Kafka offsets are exactly those of the rows in it; SST files are
hard links when ``OUT`` is on the same file system (seconds, little extra space).
``feature-serving serve --restore-from OUT`` (or ``ingest --restore-from OUT``) copies it into
an empty data directory first and then consumes from its offsets: only what was produced after
the snapshot is read again. The snapshot also carries the node's API keys file (hashes only,
:data:`KEYS_IN_SNAPSHOT`), installed as the restored node's keys file unless it has one.

With ``--server URL`` the command asks that server for a snapshot of its own store. Without
it, the command opens the store in ``--data-dir`` itself, and when a server holds that store
(RocksDB's lock) it asks that server (``serving.admin_client.held_store_server``: the address
it recorded beside the store, else ``FS_SERVER_URL``, default ``http://127.0.0.1:6566``):
``POST /admin/snapshot {"path": OUT}`` checkpoints the live store in a worker thread, so reads
go on (the checkpoint holds only the store's write lock; writes wait for it). ``OUT`` is then
a path on the server's machine, made absolute here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from serving.admin_client import DEFAULT_SERVER, held_store_server, send_admin_job, store_in_use
from serving.config import default_keys_file
from serving.errors import InvalidArgumentError, StorageError

__all__ = ["KEYS_IN_SNAPSHOT", "add_commands", "add_keys", "create", "restore", "size"]

#: the API keys file (hashes only) of the snapshotted node, inside the snapshot: a node
#: restored from it accepts the same keys instead of refusing every request
KEYS_IN_SNAPSHOT = "feature-serving.keys.json"


def add_keys(snapshot: str | os.PathLike[str], keys_file: str | os.PathLike[str]) -> bool:
    """Copies ``keys_file`` into the snapshot (False when there is none to copy)."""
    src = Path(keys_file)
    if not src.is_file():
        return False
    dest = Path(snapshot) / KEYS_IN_SNAPSHOT
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o600)
    return True


def create(
    data_dir: str | os.PathLike[str],
    config: str | os.PathLike[str],
    out: str,
    keys_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Opens the store in ``data_dir`` (registry ``config``) and checkpoints it to ``out``,
    with the API keys of ``keys_file`` (default ``<data_dir>.keys.json``) when it exists."""
    from serving.registry import Registry
    from serving.store import Store

    dest = Path(out)
    if dest.exists():
        raise InvalidArgumentError(f"snapshot directory '{dest}' already exists; give a new path")
    if not (Path(data_dir) / "CURRENT").exists():
        raise InvalidArgumentError(f"'{data_dir}' is not a store directory (no RocksDB CURRENT)")
    with Store(data_dir, Registry.from_yaml(config)) as store:
        store.checkpoint(dest)
    add_keys(dest, keys_file or default_keys_file(data_dir))
    return dest


def _link_or_copy(src: str, dst: str) -> object:
    # SST files are immutable: a hard link is a full copy in effect (RocksDB deletes files,
    # never rewrites them). Anything else (MANIFEST, WAL, OPTIONS) is copied.
    if src.endswith(".sst"):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def restore(
    snapshot: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    keys_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Copies the snapshot ``snapshot`` into ``data_dir``, which must be absent or empty, and
    the API keys it carries to ``keys_file`` (default ``<data_dir>.keys.json``) unless that
    file exists already (the node's own keys win).

    The copy goes to a sibling directory first and is renamed into place, so an interrupted
    restore never leaves a half store where the data directory is expected.
    """
    src, dest = Path(snapshot), Path(data_dir)
    if not (src / "CURRENT").is_file():
        raise InvalidArgumentError(
            f"'{src}' is not a snapshot (no RocksDB CURRENT file); create one with "
            "`feature-serving snapshot create`"
        )
    if dest.exists():
        if not dest.is_dir():
            raise InvalidArgumentError(f"data directory '{dest}' exists and is not a directory")
        if any(dest.iterdir()):
            raise InvalidArgumentError(
                f"refusing to restore into '{dest}': the data directory is not empty "
                "(restore only starts a new replica; remove the directory first)"
            )
    tmp = dest.with_name(dest.name + ".restoring")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted restore
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(KEYS_IN_SNAPSHOT)
    )
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    keys = Path(keys_file or default_keys_file(dest))
    if (src / KEYS_IN_SNAPSHOT).is_file() and not keys.exists():
        keys.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / KEYS_IN_SNAPSHOT, keys)
        os.chmod(keys, 0o600)
    return dest


def size(path: Path) -> tuple[int, int]:
    """(files, bytes) of a snapshot directory."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _send_to_server(
    args: argparse.Namespace, data_dir: str, held: bool = True, how: str = ""
) -> int:
    """Takes the snapshot on a server (``POST /admin/snapshot``): the one holding the store,
    or the one named by ``--server`` (``held=False``)."""
    body = {"path": os.path.abspath(args.out)}
    code, answer = send_admin_job(
        args.server,
        args.api_key,
        "/admin/snapshot",
        body,
        what="snapshot",
        data_dir=data_dir,
        held=held,
        how=how,
    )
    if answer is not None:
        print(json.dumps(answer))
    return code


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or os.environ.get("FS_DATA_DIR") or ".data/store"
    config = args.config or os.environ.get("FS_CONFIG") or "features.yaml"
    if args.server is not None:
        # a server named on the command line: snapshot its store, whatever --data-dir says
        return _send_to_server(args, data_dir, held=False)
    try:
        dest = create(data_dir, config, args.out, args.keys_file)
    except StorageError as e:
        if store_in_use(e):
            args.server, how = held_store_server(data_dir)
            return _send_to_server(args, data_dir, how=how)
        raise
    files, nbytes = size(dest)
    print(json.dumps({"snapshot": str(dest), "files": files, "bytes": nbytes}))
    return 0


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``snapshot create`` (``common`` defines --config, --data-dir)."""
    p = subparsers.add_parser("snapshot", help="snapshots of a store (bootstrapping replicas)")
    sub = p.add_subparsers(dest="snapshot_command", required=True)
    create_p = sub.add_parser(
        "create",
        parents=[common],
        help="write a consistent RocksDB checkpoint of the store (with its Kafka offsets)",
        description="Write a consistent snapshot (RocksDB checkpoint: hard links, the stored "
        "Kafka offsets included) of the store in --data-dir to OUT. When a server holds the "
        "store, the snapshot is taken by that server (--server, --api-key). Start a replica "
        "from it with `serve --restore-from OUT`.",
    )
    create_p.add_argument(
        "out", metavar="OUT", help="snapshot directory to create (must not exist)"
    )
    create_p.add_argument(
        "--server",
        metavar="URL",
        help="take the snapshot through this server's admin API (its own store, without "
        "pausing reads). Without it, the store in --data-dir is opened here, and only when a "
        "server holds it, that server is asked (the address it recorded beside the store, else "
        f"FS_SERVER_URL, else FS_HTTP_PORT; default {DEFAULT_SERVER})",
    )
    create_p.add_argument(
        "--api-key",
        default=os.environ.get("FS_API_KEY"),
        help="admin API key for --server (env FS_API_KEY)",
    )
    create_p.add_argument(
        "--keys-file",
        help="API keys file carried in the snapshot (hashes only; default <data-dir>.keys.json)",
    )
    create_p.set_defaults(func=cmd_snapshot_create)
