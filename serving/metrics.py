"""Prometheus metrics of the serving process.

Request metrics are observed in Python once per request (a histogram observation and a counter
increment: about a microsecond). Everything per value (statuses by view, freshness) is counted in
Rust and, like the store's figures, read only when Prometheus scrapes, by one custom collector.
Names follow Prometheus conventions: ``_seconds``, ``_bytes``, ``_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from serving import __version__, _rust_core

NS = "feature_serving"
STATUS_NAMES = ("INVALID", "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
#: fine enough to tell 100 us from 250 us: the whole W1 answer takes a few hundred us
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

_ROCKSDB = {
    "estimate-num-keys": ("rocksdb_estimated_keys", "Estimated keys (rows) per view"),
    "estimate-live-data-size": ("rocksdb_live_data_bytes", "Estimated live data per view"),
    "total-sst-files-size": ("rocksdb_sst_files_bytes", "Size of all SST files per view"),
    "cur-size-all-mem-tables": ("rocksdb_memtable_bytes", "Memtable size per view"),
    "estimate-pending-compaction-bytes": (
        "rocksdb_pending_compaction_bytes",
        "Bytes compaction still has to rewrite per view",
    ),
}


class ServingMetrics:
    """Every metric of one serving process, in its own registry (one per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{NS}_requests_total",
            "Requests answered, by API, method and status code",
            ["api", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            f"{NS}_request_duration_seconds",
            "Time from receiving a request to handing its answer to the transport",
            ["api", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            f"{NS}_requests_in_flight", "Requests being handled", ["api"], registry=r
        )
        self.rejected = Counter(
            f"{NS}_rejected_requests_total",
            "Requests refused before any lookup, by reason (limit, auth, overload, invalid)",
            ["api", "reason"],
            registry=r,
        )
        self.transform_latency = Histogram(
            f"{NS}_transform_duration_seconds",
            "Time an on-demand view's transform took, per call (one call per request or batch)",
            ["view"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transform_errors = Counter(
            f"{NS}_transform_errors",
            "On-demand transforms that raised or returned output not matching the registry",
            ["view"],
            registry=r,
        )
        self.limited = Counter(
            f"{NS}_limited_requests",
            "Requests refused by a caller's rate limit or concurrency cap, by project and limit "
            "(rate, concurrency): labels bounded by the projects served (docs/security.md)",
            ["project", "limit"],
            registry=r,
        )
        self.auth_failures = Counter(
            f"{NS}_auth_failures_total", "Requests with a missing or bad API key", registry=r
        )
        self.build = Info(f"{NS}_build", "Version and build of the serving process", registry=r)
        ProcessCollector(registry=r)
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def describe_build(self, **info: str) -> None:
        self.build.info({"version": __version__, **info})

    def observe(self, api: str, method: str, code: str, seconds: float) -> None:
        """One request: counter and latency (label children cached, no per-call lookup)."""
        key = (api, method, code)
        child = self._children.get(key)
        if child is None:
            child = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def observe_transform(self, view: str, seconds: float, failed: bool) -> None:
        """One run of an on-demand view's transform."""
        self.transform_latency.labels(view).observe(seconds)
        if failed:
            self.transform_errors.labels(view).inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class CoreCollector(Collector):
    """Reads the Rust core's counters and the store's figures on scrape."""

    def __init__(
        self,
        core: _rust_core.Store,
        views: Callable[[], dict[str, int]],
        loaders: Callable[[], list[dict[str, Any]]] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._core = core
        self._views_ttl = views
        self._loaders = loaders
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        if self._core.closed:
            return
        s = self._core.serving_stats()
        values = CounterMetricFamily(
            f"{NS}_feature_values",
            "Feature values served, by feature view and status; a rise of NOT_FOUND or "
            "OUTSIDE_MAX_AGE means a pipeline broke",
            labels=["view", "status"],
        )
        newest = GaugeMetricFamily(
            f"{NS}_newest_event_timestamp_seconds",
            "Newest event time of a row served, per view (Unix seconds)",
            labels=["view"],
        )
        age = GaugeMetricFamily(
            f"{NS}_served_data_age_seconds",
            "Age of the newest row served, per view",
            labels=["view"],
        )
        now = time.time()
        for view, v in s["views"].items():
            for i, name in enumerate(STATUS_NAMES[1:], start=1):
                values.add_metric([view, name], v["values"][i])
            if v["newest_event_ts"]:
                ts = v["newest_event_ts"] / 1e6
                newest.add_metric([view], ts)
                age.add_metric([view], max(0.0, now - ts))
        yield values
        yield newest
        yield age
        for name, key, help_ in (
            ("request_entities", "entities", "Entities per request"),
            ("request_features", "features", "Features per request"),
        ):
            buckets, acc = [], 0
            for le, n in zip([*s["buckets"], float("inf")], s[key], strict=True):
                acc += n
                buckets.append((str(float(le)) if le != float("inf") else "+Inf", acc))
            h = HistogramMetricFamily(f"{NS}_{name}", help_)
            h.add_metric([], buckets, s[f"{key}_sum"])
            yield h
        st = self._core.stats()
        hot = st.get("hot_tier")
        if hot:
            for key, kind, help_ in (
                ("hits", "counter", "Hot-tier lookups answered from RAM"),
                ("misses", "counter", "Hot-tier lookups that went to RocksDB"),
                ("evictions", "counter", "Rows evicted from the hot tier"),
                ("entries", "gauge", "Rows in the hot tier"),
                ("bytes", "gauge", "Bytes used by the hot tier"),
                ("budget_bytes", "gauge", "Configured hot-tier budget"),
            ):
                metric_name = f"{NS}_hot_tier_{key}"
                if kind == "counter":
                    yield CounterMetricFamily(metric_name, help_, value=hot[key])
                else:
                    yield GaugeMetricFamily(metric_name, help_, value=hot[key])
        rocks = st.get("rocksdb", {})
        fams: dict[str, GaugeMetricFamily] = {}
        for key, value in rocks.items():
            if key == "block-cache-usage":
                yield GaugeMetricFamily(
                    f"{NS}_rocksdb_block_cache_usage_bytes",
                    "RocksDB block cache usage",
                    value=value,
                )
                continue
            view, _, prop = key.partition("/")
            if prop in _ROCKSDB:
                name, help_ = _ROCKSDB[prop]
                fam = fams.setdefault(
                    name, GaugeMetricFamily(f"{NS}_{name}", help_, labels=["view"])
                )
                fam.add_metric([view], value)
        yield from fams.values()
        ttl = GaugeMetricFamily(
            f"{NS}_view_ttl_seconds", "TTL of each feature view (0 = none)", labels=["view"]
        )
        for view, seconds in self._views_ttl().items():
            ttl.add_metric([view], seconds)
        yield ttl
        if self._ready is not None:
            yield GaugeMetricFamily(
                f"{NS}_ready",
                "1 while the node is ready (what /readyz and gRPC health answer: store open, "
                "Kafka loaders caught up), else 0",
                value=1 if self._ready() else 0,
            )
        if self._loaders is not None:
            yield from _loader_metrics(self._loaders())


def _loader_metrics(loaders: list[dict[str, Any]]) -> Iterator[Metric]:
    """Loader figures: each loader reports a dict with per-view and per-partition entries."""
    applied = CounterMetricFamily(
        f"{NS}_loader_rows_applied", "Rows written by a loader", labels=["loader", "view"]
    )
    skipped = CounterMetricFamily(
        f"{NS}_loader_rows_skipped_older",
        "Rows not applied because the stored row is newer",
        labels=["loader", "view"],
    )
    errors = CounterMetricFamily(
        f"{NS}_loader_errors",
        "Rows or messages a loader could not apply",
        labels=["loader", "view"],
    )
    dead = CounterMetricFamily(
        f"{NS}_loader_dead_letters", "Messages sent to the dead-letter topic", labels=["view"]
    )
    misrouted = CounterMetricFamily(
        f"{NS}_kafka_misrouted_records",
        "Records whose key belongs to another partition than the one they arrived on (a "
        "producer not using partitioner=murmur2_random); see loader.misrouted",
        labels=["view", "topic"],
    )
    silence = GaugeMetricFamily(
        f"{NS}_kafka_seconds_since_broker_contact",
        "Seconds since the view's Kafka loader last had a broker connection up (about 1 s at "
        "most while connected)",
        labels=["view"],
    )
    lag = GaugeMetricFamily(
        f"{NS}_kafka_lag_messages",
        "Messages behind the end of each partition",
        labels=["topic", "partition"],
    )
    last_run = GaugeMetricFamily(
        f"{NS}_batch_last_success_timestamp_seconds",
        "Unix time of the last successful batch load, per view",
        labels=["view"],
    )
    watermark = GaugeMetricFamily(
        f"{NS}_batch_watermark_timestamp_seconds",
        "Event-time watermark of the last batch load, per view",
        labels=["view"],
    )
    delta_version = GaugeMetricFamily(
        f"{NS}_batch_delta_version", "Delta table version last synced, per view", labels=["view"]
    )
    for ld in loaders:
        name = ld.get("loader", "unknown")
        for view, v in ld.get("views", {}).items():
            applied.add_metric([name, view], v.get("applied", 0))
            skipped.add_metric([name, view], v.get("skipped_older", 0))
            errors.add_metric([name, view], v.get("errors", 0))
            if "dead_lettered" in v:
                dead.add_metric([view], v["dead_lettered"])
            if "misrouted" in v:
                misrouted.add_metric([view, str(v.get("topic", view))], v["misrouted"])
            if v.get("seconds_since_broker_contact") is not None:
                silence.add_metric([view], v["seconds_since_broker_contact"])
            if v.get("last_success"):
                last_run.add_metric([view], v["last_success"])
            if v.get("watermark"):
                watermark.add_metric([view], v["watermark"])
            if v.get("delta_version") is not None:
                delta_version.add_metric([view], v["delta_version"])
        for (topic, partition), value in ld.get("lag", {}).items():
            lag.add_metric([topic, str(partition)], value)
    yield from (applied, skipped, errors, dead, misrouted, silence, lag)
    yield from (last_run, watermark, delta_version)
