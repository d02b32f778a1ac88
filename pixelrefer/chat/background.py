"""Background work beside the visitors: one worker loop, and one rule for who computes first.

Two kinds of speculative work run while visitors mark and read: the chat warm-up (`pixelrefer.chat.warmup`)
and SAM's image embedding of the picture on screen (`pixelrefer.serve.prefetch`). On a CPU they share the
same few cores with each other and with the visitors' own requests, so the order is by what a visitor does
next, most urgent first:

1. visitors' requests: model events (answers, tracking runs, clicks, from the page or the API: the `Gate`)
   and every page event being handled (`Background.request`: an answer's streaming updates, the picture a
   click sends back, an upload), since a visitor is waiting for them and on a CPU their Python work would
   share the cores with a background job as much as their model work would;
2. a warm-up for a visitor who has objects marked (`Rank.QUESTION`): their next step is a question;
3. SAM's embedding of a picture just shown (`Rank.CLICK`): the next step there is a click;
4. a warm-up of media with no object yet (`Rank.LATER`): a question about objects comes after marking.

A job computes only while nothing above it waits or runs, and stops within one torch operation when
something does (`Job.checkpoint`, reached through `PausePoints`), so one background job computes at a time and
two never split the cores. A job inherits the rank of the most urgent job waiting behind it in its own worker
(it cannot be overtaken there), so jobs never wait for each other in a circle. A visitor's own request that needs a
background result waits for that computation rather than starting a second one (the click and SAM's
embedding: `pixelrefer.segment.sam`), which then runs as part of the request.

`Worker` is the loop both use: one daemon thread, one job at a time, at most one job waiting per owner (a
workspace; a new one cancels the owner's waiting or running job), the most urgent first, then the oldest or
the newest (`newest_first`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Generic, TypeVar

from .gate import Cancelled, Gate

__all__ = ["Background", "Job", "Rank", "Worker"]

_log = logging.getLogger(__name__)

R = TypeVar("R")

_POLL_S = 0.05
"""How often a waiting job looks at the gate again (the gate's own wait polls as often)."""


class Rank(IntEnum):
    """How soon a visitor needs a background job's result; lower goes first."""

    QUESTION = 0
    """A warm-up for a visitor with objects marked: a question comes next."""
    CLICK = 1
    """SAM's embedding of a picture just shown: a click comes next."""
    LATER = 2
    """A warm-up of media with no object yet: marking comes first."""


class Background:
    """The order between the visitors' requests (the model events of `gate`, the page events in `request()`) and
    the background workers made on it (`Worker`)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.cond = threading.Condition()
        """Guards every worker's queue; notified whenever a job is queued, starts or ends."""
        self._workers: list[Worker] = []
        self._requests = 0

    def _register(self, worker: Worker) -> None:
        with self.cond:
            self._workers.append(worker)

    @contextmanager
    def request(self) -> Iterator[None]:
        """A visitor's request being handled: background work waits until none is."""
        with self.cond:
            self._requests += 1
        try:
            yield
        finally:
            with self.cond:
                self._requests -= 1
                self.cond.notify_all()

    def during(self, fn: Callable) -> Callable:
        """`fn` as a request (`request()`): for as long as it runs, or, for a generator, as long as it streams."""
        if inspect.isgeneratorfunction(inspect.unwrap(fn)):

            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                with self.request():
                    yield from fn(*args, **kwargs)

            return streaming

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            with self.request():
                return fn(*args, **kwargs)

        return plain

    def turn(self, worker: Worker) -> bool:
        """Whether `worker`'s running job may compute now: no model event or request in flight, and no other
        worker has a more urgent job waiting or running."""
        if self.gate.busy:
            return False
        with self.cond:
            if self._requests:
                return False
            mine = worker.rank()
            return mine is None or all(
                other is worker or (rank := other.rank()) is None or rank >= mine for other in self._workers
            )

    def wait_turn(self, worker: Worker, alive: Callable[[], bool]) -> None:
        """Return once it is `worker`'s turn; raise `Cancelled` as soon as `alive()` turns false."""
        while alive() and not self.turn(worker):
            with self.cond:
                self.cond.wait(_POLL_S)
        if not alive():
            raise Cancelled


class Job(Generic[R]):
    """One background computation for an owner. `run()` does it, passing `checkpoint()` before every torch
    operation (`PausePoints`) and returning a report; `failed(reason)` is the report when it raised."""

    def __init__(self, gate: Gate | None, rank: Rank) -> None:
        self.gate = gate
        self.rank = rank
        self.cancelled = threading.Event()
        self.paused_s = 0.0
        self.worker: Worker | None = None
        """The worker running it; None when run on the caller's thread (then only the gate is waited for)."""

    def alive(self) -> bool:
        return not self.cancelled.is_set()

    def turn(self) -> bool:
        """Whether it may compute now (`Background.turn`)."""
        if self.worker is not None:
            return self.worker.background.turn(self.worker)
        return self.gate is None or not self.gate.busy

    def wait_turn(self, alive: Callable[[], bool] | None = None) -> None:
        """Block until `turn()`, counting the time as paused; `Cancelled` once `alive()` (default: the job's)
        turns false."""
        alive = alive or self.alive
        began = time.perf_counter()
        try:
            if self.worker is not None:
                self.worker.background.wait_turn(self.worker, alive)
            elif self.gate is not None:
                self.gate.wait_idle(alive)
            elif not alive():
                raise Cancelled
        finally:
            self.paused_s += time.perf_counter() - began

    def checkpoint(self) -> None:
        """Before each torch operation: wait for the job's turn; give up once it is cancelled."""
        if not self.turn():
            self.wait_turn()
        if not self.alive():
            raise Cancelled

    def run(self) -> R:
        raise NotImplementedError

    def failed(self, reason: str) -> R:
        raise NotImplementedError


class Worker(Generic[R]):
    """One daemon thread running `Job`s one at a time: at most one waiting per owner, the most urgent first,
    then the oldest (or, with `newest_first`, the newest). `reports` keeps the last report per owner."""

    newest_first = False
    what = "Background work"
    """Names the work in the log."""

    def __init__(self, background: Background | Gate, thread_name: str) -> None:
        """`background`: the order this worker shares with others, or a gate alone (no other worker)."""
        if isinstance(background, Gate):
            background = Background(background)
        self.background = background
        self._thread_name = thread_name
        self._cond = background.cond
        self._waiting: OrderedDict[int, Job[R]] = OrderedDict()
        self._running: tuple[int, Job[R]] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.reports: dict[int, R] = {}
        background._register(self)

    @property
    def gate(self) -> Gate:
        return self.background.gate

    def rank(self) -> Rank | None:
        """The most urgent job waiting or running here (the running one computes on their behalf too); None
        when idle. Called with the background's lock held."""
        ranks = [job.rank for job in self._waiting.values()]
        if self._running is not None:
            ranks.append(self._running[1].rank)
        return min(ranks, default=None)

    def submit(self, owner: object, job: Job[R] | None) -> None:
        """Cancel `owner`'s waiting or running job and queue `job` (None: only cancel)."""
        with self._cond:
            self._cancel(id(owner))
            if job is None or self._closed:
                return
            job.worker = self
            self._waiting[id(owner)] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _cancel(self, key: int) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting.cancelled.set()
        if self._running is not None and self._running[0] == key:
            self._running[1].cancelled.set()
        self._cond.notify_all()

    def drop(self, owner: object) -> None:
        """Forget `owner` (it closed): its jobs are cancelled, its report removed."""
        with self._cond:
            self._cancel(id(owner))
            self.reports.pop(id(owner), None)

    def drop_all(self) -> None:
        """Cancel every job, waiting or running."""
        with self._cond:
            for key in [*self._waiting, *([self._running[0]] if self._running else [])]:
                self._cancel(key)

    def report(self, owner: object) -> R | None:
        return self.reports.get(id(owner))

    def busy(self) -> bool:
        """Whether a job waits or runs."""
        with self._cond:
            return bool(self._waiting) or self._running is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job waits or runs (tests, benchmarks); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the thread after its current job (which is cancelled); nothing is queued from now on."""
        with self._cond:
            self._closed = True
            self.drop_all()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def finished(self, job: Job[R], report: R) -> None:
        """Called on the worker's thread after each job, before its report is kept."""

    def _next(self) -> tuple[int, Job[R]]:
        order = reversed(self._waiting) if self.newest_first else iter(self._waiting)
        key = min(order, key=lambda k: self._waiting[k].rank)  # min keeps the first of equals
        return key, self._waiting.pop(key)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, job = self._running = self._next()
            try:
                report = job.run()
            except Exception as exc:  # speculative work failing costs the visitor nothing: they compute it
                _log.warning("%s failed: %s: %s", self.what, type(exc).__name__, exc)
                report = job.failed(f"failed: {type(exc).__name__}")
            try:
                self.finished(job, report)
            except Exception:
                _log.exception("%s: the after-job hook failed", self.what)
            with self._cond:
                self._running = None
                self.reports[key] = report
                self._cond.notify_all()
