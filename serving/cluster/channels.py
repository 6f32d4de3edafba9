"""Raw-bytes unary calls to one shard of a cluster: replicas in turn, fail-over on UNAVAILABLE, a
hedge when one is slow (:class:`ClusterChannels`), and the same over the nodes' HTTP ports
(:class:`HttpClusterChannels`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from serving.cluster.http1 import _Http1Pool
from serving.cluster.map import ClusterMap
from serving.cluster.rpc import rpc_error
from serving.errors import InvalidArgumentError, grpc_status_of

#: HTTP statuses a node's HTTP port can answer that mean something else than the serving.errors
#: class of that status: a proxy in front of the node that could not reach it (UNAVAILABLE: fail
#: over to another replica; 502 is ShardAnswerError's status, which only routers answer).
#: aiohttp's own body-size 413 needs no entry: 413 is LimitExceededError's, RESOURCE_EXHAUSTED.
_TRANSPORT_STATUS = {502: "UNAVAILABLE"}


#: how :class:`HttpClusterChannels` starts the details of a failed connection to a replica's
#: HTTP address, so that the failure names both the replica and the address it tried
_OVER_HTTP = "over HTTP at "


def in_words(details: str) -> str:
    """Why an attempt at a replica failed with UNAVAILABLE, in words ("refused the connection"),
    from grpc's or the HTTP client's details (``failed to connect to all addresses; last error:
    ... Connection refused``, ``[Errno 111] Connect call failed``)."""
    low = details.lower()
    if "connection refused" in low or "errno 111" in low or "connect call failed" in low:
        return "refused the connection"
    if any(
        s in low
        for s in ("resolv", "domain name not found", "name or service not known", "errno -2")
    ):
        return "has a host name that does not resolve"
    if "deadline" in low or "timed out" in low or "timeout" in low:
        return "did not answer in time"
    if any(s in low for s in ("reset", "socket closed", "connection closed", "broken pipe")):
        return "closed the connection"
    return f"answered UNAVAILABLE: {details}"


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Done callback of a losing attempt: reads its outcome so that asyncio does not log
    'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


class ClusterChannels:
    """grpc.aio channels to every replica of every shard; raw-bytes unary calls.

    :meth:`call` sends already-serialized request bytes to one replica of a shard and returns
    the response bytes (no Python protobuf objects on this path). Replicas of a shard are used
    in turn (round robin). A replica answering ``UNAVAILABLE`` (connection refused, a stopping
    node) is marked down for ``down_seconds`` and the call goes on to the next replica; replicas
    marked down are tried last, not skipped. A replica that has not answered within
    ``hedge_after`` seconds gets a hedge: the same call to the next replica that is up; the
    first answer wins and the other call is cancelled (at most one hedge per call; none with a
    single replica or ``hedge_after=None``; at most ``hedge_budget`` hedges per call over
    time, with ``hedge_burst`` in reserve). All of it within one deadline, ``timeout``. Other
    errors (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION`` / wrong_shard, ``PERMISSION_DENIED``,
    ``DEADLINE_EXCEEDED``, ...) are raised as the :class:`grpc.aio.AioRpcError`, not retried.

    Channels are opened on first use, on the running event loop; use one instance from one
    event loop.
    """

    def __init__(
        self,
        cluster: ClusterMap,
        *,
        down_seconds: float = 5.0,
        hedge_after: float | None = 0.05,
        hedge_budget: float = 0.1,
        hedge_burst: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if hedge_after is not None and hedge_after < 0:
            raise InvalidArgumentError(f"hedge_after must be >= 0 or None, got {hedge_after}")
        if hedge_budget < 0 or hedge_burst < 0:
            raise InvalidArgumentError("hedge_budget and hedge_burst must be >= 0")
        self.cluster = cluster
        self.down_seconds = down_seconds
        self.hedge_after = hedge_after
        #: hedges are a budget, not a reflex: each call earns ``hedge_budget`` of a hedge (up
        #: to ``hedge_burst`` saved), each hedge spends one. When every replica is slow
        #: (overload), hedging everything would double the load; the budget caps it.
        self.hedge_budget = hedge_budget
        self.hedge_burst = hedge_burst
        self._hedge_tokens = hedge_burst
        #: hedges sent, and hedges a slow call did not get because the budget was spent
        self.hedges = {"sent": 0, "over_budget": 0}
        self._credentials = credentials
        # answers can be large (1000 entities x 1000 features); gRPC's default cap is 4 MB
        given = {k for k, _ in options}
        self._options = list(options) + [
            (k, -1)
            for k in ("grpc.max_receive_message_length", "grpc.max_send_message_length")
            if k not in given
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        self._turn = {k: itertools.count() for k in cluster.shards}
        #: endpoint -> time.monotonic() until which it counts as down
        self._down: dict[str, float] = {}

    # -- replicas --------------------------------------------------------------------------

    def _replicas(self, shard: int) -> list[str]:
        try:
            return self.cluster.shards[shard]
        except KeyError:
            raise InvalidArgumentError(
                f"no shard {shard}: the cluster has shards 0..{self.cluster.shard_count - 1}"
            ) from None

    def _is_down(self, endpoint: str, now: float) -> bool:
        until = self._down.get(endpoint)
        return until is not None and until > now

    def up_replicas(self, shard: int) -> list[str]:
        """The endpoints of ``shard`` not currently marked down, in map order."""
        now = time.monotonic()
        return [ep for ep in self._replicas(shard) if not self._is_down(ep, now)]

    def set_ready(self, endpoint: str, ready: bool) -> None:
        """Health news from outside (a router's probes): a replica that is not ready (down,
        or still catching up on its partitions) counts as down until it is ready again: tried
        last, never hedged to."""
        if ready:
            self._down.pop(endpoint, None)
        else:
            self._down[endpoint] = math.inf

    def _order(self, shard: int) -> list[str]:
        """Replicas of ``shard`` in the order this call tries them: round robin, those
        marked down last."""
        reps = self._replicas(shard)
        if len(reps) == 1:
            return reps
        start = next(self._turn[shard]) % len(reps)
        turn = reps[start:] + reps[:start]
        if not self._down:
            return turn
        now = time.monotonic()
        return sorted(turn, key=lambda ep: self._is_down(ep, now))

    def _mark_down(self, endpoint: str, e: grpc.aio.AioRpcError, failures: list[str]) -> None:
        self._down[endpoint] = time.monotonic() + self.down_seconds
        details, via = e.details() or "", ""
        if details.startswith(_OVER_HTTP):
            address, _, details = details[len(_OVER_HTTP) :].partition(": ")
            via = f" (its HTTP port {address})"
        failures.append(f"replica {endpoint}{via} {in_words(details)}")

    def _shard_name(self, shard: int) -> str:
        return f"shard {shard} of {self.cluster.shard_count}"

    def _callable(self, endpoint: str, method: str) -> Any:
        mc = self._calls.get((endpoint, method))
        if mc is None:
            ch = self._channels.get(endpoint)
            if ch is None:
                if self._credentials is not None:
                    ch = grpc.aio.secure_channel(endpoint, self._credentials, self._options)
                else:
                    ch = grpc.aio.insecure_channel(endpoint, self._options)
                self._channels[endpoint] = ch
            mc = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            self._calls[(endpoint, method)] = mc
        return mc

    # -- calls -----------------------------------------------------------------------------

    def _left(
        self,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
        shard: int,
        failures: list[str],
    ) -> float | None:
        if deadline is None:
            return None
        left = deadline - loop.time()
        if left <= 0:
            tried = f" ({'; '.join(failures)})" if failures else ""
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{self._shard_name(shard)}: the deadline expired before a replica answered{tried}",
            )
        return left

    def _all_failed(self, shard: int, failures: list[str]) -> grpc.aio.AioRpcError:
        """UNAVAILABLE naming the shard and, in words, what each replica did: "shard 1 of 2 is
        unavailable: replica 127.0.0.1:18666 refused the connection"."""
        return rpc_error(
            grpc.StatusCode.UNAVAILABLE,
            f"{self._shard_name(shard)} is unavailable: {'; '.join(failures)}",
        )

    async def call(
        self,
        shard: int,
        method: str,
        body: bytes,
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Sends ``body`` to a replica of ``shard`` (``method``: a full gRPC path such as
        ``/feature_serving.v1.FeatureService/GetFeatureVector``) and returns the answer's
        bytes; ``timeout`` bounds the whole call, fail-over and hedge included."""
        self._hedge_tokens = min(self.hedge_burst, self._hedge_tokens + self.hedge_budget)
        order = self._order(shard)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        md = tuple(metadata) if metadata else None
        failures: list[str] = []
        if self.hedge_after is None or len(order) == 1:
            for ep in order:
                left = self._left(deadline, loop, shard, failures)
                try:
                    out = await self._attempt(ep, method, body, md, left)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    self._mark_down(ep, e, failures)
                    continue
                self._down.pop(ep, None)
                return out
            raise self._all_failed(shard, failures)
        return await self._hedged(
            shard, order, method, body, metadata=md, deadline=deadline, failures=failures
        )

    async def call_replica(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        *,
        metadata: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One call to one replica (a health check), no fail-over, no hedge."""
        return await self._attempt(
            endpoint, method, body, tuple(metadata) if metadata else None, timeout
        )

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout: float | None,
    ) -> bytes:
        out: bytes = await self._callable(endpoint, method)(
            body, timeout=timeout, metadata=metadata
        )
        return out

    async def _hedged(
        self,
        shard: int,
        order: list[str],
        method: str,
        body: bytes,
        *,
        metadata: tuple[tuple[str, str], ...] | None,
        deadline: float | None,
        failures: list[str],
    ) -> bytes:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[bytes], str] = {}
        nxt = 0
        hedged = False

        def launch(left: float | None) -> None:
            nonlocal nxt
            ep = order[nxt]
            nxt += 1
            task = loop.create_task(self._attempt(ep, method, body, metadata, left))
            task.add_done_callback(_retrieve)
            pending[task] = ep

        try:
            while True:
                if not pending:
                    if nxt == len(order):
                        raise self._all_failed(shard, failures)
                    launch(self._left(deadline, loop, shard, failures))
                can_hedge = (
                    not hedged
                    and nxt < len(order)
                    and not self._is_down(order[nxt], time.monotonic())
                )
                done, _ = await asyncio.wait(
                    pending,
                    timeout=self.hedge_after if can_hedge else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    # the attempt in flight is slow: the same call to another replica too,
                    # if the budget allows
                    hedged = True
                    if self._hedge_tokens < 1:
                        self.hedges["over_budget"] += 1
                        continue
                    if deadline is None or deadline - loop.time() > 0:
                        self._hedge_tokens -= 1
                        self.hedges["sent"] += 1
                        launch(None if deadline is None else deadline - loop.time())
                    continue
                # an answer first, whatever else finished at the same time
                for task in sorted(done, key=lambda t: t.exception() is not None):
                    ep = pending.pop(task)
                    e = task.exception()
                    if e is None:
                        self._down.pop(ep, None)
                        return task.result()
                    if (
                        isinstance(e, grpc.aio.AioRpcError)
                        and e.code() == grpc.StatusCode.UNAVAILABLE
                    ):
                        self._mark_down(ep, e, failures)
                        continue
                    raise e
        finally:
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        """Closes every channel (calls in flight are cancelled)."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._calls.clear()
        for ch in channels:
            await ch.close(None)


class HttpClusterChannels(ClusterChannels):
    """:class:`ClusterChannels` whose calls of the methods in ``http_paths`` go to a replica's
    HTTP address (``ClusterMap.http``) as ``POST <path>`` over keep-alive connections, when the
    map gives the replica one; everything else goes over gRPC as before.

    An HTTP call (over :class:`_Http1Pool`) costs the caller well under half the CPU of a
    ``grpc.aio`` call, and a node answers HTTP at about 3x the rate of gRPC
    (docs/benchmarks.md, "Scale-out"). Failures are
    raised as the :class:`grpc.aio.AioRpcError` of the matching status (the node's JSON error
    code, else its HTTP status; connection failures UNAVAILABLE, timeouts DEADLINE_EXCEEDED),
    so fail-over, hedging and the callers' error handling are the same on both transports.
    """

    def __init__(
        self,
        cluster: ClusterMap,
        *,
        http_paths: Mapping[str, str],
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        super().__init__(cluster, **options)
        self._paths = {k: v.encode() for k, v in http_paths.items()}
        self._ssl = ssl_context
        self._pools: dict[str, _Http1Pool] = {}

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        body: bytes,
        metadata: tuple[tuple[str, str], ...] | None,
        timeout: float | None,
    ) -> bytes:
        address = self.cluster.http.get(endpoint)
        path = self._paths.get(method)
        if address is None or path is None:
            return await super()._attempt(endpoint, method, body, metadata, timeout)
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _Http1Pool(address, self._ssl)
        headers = b"Content-Type: application/octet-stream\r\n"
        for k, v in metadata or ():
            line = f"{k}: {v}\r\n".encode("latin-1", "replace")
            if line.count(b"\n") != 1 or line.count(b"\r") != 1:
                raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"bad header {k!r}")
            headers += line
        try:
            async with asyncio.timeout(timeout):
                status, data = await pool.post(path, body, headers)
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{address}: no answer in time"
            ) from None
        except (OSError, ssl.SSLError) as e:  # ConnectionError is an OSError
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"{_OVER_HTTP}{address}: {e}") from None
        if status == 200:
            return data
        code, message = "", data.decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            err = json.loads(data)["error"]
            code, message = str(err["code"]), str(err["message"])
        name = (
            grpc_status_of(code=code)
            or _TRANSPORT_STATUS.get(status)
            or grpc_status_of(http_status=status)
            or "INTERNAL"
        )
        raise rpc_error(grpc.StatusCode[name], message)

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        await super().close()
