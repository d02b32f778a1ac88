"""Precompute while the visitor marks: the next answer's features, object tokens and prompt-prefix KV cache.

A visitor spends seconds marking before typing. Each change of the media or the objects schedules a job
(one per workspace, the newest replacing a waiting one) for the Service's warm-up worker. The job computes
what the next answer's prompt starts with (the vision features, each object's tokens, the KV cache of the
conversation up to the question) into the chat session's own caches, so the question only prefills its own
tokens.

It never competes with a visitor: a `Gate` counts the model events in flight (answers, tracking, clicks) and
the worker waits at its next torch operation while any runs, or while a page event is being handled. Beside SAM's embedding of a picture just shown
(`pixelrefer.serve.prefetch`) the rule of `pixelrefer.chat.background` applies: a warm-up for a visitor with
objects marked goes first (a question comes next), one of media with no object yet goes after the embedding
(a click comes first). A job whose session changed since it was planned (`ChatSession.version`) stops at its
next operation and stores nothing. Both caches check content (feature keys are digests, prefix rows are
compared), so even a late result could never be wrong, only wasted. It is not a Gradio event, so it does not
count against the model queue.

On a GPU a job paused by a model event does not keep what it computed so far (activations, a copy of the KV
prefix) beside the visitor's answer: it unwinds, freeing all of it, and starts over once the gate is idle
(`drop_on_pause`; on the CPU it keeps its work and resumes, since memory there is not what runs out first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..model.cache import FeatureCache
from ..model.processing import Turn
from ..runtime.errors import InputError
from ..runtime.pause import PausePoints
from .background import Background, Job, Rank, Worker
from .gate import Cancelled, Gate

if TYPE_CHECKING:
    from .session import ChatSession

__all__ = ["WarmPlan", "WarmReport", "Warmer", "warm_up"]


class _Paused(Exception):
    """A model event entered while a job that drops its work on pause was running: unwind and start over."""


@dataclass
class WarmPlan:
    """What the next answer's prompt will start with, taken on the visitor's thread when the marks changed."""

    version: int
    turns: list[Turn]
    regions: list[dict[int, np.ndarray]]
    media: dict
    seed: int


@dataclass
class WarmReport:
    """What a warm-up did: `stored` is false when it was dropped, skipped or failed (`reason` says why)."""

    stored: bool = False
    reason: str = ""
    prompt_rows: int = 0
    prefilled_rows: int | None = 0
    seconds: float = 0.0
    paused_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    """How often the job dropped its work for a model event and started over (`drop_on_pause`)."""


class _Staging(FeatureCache):
    """Features computed by a warm-up: read through to the session's cache, kept aside until committed."""

    def __init__(self, shared: FeatureCache) -> None:
        super().__init__(shared.max_bytes)
        self._shared = shared

    def get(self, key: str) -> object | None:
        value = super().get(key)
        return value if value is not None else self._shared.get(key)

    def commit(self) -> None:
        for key, value in self._items.items():
            self._shared.put(key, value)


class _Job(Job[WarmReport]):
    def __init__(
        self, session: ChatSession, plan: WarmPlan, gate: Gate | None, drop_on_pause: bool | None = None
    ) -> None:
        # Objects marked: a question comes next. None yet: marking (SAM's clicks) comes first.
        super().__init__(gate, Rank.QUESTION if plan.regions else Rank.LATER)
        self.session = session
        self.plan = plan
        self.restarts = 0
        self.drop_on_pause = drop_on_pause
        """None: when the model is on a GPU."""

    def alive(self) -> bool:
        return super().alive() and self.session.version == self.plan.version

    def checkpoint(self) -> None:
        if self.drop_on_pause and self.gate is not None and self.gate.busy:
            raise _Paused
        super().checkpoint()

    def failed(self, reason: str) -> WarmReport:
        return WarmReport(reason=reason)

    def exclusive(self):
        return self.gate.exclusive(self.alive) if self.gate is not None else nullcontext()

    def run(self) -> WarmReport:
        began = time.perf_counter()
        if self.drop_on_pause is None:
            self.drop_on_pause = self.session.model.device.type == "cuda"
        try:
            while True:
                try:
                    with PausePoints(self.checkpoint):
                        report = self._run()
                    break
                except _Paused:
                    pass
                # Waiting outside the handler: the exception's traceback (the attempt's frames, so its
                # tensors) is gone by now.
                self.restarts += 1
                self.wait_turn()
        except Cancelled:
            report = WarmReport(reason="cancelled: the objects or the conversation changed")
        report.seconds = time.perf_counter() - began
        report.paused_s = self.paused_s
        report.restarts = self.restarts
        return report

    def _run(self) -> WarmReport:
        session, plan, model = self.session, self.plan, self.session.model
        timings: dict[str, float] = {}
        self.checkpoint()
        mark = time.perf_counter()
        try:
            prepared = model.prepare(turns=plan.turns, regions=plan.regions, seed=plan.seed, **plan.media)
            session.check_prompt(prepared, max_new_tokens=1)

        except InputError as exc:
            return WarmReport(reason=f"skipped: {exc}")
        timings["prepare_s"] = time.perf_counter() - mark
        self.checkpoint()
        mark = time.perf_counter()
        staging = _Staging(session.feature_cache)
        embedded = model.embed(prepared, staging)
        timings["encode_s"] = time.perf_counter() - mark
        self.checkpoint()
        with self.exclusive():
            prefix = session.prefix_cache.copy()
        mark = time.perf_counter()
        # The engine says what it can pre-fill (`DecodeEngine.warm_prefix`): the in-process engine fills
        # `prefix`; an engine that keeps no prefix returns None and the warm-up keeps the embeddings only.
        rows = model.engine.warm_prefix(embedded.inputs_embeds, prefix)
        timings["prefill_s"] = time.perf_counter() - mark
        with self.exclusive(), session.version_lock:
            if not self.alive():
                raise Cancelled
            staging.commit()
            if rows is not None:
                session.prefix_cache.store(prefix.cache, prefix.rows)
        return WarmReport(True, "", embedded.inputs_embeds.shape[1], rows, timings=timings)


def warm_up(
    session: ChatSession, plan: WarmPlan, gate: Gate | None = None, *, drop_on_pause: bool | None = None
) -> WarmReport:
    """Run one warm-up on this thread (`ChatSession.warm`, the worker); yields to `gate` when given."""
    return _Job(session, plan, gate, drop_on_pause).run()


class Warmer(Worker[WarmReport]):
    """The warm-up worker (`pixelrefer.chat.background.Worker`): one job at a time, at most one waiting per
    owner (a workspace), the most urgent first (objects marked), then the oldest.

    `schedule(owner, session)` plans the job on the caller's thread and replaces the owner's waiting one;
    `drop(owner)` forgets it (the workspace closed). `reports` keeps the last report per owner.
    """

    what = "Warm-up"

    def __init__(self, background: Background | Gate, *, drop_on_pause: bool | None = None) -> None:
        super().__init__(background, "pixelrefer-warmup")
        self.drop_on_pause = drop_on_pause
        """Whether a job paused by a model event frees its work and starts over (None: on a GPU)."""
        self.on_stored: Callable[[ChatSession], None] | None = None
        """Called with the session after a warm-up stored its results (the server's memory budget)."""

    def schedule(self, owner: object, session: ChatSession | None) -> None:
        plan = session.warm_plan() if session is not None else None
        job = None if plan is None else _Job(session, plan, self.gate, self.drop_on_pause)
        self.submit(owner, job)

    def finished(self, job: _Job, report: WarmReport) -> None:
        if report.stored and self.on_stored is not None:
            self.on_stored(job.session)
