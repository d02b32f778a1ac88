"""How the canvas shows objects: each one findable however small, the picked one highlighted.

The export overlay (`pixelrefer.media.video.overlay_image`) tints each mask, outlines it and writes its label
at the mask's centre, which is right for a picture to keep. On the canvas a visitor also has to find and
check a 143-pixel saucer rim: there a label written inside covers the whole object. So here a label goes
outside a mask too small to hold it (with a leader line), a small mask gets a ring around it of at least
`MIN_RING_PX` display pixels, and the object picked in the list is drawn stronger (a deeper tint, a white
halo around its outline) instead of being hidden. A label is never drawn over the visitor's own marks (the
clicks and box corners being placed): inside a large mask it goes to the roomiest spot at least
`MARK_CLEARANCE_PX` from them, and outside the mask when there is none.

`small_mask_note` is the one rule for masks too small for the model: the official tokenizer upscales a small
object's crop to a fixed number of patches, but a mask of a few hundred pixels carries almost no picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..media.masks import mask_bbox, object_color

__all__ = ["MARK_CLEARANCE_PX", "SMALL_MASK_PIXELS", "Shape", "draw_objects", "small_mask_note"]

SMALL_MASK_PIXELS = 400
"""Below this many frame pixels (about 20x20, two of the vision tower's 14-px patches) the model is given an
upscaled blur: such a mask is kept only with a warning."""
MIN_RING_PX = 12
"""Radius of the ring drawn around a small mask, in display pixels: a thumb-sized target on a phone."""
MARK_CLEARANCE_PX = 14
"""Display pixels kept free between a label and a click point (the point's dot and a fingertip's slack)."""
_TINT, _PICKED_TINT = 0.45, 0.65
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Shape:
    """One mask to draw, at the display picture's size."""

    label: str
    mask: np.ndarray
    colour_index: int
    picked: bool = False


def small_mask_note(pixels: int, tag: str) -> str | None:
    """A warning for a mask of `pixels` frame pixels, or None when the model can see it."""
    if pixels >= SMALL_MASK_PIXELS:
        return None
    return (
        f"{tag} covers only {pixels} pixels: the model sees almost nothing of it. Zoom in on a larger "
        "picture, mark a larger part, or delete it."
    )


def draw_objects(
    frame: np.ndarray, shapes: Sequence[Shape], marks: Sequence[tuple[int, int]] = ()
) -> np.ndarray:
    """`frame` with every non-empty shape tinted, outlined (or ringed, when small), and labelled, no label
    over the `marks` (the visitor's click points and box corners, in `frame`'s pixels)."""
    image = np.array(frame, dtype=np.uint8)
    shapes = [s for s in shapes if s.mask.any()]
    height, width = image.shape[:2]
    line = max(2, round(min(height, width) / 250))
    for shape in shapes:
        colour = np.asarray(object_color(shape.colour_index), np.float32)
        alpha = _PICKED_TINT if shape.picked else _TINT
        x0, y0, x1, y1 = mask_bbox(shape.mask)
        box = np.s_[y0:y1, x0:x1]
        inside = shape.mask[box]
        region = image[box].astype(np.float32)
        region[inside] = region[inside] * (1 - alpha) + colour * alpha
        image[box] = np.clip(np.round(region), 0, 255).astype(np.uint8)
    for shape in shapes:
        colour = object_color(shape.colour_index)
        ring = _ring(shape.mask)
        if ring is None:
            outline = shape.mask.astype(np.uint8)
            contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if shape.picked:
                cv2.drawContours(image, contours, -1, _WHITE, line + 3, cv2.LINE_AA)
            cv2.drawContours(image, contours, -1, colour, line, cv2.LINE_AA)
        else:  # a small object's own outline would cover it: a ring around it marks it instead
            centre, radius = ring
            cv2.circle(image, centre, radius, _WHITE, line + (4 if shape.picked else 2), cv2.LINE_AA)
            cv2.circle(image, centre, radius, colour, line, cv2.LINE_AA)
    for shape in shapes:
        _label(image, shape, line, marks)
    return image


def _ring(mask: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The ring around a small mask (centre, radius), or None for a mask large enough to be seen."""
    x0, y0, x1, y1 = mask_bbox(mask)
    if max(x1 - x0, y1 - y0) >= 2 * MIN_RING_PX:
        return None
    radius = max(MIN_RING_PX, int(np.hypot(x1 - x0, y1 - y0) / 2) + 4)
    return ((x0 + x1) // 2, (y0 + y1) // 2), radius


def _inside_spot(
    mask: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], marks: Sequence[tuple[int, int]]
) -> tuple[int, int] | None:
    """Where a label of `size` (width, height) is centred inside a large mask: the spot deepest inside it
    whose label keeps `MARK_CLEARANCE_PX` from every mark, or None when the mask has no such spot."""
    x0, y0, x1, y1 = box
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    depth = cv2.distanceTransform(np.pad(crop, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    half_w, half_h = size[0] / 2, size[1] / 2
    columns, rows = np.arange(x0, x1), np.arange(y0, y1)
    for mx, my in marks:  # the gap between a mark and the label's box around each candidate centre
        gap_x = np.maximum(np.abs(columns - mx) - half_w, 0)
        gap_y = np.maximum(np.abs(rows - my) - half_h, 0)
        depth[gap_y[:, None] ** 2 + gap_x[None, :] ** 2 < MARK_CLEARANCE_PX**2] = 0
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    if depth[cy, cx] < min(half_w, half_h):  # no spot clear of the marks with the label (mostly) inside
        return None
    return x0 + int(cx), y0 + int(cy)


def _label(image: np.ndarray, shape: Shape, line: int, marks: Sequence[tuple[int, int]] = ()) -> None:
    """The label inside the mask when it fits there with room to spare, away from the marks, else just
    outside its box, above (or below, at the top edge) with a leader line, so the object itself stays
    visible."""
    height, width = image.shape[:2]
    scale = max(0.45, min(height, width) / 560)
    thickness = max(1, round(scale * 2))
    (text_w, text_h), base = cv2.getTextSize(shape.label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = 3
    box_w, box_h = text_w + 2 * pad, text_h + base + 2 * pad
    x0, y0, x1, y1 = mask_bbox(shape.mask)
    colour = object_color(shape.colour_index)
    large = x1 - x0 >= 2 * box_w and y1 - y0 >= 2 * box_h
    spot = _inside_spot(shape.mask, (x0, y0, x1, y1), (box_w, box_h), marks) if large else None
    if spot is not None:
        left, top = spot[0] - box_w // 2, spot[1] - box_h // 2
        leader = None
    else:  # above and to the right of the mask (or of its ring), below it at the top edge
        centre, radius = _ring(shape.mask) or (((x0 + x1) // 2, (y0 + y1) // 2), max(x1 - x0, y1 - y0) // 2)
        left = centre[0] + radius // 2
        top = centre[1] - radius - box_h
        if top < 0:
            top = centre[1] + radius
        leader = centre, radius
    left = int(np.clip(left, 0, max(0, width - box_w)))
    top = int(np.clip(top, 0, max(0, height - box_h)))
    if leader is not None:  # from the ring's edge (never across the object) to the label
        (cx, cy), radius = leader
        tx, ty = left + box_w // 2, top + box_h // 2
        length = max(1.0, float(np.hypot(tx - cx, ty - cy)))
        start = (int(cx + (tx - cx) * radius / length), int(cy + (ty - cy) * radius / length))
        cv2.line(image, start, (tx, ty), colour, max(1, line - 1), cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + box_w, top + box_h), colour, -1)
    if shape.picked:
        cv2.rectangle(image, (left, top), (left + box_w, top + box_h), _WHITE, 2)
    cv2.putText(
        image, shape.label, (left + pad, top + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE,
        thickness, cv2.LINE_AA,
    )  # fmt: skip
