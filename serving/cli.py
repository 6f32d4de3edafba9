"""`feature-serving` / `python -m serving`: serve, load, inspect."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving import __version__
from serving.config import (
    ServeSettings,
    add_route_flags,
    add_serve_flags,
    default_keys_file,
    load_settings,
)
from serving.errors import FeatureServingError, InvalidArgumentError, StorageError
from serving.frontend.auth import KeyFile
from serving.registry import Registry
from serving.store import Store

log = logging.getLogger("serving")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=os.environ.get("FS_CONFIG"),
        help="registry file (default features.yaml; env FS_CONFIG)",
    )
    common.add_argument(
        "--data-dir",
        default=os.environ.get("FS_DATA_DIR"),
        help="store directory (default .data/store; env FS_DATA_DIR)",
    )
    return common


def _settings(args: argparse.Namespace) -> ServeSettings:
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "settings")}
    return load_settings(flags, settings_file=getattr(args, "settings", None))


def _open_store(s: ServeSettings, force: bool = False) -> Store:
    return Store(
        s.data_dir,
        Registry.from_yaml(s.config),
        hot_tier_bytes=s.hot_tier_bytes,
        block_cache_bytes=s.block_cache_bytes,
        force=force,
    )


def _setup_logging(level: str, default_format: str = "json") -> None:
    """JSON lines on stderr (serving/logs.py); ``FS_LOG_FORMAT=text`` for classic text."""
    from serving.logs import setup_logging

    fmt = os.environ.get("FS_LOG_FORMAT", default_format).strip().lower() or default_format
    if fmt not in ("json", "text"):
        raise InvalidArgumentError(f"FS_LOG_FORMAT must be 'json' or 'text', not {fmt!r}")
    setup_logging(level, fmt)


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.frontend.node import run

    s = _settings(args)
    _setup_logging(s.log_level)
    s.shard()  # invalid shard settings fail before anything is touched
    s.cluster()  # and so does a cluster map that is invalid or does not fit the shard
    if s.restore_from:
        from serving.snapshot import restore

        restore(s.restore_from, s.data_dir, s.keys_file or None)
        log.info("restored snapshot %s into %s", s.restore_from, s.data_dir)
    store = _open_store(s, force=args.force)
    run(store, s)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from serving.cluster import ClusterMap
    from serving.frontend.router import run

    s = _settings(args)
    _setup_logging(s.log_level)
    if not s.cluster_map:
        raise InvalidArgumentError(
            "route needs --cluster-map FILE (env FS_CLUSTER_MAP): shard index -> replica "
            "endpoints, see docs/scale-out.md"
        )
    try:
        cluster = ClusterMap.load(s.cluster_map)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"cluster map '{s.cluster_map}': {e}") from None
    run(Registry.from_yaml(s.config), cluster, s)
    return 0


def _curl_body(n: int) -> str:
    return json.dumps(
        {
            "features": ["user_profile:f000", "user_profile:f001", "user_account:country"],
            "entities": {"user_id": [1, 2, n + 7]},
        }
    )


async def _show_answers(server: object, demo_key: str | None) -> None:
    """Prints a curl call and a Python client call with the answers they really get."""
    import aiohttp

    from serving.client import AsyncFeatureClient
    from serving.frontend.node import FeatureServer

    assert isinstance(server, FeatureServer)
    host, http, grpc_port = server.settings.host, server.http_port, server.grpc_port
    body = _curl_body(10**9)
    print(
        f"\nHTTP (Feast-compatible), try it:\n  curl -s http://{host}:{http}/get-online-features \\"
    )
    auth_header = {"Authorization": f"Bearer {demo_key}"} if demo_key else {}
    if demo_key:
        print(f"    -H 'Authorization: Bearer {demo_key}' \\")
    print(f"    -H 'Content-Type: application/json' -d '{body}'")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{host}:{http}/get-online-features",
            data=body,
            headers={"Content-Type": "application/json", **auth_header},
        ) as resp,
    ):
        text = await resp.text()
    print(f"answer (HTTP {resp.status}):")
    print(textwrap.indent(json.dumps(json.loads(text), indent=None)[:1200], "  "))
    key_arg = f', api_key="{demo_key}"' if demo_key else ""
    code = f"""\
