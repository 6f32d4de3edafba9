"""`feature-serving` / `python -m serving`: serve, load, inspect."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from serving import __version__
from serving.config import ServeSettings, add_serve_flags, load_settings
from serving.errors import FeatureServingError, StorageError
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import run

    s = _settings(args)
    _setup_logging(s.log_level)
    store = _open_store(s, force=args.force)
    run(store, s)
    return 0


def _curl_body(n: int) -> str:
    return json.dumps(
        {
            "features": ["user_profile:f000", "user_profile:f001", "user_account:country"],
            "entities": {"user_id": [1, 2, n + 7]},
        }
    )


async def _show_answers(server: object) -> None:
    """Prints a curl call and a Python client call with the answers they really get."""
    import aiohttp

    from serving.client import AsyncFeatureClient
    from serving.server import FeatureServer

    assert isinstance(server, FeatureServer)
    host, http, grpc_port = server.settings.host, server.http_port, server.grpc_port
    body = _curl_body(10**9)
    print(
        f"\nHTTP (Feast-compatible), try it:\n  curl -s http://{host}:{http}/get-online-features \\"
    )
    print(f"    -H 'Content-Type: application/json' -d '{body}'")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{host}:{http}/get-online-features",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        text = await resp.text()
    print(f"answer (HTTP {resp.status}):")
    print(textwrap.indent(json.dumps(json.loads(text), indent=None)[:1200], "  "))
    code = f"""\
from serving.client import FeatureClient
with FeatureClient("{host}:{grpc_port}") as client:
    m = client.get_dense({{"user_id": [1, 2, 3]}}, feature_service="user_profile_all")
    print(m.values.shape, m.values[:, :3])"""
    print("\nPython client (gRPC, dense float32 matrix):")
    print(textwrap.indent(code, "  "))
    async with AsyncFeatureClient(f"{host}:{grpc_port}") as client:
        m = await client.get_dense({"user_id": [1, 2, 3]}, feature_service="user_profile_all")
    print("answer:")
    print(textwrap.indent(f"{m.values.shape} {m.values[:, :3].tolist()}", "  "))
    print(f"\nServing on {host}: HTTP {http}, gRPC {grpc_port}. Ctrl-C stops.", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Loads the sample (make sample wrote it) and serves it, showing real answers."""
    from serving.batch_loader import materialize
    from serving.server import run

    s = _settings(args)
    _setup_logging(s.log_level)
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
    run(store, s, on_started=_show_answers)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    s = _settings(args)
    with _open_store(s) as store:
        print(json.dumps(store.stats(), indent=2))
    return 0


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

    demo = sub.add_parser("demo", parents=[common], help="load the sample and serve it")
    add_serve_flags(demo)
    demo.add_argument("--sample-dir", help="where `make sample` wrote the data (informational)")
    demo.set_defaults(func=cmd_demo)

    stats = sub.add_parser("stats", parents=[common], help="hot-tier and RocksDB figures")
    stats.set_defaults(func=cmd_stats)

    from serving import batch_loader

    batch_loader.add_commands(sub, common)
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
