"""Which frames of a clip the model sees, and the timestamps it is told: the two official rules.

PixelRefer's loaders sample differently for a video file (ffmpeg's `fps` filter with `round=down`,
then a `max_frames` cap by linspace) and for a folder of frames (read as a 3 fps clip, every
`3 // fps`-th frame starting at half a step). Both are reproduced here as index arithmetic, so the
decoder only has to fetch the chosen frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from ..runtime.errors import InputError

__all__ = ["FOLDER_FPS", "FrameSample", "frame_time", "sample_frames"]

FOLDER_FPS = 3
"""A folder of frames has no rate of its own; both official loaders treat it as 3 fps."""


@dataclass(frozen=True)
class FrameSample:
    """Positions in the source clip, and the time (seconds) the prompt gives each of them."""

    indices: tuple[int, ...]
    timestamps: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)


def frame_time(index: int, native_fps: float) -> float:
    """Timestamp of source frame `index` as the official loaders label annotated frames (`index / fps`)."""
    return index / native_fps


def _cap(indices: list[int], timestamps: list[float], max_frames: int) -> FrameSample:
    if len(indices) > max_frames:
        keep = np.linspace(0, len(indices) - 1, max_frames, dtype=int)
        indices = [indices[i] for i in keep]
        timestamps = [timestamps[i] for i in keep]
    return FrameSample(tuple(int(i) for i in indices), tuple(float(t) for t in timestamps))


def _folder_rule(n_frames: int, fps: float, max_frames: int) -> FrameSample:
    # load_video_from_ids: fps sampling while the clip is shorter than max_frames seconds; a step
    # of zero (fps above 3) or a long clip falls back to uniform sampling of max_frames frames.
    step = min(FOLDER_FPS // fps, n_frames) if fps else 0
    if fps and n_frames / FOLDER_FPS < max_frames and step > 0:
        chosen = list(range(int(step) // 2, n_frames, int(step)))
    elif n_frames <= max_frames:
        chosen = list(range(n_frames))
    else:
        chosen = [int(i) for i in np.linspace(0, n_frames - 1, max_frames, dtype=int)]
    return FrameSample(tuple(chosen), tuple(i / FOLDER_FPS for i in chosen))


def _file_rule(
    n_frames: int, native_fps: float, fps: float, max_frames: int, start_time: float
) -> FrameSample:
    # ffmpeg's fps filter with round=down: input frame i (time i / native) falls on output tick
    # floor(i * fps / native). Tick k is filled by the last input frame whose tick is <= k, and ticks
    # run until the end of the clip, floor(n_frames * fps / native) of them. Timestamps are the
    # official arange(start, start + duration + 1/fps, 1/fps) labels, i.e. start + k / fps.
    native = Fraction(native_fps).limit_denominator(1001 * 1000)
    rate = Fraction(fps).limit_denominator(1001 * 1000)
    n_ticks = int(n_frames * rate / native)
    indices = []
    for k in range(n_ticks):
        # largest i with floor(i * rate / native) <= k  <=>  i < (k + 1) * native / rate
        bound = (k + 1) * native / rate
        i = int(bound) - 1 if bound.denominator == 1 else int(bound)
        indices.append(min(i, n_frames - 1))
    timestamps = [start_time + k / float(rate) for k in range(n_ticks)]
    return _cap(indices, timestamps, max_frames)


def sample_frames(
    n_frames: int,
    *,
    source: Literal["file", "folder"],
    native_fps: float | None = None,
    fps: float = 1.0,
    max_frames: int = 768,
    start_time: float = 0.0,
) -> FrameSample:
    """Choose the frames the model sees.

    `source="file"`: a decoded video file of `n_frames` at `native_fps` (the official `load_video`).
    `source="folder"`: a folder of `n_frames` images sorted by name, read as a 3 fps clip (the official
    `load_video_from_ids`); `native_fps` is ignored.
    """
    if n_frames <= 0:
        raise InputError("The clip has no frames")
    if max_frames <= 0:
        raise InputError("max_frames must be positive")
    if fps <= 0:
        raise InputError("fps must be positive")
    if source == "folder":
        return _folder_rule(n_frames, fps, max_frames)
    if source == "file":
        if not native_fps or native_fps <= 0:
            raise InputError("A video file needs its frame rate to be sampled")
        return _file_rule(n_frames, native_fps, fps, max_frames, start_time)
    raise InputError(f"Unknown frame source '{source}': use 'file' or 'folder'")
