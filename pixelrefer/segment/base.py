"""Marks to masks: the one segmentation interface and the prompts it takes.

A visitor clicks, drags a box or scribbles; a `Prompt` holds any combination of these. A `Segmenter` turns
a prompt into a mask on an image, or prompts on some frames into masks on every frame of a clip. SAM 2.1
(`segment.sam`) is the real one; when its weights cannot be had, `segment.build.load_segmenter` hands back
the classical GrabCut segmenter (`segment.grabcut`) with a notice saying why, so the demo still works and
every result says which segmenter made it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from ..media.masks import EmptyMaskError, ObjectId, clean_mask, to_bool_mask
from ..runtime.errors import InputError, Stopped

__all__ = [
    "MAX_SCRIBBLE_POINTS",
    "Progress",
    "Prompt",
    "PromptError",
    "SegmentResult",
    "Segmenter",
    "TrackingCancelled",
    "Tracks",
    "rank_candidates",
    "scribble_mask",
    "scribble_points",
]

MAX_SCRIBBLE_POINTS = 8
"""A scribble becomes at most this many prompt points (the official demo also sends 8)."""

Progress = Callable[[int, int], None]
"""Called as `progress(done, total)` after each frame of a tracking run."""

Tracks = dict[ObjectId, dict[int, np.ndarray]]
"""What tracking returns: a bool HxW mask per object, per frame position."""


class PromptError(InputError):
    """The marks cannot be used as given; the message says what to change."""


class TrackingCancelled(Stopped):
    """A tracking run stopped because its cancel event was set; nothing partial is returned."""


@dataclass(frozen=True, eq=False)
class Prompt:
    """What the visitor marked on one image or frame, in pixel coordinates (x right, y down).

    `points` with `positive` flags (False marks background), an optional `box` (x0, y0, x1, y1), an optional
    `scribble` (brush layer, any mask format), or a finished `mask` that is used exactly as given.
    """

    points: tuple[tuple[float, float], ...] = ()
    positive: tuple[bool, ...] = ()
    box: tuple[float, float, float, float] | None = None
    scribble: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        points = tuple((float(x), float(y)) for x, y in self.points)
        positive = tuple(bool(flag) for flag in self.positive) if self.positive else (True,) * len(points)
        if len(positive) != len(points):
            raise PromptError(f"{len(points)} points but {len(positive)} positive/negative flags")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "positive", positive)
        if self.box is not None:
            x0, y0, x1, y1 = (float(v) for v in self.box)
            if x1 <= x0 or y1 <= y0:
                raise PromptError("A box needs its second corner right of and below its first")
            object.__setattr__(self, "box", (x0, y0, x1, y1))
        for name in ("scribble", "mask"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, to_bool_mask(value))

    def with_point(self, x: float, y: float, *, positive: bool = True) -> Prompt:
        """The same prompt plus one more click: how a visitor refines a mask."""
        return replace(self, points=(*self.points, (x, y)), positive=(*self.positive, positive))

    @property
    def has_object_marks(self) -> bool:
        """True when something says where the object is (a positive click, a box, a scribble or a mask)."""
        has_scribble = self.scribble is not None and bool(self.scribble.any())
        has_mask = self.mask is not None and bool(self.mask.any())
        return any(self.positive) or self.box is not None or has_scribble or has_mask

    def check(self, height: int, width: int) -> None:
        """Raise `PromptError` unless the prompt fits an image of this size and marks an object."""
        for name in ("scribble", "mask"):
            value = getattr(self, name)
            if value is not None and value.shape != (height, width):
                raise PromptError(
                    f"The {name} is {value.shape[1]}x{value.shape[0]}, the image {width}x{height}"
                )
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(f"The click at ({x:g}, {y:g}) is outside the {width}x{height} image")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise PromptError(f"The box {self.box} lies outside the {width}x{height} image")
        if not self.has_object_marks:
            raise PromptError(
                "Mark the object with a click, a box or a scribble (background clicks alone say nothing)"
            )

    def model_points(
        self, max_scribble_points: int = MAX_SCRIBBLE_POINTS
    ) -> tuple[list[tuple[float, float]], list[int]]:
        """Clicks plus the points chosen from the scribble, with SAM labels (1 object, 0 background)."""
        points = list(self.points)
        labels = [1 if flag else 0 for flag in self.positive]
        if self.scribble is not None:
            chosen = scribble_points(self.scribble, max_scribble_points)
            points += chosen
            labels += [1] * len(chosen)
        return points, labels


def scribble_points(scribble: Any, max_points: int = MAX_SCRIBBLE_POINTS) -> list[tuple[float, float]]:
    """Deterministic prompt points for a brush stroke: its most interior pixel, then farthest-point sampling.

    Spreading the points over the whole stroke tells SAM how far the object reaches; ties are broken by
    raster order, so the same stroke always gives the same points (the official demo samples at random).
    """
    mask = to_bool_mask(scribble)
    rows, cols = np.nonzero(mask)
    if rows.size == 0 or max_points <= 0:
        return []
    depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    chosen = [int(np.argmax(depth[rows, cols]))]
    nearest = np.full(rows.size, np.inf)
    while len(chosen) < min(max_points, rows.size):
        last = chosen[-1]
        nearest = np.minimum(nearest, (rows - rows[last]) ** 2 + (cols - cols[last]) ** 2)
        candidate = int(np.argmax(nearest))
        if nearest[candidate] == 0:
            break
        chosen.append(candidate)
    return [(float(cols[i]), float(rows[i])) for i in chosen]


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """A segmenter's answer for one prompt: the cleaned best mask, SAM's other candidates, and who made it.

    `empty` is True when nothing was found; `message` then says so, and `require()` refuses to hand the
    empty mask on.
    """

    mask: np.ndarray = field(repr=False)
    score: float | None
    alternatives: tuple[tuple[np.ndarray, float], ...]
    segmenter: str
    is_classical: bool
    message: str = ""

    @property
    def empty(self) -> bool:
        """True when the best mask has no pixels."""
        return not bool(self.mask.any())

    def require(self) -> np.ndarray:
        """The mask, or `EmptyMaskError` carrying the message: the only way an empty result gets stopped."""
        if self.empty:
            raise EmptyMaskError(self.message or "The mask is empty")
        return self.mask


def rank_candidates(
    candidates: Sequence[tuple[Any, float | None]],
    *,
    segmenter: str,
    is_classical: bool,
    min_area: int | None = None,
) -> SegmentResult:
    """Clean candidate masks (given best first) and keep the first non-empty one as the answer.

    The other non-empty candidates become `alternatives`, in the given order.
    """
    cleaned = [(clean_mask(mask, min_area=min_area), score) for mask, score in candidates]
    usable = [(mask, score) for mask, score in cleaned if mask.any()]
    if not usable:
        shape = cleaned[0][0].shape if cleaned else (0, 0)
        return SegmentResult(
            mask=np.zeros(shape, dtype=bool),
            score=None,
            alternatives=(),
            segmenter=segmenter,
            is_classical=is_classical,
            message=f"{segmenter} found no object at these marks; click nearer its middle or draw a box.",
        )
    best_mask, best_score = usable[0]
    others = tuple((mask, float(score)) for mask, score in usable[1:] if score is not None)
    return SegmentResult(best_mask, best_score, others, segmenter, is_classical)


def scribble_mask(scribble: Any) -> SegmentResult:
    """Use the brush stroke itself as the mask, pixel for pixel: no model, no cleaning."""
    mask = to_bool_mask(scribble)
    message = "" if mask.any() else "The scribble is empty: paint over the object first."
    return SegmentResult(mask, None, (), "scribble (no model)", True, message)


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InputError(f"Expected an HxWx3 uint8 RGB image, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


class Segmenter(ABC):
    """One interface for every segmenter: `segment_image` for a single picture, `track` for a clip.

    Subclasses set `name` and `is_classical` and implement `_segment` and `_track`; checking inputs, the
    finished-mask shortcut and cancellation live here so every segmenter behaves the same at the edges.
    """

    name: str = ""
    is_classical: bool = False
    notice: str = ""
    """Why this segmenter was chosen when it was not the one asked for (empty otherwise)."""

    def segment_image(self, image: np.ndarray, prompt: Prompt) -> SegmentResult:
        """The best cleaned mask for `prompt` on an HxWx3 uint8 RGB image, with alternatives and a label."""
        array = _check_image(image)
        prompt.check(*array.shape[:2])
        if prompt.mask is not None:
            return SegmentResult(
                prompt.mask.copy(), None, (), f"{self.name} (mask as given)", self.is_classical
            )
        return self._segment(array, prompt)

    def track(
        self,
        frames: Sequence[np.ndarray],
        prompts: Mapping[ObjectId, Mapping[int, Prompt]],
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Tracks:
        """Masks for every object on every frame: `{object_id: {position: bool HxW}}`.

        `prompts[object_id][position]` marks an object on `frames[position]` (any frame, several objects,
        several marked frames per object). Each object is followed forward and backward from its marks.
        A frame where an object is not visible gets an all-False mask. Raises `TrackingCancelled` when
        `cancel` is set.
        """
        arrays = [_check_image(frame) for frame in frames]
        if not arrays:
            raise InputError("No frames to track through")
        shape = arrays[0].shape
        if any(frame.shape != shape for frame in arrays):
            raise InputError("All frames of a clip must have the same size")
        if not prompts:
            raise PromptError("Mark at least one object before tracking")
        for object_id, marks in prompts.items():
            if not marks:
                raise PromptError(f"Object {object_id} has no marks")
            for position, prompt in marks.items():
                if not 0 <= position < len(arrays):
                    raise PromptError(
                        f"Object {object_id} is marked on frame {position}; the clip has {len(arrays)}"
                    )
                prompt.check(*shape[:2])
        return self._track(arrays, prompts, progress, cancel)

    def kept_embeddings(self) -> list[object]:
        """The per-picture features kept so that later clicks skip the image encoder (the server's memory
        budget counts them); a segmenter that keeps none has none."""
        return []

    def forget_embeddings(self) -> None:  # noqa: B027 -- a segmenter that keeps nothing forgets nothing
        """Drop the kept features, to make room: the next click on a picture computes them again."""

    @staticmethod
    def _stop_if_cancelled(cancel: threading.Event | None, done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise TrackingCancelled(f"Tracking was cancelled after {done} of {total} steps")

    @abstractmethod
    def _segment(self, image: np.ndarray, prompt: Prompt) -> SegmentResult:
        """Segment one checked image (the prompt carries no finished mask)."""

    @abstractmethod
    def _track(
        self,
        frames: list[np.ndarray],
        prompts: Mapping[ObjectId, Mapping[int, Prompt]],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Tracks:
        """Track checked prompts through checked frames."""
