"""Prometheus families of served-feature logging, read from :class:`FeatureLogger` on scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.feature_log.writer import FeatureLogger
from serving.metrics import NS


class FeatureLogCollector(Collector):
    def __init__(self, logger: FeatureLogger) -> None:
        self._logger = logger

    def collect(self) -> Iterator[Metric]:
        appended = CounterMetricFamily(
            f"{NS}_feature_log_rows",
            "Served rows appended to the feature log's buffer, per feature service",
            labels=["service"],
        )
        dropped = CounterMetricFamily(
            f"{NS}_feature_log_dropped_rows",
            "Served rows not logged: buffer_full (the in-memory buffer was full, the request "
            "was served without waiting) or destination (a failing destination's backlog "
            "outgrew buffer_rows)",
            labels=["service", "reason"],
        )
        written = CounterMetricFamily(
            f"{NS}_feature_log_written_rows",
            "Logged rows written, per feature service and destination",
            labels=["service", "destination"],
        )
        errors = CounterMetricFamily(
            f"{NS}_feature_log_write_errors",
            "Failed writes to a log destination (each retried with back-off)",
            labels=["service", "destination"],
        )
        buffered = GaugeMetricFamily(
            f"{NS}_feature_log_buffered_rows",
            "Rows in the feature log's buffer or waiting for a destination, per service",
            labels=["service"],
        )
        cpu = CounterMetricFamily(
            f"{NS}_feature_log_flush_cpu_seconds",
            "CPU time of the feature log's writer thread (drain, concat, writes)",
            labels=["service"],
        )
        for name, st in self._logger.stats().items():
            appended.add_metric([name], st["appended_rows"])
            cpu.add_metric([name], st["flush_cpu_seconds"])
            dest_dropped = 0
            waiting = st["buffered_rows"]
            for dname, d in st["destinations"].items():
                written.add_metric([name, dname], d["written_rows"])
                errors.add_metric([name, dname], d["write_errors"])
                dest_dropped += d["dropped_rows"]
                waiting = max(waiting, st["buffered_rows"] + d["pending_rows"])
            dropped.add_metric([name, "buffer_full"], st["dropped_rows_buffer_full"])
            dropped.add_metric([name, "destination"], dest_dropped)
            buffered.add_metric([name], waiting)
        yield from (appended, dropped, written, errors, buffered, cpu)
