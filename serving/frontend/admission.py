"""How a node runs a serving request: inline on the event loop, or off it.

:class:`Admission` is the one dispatch of HTTP and gRPC serving requests. Inline (the default),
the Rust call runs on the loop (GIL released inside), guarded by :class:`LoopLagGuard`; with
``--batch-window-us`` every request goes through :class:`RequestBatcher` (coalesced
``serve_many`` calls on a worker thread, a bounded queue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from serving import _rust_core
from serving.config import ServeSettings
from serving.errors import DeadlineExceededError, ResourceExhaustedError
from serving.frontend.transforms import TransformPool
from serving.ondemand import OnDemandRunner


class LoopLagGuard:
    """Admission control of the inline mode: an event-loop lag probe with a bounded overflow.

    With the Rust call inline on the loop there is no queue to bound: under overload, requests
    wait in socket buffers and in the loop's ready queue, and the wait grows without bound;
    refusing on the loop alone does not help much either, since refusing costs the loop about
    a quarter of what answering does. So a timer is due every ``interval`` seconds; it runs on
    time while the loop keeps up and late while the loop is busy. A request that starts while
    the loop is more than ``limit`` behind its timer (or within ``cooldown`` of the last time
    it was) is not run inline: it goes to a
    :class:`RequestBatcher` (worker thread, bounded queue), which frees the loop for the
    transport and answers RESOURCE_EXHAUSTED / 429 once ``max_queue`` requests wait; past
    ``hard_factor * limit`` requests are refused at once. The check on the hot path is one
    ``loop.time()`` call and a subtraction (~0.1 us, docs/reliability.md); the timer costs
    ``1/interval`` wakeups a second.
    """

    def __init__(
        self,
        limit_s: float,
        overflow: RequestBatcher | None = None,
        interval_s: float = 0.005,
        hard_factor: float = 5.0,
        cooldown_s: float = 0.5,
    ) -> None:
        self.limit = limit_s
        self.cooldown = cooldown_s
        self._until = 0.0
        self.hard = limit_s * hard_factor
        self.interval = interval_s
        self.overflow = overflow
        #: loop time at which the next tick is due
        self.due = float("inf")
        self.shed = 0
        self.overflowed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick()

    def _tick(self) -> None:
        assert self._loop is not None
        self.due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self.due, self._tick)

    def behind(self) -> bool:
        """True while the loop is more than ``limit`` behind, and for ``cooldown`` seconds
        after it last was (the hot-path check): running requests inline again at the first
        on-time tick would stall the loop again at once."""
        assert self._loop is not None
        now = self._loop.time()
        if now - self.due > self.limit:
            self._until = now + self.cooldown
            return True
        return now < self._until

    def check_hard(self) -> None:
        """Raises ResourceExhaustedError while the loop is more than the hard limit behind."""
        assert self._loop is not None
        late = self._loop.time() - self.due
        if late > self.hard:
            self.shed += 1
            raise ResourceExhaustedError(
                f"server overloaded: event loop {late * 1000:.0f} ms behind (the server's "
                "--max-loop-lag-ms); retry with backoff"
            )

    async def serve_overflow(
        self,
        api: str,
        body: bytes,
        scope: int | None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> _Answer:
        """A request that arrived while the loop was behind: off the loop, bounded queue."""
        self.check_hard()
        if self.overflow is None:
            self.shed += 1
            raise ResourceExhaustedError("server overloaded: event loop behind; retry with backoff")
        self.overflowed += 1
        return await self.overflow.serve(api, body, scope, timeout, request_id)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.due = float("inf")
        if self.overflow is not None:
            self.overflow.close()


#: a request waiting in the batcher: api, body, scope, its future, its deadline (loop time),
#: its request id (served-feature logging)
_Pending = tuple[str, bytes, int | None, "asyncio.Future[_Answer]", float | None, str | None]
#: what the core answers a request: the response, or one waiting for on-demand transforms
_Answer = bytes | _rust_core.PendingAnswer


class RequestBatcher:
    """Coalesces concurrent requests into one Rust call (``serve_many``) on a worker thread.

    While a batch runs, new requests queue and form the next batch, so batches grow with load
    on their own; ``window`` only delays the first request of an idle server. The queue is
    bounded: past ``max_queue`` waiting requests the server answers RESOURCE_EXHAUSTED / 429
    instead of letting latency grow without bound.
    """

    def __init__(
        self, core: _rust_core.Store, window_s: float, max_batch: int, max_queue: int
    ) -> None:
        self._core = core
        self._window = window_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._pending: list[_Pending] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="serve-batch")
        self.batches = 0
        self.requests = 0
        #: requests dropped before the Rust call: caller gone (cancelled) or deadline passed
        self.dropped = 0

    async def serve(
        self,
        api: str,
        body: bytes,
        scope: int | None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> _Answer:
        """``timeout``: seconds the caller still waits (gRPC deadline); a request still queued
        when it passed is dropped before the Rust call and answered DEADLINE_EXCEEDED."""
        if len(self._pending) >= self._max_queue:
            raise ResourceExhaustedError(
                f"server overloaded: {len(self._pending)} requests queued (the server's "
                "--max-queue); retry with backoff"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Answer] = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        self._pending.append((api, body, scope, fut, deadline, request_id))
        if not self._busy and self._timer is None:
            self._timer = loop.call_later(self._window, self._flush)
        return await fut

    def _flush(self) -> None:
        self._timer = None
        if self._busy or not self._pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        batch: list[_Pending] = []
        while self._pending and len(batch) < self._max_batch:
            take = self._pending[: self._max_batch - len(batch)]
            del self._pending[: len(take)]
            batch += [it for it in take if self._live(it, now)]
        if not batch:
            return
        self._busy = True
        self.batches += 1
        self.requests += len(batch)
        work = loop.run_in_executor(
            self._executor,
            self._core.serve_many,
            [(a, b, s) for a, b, s, *_ in batch],
            [it[5] for it in batch],
        )
        work.add_done_callback(lambda done: self._finish(batch, done))

    def _live(self, item: _Pending, now: float) -> bool:
        """False for a request nobody waits for any more: cancelled (the caller left, gRPC
        cancels the handler at its deadline) or past its deadline; it is answered, not run."""
        fut, deadline = item[3], item[4]
        if fut.done():
            self.dropped += 1
            return False
        if deadline is not None and now >= deadline:
            self.dropped += 1
            fut.set_exception(
                DeadlineExceededError("the deadline expired while the request was queued")
            )
            return False
        return True

    def _finish(
        self,
        batch: list[_Pending],
        done: asyncio.Future[list[_Answer | BaseException]],
    ) -> None:
        self._busy = False
        err = done.exception()
        results: list[_Answer | BaseException] = (
            [err] * len(batch) if err is not None else done.result()
        )
        for (*_, fut, _deadline, _rid), r in zip(batch, results, strict=True):
            if fut.done():  # the caller went away (deadline, disconnect)
                continue
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        if self._pending:
            self._flush()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class Admission:
    """The dispatch of a node's serving requests, HTTP and gRPC alike: the batcher when one is
    configured, else inline on the loop unless the loop is behind (then the overflow batcher).

    ``guard``: the overload guard (None when ``max_loop_lag_ms`` is 0); ``batcher``: the
    batcher of ``--batch-window-us`` (None: inline).
    """

    def __init__(
        self,
        core: _rust_core.Store,
        settings: ServeSettings,
        on_demand: Callable[[], OnDemandRunner] | None = None,
    ) -> None:
        self._serve = core.serve
        #: runs the on-demand transforms of requests naming some
        self.transforms = TransformPool(on_demand, settings.transform_timeout_ms / 1000)
        self.batcher: RequestBatcher | None = None
        if settings.batch_window_us > 0:
            self.batcher = RequestBatcher(
                core, settings.batch_window_us / 1e6, settings.max_batch, settings.max_queue
            )
        self.guard: LoopLagGuard | None = None
        if settings.max_loop_lag_ms > 0:
            overflow = None
            if self.batcher is None:
                overflow = RequestBatcher(core, 0.0, settings.max_batch, settings.max_queue)
            self.guard = LoopLagGuard(settings.max_loop_lag_ms / 1000, overflow)

    def dispatch(
        self,
        api: str,
        body: bytes,
        scope: int | None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> bytes | Awaitable[bytes]:
        """The core's answer to one request: the bytes when it ran inline, else an awaitable
        of them (``await`` only then: a coroutine per inline request would cost the hot path
        about 0.3 us). ``timeout``: seconds the caller still waits (a gRPC deadline; None
        over HTTP). ``request_id``: logged with the answer when its feature service is logged
        (docs/feature-logging.md)."""
        batcher, guard = self.batcher, self.guard
        if batcher is not None:
            if guard is not None:
                guard.check_hard()
            return self._completed(batcher.serve(api, body, scope, timeout, request_id), timeout)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceededError("the deadline expired before the request started")
        if guard is not None and guard.behind():
            answer = guard.serve_overflow(api, body, scope, timeout, request_id)
            return self._completed(answer, timeout)
        out = self._serve(api, body, scope, request_id)
        if isinstance(out, bytes):
            return out
        return self._transform(out, timeout)

    async def _completed(
        self, answer: Awaitable[bytes | _rust_core.PendingAnswer], timeout: float | None
    ) -> bytes:
        out = await answer
        if isinstance(out, bytes):
            return out
        return await self._transform(out, timeout)

    def _transform(
        self, pending: _rust_core.PendingAnswer, timeout: float | None
    ) -> Awaitable[bytes]:
        return self.transforms.complete(pending, timeout)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.guard is not None:
            self.guard.start(loop)

    def stop(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self.batcher is not None:
            self.batcher.close()
        self.transforms.close()