from serving.client import FeatureClient
with FeatureClient("{host}:{grpc_port}"{key_arg}) as client:
    m = client.get_dense({{"user_id": [1, 2, 3]}}, feature_service="user_profile_all")
    print(m.values.shape, m.values[:, :3])"""
    print("\nPython client (gRPC, dense float32 matrix):")
    print(textwrap.indent(code, "  "))
    async with AsyncFeatureClient(f"{host}:{grpc_port}", api_key=demo_key) as client:
        m = await client.get_dense({"user_id": [1, 2, 3]}, feature_service="user_profile_all")
    print("answer:")
    print(textwrap.indent(f"{m.values.shape} {m.values[:, :3].tolist()}", "  "))
    if "ranking_v2" in server.registry.feature_services:
        await _show_on_demand(f"http://{host}:{http}", auth_header)
    # the key rides in the URL's fragment, which the browser never sends: the page moves it to
    # the tab's session storage and drops it from the address bar
    fragment = f"#key={demo_key}" if demo_key else ""
    print(f"\nWeb console: http://{host}:{http}/ui/{fragment}")
    print(f"\nServing on {host}: HTTP {http}, gRPC {grpc_port}. Ctrl-C stops.", flush=True)


#: a request of the demo's feature service with on-demand outputs: `price` is request data
ON_DEMAND_BODY = {
    "feature_service": "ranking_v2",
    "entities": {"user_id": [1, 2], "item_id": ["item-0001", "item-0002"], "price": [19.9, 4.5]},
}


async def _show_on_demand(base: str, auth_header: dict[str, str]) -> None:
    """The demo's on-demand views answered: ranking_context (request-time, from the request's
    price) and item_ctr_scaled (write-time, stored when item_stats was loaded)."""
    import aiohttp

    body = json.dumps(ON_DEMAND_BODY)
    print("\nOn-demand features (docs/on-demand.md): a request-time transform over the request's")
    print("`price` and stored features, and a write-time one stored with item_stats:")
    auth = "".join(f" -H '{k}: {v}'" for k, v in auth_header.items())
    print(f"  curl -s {base}/get-online-features{auth} -H 'Content-Type: application/json' \\")
    print(f"    -d '{body}'")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/get-online-features",
            data=body,
            headers={"Content-Type": "application/json", **auth_header},
        ) as resp,
    ):
        answer = await resp.json()
    print(f"answer (HTTP {resp.status}):")
    if resp.status != 200:
        print(textwrap.indent(json.dumps(answer), "  "))
        return
    names = answer["metadata"]["feature_names"]
    for name, col in zip(names, answer["results"], strict=True):
        print(f"  {name:>18}: {col['values']}")


def _demo_key(keys: KeyFile) -> str:
    """The demo's key, the same across restarts of the demo store so that a script or a shell
    variable set from an earlier `make run` keeps working.

    The keys file holds hashes only, so the demo keeps its token beside it
    (``<keys file>.demo-token``, 0600, read only by the demo): reused while it is still an
    active key named ``demo``, else a new one replaces it. A real deployment's keys never
    come from here.
    """
    token_file = keys.path.with_name(keys.path.name + ".demo-token")
    with contextlib.suppress(OSError):
        token = token_file.read_text().strip()
        rec = keys.active(token)
        if rec is not None and rec.name == "demo":
            return token
    for rec in keys.load():
        if rec.name == "demo" and not rec.revoked:
            keys.revoke(rec.key_id)
    token, _ = keys.create("demo", read=["*"], admin=True)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def cmd_demo(args: argparse.Namespace) -> int:
    """Loads the sample (make sample wrote it) and serves it, showing real answers."""
    from serving.frontend.node import run
    from serving.loaders.batch import materialize

    s = _settings(args)
    # The demo has no Kafka broker; `serve` runs the stream sources' loaders.
    s.ingest = False
    # A person reads the demo's output: plain text logs unless FS_LOG_FORMAT says otherwise.
    _setup_logging(s.log_level, default_format="text")
    registry = Registry.from_yaml(s.config)
    missing = [
        v.batch_source.path
        for v in registry.feature_views.values()
        if v.batch_source and not Path(v.batch_source.path).exists()
    ]
    if missing:
        print(
            f"sample data missing ({', '.join(missing)}); run `make sample` first", file=sys.stderr
        )
        return 2
    store = _open_store(s)
    summary = materialize(store, progress=sys.stderr.isatty())
    print(summary)
    key = None
    if not s.no_auth:
        key = _demo_key(KeyFile(s.keys_file or default_keys_file(s.data_dir)))
        print(f"\nAPI key: {key}")
    run(store, s, on_started=lambda server: _show_answers(server, key))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from serving.admin_client import held_store_server, send_admin_job, store_in_use

    s = _settings(args)
    server, how, held = args.server, "", False
    if server is None:
        try:
            with _open_store(s) as store:
                print(json.dumps(store.stats(), indent=2))
            return 0
        except StorageError as e:
            if not store_in_use(e):
                raise
        (server, how), held = held_store_server(s.data_dir), True
    code, answer = send_admin_job(
        server, args.api_key, "/admin/stats", None, what="stats request", data_dir=s.data_dir,
        held=held, how=how,
    )  # fmt: skip
    if answer is not None:
        print(json.dumps(answer, indent=2))
    return code


def _keys_file(args: argparse.Namespace) -> KeyFile:
    return KeyFile(args.keys_file or default_keys_file(args.data_dir))


def _expires_seconds(text: str | None) -> float | None:
    """``--expires``: a duration with a unit; a bare number is refused, since a reader of
    `--expires 90` cannot tell whether it meant 90 seconds or 90 days."""
    from serving.registry import parse_ttl

    if not text:
        return None
    if text.strip().isdigit():
        raise InvalidArgumentError(
            f"--expires {text}: give a unit: s, m, h, d or w (e.g. {text.strip()}d, "
            f"{text.strip()}h, 1h30m)"
        )
    try:
        seconds = parse_ttl(text)
    except ValueError as e:
        raise InvalidArgumentError(f"--expires {text}: {e}") from None
    if seconds <= 0:
        raise InvalidArgumentError(f"--expires {text}: the lifetime must be longer than 0")
    return float(seconds)


def _check_scopes(args: argparse.Namespace) -> None:
    """Every ``--read`` name must be a view or service of the registry and every ``--write``
    name a view: a typo would make a key that only ever gets 403."""
    names = [*(args.read or ()), *(args.write or ())]
    if all(n == "*" for n in names):
        return
    from serving.registry import did_you_mean

    if not Path(args.config).is_file():
        raise InvalidArgumentError(
            f"registry '{args.config}' not found: --read / --write name its views and services, "
            "so give the registry the servers serve with --config (env FS_CONFIG)"
        )
    registry = Registry.from_yaml(args.config)
    views, services = sorted(registry.feature_views), sorted(registry.feature_services)
    for flag, given, known, what in (
        ("--read", args.read or (), [*views, *services], "feature view or feature service"),
        ("--write", args.write or (), views, "feature view"),
    ):
        for name in given:
            if flag == "--write" and name in services:
                raise InvalidArgumentError(
                    f"--write {name}: '{name}' is a feature service; --write takes feature views"
                )
            if name != "*" and name not in known:
                raise InvalidArgumentError(
                    f"{flag} {name}: no {what} '{name}' in '{args.config}'"
                    f"{did_you_mean(name, known)}; * = all"
                )


def cmd_keys_create(args: argparse.Namespace) -> int:
    expires = _expires_seconds(args.expires)
    _check_scopes(args)
    token, rec = _keys_file(args).create(
        args.name,
        read=args.read or (),
        write=args.write or (),
        admin=args.admin,
        expires_in_seconds=expires,
        projects=args.project or (),
        role=args.role or "",
    )
    print(f"created key '{rec.name}' (id {rec.key_id}); it is shown only now:", file=sys.stderr)
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys = _keys_file(args).load()
    if args.json:
        print(json.dumps([{k: v for k, v in r.to_json().items() if k != "sha256"} for r in keys]))
        return 0
    print(
        f"{'id':8}  {'name':20}  {'state':8}  {'role':6}  {'projects':12}  {'expires (UTC)':16}  "
        "read / write"
    )
    for r in keys:
        state = "revoked" if r.revoked else ("expired" if r.expired() else "active")
        expires = (
            "never"
            if r.expires_at is None
            else datetime.fromtimestamp(r.expires_at, UTC).strftime("%Y-%m-%d %H:%M")
        )
        print(
            f"{r.key_id:8}  {r.name:20}  {state:8}  {r.effective_role or '-':6}  "
            f"{','.join(r.projects) or '*':12}  {expires:16}  "
            f"{','.join(r.read) or '-'} / {','.join(r.write) or '-'}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    rec = _keys_file(args).revoke(args.key)
    print(f"revoked key '{rec.name}' (id {rec.key_id}); servers drop it within a second")
    return 0


def _add_key_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcommon = argparse.ArgumentParser(add_help=False, parents=[common])
    kcommon.add_argument("--keys-file", help="keys file (default <data-dir>.keys.json)")
    create = ksub.add_parser("create", parents=[kcommon], help="create a key (printed once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--read", nargs="+", metavar="VIEW_OR_SERVICE", help="readable views / services; * = all"
    )
    create.add_argument("--write", nargs="+", metavar="VIEW", help="writable views; * = all")
    create.add_argument("--admin", action="store_true", help="admin: jobs, registry, keys")
    create.add_argument(
        "--project",
        nargs="+",
        metavar="PROJECT",
        help="projects the key belongs to (default: every project the servers serve)",
    )
    create.add_argument(
        "--role",
        choices=("reader", "writer", "admin"),
        help="reader reads, writer also writes, admin also administers; --read / --write "
        "narrow the views (default: as --read / --write / --admin say)",
    )
    create.add_argument(
        "--expires", help="lifetime with a unit (s, m, h, d, w), e.g. 90d or 12h (default: never)"
    )
    create.set_defaults(func=cmd_keys_create)
    lst = ksub.add_parser("list", parents=[kcommon], help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)
    revoke = ksub.add_parser("revoke", parents=[kcommon], help="revoke a key by name or id")
    revoke.add_argument("key", help="name or id")
    revoke.set_defaults(func=cmd_keys_revoke)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="feature-serving", description=__doc__)
    p.add_argument("--version", action="version", version=f"feature-serving {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="serve gRPC and HTTP")
    add_serve_flags(serve)
    serve.add_argument(
        "--force",
        action="store_true",
        help="apply registry changes that drop stored features",
    )
    serve.set_defaults(func=cmd_serve)

    route = sub.add_parser(
        "route",
        help="route requests over a sharded cluster (for clients that cannot route)",
    )
    route.add_argument(
        "--config",
        default=os.environ.get("FS_CONFIG"),
        help="registry file, the one the nodes serve (default features.yaml; env FS_CONFIG)",
    )
    add_route_flags(route)
    route.set_defaults(func=cmd_route)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="load the sample and serve it; its API key 'demo' stays the same across restarts "
        "(the token is kept in <keys file>.demo-token until the key is revoked)",
    )
    add_serve_flags(demo)
    demo.add_argument("--sample-dir", help="where `make sample` wrote the data (informational)")
    demo.set_defaults(func=cmd_demo)

    stats = sub.add_parser("stats", parents=[common], help="hot-tier and RocksDB figures")
    stats.add_argument(
        "--server",
        metavar="URL",
        help="ask this server (GET /admin/stats, an admin key) for its store's figures. Without "
        "it, the store in --data-dir is opened here, and only when a server holds it is that "
        "server asked (default: the address it recorded beside the store)",
    )
    stats.add_argument(
        "--api-key",
        default=os.environ.get("FS_API_KEY"),
        help="admin API key for --server (env FS_API_KEY)",
    )
    stats.set_defaults(func=cmd_stats)

    _add_key_commands(sub, common)

    from serving.loaders import batch as batch_loader

    batch_loader.add_commands(sub, common)
    from serving.loaders import kafka as kafka_loader

    kafka_loader.add_commands(sub, common)
    from serving import snapshot

    snapshot.add_commands(sub, common)
    from serving.feature_log import export as feature_log_export

    feature_log_export.add_commands(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("config", "data_dir"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(ServeSettings(), name))
    try:
        return int(args.func(args))
    except StorageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except FeatureServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        asyncio.set_event_loop(None)
