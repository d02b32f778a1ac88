"""SAM's image embedding of the picture on screen, computed before the first click on it.

A click on a new picture (or clip frame) pays for SAM's image encoder (seconds on a CPU) before its light
prompt decoder. A visitor looks at a picture for a few seconds before clicking, so the encoder can run then:
each time a workspace shows a picture or frame, it asks for its embedding here, and one daemon worker
computes it into the segmenter's own feature cache (`Sam2Segmenter.embed_in_background`).

- It never competes with a visitor: background work runs only while the service's `Gate` has no model event
  (answers, tracking, clicks) in flight, pausing at its next torch operation when one enters, as the chat
  warm-up does (`pixelrefer.chat.warmup`).
- A visitor moving on (another picture, another frame, closing) cancels their waiting or running job; the
  newest picture is the only one kept per visitor.
- A click on the picture while its embedding is computed waits for it (the computation then goes on even
  during the click's own gate event): it is computed once, never twice.
- It is speculative, so it never makes room: when the memory budget (`pixelrefer.serve.budget`, where SAM's
  embeddings are the shared pool) has less free than one embedding, it is skipped and the click computes it.
- Off with `--no-sam-prefetch`, and on ZeroGPU, where model work outside a GPU call computes on zeros.
  GrabCut has no embedding: nothing is done for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..chat.gate import Cancelled, Gate
from .budget import MemoryBudget

__all__ = ["EmbeddingPrefetcher", "PrefetchReport"]

_log = logging.getLogger(__name__)


@dataclass
class PrefetchReport:
    """What one job did: `stored` when it computed and kept the embedding; else `reason` says why not."""

    stored: bool = False
    reason: str = ""
    ready_s: float = 0.0
    """From the picture being shown to the embedding being kept (waiting in line and paused included)."""
    compute_s: float = 0.0
    paused_s: float = 0.0


class _Job:
    def __init__(self, image: np.ndarray, gate: Gate) -> None:
        self.image = image
        self.gate = gate
        self.shown = time.perf_counter()
        self.cancelled = threading.Event()
        self.paused_s = 0.0

    def pause(self, wanted: Callable[[], bool]) -> None:
        """Before each torch operation: wait while a model event runs, give up when cancelled; neither once a
        click waits for this computation."""
        if wanted():
            return
        if self.gate.busy:
            began = time.perf_counter()
            try:
                self.gate.wait_idle(lambda: not self.cancelled.is_set() and not wanted())
            except Cancelled:
                if not wanted():
                    raise
            finally:
                self.paused_s += time.perf_counter() - began
        if self.cancelled.is_set() and not wanted():
            raise Cancelled


class EmbeddingPrefetcher:
    """One daemon worker, one job at a time, at most one waiting per owner (a workspace), the newest kept; the
    most recently shown picture goes first.

    `show(owner, image)` asks for `image`'s embedding and cancels the owner's earlier job; `drop(owner)`
    cancels it (the visitor closed). `reports` keeps the last report per owner.
    """

    def __init__(
        self,
        gate: Gate,
        budget: MemoryBudget,
        segmenter: Callable[[], object | None],
        *,
        enabled: bool = True,
    ) -> None:
        self.gate = gate
        self.budget = budget
        self.segmenter = segmenter
        """The service's segmenter now (it is loaded after the service is made)."""
        self.enabled = enabled
        self._cond = threading.Condition()
        self._waiting: OrderedDict[int, _Job] = OrderedDict()
        self._running: tuple[int, _Job] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.reports: dict[int, PrefetchReport] = {}

    def show(self, owner: object, image: np.ndarray) -> None:
        """`owner` now shows `image`: compute its embedding in the background (when SAM segments)."""
        with self._cond:
            self._cancel(id(owner))
            if not self.enabled or self._closed:
                return
            segmenter = self.segmenter()
            if not hasattr(segmenter, "embed_in_background"):
                return  # GrabCut, or nothing loaded: no embedding to compute
            self._waiting[id(owner)] = _Job(image, self.gate)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pixelrefer-sam-prefetch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _cancel(self, key: int) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting.cancelled.set()
        if self._running is not None and self._running[0] == key:
            self._running[1].cancelled.set()

    def drop(self, owner: object) -> None:
        with self._cond:
            self._cancel(id(owner))
            self.reports.pop(id(owner), None)

    def report(self, owner: object) -> PrefetchReport | None:
        return self.reports.get(id(owner))

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
        """Stop the worker after its current job (which is cancelled); nothing is computed from now on."""
        with self._cond:
            self._closed = True
            for key in [*self._waiting, *([self._running[0]] if self._running else [])]:
                self._cancel(key)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Newest first: the picture that just appeared is the one about to be clicked; an older one's
                # visitor has had time to click already (or has left without the page telling the server yet).
                key, job = self._waiting.popitem(last=True)
                self._running = (key, job)
            try:
                report = self._run(job)
            except Exception as exc:  # a failed prefetch costs the visitor nothing: the click computes it
                _log.warning("SAM embedding prefetch failed: %s: %s", type(exc).__name__, exc)
                report = PrefetchReport(reason=f"failed: {type(exc).__name__}")
            with self._cond:
                self._running = None
                self.reports[key] = report
                self._cond.notify_all()

    def _run(self, job: _Job) -> PrefetchReport:
        segmenter = self.segmenter()
        if job.cancelled.is_set() or not hasattr(segmenter, "embed_in_background"):
            return PrefetchReport(reason="cancelled: the visitor moved on")
        if segmenter.has_embedding(job.image):
            return PrefetchReport(reason="kept already")
        device = str(segmenter.placement.device)
        free = self.budget.free_bytes(device)
        need = segmenter.embedding_bytes()
        if free is not None and free < need:
            # Speculative work makes no room for itself (it would drop other visitors' caches).
            return PrefetchReport(reason=f"skipped: the memory budget has {free} bytes free, it needs {need}")
        began = time.perf_counter()
        try:
            stored = segmenter.embed_in_background(job.image, job.pause)
        except Cancelled:
            return PrefetchReport(reason="cancelled: the visitor moved on", paused_s=job.paused_s)
        if not stored:
            return PrefetchReport(reason="computed by a click", paused_s=job.paused_s)
        self.budget.settle()
        done = time.perf_counter()
        report = PrefetchReport(True, "", done - job.shown, done - began - job.paused_s, job.paused_s)
        _log.info(
            "SAM image embedding ready %.2f s after the picture was shown (%.2f s computing, %.2f s paused)",
            report.ready_s,
            report.compute_s,
            report.paused_s,
        )
        return report
