"""``feature-serving materialize`` and ``materialize-incremental``: in this process, through the
server that has the store open (``/admin/materialize``), or via Kafka."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from serving.admin_client import DEFAULT_SERVER, held_store_server, send_admin_job, store_in_use
from serving.errors import FeatureServingError, InvalidArgumentError, StorageError
from serving.loaders.batch.api import materialize, materialize_incremental
from serving.loaders.batch.meta import BATCH_ROWS
from serving.loaders.batch.publish import KAFKA_TIMEOUT_S, RDKAFKA_LOG
from serving.loaders.publish_state import STATE_TOPIC
from serving.registry import Registry
from serving.store import Store


def _shared_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "views", nargs="*", metavar="VIEW", help="feature views (default: all with a batch_source)"
    )
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="fail: validate everything first and write nothing on bad input (default); "
        "skip: skip bad rows, count them and list the first few",
    )
    p.add_argument("--dry-run", action="store_true", help="validate the sources, write nothing")
    p.add_argument(
        "--as-of-version",
        type=int,
        metavar="N",
        help="table formats: read version N (time travel): the Delta version, the Iceberg "
        "snapshot id or the Hudi instant",
    )
    p.add_argument(
        "--batch-rows", type=int, default=BATCH_ROWS, help=f"rows per batch (default {BATCH_ROWS})"
    )
    p.add_argument(
        "--no-partition-pruning",
        dest="prune_partitions",
        action="store_false",
        help="read every date partition (when partitions are not the event's UTC date)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress reporting on stderr (default auto: a bar on a terminal, log lines "
        "otherwise)",
    )


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Registers ``materialize`` and ``materialize-incremental`` on the CLI's subparsers.

    ``common`` already defines ``--config`` and ``--data-dir``.
    """
    m = subparsers.add_parser(
        "materialize",
        parents=[common],
        help="load rows of a time window from the batch sources",
        description="Load rows with START <= event timestamp < END from each view's batch "
        "source (Parquet file / directory / hive dataset, or a Delta, Iceberg or Hudi "
        "table) into the store.",
    )
    _shared_flags(m)
    m.add_argument("--start", help="window start, inclusive (ISO 8601, 'now', 'now-2d')")
    m.add_argument("--end", help="window end, exclusive (default: unbounded)")
    m.add_argument(
        "--via-kafka",
        action="store_true",
        help="publish the rows to each view's stream_source topic instead of writing the "
        "store, so every shard and replica applies them (needs only the registry; no "
        "watermark is recorded)",
    )
    m.set_defaults(func=cmd_materialize)
    inc = subparsers.add_parser(
        "materialize-incremental",
        parents=[common],
        help="load what is new since the last run (watermark / table version)",
        description="Load everything since each view's last successful run: Parquet by "
        "event-time watermark up to END (default now); Delta, Iceberg and Hudi by table "
        "version (what the commits since added, and tombstones for what they deleted).",
    )
    _shared_flags(inc)
    inc.add_argument("--end", help="Parquet sources: load up to this time (default now)")
    inc.add_argument(
        "--via-kafka",
        action="store_true",
        help="publish what is new since the last published watermark / Delta version to each "
        "view's stream_source topic instead of writing the store (needs only the registry); "
        "the new watermark is recorded in --state-topic once the broker acknowledged every "
        "record",
    )
    inc.add_argument(
        "--state-topic",
        default=os.environ.get("FS_BATCH_STATE_TOPIC", STATE_TOPIC),
        help=f"--via-kafka: the compacted topic holding the published watermarks, on the "
        f"cluster of each view's stream topic; created if missing (default {STATE_TOPIC}; "
        f"env FS_BATCH_STATE_TOPIC)",
    )
    inc.set_defaults(func=cmd_materialize_incremental)
    for p in (m, inc):
        p.add_argument(
            "--bootstrap-servers",
            help="--via-kafka: override every stream source's bootstrap servers",
        )
        p.add_argument(
            "--kafka-timeout",
            type=float,
            default=KAFKA_TIMEOUT_S,
            metavar="SECONDS",
            help=f"--via-kafka: give up when the brokers do not answer within this time "
            f"(default {KAFKA_TIMEOUT_S:g})",
        )
        p.add_argument(
            "--server",
            metavar="URL",
            help="run the job on this server (its admin API, its own store). Without it, the "
            "store in --data-dir is opened here, and only when a server holds it is that server "
            "asked (the address it recorded beside the store, else FS_SERVER_URL, else "
            f"FS_HTTP_PORT; default {DEFAULT_SERVER})",
        )
        p.add_argument(
            "--api-key",
            default=os.environ.get("FS_API_KEY"),
            help="admin API key for --server (env FS_API_KEY)",
        )

    d = subparsers.add_parser(
        "diff",
        parents=[common],
        help="rows added, changed and deleted between two versions of a view's source",
        description="Compare two versions of a view's Delta, Iceberg or Hudi source (--from, "
        "--to: a Delta version, an Iceberg snapshot id, a Hudi instant), or a version with "
        "the online store in --data-dir (--against-online). One row per entity: the one the "
        "merge rule keeps.",
    )
    d.add_argument("view", metavar="VIEW", help="the feature view")
    d.add_argument("--from", dest="from_version", type=int, metavar="V1", help="older version")
    d.add_argument(
        "--to",
        dest="to_version",
        type=int,
        metavar="V2",
        help="newer version (default: the latest)",
    )
    d.add_argument(
        "--against-online",
        action="store_true",
        help="compare the online store with --to (default the latest version) instead",
    )
    d.add_argument("--show", action="store_true", help="print the rows, not only the counts")
    d.add_argument(
        "--limit", type=int, default=50, help="--show: rows printed per kind (default 50)"
    )
    d.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    """``feature-serving diff``: exit 1 on bad input, 2 when the store is held by a server."""
    from serving.loaders.batch.diff import diff_online, diff_versions, format_diff

    config = getattr(args, "config", None) or os.environ.get("FS_CONFIG") or "features.yaml"
    try:
        if args.limit < 1:
            raise InvalidArgumentError(f"--limit must be at least 1, got {args.limit}")
        if args.against_online:
            if args.from_version is not None:
                raise InvalidArgumentError(
                    "--against-online compares the store with --to (or the latest version); "
                    "--from does not apply"
                )
            try:
                store = _open(args)
            except _StoreInUse as e:
                print(
                    f"error: the store in {e.data_dir} is held by a running server; diff "
                    f"--against-online opens it itself: run it where no server holds the store "
                    f"(e.g. on a snapshot of it: POST /admin/snapshot)",
                    file=sys.stderr,
                )
                return 2
            with store:
                result = diff_online(store, args.view, args.to_version)
        else:
            if args.from_version is None:
                raise InvalidArgumentError("diff needs --from V1 (or --against-online)")
            result = diff_versions(
                Registry.from_yaml(config), args.view, args.from_version, args.to_version
            )
    except StorageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except FeatureServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(format_diff(result, show=args.show, limit=args.limit))
    return 0


