"""Cancelling a blocking event handler: the work stops within one step and frees the model.

Gradio cancels an event (`POST /gradio_api/cancel`, a client's `job.cancel()`, a button's `cancels=`) by
cancelling the asyncio task that awaits the handler. A plain function runs in a worker thread that nothing
can interrupt, so it went on to the end of the answer or the clip while holding the model. `stops_on_cancel`
turns such a function into a coroutine that runs it in a thread; when the task is cancelled it calls what
the function registered with `on_cancel` (e.g. `Workspace.stop`, which the decoding loop and the tracker
check at every token and frame) until the thread has ended, so the cancel returns once the model is free.

Streaming handlers (generators) need none of this: Gradio closes the generator, and the decoding loop
stops at the `GeneratorExit`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["on_cancel", "stops_on_cancel"]

_RETRY_S = 0.05
"""How often a cancelled handler is told again to stop, in case it cleared a stop flag as it started."""

T = TypeVar("T")


class _Scope:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: list[Callable[[], None]] = []
        self.cancelled = False

    def add(self, stop: Callable[[], None]) -> None:
        with self._lock:
            self._stops.append(stop)
            cancelled = self.cancelled
        if cancelled:
            stop()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            stops = list(self._stops)
        for stop in stops:
            stop()


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "pixelrefer_cancel_scope", default=None
)


def on_cancel(stop: Callable[[], None]) -> None:
    """Have `stop()` called if the event running this code is cancelled (nothing outside `stops_on_cancel`)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.add(stop)


def stops_on_cancel(fn: Callable[..., T]) -> Callable[..., Any]:
    """`fn` as a coroutine function that runs it in a worker thread and stops it when its task is cancelled."""

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> T:
        scope = _Scope()
        context = contextvars.copy_context()
        context.run(_SCOPE.set, scope)
        loop = asyncio.get_running_loop()
        worker = loop.run_in_executor(None, functools.partial(context.run, fn, *args, **kwargs))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            while not worker.done():
                scope.cancel()
                await asyncio.wait([worker], timeout=_RETRY_S)
            if not worker.cancelled() and worker.exception() is None:
                worker.result()
            raise

    return run
