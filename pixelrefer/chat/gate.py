"""The gate between model events and background work: answers, tracking and clicks come first.

The Service owns one `Gate`; every model event (an answer for as long as it streams, a tracking run, a
click) passes through it, and background work (the warm-up, `pixelrefer.chat.warmup`) runs only while none
is in flight, pausing at its next torch operation when one enters. Workspaces and chat sessions hold the
same gate, which is why it has a module of its own rather than living inside the warm-up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..runtime.errors import Stopped

__all__ = ["Cancelled", "Gate"]

T = TypeVar("T")


class Cancelled(Stopped):
    """The session changed or closed while its warm-up ran; the work is dropped."""


class Gate:
    """The model events in flight; background work runs only while there are none.

    Model events enter with `event()` (or `hold()` for a streamed answer). The worker waits for the gate
    to be idle before every torch operation (`wait_idle`), and stores its results in `exclusive()`, which
    an event entering meanwhile waits for (a few dictionary and tensor-reference updates).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events = 0
        self._exclusive = False

    @contextmanager
    def event(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._events += 1
        try:
            yield
        finally:
            with self._cond:
                self._events -= 1
                self._cond.notify_all()

    def hold(self, items: Iterable[T]) -> Iterator[T]:
        """Iterate `items` as one model event: an answer is in flight for as long as it streams."""
        with self.event():
            yield from items

    @property
    def busy(self) -> bool:
        return self._events > 0

    def wait_idle(self, alive: Callable[[], bool]) -> None:
        """Return once no event runs; raise `Cancelled` as soon as `alive()` turns false."""
        with self._cond:
            while self._events and alive():
                self._cond.wait(0.05)
        if not alive():
            raise Cancelled

    @contextmanager
    def exclusive(self, alive: Callable[[], bool]) -> Iterator[None]:
        with self._cond:
            while self._events and alive():
                self._cond.wait(0.05)
            if not alive():
                raise Cancelled
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
