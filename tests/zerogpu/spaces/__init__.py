"""A CPU stand-in for Hugging Face's `spaces` package in ZeroGPU mode, strict where the real one is.

ZeroGPU (`../shared/notes/zerogpu.md`, measured from `spaces` 0.51.3) runs a `@spaces.GPU` function in a
forked worker: arguments and results cross by pickling, so what the call changes in its arguments or in
globals never comes back; results must hold no CUDA tensors; module-level or background-thread model work
silently computes on zeros. This stand-in reproduces those rules on the CPU so a test fails where the real
service would quietly lose state or compute garbage:

- every call runs in a forked child with pickled `(args, kwargs)` and a pickled result (generators: each
  item); an unpicklable argument raises `PicklingError` in the caller, an unpicklable result becomes
  `gr.Error("PicklingError")`;
- `SPACES_STANDIN_REUSE=1` keeps one idle worker per function and reuses it (a reused worker does not see
  the parent's later changes); otherwise each call forks afresh. An app must work under both;
- errors map as ZeroGPU maps them: `gr.Error` passes unchanged, anything else becomes
  `gr.Error(<ClassName>, title="ZeroGPU worker error")`;
- `duration` is called in the caller with the call's arguments and must give an int or a `timedelta`;
- `async def` is refused at decoration, nested decorated calls run inline;
- a result holding a tensor not on the CPU, or a `torch.nn.Module`, is refused (`gr.Error("CUDATensorResult")`);
- **model work outside a call fails**: any `torch.nn.Module` forward in the parent process raises
  `ZeroGPUViolation` (on ZeroGPU it would compute on zeros), and is counted in `violations()`.

Put this folder first on `PYTHONPATH` of a subprocess (never import it into the test runner itself: the
forward hook is process-wide). `config.zero_gpu` is True, as the real package reports on ZeroGPU.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import io
import multiprocessing
import os
import pickle
import threading
import traceback
from collections.abc import Callable
from types import SimpleNamespace

import torch

config = SimpleNamespace(zero_gpu=True, Config=SimpleNamespace(zero_gpu=True))
"""The real package's `spaces.config.Config.zero_gpu` (and the shorter `config.zero_gpu`)."""

_FORK = multiprocessing.get_context("fork")
_PARENT = os.getpid()
_inside = False  # True inside a worker (so nested calls run inline)
_violations: list[str] = []
_lock = threading.Lock()


class ZeroGPUViolation(RuntimeError):
    """Model work ran outside a `@spaces.GPU` call: on ZeroGPU it would silently compute on zeros."""


def violations() -> list[str]:
    """The module names whose forward ran outside a call in this process (for tests)."""
    return list(_violations)


def _outside_a_call(module: torch.nn.Module, args: tuple) -> None:
    if _inside or os.getpid() != _PARENT:
        return
    name = type(module).__name__
    with _lock:
        _violations.append(name)
    raise ZeroGPUViolation(f"{name}.forward ran outside a @spaces.GPU call (on ZeroGPU it computes on zeros)")


torch.nn.modules.module.register_module_forward_pre_hook(_outside_a_call)


def _gr_error(message: str, title: str = "Error") -> Exception:
    import gradio as gr

    return gr.Error(message, title=title)


