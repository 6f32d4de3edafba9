"""The Kafka loader: one consumer thread per view with a stream source."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serving.errors import InvalidArgumentError
from serving.loaders.kafka.source import Source
from serving.sharding import Shard
from serving.store import Store

log = logging.getLogger("serving.kafka")


class KafkaLoader:
    """Consumes the stream sources of ``views`` (default: every online view with one) into
    ``store``, each on a background thread.

    ``bootstrap_servers`` overrides every source's brokers; ``kafka_config`` adds librdkafka
    settings to every consumer (after the source's own ``options``). ``shard`` makes every
    consumer take only the partitions that shard owns (``p % count == index``), replacing the
    sources' ``loader.shard_index`` / ``loader.shard_count``. ``expected_partitions`` (the
    server's ``--topic-partitions``) logs an error when a topic has another partition count.
    """

    def __init__(
        self,
        store: Store,
        views: Sequence[str] | None = None,
        *,
        bootstrap_servers: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        shard: Shard | None = None,
        expected_partitions: int | None = None,
    ) -> None:
        registry = store.registry
        if views is None:
            chosen = [
                v
                for v in registry.feature_views.values()
                if v.stream_source is not None and v.online
            ]
        else:
            chosen = [registry.view(n) for n in views]
            missing = [v.name for v in chosen if v.stream_source is None]
            if missing:
                raise InvalidArgumentError(
                    f"feature view(s) {', '.join(missing)} have no stream_source"
                )
        self.store = store
        self.sources = [
            Source(
                store,
                v,
                bootstrap_servers=bootstrap_servers,
                overrides=kafka_config or {},
                shard=shard,
                expected_partitions=expected_partitions,
            )
            for v in chosen
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: why :meth:`run` with ``stop_when_idle`` gave up (a topic that does not exist, no
        #: broker), one line per view; empty when it stopped idle or was stopped
        self.gave_up: list[str] = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Starts one consumer thread per source (no-op without sources)."""
        if self._threads:
            raise RuntimeError("the loader was already started")
        self._stop.clear()
        for s in self.sources:
            t = threading.Thread(
                target=self._run_source, args=(s,), name=f"kafka-loader-{s.view.name}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _run_source(self, s: Source) -> None:
        try:
            s.run(self._stop)
        except Exception:
            log.exception("kafka loader: view %s stopped on an unexpected error", s.view.name)

    def request_stop(self) -> None:
        """Asks every consumer to stop after its current batch (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops every consumer after its current batch (applied, offsets stored and committed).
        Returns False if a thread did not finish within ``timeout`` seconds."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("kafka loader: %s did not stop within %.1f s", ", ".join(alive), timeout)
        return not alive

    def caught_up(self) -> bool:
        """True when every source has applied up to the end of each of its partitions."""
        return bool(self.sources) and all(s.caught_up() for s in self.sources)

    def wait_caught_up(self, timeout: float, *, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.caught_up():
                return True
            time.sleep(poll)
        return self.caught_up()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per view: records, applied, skipped_older, upserts, tombstones, ignored,
        errors, misrouted (records on another partition than their key's), dead_lettered,
        batches, failed_batches, resets; ``lag`` per partition (None until the first fetch),
        ``lag_total`` (None while no broker has ever answered, and while an assigned
        partition's lag is unknown and the broker is not known to be down), ``offsets`` (next
        to apply), ``newest_event_time`` (unix seconds),
        ``seconds_since_last_record``, ``last_error``, ``broker_up`` (the newest librdkafka
        statistics showed a broker connection up; None before the first),
        ``seconds_since_broker_contact`` (since statistics last showed one up, or since the
        start; None when ``statistics.interval.ms`` is 0), ``waiting_for`` (why the topic is
        not assigned: it does not exist, no broker answers; None once it is)."""
        return {s.view.name: s.snapshot() for s in self.sources}

    def run(
        self,
        *,
        stop_when_idle: float | None = None,
        stats_interval: float | None = None,
        on_stats: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> None:
        """Runs in the foreground until :meth:`stop` (or a signal handler calling it), or until
        every source has been caught up and without new records for ``stop_when_idle`` s.

        With ``stop_when_idle``, a source whose topic could not be assigned for that long (the
        topic does not exist, no broker answers) ends the run too, since it could never be
        caught up: :attr:`gave_up` says why. Without it, such a source keeps waiting (and
        warning) until the topic appears or the broker answers."""
        self.start()
        self.gave_up = []
        next_stats = time.monotonic() + (stats_interval or math.inf)
        idle_since: float | None = None
        try:
            while self.running and not self._stop.wait(0.1):
                now = time.monotonic()
                if stats_interval and now >= next_stats and on_stats is not None:
                    on_stats(self.stats())
                    next_stats = now + stats_interval
                if stop_when_idle is not None:
                    self.gave_up = [
                        f"view {s.view.name}: {s.waiting_for}"
                        for s in self.sources
                        if s.waiting_for is not None
                        and s.waiting_since is not None
                        and now - s.waiting_since >= stop_when_idle
                    ]
                    if self.gave_up:
                        break
                    quiet = all(
                        s.last_record_at == 0 or now - s.last_record_at >= stop_when_idle
                        for s in self.sources
                    )
                    if self.caught_up() and quiet:
                        idle_since = idle_since or now
                        if now - idle_since >= min(stop_when_idle, 1.0):
                            break
                    else:
                        idle_since = None
        finally:
            self.stop()
