"""Choosing the segmenter: SAM 2.1, or GrabCut (with a notice saying why) when SAM's weights cannot be had."""

from __future__ import annotations

from .base import Segmenter

__all__ = ["load_segmenter"]


def load_segmenter(spec: str = "tiny", *, device: str = "auto", dtype: str = "auto") -> Segmenter:
    """SAM 2.1 at `spec` (tiny, small, base-plus, large, a hub id or a local folder), or GrabCut.

    `spec="grabcut"` asks for the classical segmenter. When SAM 2.1 weights cannot be had (offline and not
    cached, no such folder, a broken checkpoint), the classical segmenter is returned with `notice` saying
    why. A device that does not exist is an error, not a reason to fall back.
    """
    # Imported when called: SAM 2.1 pulls in transformers' SAM 2 modules, which the interface does not need.
    from ..runtime.hub import WeightsUnavailable
    from .grabcut import GrabCutSegmenter
    from .sam import Sam2Segmenter, sam_placement

    if spec.strip().lower() in {"grabcut", "classical"}:
        return GrabCutSegmenter()
    placement = sam_placement(device, dtype)
    try:
        return Sam2Segmenter.load(spec, placement=placement)
    except WeightsUnavailable as exc:
        reason = str(exc)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = f"SAM 2.1 '{spec}' could not be loaded ({type(exc).__name__}: {exc})"
    return GrabCutSegmenter(
        notice=f"{reason}. Using the classical GrabCut segmenter instead: it follows clicks, boxes and "
        "scribbles on clear, high-contrast objects but is far less accurate than SAM 2.1."
    )