class _StoreInUse(Exception):
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir


def _open(args: argparse.Namespace) -> Store:
    data_dir = getattr(args, "data_dir", None) or os.environ.get("FS_DATA_DIR") or ".data/store"
    config = getattr(args, "config", None) or os.environ.get("FS_CONFIG") or "features.yaml"
    kwargs: dict[str, Any] = {}
    if getattr(args, "hot_tier_bytes", None) is not None:
        kwargs["hot_tier_bytes"] = int(args.hot_tier_bytes)
    try:
        return Store(data_dir, config, **kwargs)
    except StorageError as e:
        if store_in_use(e):
            raise _StoreInUse(data_dir) from None
        raise


def _send_to_server(
    args: argparse.Namespace, incremental: bool, data_dir: str, held: bool = True, how: str = ""
) -> int:
    """Runs the job on a server through ``POST /admin/materialize``: the one holding the
    store, or the one named by ``--server`` (``held=False``)."""
    body = {
        "views": args.views or None,
        "start": getattr(args, "start", None),
        "end": args.end,
        "incremental": incremental,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "as_of_version": args.as_of_version,
    }
    code, answer = send_admin_job(
        args.server,
        args.api_key,
        "/admin/materialize",
        body,
        what="job",
        data_dir=data_dir,
        held=held,
        how=how,
    )
    if answer is not None:
        print(answer["summary"])
    return code


def _run_via_kafka(args: argparse.Namespace, incremental: bool) -> int:
    """``materialize[-incremental] --via-kafka``: needs the registry only, never opens the
    store (so it works while a server holds it, or where there is none). Exit codes: 1 bad
    input, 2 brokers unreachable or records / state not acknowledged."""
    config = getattr(args, "config", None) or os.environ.get("FS_CONFIG") or "features.yaml"
    progress = {"always": True, "never": False}.get(args.progress, True)
    # librdkafka logs every failed connection attempt; the run's own error names the problem
    RDKAFKA_LOG.setLevel(logging.CRITICAL)
    common: dict[str, Any] = {
        "as_of_version": args.as_of_version,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "progress": progress,
        "batch_rows": args.batch_rows,
        "prune_partitions": args.prune_partitions,
        "via_kafka": True,
        "bootstrap_servers": args.bootstrap_servers,
        "kafka_timeout": args.kafka_timeout,
    }
    try:
        registry = Registry.from_yaml(config)
        if incremental:
            summary = materialize_incremental(
                registry, args.views or None, end=args.end, state_topic=args.state_topic, **common
            )
        else:
            summary = materialize(registry, args.views or None, args.start, args.end, **common)
    except StorageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except FeatureServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _run_cli(args: argparse.Namespace, incremental: bool) -> int:
    if getattr(args, "via_kafka", False):
        return _run_via_kafka(args, incremental)
    if args.server is not None:  # a server named on the command line runs the job
        data_dir = args.data_dir or os.environ.get("FS_DATA_DIR") or ".data/store"
        return _send_to_server(args, incremental, data_dir, held=False)
    try:
        store = _open(args)
    except _StoreInUse as e:
        args.server, how = held_store_server(e.data_dir)
        return _send_to_server(args, incremental, e.data_dir, how=how)
    progress = {"always": True, "never": False}.get(args.progress, True)
    common: dict[str, Any] = {
        "as_of_version": args.as_of_version,
        "on_error": args.on_error,
        "dry_run": args.dry_run,
        "progress": progress,
        "batch_rows": args.batch_rows,
        "prune_partitions": args.prune_partitions,
    }
    try:
        with store:
            if incremental:
                summary = materialize_incremental(store, args.views or None, end=args.end, **common)
            else:
                summary = materialize(store, args.views or None, args.start, args.end, **common)
    except InvalidArgumentError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    return _run_cli(args, incremental=False)


def cmd_materialize_incremental(args: argparse.Namespace) -> int:
    return _run_cli(args, incremental=True)
