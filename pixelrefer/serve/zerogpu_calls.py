"""Where a visitor's model work runs: in this process, or, on ZeroGPU, in a worker per call.

A workspace asks its service's `calls` for the three kinds of model work: an answer (ask, describe,
regenerate), a mask from marks (a click, a box, a stroke), and tracking a clip. `LocalCalls` runs them here,
as a server with its own GPU (or CPU) does. `ZeroGpuCalls` runs each in one `@spaces.GPU` function, since on
ZeroGPU (`docs/hosting.md`, ZeroGPU) such a call is a forked worker whose arguments and results are pickled,
changes it makes to its arguments never come back, and model work anywhere else computes on zeros:

- each call takes plain CPU data: the chat session's state (media, objects, history; `ChatSession` pickles
  without its model, locks and caches), what to do, the settings; a frame and the marks; the frames and the
  marks per object;
- inside, the session gets the worker's own model: the service this object was made for, which the fork
  inherits (a reused worker keeps the one it was forked with, so a switched model is refused there);
- an answer streams its replies and ends with the session's new state, which the caller's session adopts
  before the last reply is shown; a mask or the tracks come back as numpy arrays; an error comes back as a
  value and is raised here again, so a visitor's mistake keeps its class and its message (ZeroGPU would
  turn it into its bare class name);
- Stop and Cancel reach the worker through a file the caller creates: a worker polls for it, since it shares
  the caller's disk but none of its memory;
- the caches live in the worker for one call (features and the KV prefix are computed again per answer):
  carrying them would move tens of megabytes through a pipe each way for what a GPU recomputes in a moment.

Without `spaces` (ZeroGPU forced on a plain machine) the same functions run inline on the caller's objects.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import queue
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..chat.session import ChatSession, Reply
from ..runtime.errors import InputError
from ..segment.base import Prompt, SegmentResult, Tracks
from .zerogpu import answer_duration, gpu, segment_duration, track_duration

if TYPE_CHECKING:
    from ..model.generation import GenerationSettings
    from .service import Service

__all__ = ["Action", "LocalCalls", "ModelCalls", "ZeroGpuCalls", "calls_for"]

_log = logging.getLogger(__name__)

STOP_POLL_S = 0.05
"""How often a worker looks for its stop file: a stop lands within this, plus one decoding step."""


class LocalCalls:
    """The model work in this process: what the workspace did itself before ZeroGPU."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def answer(
        self, session: ChatSession, kind: str, args: tuple, settings: GenerationSettings
    ) -> Iterator[Reply]:
        """`session.<kind>(*args, settings)`: `kind` is "ask", "describe" or "regenerate"."""
        return getattr(session, kind)(*args, settings)

    def segment(self, frame: np.ndarray, prompt: Prompt) -> SegmentResult:
        return self.service.segmenter.segment_image(frame, prompt)

    def track(
        self,
        frames: list[np.ndarray],
        prompts: dict[int, dict[int, Prompt]],
        progress: Callable[[int, int], None] | None,
        cancel: threading.Event,
    ) -> Tracks:
        return self.service.segmenter.track(frames, prompts, progress=progress, cancel=cancel)

    def stop(self, session: ChatSession) -> None:
        session.stop()


@dataclass(frozen=True)
class Action:
    """What an answer call does: `session.<kind>(*args, settings)`, with the model `source` the caller's
    session was made for and the file whose appearance stops it."""

    kind: str
    args: tuple
    source: str
    stop_file: str


@dataclass
class _Raised:
    """An error in a worker, carried back as a value (ZeroGPU would keep only its class name)."""

    error: BaseException

    @classmethod
    def of(cls, error: BaseException) -> _Raised:
        if not isinstance(error, InputError):
            _log.error("Model call failed in the worker", exc_info=error)
        try:  # what crossing needs: it pickles, and it is rebuilt from its reduction (as unpickling does)
            pickle.dumps(error)
            copy.copy(error)
        except Exception:  # an exception that does not survive pickling comes back as its text
            error = RuntimeError(f"{type(error).__name__}: {error}")
        return cls(error)


@dataclass
class _Finished:
    """The last piece of an answer and the session state it ended with (the caller's session adopts it)."""

    delta: str
    state: ChatSession


@dataclass
class _Step:
    done: int
    total: int


