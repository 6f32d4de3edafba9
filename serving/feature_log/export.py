"""``feature-serving logs export``: a training set from served-feature logs.

The logged rows of one feature service in a time window (``__log_timestamp`` in
``[start, end)``), read from its Delta table or Parquet dataset, joined with a labels table:

- on the request id, when the labels have a ``__request_id`` column (or ``request_id``): each
  label gets the row of its entity served in that request (with several entities per request,
  the labels must also carry the join keys to tell them apart: all of the labels' columns that
  are logged join keys are used);
- otherwise on the join keys, as of the label's time: each label (``label_timestamp``, or
  ``event_timestamp``) gets the newest logged row of its entity logged at or before it.

Labels without a logged row (a request that was not sampled, or a row lost) are left out and
counted; the summary line says how many (docs/feature-logging.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from serving.errors import InvalidArgumentError, NotFoundError
from serving.feature_log.destinations import LOG_DATE, LOG_TIMESTAMP, REQUEST_ID
from serving.registry import Registry

LABEL_TIME_COLUMNS = ("label_timestamp", "event_timestamp")


def _time(text: str, flag: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgumentError(
            f"{flag} {text!r}: expected an ISO 8601 time such as 2026-12-03T10:00:00Z"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _is_day(name: str) -> bool:
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return len(name) == 10


def read_logs(registry: Registry, service: str, start: dt.datetime, end: dt.datetime) -> pa.Table:
    """The logged rows of ``service`` with ``start <= __log_timestamp < end``."""
    svc = registry.service(service)
    if svc.logging is None:
        raise InvalidArgumentError(f"feature service '{service}' has no logging: block")
    tables = [d for d in svc.logging.destinations if d.type in ("delta", "parquet")]
    if not tables:
        raise InvalidArgumentError(
            f"feature service '{service}' logs to Kafka only; export reads a delta or parquet "
            "destination"
        )
    dest = tables[0]
    lo, hi = pa.scalar(start, pa.timestamp("us", "UTC")), pa.scalar(end, pa.timestamp("us", "UTC"))
    if dest.type == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            dataset = DeltaTable(dest.path).to_pyarrow_dataset()
        except TableNotFoundError:
            raise NotFoundError(f"no log table at {dest.path} (nothing logged yet?)") from None
    else:
        if not os.path.isdir(dest.path):
            raise NotFoundError(f"no log dataset at {dest.path} (nothing logged yet?)")
        # one folder per day (YYYY-MM-DD): only the window's days are listed
        days = [
            os.path.join(dest.path, d)
            for d in sorted(os.listdir(dest.path))
            if _is_day(d) and start.date().isoformat() <= d <= end.date().isoformat()
        ]
        files = [
            os.path.join(d, f)
            for d in days
            for f in sorted(os.listdir(d))
            if f.endswith(".parquet") and not f.startswith(".")
        ]
        if not files:
            return pa.table({})
        dataset = ds.dataset(files, format="parquet")
    flt = (ds.field(LOG_TIMESTAMP) >= lo) & (ds.field(LOG_TIMESTAMP) < hi)
    # the day partitions prune whole files before the timestamp filter reads them
    flt = flt & (ds.field(LOG_DATE) >= pa.scalar(start.date(), pa.date32()))
    flt = flt & (ds.field(LOG_DATE) <= pa.scalar(end.date(), pa.date32()))
    return dataset.to_table(filter=flt)


def join_labels(
    logs: pa.Table, labels: pa.Table, join_keys: list[str]
) -> tuple[pa.Table, dict[str, Any]]:
    """The labels joined with their logged rows (see the module doc); and counts."""
    rid = next((c for c in (REQUEST_ID, "request_id") if c in labels.column_names), None)
    if rid is not None:
        keys = [k for k in join_keys if k in labels.column_names and k in logs.column_names]
        left = labels.rename_columns([REQUEST_ID if c == rid else c for c in labels.column_names])
        on = [REQUEST_ID, *keys]
        right = logs.select([c for c in logs.column_names if c not in left.column_names or c in on])
        out = left.join(right, keys=on, join_type="inner")
        how = "request id" + (f" and {', '.join(keys)}" if keys else "")
    else:
        tcol = next((c for c in LABEL_TIME_COLUMNS if c in labels.column_names), None)
        keys = [k for k in join_keys if k in labels.column_names]
        if tcol is None or not keys:
            raise InvalidArgumentError(
                "the labels need a __request_id (or request_id) column, or the join keys "
                f"({', '.join(join_keys)}) and a label time ({' or '.join(LABEL_TIME_COLUMNS)})"
            )
        ts_type = pa.timestamp("us", "UTC")
        left = labels.set_column(
            labels.column_names.index(tcol), tcol, pc.cast(labels.column(tcol), ts_type)
        )
        left = left.append_column("__t", pc.cast(left.column(tcol), pa.int64()))
        right = logs.select(
            [c for c in logs.column_names if c not in left.column_names or c in keys]
        )
        right = right.append_column("__t", pc.cast(right.column(LOG_TIMESTAMP), pa.int64()))
        right = right.sort_by("__t")
        # as-of: the newest logged row at or before the label's time (any age)
        out = left.sort_by("__t").join_asof(right, on="__t", by=keys, tolerance=-(2**62))
        out = out.filter(pc.is_valid(out.column(LOG_TIMESTAMP))).drop_columns(["__t"])
        how = f"{', '.join(keys)} as of {tcol}"
    counts: dict[str, Any] = {"labels": labels.num_rows, "joined": out.num_rows}
    counts["without_logged_row"] = labels.num_rows - out.num_rows
    return out, {**counts, "how": how}


def cmd_logs_export(args: argparse.Namespace) -> int:
    registry = Registry.from_yaml(args.config)
    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    if end <= start:
        raise InvalidArgumentError(f"--end {args.end} is not after --start {args.start}")
    logs = read_logs(registry, args.service, start, end)
    join_keys: list[str] = []
    svc = registry.service(args.service)
    for ref in svc.features:
        view = registry.feature_views.get(ref.view)
        for k in view.join_keys if view is not None else ():
            if k.name not in join_keys:
                join_keys.append(k.name)
    try:
        labels = pq.read_table(args.labels)
    except (FileNotFoundError, OSError) as e:
        raise InvalidArgumentError(f"--labels {args.labels}: {e}") from None
    out, counts = join_labels(logs, labels, join_keys)
    pq.write_table(out, args.out)
    print(
        f"wrote {args.out}: {counts['joined']} rows ({counts['labels']} labels joined on "
        f"{counts['how']}; {counts['without_logged_row']} without a logged row left out; "
        f"{logs.num_rows} logged rows in the window)",
        file=sys.stderr,
    )
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    logs = sub.add_parser("logs", help="served-feature logs (docs/feature-logging.md)")
    lsub = logs.add_subparsers(dest="logs_command", required=True)
    export = lsub.add_parser(
        "export",
        parents=[common],
        help="a training set: logged rows of a feature service joined with labels",
    )
    export.add_argument("--service", required=True, help="the logged feature service")
    export.add_argument("--start", required=True, help="first log time (ISO 8601, UTC default)")
    export.add_argument("--end", required=True, help="end of the window (exclusive)")
    export.add_argument(
        "--labels",
        required=True,
        help="Parquet file of labels: __request_id (or request_id), or the join keys and "
        "label_timestamp / event_timestamp",
    )
    export.add_argument("--out", required=True, help="Parquet file to write")
    export.set_defaults(func=cmd_logs_export)
