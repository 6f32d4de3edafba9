"""Where request-time on-demand transforms run: off the event loop, bounded in time.

One :class:`TransformPool` per serving process (a node's :class:`~.admission.Admission`, the
router) completes the core's :class:`~serving._rust_core.PendingAnswer` (the inputs read, the
transforms due) on a worker thread and answers DEADLINE_EXCEEDED past its time limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from serving import _rust_core
from serving.errors import DeadlineExceededError, TransformError
from serving.ondemand import OnDemandRunner


class TransformPool:
    """``runner``: the current registry's on-demand views (None: requests naming one are
    refused); ``timeout_s``: the server's ``--transform-timeout-ms`` in seconds (0: none)."""

    def __init__(self, runner: Callable[[], OnDemandRunner] | None, timeout_s: float) -> None:
        self._runner = runner
        self._timeout = timeout_s
        # Transforms run off the loop: a pandas transform of W2's size takes ~1 ms, a buggy
        # one forever, and neither may hold up the other requests the loop is serving.
        # Two threads: one transform can run while another waits on the GIL's release in
        # pyarrow / numpy kernels; a wedged transform takes one, not all.
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="transform")

    async def complete(self, pending: _rust_core.PendingAnswer, timeout: float | None) -> bytes:
        """Runs the request's on-demand transforms on a worker thread, then encodes.
        ``timeout``: seconds the caller still waits (None: no deadline of its own)."""
        if self._runner is None:
            raise TransformError("this server does not run on-demand transforms")
        runner = self._runner()
        limit = self._timeout
        if timeout is not None:
            limit = min(limit, timeout) if limit > 0 else timeout
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._threads, runner.complete, pending)
        try:
            return await asyncio.wait_for(work, limit if limit > 0 else None)
        except TimeoutError:
            raise DeadlineExceededError(
                f"the on-demand transforms of {', '.join(pending.views)} took longer than "
                f"{limit * 1000:.0f} ms (the server's --transform-timeout-ms, or the request's "
                "deadline)"
            ) from None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
