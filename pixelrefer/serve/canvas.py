"""The canvas picture: a display copy of the frame being marked, with the objects, the draft mask and the
marks in progress drawn on it, and clicks on it mapped back to the frame's pixels.

Marks and masks live at the frame's size (`Workspace`); only what the page shows is smaller.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from ..media.images import shrink_image
from ..segment.base import Prompt
from .marks_view import Shape, draw_objects

__all__ = ["DISPLAY_SIDE", "display_copy", "draw_canvas", "to_frame"]

DISPLAY_SIDE = 1024
"""The canvas picture's longer side at most. The page shows it about 560 px wide (twice that on a high-density
screen), so a larger copy only costs drawing, encoding and sending on every click; clicks on it are mapped
back to the frame's pixels (`to_frame`) and marks and masks stay at the frame's size."""

_POSITIVE = (40, 200, 60)
_NEGATIVE = (230, 40, 40)
_WHITE = (255, 255, 255)
_CORNER = (255, 255, 0)


def display_copy(frame: np.ndarray) -> np.ndarray:
    """The frame as the canvas shows it: at most `DISPLAY_SIDE` pixels on its longer side."""
    return shrink_image(frame, DISPLAY_SIDE)


def _scale(frame_shape: tuple[int, ...], shown_shape: tuple[int, ...]) -> tuple[float, float]:
    """(x, y) factors from the frame's pixels to the canvas picture's (1 for pictures that fit)."""
    (height, width), (shown_height, shown_width) = frame_shape[:2], shown_shape[:2]
    return shown_width / width, shown_height / height


def to_frame(
    x: float, y: float, frame_shape: tuple[int, ...], shown_shape: tuple[int, ...]
) -> tuple[float, float]:
    """A point clicked on the canvas picture, in the frame's pixels."""
    scale_x, scale_y = _scale(frame_shape, shown_shape)
    height, width = frame_shape[:2]
    return min(x / scale_x, width - 1.0), min(y / scale_y, height - 1.0)


def draw_canvas(
    shown: np.ndarray,
    frame_shape: tuple[int, ...],
    masks: Mapping[object, np.ndarray],
    colors: Mapping[object, int],
    prompt: Prompt,
    corner: tuple[float, float] | None,
    picked: object = None,
) -> np.ndarray:
    """`shown` (the display copy) with `masks` (at the frame's size) tinted in their colour indices, each
    findable however small and the `picked` one highlighted (`pixelrefer.serve.marks_view`), the prompt's
    points (green on the object, red on the background) and box, and a pending box corner."""
    height, width = shown.shape[:2]
    scale_x, scale_y = _scale(frame_shape, shown.shape)

    def fitted(mask: np.ndarray) -> np.ndarray:
        if mask.shape == (height, width):
            return mask
        area = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        shown_mask = area >= 0.5
        # A mask thinner than a display pixel still shows: every pixel it touches.
        return shown_mask if shown_mask.any() or not mask.any() else area > 0

    def at(x: float, y: float) -> tuple[int, int]:
        return int(x * scale_x), int(y * scale_y)

    shapes = [
        Shape(str(label), fitted(mask), colors[label], label == picked) for label, mask in masks.items()
    ]
    marks = [at(x, y) for x, y in prompt.points]
    if prompt.box is not None:
        marks += [at(*prompt.box[:2]), at(*prompt.box[2:])]
    if corner is not None:
        marks.append(at(*corner))
    image = draw_objects(shown, shapes, marks)
    radius = max(3, min(height, width) // 80)
    for (x, y), positive in zip(prompt.points, prompt.positive, strict=True):
        cv2.circle(image, at(x, y), radius, _POSITIVE if positive else _NEGATIVE, -1, cv2.LINE_AA)
        cv2.circle(image, at(x, y), radius, _WHITE, 1, cv2.LINE_AA)
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        cv2.rectangle(image, at(x0, y0), at(x1, y1), _WHITE, 2)
    if corner is not None:
        cv2.drawMarker(image, at(*corner), _CORNER, cv2.MARKER_CROSS, 4 * radius, 2)
    return image
