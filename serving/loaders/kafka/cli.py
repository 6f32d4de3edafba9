"""``feature-serving ingest``: the Kafka loader standalone, until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from serving.loaders.kafka.loader import KafkaLoader, log
from serving.sharding import Shard
from serving.store import Store


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``ingest`` on the CLI's subparsers (``common`` defines --config, --data-dir)."""
    p = subparsers.add_parser(
        "ingest",
        parents=[common],
        help="consume the Kafka stream sources into the store (standalone loader)",
        description="Consume each view's Kafka stream source into the store until stopped "
        "(SIGTERM / Ctrl-C finish the current batch). Use it when no server runs; `serve` "
        "runs the same loader in-process.",
    )
    p.add_argument(
        "views", nargs="*", help="feature views to consume (default: all with a stream source)"
    )
    p.add_argument("--bootstrap-servers", help="override every source's bootstrap servers")
    p.add_argument(
        "--stop-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit once every partition is consumed to its end and no record came for SECONDS; "
        "exit 1 if a topic does not exist or no broker answers for SECONDS (default: run until "
        "stopped, waiting for missing topics)",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="log counters this often (0: never; default 10)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("FS_LOG_LEVEL", "info"),
        help="debug, info, warning, error (default info; env FS_LOG_LEVEL)",
    )
    p.add_argument(
        "--shard-index",
        type=int,
        metavar="K",
        help="this node is shard K of --shard-count: consume only partitions p with p %% N == K "
        "(default: every partition)",
    )
    p.add_argument(
        "--shard-count",
        type=int,
        metavar="N",
        help="number of shards (with --shard-index; default: not sharded)",
    )
    p.add_argument(
        "--restore-from",
        metavar="SNAPSHOT_DIR",
        help="first copy this snapshot (`feature-serving snapshot create`) into the data "
        "directory, which must be empty or absent; consumption resumes at its offsets",
    )
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = args.data_dir or os.environ.get("FS_DATA_DIR") or ".data/store"
    config = args.config or os.environ.get("FS_CONFIG") or "features.yaml"
    shard = Shard.parse(args.shard_index, args.shard_count, what="--shard-index / --shard-count")
    if args.restore_from:
        from serving.snapshot import restore

        restore(args.restore_from, data_dir)
    store = Store(data_dir, config)
    with store:
        loader = KafkaLoader(
            store, args.views or None, bootstrap_servers=args.bootstrap_servers, shard=shard
        )
        if not loader.sources:
            print("error: no feature view has a stream_source", file=sys.stderr)
            return 1

        def on_signal(signum: int, _frame: Any) -> None:
            log.info(
                "kafka loader: %s, stopping after the current batch", signal.Signals(signum).name
            )
            loader.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("kafka loader: started for %s", ", ".join(s.view.name for s in loader.sources))
        loader.run(
            stop_when_idle=args.stop_when_idle,
            stats_interval=args.stats_interval or None,
            on_stats=lambda st: log.info("kafka loader: %s", json.dumps(_brief(st))),
        )
        log.info("kafka loader: stopped: %s", json.dumps(_brief(loader.stats())))
        if loader.gave_up:
            for line in loader.gave_up:
                print(
                    f"error: {line}, for longer than --stop-when-idle {args.stop_when_idle:g} s",
                    file=sys.stderr,
                )
            return 1
    return 0


def _brief(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    keys = (
        "records",
        "applied",
        "skipped_older",
        "errors",
        "misrouted",
        "dead_lettered",
        "lag_total",
        "resets",
    )
    return {view: {k: s[k] for k in keys} for view, s in stats.items()}
