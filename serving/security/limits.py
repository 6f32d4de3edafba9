"""Per-caller limits: a request rate (token bucket) and a cap on concurrent requests.

Each identity (a key's name, ``jwt:<subject>``) has its own bucket of ``burst`` tokens refilled
at ``rate`` per second; a request takes one, and finds none: 429 / RESOURCE_EXHAUSTED with
``Retry-After`` = the whole seconds until a token is back. ``concurrency`` caps the requests of
one identity being handled at once (Retry-After 1). The limits of an identity are its entry
under ``identities``, else ``default``, else none. All of it is a dict lookup and a few float
operations on the event loop thread (no lock: one loop per process).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.errors import InvalidArgumentError, RateLimitedError

#: identities tracked at most (a full table starts over: at worst a burst is granted anew)
MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Limit:
    #: requests per second (0 = no rate limit)
    rate: float = 0.0
    #: bucket size: requests allowed at once after a quiet time (default: one second's worth)
    burst: float = 0.0
    #: requests handled at once (0 = no cap)
    concurrency: int = 0


@dataclass(frozen=True)
class LimitsConfig:
    default: Limit | None = None
    identities: dict[str, Limit] | None = None


def _limit(d: Any, where: str) -> Limit:
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where}: expected a mapping with rate, burst, concurrency")
    if unknown := sorted(set(d) - {"rate", "burst", "concurrency"}):
        raise InvalidArgumentError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        rate = float(d.get("rate", 0))
        burst = float(d.get("burst", 0)) or max(rate, 1.0)
        concurrency = int(d.get("concurrency", 0))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{where}: {e}") from None
    if rate < 0 or concurrency < 0 or burst < 1:
        raise InvalidArgumentError(f"{where}: rate, burst and concurrency must be positive")
    return Limit(rate, burst, concurrency)


def limits_config(d: Any, where: str) -> LimitsConfig:
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where}: expected a mapping with default, identities")
    if unknown := sorted(set(d) - {"default", "identities"}):
        raise InvalidArgumentError(f"{where}: unknown field(s) {', '.join(unknown)}")
    default = _limit(d["default"], f"{where}.default") if d.get("default") else None
    ids = d.get("identities") or {}
    if not isinstance(ids, dict):
        raise InvalidArgumentError(f"{where}.identities: expected identity -> limits")
    return LimitsConfig(
        default, {str(k): _limit(v, f"{where}.identities.{k}") for k, v in ids.items()}
    )


class Limiter:
    """The buckets and in-flight counts of every identity seen."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic):
        self._default = config.default
        self._limits = dict(config.identities or {})
        self._clock = clock
        #: identity -> [tokens, time of last refill]
        self._buckets: dict[str, list[float]] = {}
        self._in_flight: dict[str, int] = {}
        #: told ("rate" or "concurrency") of every refusal: the metrics
        self.on_limited: Callable[[str], None] | None = None

    def limit_of(self, identity: str) -> Limit | None:
        return self._limits.get(identity, self._default)

    def take(self, identity: str) -> None:
        """One request's token from ``identity``'s bucket, or :class:`RateLimitedError`."""
        limit = self._limits.get(identity, self._default)
        if limit is None or limit.rate <= 0:
            return
        now = self._clock()
        b = self._buckets.get(identity)
        if b is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._buckets.clear()
            b = self._buckets[identity] = [limit.burst, now]
        else:
            b[0] = min(limit.burst, b[0] + (now - b[1]) * limit.rate)
            b[1] = now
        if b[0] < 1.0:
            if self.on_limited is not None:
                self.on_limited("rate")
            wait = math.ceil((1.0 - b[0]) / limit.rate)
            raise RateLimitedError(
                f"request rate limit of {limit.rate:g}/s (burst {limit.burst:g}) reached for "
                f"'{identity}'; retry after {wait} s",
                max(wait, 1),
            )
        b[0] -= 1.0

    def enter(self, identity: str) -> bool:
        """Counts a request of ``identity`` as in flight (True: :meth:`leave` it after), or
        :class:`RateLimitedError` at its cap; False when it has no cap."""
        limit = self._limits.get(identity, self._default)
        if limit is None or limit.concurrency <= 0:
            return False
        n = self._in_flight.get(identity, 0)
        if n >= limit.concurrency:
            if self.on_limited is not None:
                self.on_limited("concurrency")
            raise RateLimitedError(
                f"'{identity}' has {n} requests in flight, its cap (concurrency "
                f"{limit.concurrency}); retry after 1 s",
                1,
            )
        self._in_flight[identity] = n + 1
        return True

    def leave(self, identity: str) -> None:
        n = self._in_flight.get(identity, 0) - 1
        if n > 0:
            self._in_flight[identity] = n
        else:
            self._in_flight.pop(identity, None)
