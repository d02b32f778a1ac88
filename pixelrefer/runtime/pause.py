"""Pause points: background work that stops within one torch operation (a matmul, not a layer) when asked.

The warm-up (`pixelrefer.chat.warmup`) and SAM's background embedding (`pixelrefer.segment.sam`) run under
`PausePoints`, whose `pause()` may block while a visitor's request runs, or raise to give the work up.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.overrides import TorchFunctionMode

__all__ = ["PausePoints"]


class PausePoints(TorchFunctionMode):
    """Calls `pause()` before every torch operation of this thread. A torch-function mode is thread-local:
    other threads' calls never see it."""

    def __init__(self, pause: Callable[[], None]) -> None:
        super().__init__()
        self.pause = pause

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.pause()
        return func(*args, **(kwargs or {}))
