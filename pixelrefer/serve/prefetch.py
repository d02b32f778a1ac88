"""SAM's image embedding of the picture on screen, computed before the first click on it.

A click on a new picture (or clip frame) pays for SAM's image encoder (seconds on a CPU) before its light
prompt decoder. A visitor looks at a picture for a few seconds before clicking, so the encoder can run then:
each time a workspace shows a picture or frame, it asks for its embedding here, and the Service's prefetch
worker (a `pixelrefer.chat.background.Worker`, like the chat warm-up's) computes it into the segmenter's own
feature cache (`Sam2Segmenter.embed_in_background`).

- It never makes a visitor wait: it computes only while the service's `Gate` has no model event (answers,
  tracking, clicks) in flight and no warm-up for a visitor with objects marked waits or runs (their question
  comes next: `pixelrefer.chat.background` has the whole order), pausing at its next torch operation when one
  enters. A warm-up of a picture with no object yet waits for it instead (a click comes first there).
- A click on the picture while its embedding is computed, or waits for its turn, makes it go on at once
  whatever else waits (the click's own model event pauses the rest) and waits for it: the encoder runs once,
  never twice, and the click costs the rest of the computation plus the decoder.
- A visitor moving on (another picture, another frame, closing) cancels their waiting or running job; the
  newest picture is the only one kept per visitor, and the most recently shown goes first.
- It is speculative, so it never makes room: when the memory budget (`pixelrefer.serve.budget`, where SAM's
  embeddings are the shared pool) has less free than one embedding, it is skipped and the click computes it.
- Off with `--no-sam-prefetch`, and on ZeroGPU, where model work outside a GPU call computes on zeros.
  GrabCut has no embedding: nothing is done for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..chat.background import Background, Job, Rank, Worker
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
    clicked_s: float | None = None
    """From the picture being shown to a click waiting for this computation (None: no click waited)."""


class _Job(Job[PrefetchReport]):
    def __init__(self, image: np.ndarray, prefetcher: EmbeddingPrefetcher) -> None:
        super().__init__(prefetcher.gate, Rank.CLICK)
        self.image = image
        self.prefetcher = prefetcher
        self.shown = time.perf_counter()
        self.clicked: float | None = None

    def pause(self, wanted: Callable[[], bool]) -> None:
        """Before each torch operation: wait for the job's turn, give up when cancelled; neither once a
        click waits for this computation (`wanted()`)."""
        if not wanted() and not self.turn():
            try:
                self.wait_turn(lambda: self.alive() and not wanted())
            except Cancelled:
                if not wanted():
                    raise
        if wanted():
            if self.clicked is None:
                self.clicked = time.perf_counter()
            return
        if not self.alive():
            raise Cancelled

    def failed(self, reason: str) -> PrefetchReport:
        return PrefetchReport(reason=reason)

    def run(self) -> PrefetchReport:
        segmenter, budget = self.prefetcher.segmenter(), self.prefetcher.budget
        if not self.alive() or not hasattr(segmenter, "embed_in_background"):
            return PrefetchReport(reason="cancelled: the visitor moved on")
        if segmenter.has_embedding(self.image):
            return PrefetchReport(reason="kept already")
        device = str(segmenter.placement.device)
        free = budget.free_bytes(device)
        need = segmenter.embedding_bytes()
        if free is not None and free < need:
            # Speculative work makes no room for itself (it would drop other visitors' caches).
            return PrefetchReport(reason=f"skipped: the memory budget has {free} bytes free, it needs {need}")
        began = time.perf_counter()
        try:
            stored = segmenter.embed_in_background(self.image, self.pause)
        except Cancelled:
            return PrefetchReport(reason="cancelled: the visitor moved on", paused_s=self.paused_s)
        if not stored:
            return PrefetchReport(reason="computed by a click", paused_s=self.paused_s)
        budget.settle()
        done = time.perf_counter()
        clicked = None if self.clicked is None else self.clicked - self.shown
        report = PrefetchReport(
            True, "", done - self.shown, done - began - self.paused_s, self.paused_s, clicked
        )
        _log.info(
            "SAM image embedding ready %.2f s after the picture was shown (%.2f s computing, %.2f s paused%s)",
            report.ready_s,
            report.compute_s,
            report.paused_s,
            "" if clicked is None else f"; a click waited for it from {clicked:.2f} s",
        )
        return report


class EmbeddingPrefetcher(Worker[PrefetchReport]):
    """The prefetch worker: one job at a time, at most one waiting per owner (a workspace), the newest kept;
    the most recently shown picture goes first.

    `show(owner, image)` asks for `image`'s embedding and cancels the owner's earlier job; `drop(owner)`
    cancels it (the visitor closed). `reports` keeps the last report per owner.
    """

    newest_first = True
    """The picture that just appeared is the one about to be clicked; an older one's visitor has had time to
    click already (or has left without the page telling the server yet)."""
    what = "SAM embedding prefetch"

    def __init__(
        self,
        background: Background | Gate,
        budget: MemoryBudget,
        segmenter: Callable[[], object | None],
        *,
        enabled: bool = True,
    ) -> None:
        super().__init__(background, "pixelrefer-sam-prefetch")
        self.budget = budget
        self.segmenter = segmenter
        """The service's segmenter now (it is loaded after the service is made)."""
        self.enabled = enabled

    def show(self, owner: object, image: np.ndarray) -> None:
        """`owner` now shows `image`: compute its embedding in the background (when SAM segments)."""
        job = None
        if self.enabled and hasattr(self.segmenter(), "embed_in_background"):  # not GrabCut, nor nothing
            job = _Job(image, self)
        self.submit(owner, job)
