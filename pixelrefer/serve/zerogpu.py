"""A GPU per call on a ZeroGPU Space (`spaces.GPU`), with a time budget computed from the call's arguments.

Elsewhere (no `spaces` package) `gpu` changes nothing. `spaces.GPU` calls the duration function with the
event's own arguments, in the event's order, so each duration reads them by position: the workspace (or, for
`/describe_region`, the image path) first, then what the event passes.
"""

from __future__ import annotations

from collections.abc import Callable

from .workspace import Workspace

try:  # A Gradio-SDK Space with ZeroGPU lends a GPU per call; elsewhere this is a no-op.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

__all__ = ["answer_duration", "gpu", "regenerate_duration", "track_duration"]


def gpu(duration: Callable[..., int]) -> Callable[[Callable], Callable]:
    """`spaces.GPU` with a duration computed from the request, when the `spaces` package is present."""

    def wrap(fn: Callable) -> Callable:
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return wrap


def _frames(ws: object) -> int:
    return len(ws.clip) if isinstance(ws, Workspace) and ws.clip is not None else 1


def answer_duration(ws: object, question: object, max_new_tokens: object, *args: object) -> int:
    """GPU seconds for an answer; called with the event's arguments (`/describe_region` passes image, mask)."""
    return int(min(300, 20 + 0.08 * int(max_new_tokens or 512) + 2 * _frames(ws)))


def regenerate_duration(ws: object, max_new_tokens: object, *args: object) -> int:
    """GPU seconds for a regenerated answer (the event has no question)."""
    return answer_duration(ws, None, max_new_tokens)


def track_duration(ws: object, *args: object) -> int:
    """GPU seconds for tracking every object through the clip's sampled frames."""
    return int(min(300, 20 + 3 * _frames(ws)))
