"""The console's short in-memory history: answer quality per view and request rate and
latency per API, sampled on a timer so that no Prometheus is needed to see them over time.

Nothing here runs per request. Every ``interval`` seconds one sample reads what the process
counts anyway (the Rust core's value counters, ``ServingMetrics``' request histogram) and keeps
the differences from the previous sample; ``points`` samples are kept (15 minutes at the
defaults). A sample costs one ``serving_stats()`` call and one walk of the histogram's series.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import LATENCY_BUCKETS, STATUS_NAMES, ServingMetrics

#: seconds between samples, and samples kept (15 minutes)
SAMPLE_SECONDS = 5.0
POINTS = 180
#: the statuses the answer-quality chart shows, in Rust's counter order (index 0 is INVALID)
QUALITY_STATUSES = STATUS_NAMES[1:]


@dataclass(frozen=True)
class ApiPoint:
    """One API over one sample interval."""

    requests: float
    #: requests per second over the interval
    rate: float
    #: latency quantiles in seconds (None: no request in the interval)
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class Sample:
    """What happened between the previous sample and this one (Unix time ``at``)."""

    at: float
    #: per view: values served per status over the interval, in QUALITY_STATUSES order
    quality: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: per API label of the endpoint table
    apis: Mapping[str, ApiPoint] = field(default_factory=dict)


def quantile(buckets: tuple[float, ...], counts: list[float], q: float) -> float | None:
    """The ``q`` quantile of a histogram given per-bucket (not cumulative) counts, by linear
    interpolation inside the bucket, as Prometheus' ``histogram_quantile`` does; the last
    (``+Inf``) bucket answers its lower bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = buckets[i] if i < len(buckets) else None
        if acc + n >= rank and n > 0:
            if upper is None:
                return lower
            return lower + (upper - lower) * (rank - acc) / n
        acc += n
        if upper is not None:
            lower = upper
    return lower


def _histograms(metrics: ServingMetrics) -> dict[str, tuple[float, list[float]]]:
    """Per API label: (requests, cumulative bucket counts as Prometheus keeps them), summed
    over methods and codes."""
    out: dict[str, tuple[float, list[float]]] = {}
    n_buckets = len(LATENCY_BUCKETS) + 1
    for family in metrics.latency.collect():
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                continue
            api = s.labels["api"]
            count, buckets = out.setdefault(api, (0.0, [0.0] * n_buckets))
            le = s.labels["le"]
            i = n_buckets - 1 if le == "+Inf" else LATENCY_BUCKETS.index(float(le))
            buckets[i] += s.value
            if le == "+Inf":
                out[api] = (count + s.value, buckets)
    return out


class History:
    """Samples the counters every ``interval`` seconds while started (:meth:`start`)."""

    def __init__(
        self,
        metrics: ServingMetrics,
        quality: Callable[[], Mapping[str, list[int]]] | None,
        *,
        interval: float = SAMPLE_SECONDS,
        points: int = POINTS,
        clock: Callable[[], float] = time.time,
        on_sample: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=points)
        self._quality = quality
        self._clock = clock
        self._on_sample = on_sample
        self._last_quality: dict[str, list[int]] = {}
        self._last_apis: dict[str, tuple[float, list[float]]] = {}
        self._last_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Takes one sample (the first one only sets the baseline)."""
        now = self._clock()
        quality = {k: list(v) for k, v in (self._quality() if self._quality else {}).items()}
        apis = _histograms(self.metrics)
        if self._last_at is not None:
            span = max(now - self._last_at, 1e-9)
            q_delta = {}
            for view, counts in quality.items():
                before = self._last_quality.get(view, [0] * len(counts))
                q_delta[view] = tuple(
                    max(0, c - b) for c, b in zip(counts[1:], before[1:], strict=True)
                )
            a_delta = {}
            for api, (count, cum) in apis.items():
                b_count, b_cum = self._last_apis.get(api, (0.0, [0.0] * len(cum)))
                grown = [max(0.0, c - b) for c, b in zip(cum, b_cum, strict=True)]
                # Prometheus' buckets are cumulative (le=...): one count per bucket instead
                per = [n - (grown[i - 1] if i else 0.0) for i, n in enumerate(grown)]
                n = max(0.0, count - b_count)
                a_delta[api] = ApiPoint(
                    requests=n,
                    rate=n / span,
                    p50=quantile(LATENCY_BUCKETS, per, 0.5),
                    p99=quantile(LATENCY_BUCKETS, per, 0.99),
                )
            self.samples.append(Sample(now, q_delta, a_delta))
        self._last_quality, self._last_apis, self._last_at = quality, apis, now
        if self._on_sample is not None:
            self._on_sample()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            # a failing read (a store closing under a stop) must not end the sampling
            with contextlib.suppress(Exception):
                self.sample()
            await asyncio.sleep(self.interval)

    def quality_series(self, view: str) -> list[tuple[float, tuple[int, ...]]]:
        """(time, values per status) of one view over the kept samples."""
        zero = (0,) * len(QUALITY_STATUSES)
        return [(s.at, s.quality.get(view, zero)) for s in self.samples]

    def api_series(self) -> dict[str, list[tuple[float, ApiPoint | None]]]:
        """Per API seen: (time, point or None when it had no series yet) over the samples."""
        names = sorted({a for s in self.samples for a in s.apis})
        return {a: [(s.at, s.apis.get(a)) for s in self.samples] for a in names}

    def to_json(self, views: list[str]) -> dict[str, Any]:
        """The kept samples as JSON: quality of ``views`` only (the caller's scope)."""
        return {
            "interval_seconds": self.interval,
            "statuses": list(QUALITY_STATUSES),
            "quality": {
                v: [{"at": at, "values": list(vals)} for at, vals in self.quality_series(v)]
                for v in views
            },
            "apis": {
                a: [
                    {"at": at, "rate": p.rate, "p50": p.p50, "p99": p.p99}
                    if p is not None
                    else {"at": at, "rate": 0.0, "p50": None, "p99": None}
                    for at, p in series
                ]
                for a, series in self.api_series().items()
            },
        }