class _CheckingPickler(pickle.Pickler):
    """Pickles as a worker does, refusing what cannot come back from a real one: tensors not on the CPU and
    modules (weights). It sees exactly what crosses (an object's `__getstate__`, not all its attributes)."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, torch.nn.Module):
            raise _gr_error("ModuleResult", title="ZeroGPU worker error")
        if isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            raise _gr_error("CUDATensorResult", title="ZeroGPU worker error")
        return NotImplemented


def _dumps(value: object, check: bool) -> bytes:
    if not check:
        return pickle.dumps(value)
    buffer = io.BytesIO()
    _CheckingPickler(buffer).dump(value)
    return buffer.getvalue()


def _encode(kind: str, value: object) -> bytes:
    try:
        return _dumps((kind, value), check=kind in ("value", "item"))
    except Exception as exc:  # noqa: BLE001 - everything unpicklable maps to one error, as on ZeroGPU
        if exc.__class__.__name__ == "Error" and exc.__class__.__module__.startswith("gradio"):
            return pickle.dumps(("error", exc))
        return pickle.dumps(("error", _gr_error("PicklingError", title="ZeroGPU worker error")))


def _mapped(exc: BaseException) -> Exception:
    import gradio as gr

    if isinstance(exc, gr.Error):
        return exc
    traceback.print_exception(exc)
    return gr.Error(type(exc).__name__, title="ZeroGPU worker error")


def _serve(fn: Callable, conn, once: bool) -> None:
    """The worker's loop: read a pickled call, run it, send pickled results (each item for a generator)."""
    global _inside
    _inside = True
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            os._exit(0)
        args, kwargs = pickle.loads(payload)
        try:
            result = fn(*args, **kwargs)
            if inspect.isgenerator(result):
                for item in result:
                    conn.send_bytes(_encode("item", item))
                conn.send_bytes(pickle.dumps(("done", None)))
            else:
                conn.send_bytes(_encode("value", result))
        except BaseException as exc:  # noqa: BLE001 - the worker reports every failure to the caller
            conn.send_bytes(_encode("error", _mapped(exc)))
        if once:
            conn.close()
            os._exit(0)


class _Worker:
    def __init__(self, fn: Callable, once: bool) -> None:
        self.conn, child = _FORK.Pipe()
        self.process = _FORK.Process(target=_serve, args=(fn, child, once), daemon=True)
        self.process.start()
        child.close()

    def call(self, payload: bytes):
        self.conn.send_bytes(payload)
        while True:
            try:
                kind, value = pickle.loads(self.conn.recv_bytes())
            except EOFError:
                raise _gr_error("GPU task aborted", title="ZeroGPU worker error") from None
            if kind == "error":
                raise value
            if kind == "done":
                return
            yield kind, value

    def close(self, kill: bool = False) -> None:
        self.conn.close()
        if kill:
            self.process.kill()
        self.process.join(timeout=5)


class _Pool:
    """Idle workers of one function (reuse mode), or none (a fresh fork per call)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.reuse = os.environ.get("SPACES_STANDIN_REUSE") == "1"
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()

    def take(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.process.is_alive():
                    return worker
        return _Worker(self.fn, once=not self.reuse)

    def give_back(self, worker: _Worker) -> None:
        if self.reuse and worker.process.is_alive():
            with self.lock:
                self.idle.append(worker)
        else:
            worker.close()


def _check_duration(duration: object, args: tuple, kwargs: dict) -> None:
    seconds = duration(*args, **kwargs) if callable(duration) else duration
    if not isinstance(seconds, (int, datetime.timedelta)) or isinstance(seconds, bool):
        raise TypeError(f"duration must give an int or a timedelta, not {type(seconds).__name__}")


def GPU(fn: Callable | None = None, *, duration: object = 60, **_: object):  # noqa: N802 - the real name
    """Run `fn` as ZeroGPU would: in a forked worker, arguments and results pickled."""

    def decorate(func: Callable) -> Callable:
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            raise NotImplementedError("ZeroGPU does not support async functions")
        pool = _Pool(func)

        def start(args: tuple, kwargs: dict) -> tuple[_Worker, bytes]:
            _check_duration(duration, args, kwargs)
            try:
                payload = pickle.dumps((args, kwargs))
            except Exception as exc:  # noqa: BLE001 - ZeroGPU raises PicklingError in the caller
                raise pickle.PicklingError(f"{func.__name__}'s arguments cannot be pickled: {exc}") from exc
            return pool.take(), payload

        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def streaming(*args, **kwargs):
                if _inside:
                    yield from func(*args, **kwargs)
                    return
                worker, payload = start(args, kwargs)
                finished = False
                try:
                    for _kind, item in worker.call(payload):
                        yield item
                    finished = True
                finally:
                    # A stream left early still has items in the pipe: that worker cannot serve again.
                    pool.give_back(worker) if finished else worker.close(kill=True)

            return streaming

        @functools.wraps(func)
        def regular(*args, **kwargs):
            if _inside:
                return func(*args, **kwargs)
            worker, payload = start(args, kwargs)
            try:
                for _kind, value in worker.call(payload):
                    return value
            finally:
                pool.give_back(worker)

        return regular

    return decorate(fn) if fn is not None else decorate
