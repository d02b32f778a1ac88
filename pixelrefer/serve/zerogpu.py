"""ZeroGPU: whether this app runs on it, and `spaces.GPU` with a time budget computed from each request.

On a ZeroGPU Space a `@spaces.GPU` function runs in a forked worker with pickled arguments and results, and
model work anywhere else silently computes on zeros (`docs/hosting.md`, ZeroGPU). What runs in those calls,
and how their results come back, is `pixelrefer.serve.zerogpu_calls`; this file only says whether the mode is
on and wraps a function. Elsewhere (no `spaces` package, or `spaces` off ZeroGPU) `gpu` changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

try:  # A Gradio-SDK Space with ZeroGPU lends a GPU per call; elsewhere this is a no-op.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

__all__ = ["answer_duration", "environment_says_zero_gpu", "gpu", "segment_duration", "track_duration"]

_TRUE = ("1", "t", "true")
"""The `spaces` package's own rule for `SPACES_ZERO_GPU` (`spaces.utils.boolean`)."""


def environment_says_zero_gpu(env: Mapping[str, str] | None = None) -> bool:
    """ZeroGPU as the `spaces` package decides it: its `config.Config.zero_gpu` when it is installed, else its
    rule on `SPACES_ZERO_GPU` (so a missing package cannot hide the mode)."""
    config = getattr(spaces, "config", None)
    decided = getattr(getattr(config, "Config", config), "zero_gpu", None)
    if decided is not None:
        return bool(decided)
    return (env if env is not None else os.environ).get("SPACES_ZERO_GPU", "").strip().lower() in _TRUE


def gpu(duration: Callable[..., int]) -> Callable[[Callable], Callable]:
    """`spaces.GPU` with a duration computed from the call's own arguments, when `spaces` is installed."""

    def wrap(fn: Callable) -> Callable:
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return wrap


# The durations are called by `spaces.GPU` in the caller, with the call's arguments (`zerogpu_calls`).


def _frames(state: object) -> int:
    clip = getattr(state, "clip", None)
    return len(clip) if clip is not None else 1


def answer_duration(state: object, action: object, settings: object, *args: object) -> int:
    """GPU seconds for an answer: the session's state, what to do, the generation settings."""
    tokens = int(getattr(settings, "max_new_tokens", 512) or 512)
    return int(min(300, 20 + 0.08 * tokens + 2 * _frames(state)))


def segment_duration(frame: object, prompt: object, *args: object) -> int:
    """GPU seconds for one click, box or stroke (SAM's image encoder, then its decoder)."""
    return 15


def track_duration(frames: object, prompts: object, *args: object) -> int:
    """GPU seconds for following every object through the clip's sampled frames."""
    return int(min(300, 20 + 3 * len(frames)))