@contextlib.contextmanager
def _watch(stop_file: str, on_stop: Callable[[], None]) -> Iterator[None]:
    """Call `on_stop` once `stop_file` exists, while the block runs (the caller's Stop or Cancel)."""
    over = threading.Event()

    def poll() -> None:
        while not over.wait(STOP_POLL_S):
            if os.path.exists(stop_file):
                on_stop()
                return

    watcher = threading.Thread(target=poll, name="pixelrefer-zerogpu-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        over.set()
        watcher.join()


def _served_model(service: Service, source: str):
    model = service.model
    if model is None or model.source != source:
        raise RuntimeError(
            "This GPU worker holds another model than the one the chat was opened with (the model was "
            "switched): restart the Space to serve the new one"
        )
    return model


# ---------------------------------------------------------------------- in the worker


def _answer_in_worker(
    service: Service, state: ChatSession, action: Action, settings: GenerationSettings
) -> Iterator[Reply | _Finished | _Raised]:
    session = state
    try:
        session.model = _served_model(service, action.source)
        with _watch(action.stop_file, session.stop):
            for reply in getattr(session, action.kind)(*action.args, settings):
                yield _Finished(reply.delta, session) if reply.done else reply
    except Exception as exc:
        yield _Raised.of(exc)


def _segment_in_worker(service: Service, frame: np.ndarray, prompt: Prompt) -> SegmentResult | _Raised:
    try:
        return service.segmenter.segment_image(frame, prompt)
    except Exception as exc:
        return _Raised.of(exc)


def _track_in_worker(
    service: Service, frames: list[np.ndarray], prompts: dict[int, dict[int, Prompt]], stop_file: str
) -> Iterator[_Step | dict | _Raised]:
    """Tracking on a thread of the worker, its progress streamed to the caller as it comes."""
    cancel = threading.Event()
    steps: queue.Queue[_Step | None] = queue.Queue()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["tracks"] = service.segmenter.track(
                frames, prompts, progress=lambda done, total: steps.put(_Step(done, total)), cancel=cancel
            )
        except Exception as exc:
            outcome["error"] = exc
        finally:
            steps.put(None)

    with _watch(stop_file, cancel.set):
        worker = threading.Thread(target=run, name="pixelrefer-zerogpu-track", daemon=True)
        worker.start()
        while (step := steps.get()) is not None:
            yield step
        worker.join()
    yield _Raised.of(outcome["error"]) if "error" in outcome else outcome["tracks"]


# ---------------------------------------------------------------------- in the caller


def _check_request(session: ChatSession, kind: str, args: tuple, settings: GenerationSettings) -> None:
    """The request's own checks (the question, the object, the limits), here and now as in the normal mode,
    so a refused request costs no GPU call. They run on a shallow copy with its own history (regenerate takes
    the last answer off it); the answer they return is never started, so no model work runs."""
    dry = copy.copy(session)  # through `__getstate__`: the copy has no caches and shares no locks
    dry.model, dry.history = session.model, list(session.history)
    getattr(dry, kind)(*args, settings).close()


class ZeroGpuCalls:
    """The model work in one `@spaces.GPU` call per action, with plain CPU data in and out."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._running: dict[int, Path] = {}
        """The stop file of each session's answer in flight (by the session's id)."""
        self._folder = Path(tempfile.mkdtemp(prefix="pixelrefer-zerogpu-"))
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)

        # One function per kind of work, each a closure over this service: the forked worker finds the
        # service, its model and its segmenter in the memory it inherited.
        def answer(state: ChatSession, action: Action, settings: GenerationSettings):
            yield from _answer_in_worker(service, state, action, settings)

        def segment(frame: np.ndarray, prompt: Prompt):
            return _segment_in_worker(service, frame, prompt)

        def track(frames: list[np.ndarray], prompts: dict[int, dict[int, Prompt]], stop_file: str):
            yield from _track_in_worker(service, frames, prompts, stop_file)

        self._answer = gpu(answer_duration)(answer)
        self._segment = gpu(segment_duration)(segment)
        self._track = gpu(track_duration)(track)

    def _stop_file(self) -> Path:
        return self._folder / f"{uuid.uuid4().hex}.stop"

    def answer(
        self, session: ChatSession, kind: str, args: tuple, settings: GenerationSettings
    ) -> Iterator[Reply]:
        """The replies of `session.<kind>(*args, settings)` computed in a worker; the session adopts the
        conversation the worker ended with before the last reply comes."""
        _check_request(session, kind, args, settings)
        stop_file = self._stop_file()
        action = Action(kind, tuple(args), session.model.source, str(stop_file))
        return self._answering(session, action, settings, stop_file)

    def _answering(
        self, session: ChatSession, action: Action, settings: GenerationSettings, stop_file: Path
    ) -> Iterator[Reply]:
        self._running[id(session)] = stop_file
        stream = self._answer(session, action, settings)
        try:
            for item in stream:
                if isinstance(item, _Raised):
                    raise item.error
                if isinstance(item, _Finished):
                    session.adopt(item.state)
                    yield Reply(item.delta, done=True, exchange=session.history[-1])
                else:
                    yield item
        finally:
            stream.close()
            if self._running.get(id(session)) == stop_file:
                del self._running[id(session)]
            stop_file.unlink(missing_ok=True)

    def segment(self, frame: np.ndarray, prompt: Prompt) -> SegmentResult:
        result = self._segment(frame, prompt)
        if isinstance(result, _Raised):
            raise result.error
        return result

    def track(
        self,
        frames: list[np.ndarray],
        prompts: dict[int, dict[int, Prompt]],
        progress: Callable[[int, int], None] | None,
        cancel: threading.Event,
    ) -> Tracks:
        """The tracks computed in a worker; `progress` is called here as its steps come, and `cancel`
        (set by the visitor's Cancel) reaches the worker through a stop file."""
        stop_file = self._stop_file()
        stream = self._track(list(frames), prompts, str(stop_file))
        try:
            for item in stream:
                if cancel.is_set():
                    stop_file.touch()
                if isinstance(item, _Raised):
                    raise item.error
                if isinstance(item, _Step):
                    if progress is not None:
                        progress(item.done, item.total)
                    continue
                return item
        finally:
            stream.close()
            stop_file.unlink(missing_ok=True)
        raise RuntimeError("The tracking call ended without its tracks")

    def stop(self, session: ChatSession) -> None:
        """Stop `session`'s answer in flight, in its worker."""
        session.stop()
        stop_file = self._running.get(id(session))
        if stop_file is not None:
            stop_file.touch()


ModelCalls = LocalCalls | ZeroGpuCalls


def calls_for(service: Service, zero_gpu: bool) -> ModelCalls:
    """Where `service`'s model work runs: one ZeroGPU call per action, or in this process."""
    return ZeroGpuCalls(service) if zero_gpu else LocalCalls(service)
