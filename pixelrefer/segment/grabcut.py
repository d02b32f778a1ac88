"""The classical segmenter: OpenCV GrabCut behind the same interface as SAM 2.1, needing no weights.

It keeps the demo usable offline or before SAM's weights arrive. On an image, clicks, a box and a scribble
seed GrabCut's colour models. Through a clip, each frame is re-seeded from the neighbouring frame's mask:
the eroded mask is sure object, a band around it may be either, everything beyond is background. Objects
are followed forward and backward from every marked frame.

GrabCut's time grows with the pixels it labels (about 0.3 s for 300x300 on one busy core, 3 s for 640x640),
so it works on a reduced copy and the mask is scaled back with smooth edges: a click or box on a picture
of any size is segmented within `_CLICK_PIXELS`, on the box and a margin around it when there is a box
(everything outside a box is background anyway), so a small boxed object keeps its detail. Tracking steps
read the object's shape from the previous mask and work at the larger `_TRACK_SIDE`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import cv2
import numpy as np

from ..media.masks import ObjectId, clean_mask
from .base import Progress, Prompt, Segmenter, SegmentResult, Tracks, rank_candidates

__all__ = ["GrabCutSegmenter"]

_CLICK_PIXELS = 90_000
"""Pixels GrabCut labels for a click, box or scribble (about 300x300): measured on the examples' objects,
mean IoU 0.65 at this size and 0.68 at 640x640, for a tenth of the time."""
_BOX_MARGIN = 0.25
"""Background kept around a box, as a fraction of its sides, for GrabCut's background colour model."""
_TRACK_SIDE = 640
_IMAGE_ITERATIONS = 4
_TRACK_ITERATIONS = 3
_SAME_COLOUR = 12.0
"""Largest Lab distance (OpenCV's 8-bit Lab) from the marked pixels' median colour that counts as the same
flat colour when a click's object is grown beyond the click."""
_BAND = 0.35
"""Half-width of the uncertain band around the previous mask, as a fraction of the object's size
(sqrt of its area): how far an object may move between two sampled frames."""


def _track_scale(shape: tuple[int, ...]) -> float:
    return min(1.0, _TRACK_SIDE / max(shape[:2]))


def _click_window(prompt: Prompt, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the part of the picture GrabCut looks at: all of it, or the box with a margin."""
    height, width = shape[:2]
    if prompt.box is None:
        return 0, 0, width, height
    x0, y0, x1, y1 = prompt.box
    mx, my = max(8.0, _BOX_MARGIN * (x1 - x0)), max(8.0, _BOX_MARGIN * (y1 - y0))
    marks = [(x, y) for x, y in prompt.points]
    if prompt.scribble is not None and prompt.scribble.any():
        rows, cols = np.nonzero(prompt.scribble)
        marks += [(cols.min(), rows.min()), (cols.max(), rows.max())]
    left = min([x0 - mx] + [x for x, _ in marks])
    top = min([y0 - my] + [y for _, y in marks])
    right = max([x1 + mx] + [x + 1 for x, _ in marks])
    bottom = max([y1 + my] + [y + 1 for _, y in marks])
    return (
        max(0, int(np.floor(left))),
        max(0, int(np.floor(top))),
        min(width, int(np.ceil(right))),
        min(height, int(np.ceil(bottom))),
    )


def _resize(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    if scale == 1.0:
        return array
    height, width = array.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    return cv2.resize(array, size, interpolation=interpolation)


def _restore(found: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask at another size: interpolated and cut at half, so an enlarged mask has smooth edges, not steps."""
    if found.shape == shape[:2]:
        return found
    shrinking = found.shape[0] * found.shape[1] > shape[0] * shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    scaled = cv2.resize(found.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=interpolation)
    return scaled >= 128


def _run_grabcut(image: np.ndarray, seeds: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut from a seed map (cv2.GC_* labels); returns the object pixels."""
    seeds = seeds.copy()
    if not np.isin(seeds, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        seeds[[0, -1], :] = cv2.GC_PR_BGD
        seeds[:, [0, -1]] = cv2.GC_PR_BGD
    background = np.zeros((1, 65), np.float64)
    foreground = np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models by k-means: same marks, same mask
    cv2.grabCut(bgr, seeds, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


def _keep_touching(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Only the connected parts of `mask` that touch an anchor pixel (the marks say which object)."""
    if not anchors.any():
        return mask
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    touched = np.unique(labels[anchors & mask])
    touched = touched[touched > 0]
    return np.isin(labels, touched)


def _shift(prompt: Prompt, x0: int, y0: int, shape: tuple[int, ...]) -> Prompt:
    """The prompt in the coordinates of the window whose top-left corner is (x0, y0)."""
    if (x0, y0) == (0, 0) and (prompt.scribble is None or prompt.scribble.shape == shape[:2]):
        return prompt
    height, width = shape[:2]
    box = None
    if prompt.box is not None:
        bx0, by0, bx1, by1 = prompt.box
        box = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
    scribble = None if prompt.scribble is None else prompt.scribble[y0 : y0 + height, x0 : x0 + width]
    points = tuple((x - x0, y - y0) for x, y in prompt.points)
    return Prompt(points, prompt.positive, box, scribble)


def _seed_from_prompt(prompt: Prompt, shape: tuple[int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The seed map for a prompt at working scale, and the pixels the visitor marked as object."""
    height, width = shape
    if prompt.box is not None:
        seeds = np.full(shape, cv2.GC_BGD, np.uint8)
        x0, y0, x1, y1 = (int(round(v * scale)) for v in prompt.box)
        seeds[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = cv2.GC_PR_FGD
    else:
        seeds = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    marked = np.zeros(shape, np.uint8)
    if prompt.scribble is not None:
        stroke = _restore(prompt.scribble, shape)
        seeds[stroke] = cv2.GC_FGD
        marked[stroke] = 1
    # A click is sure about a small disc and suggests a wider one, so the object's colours get sampled.
    radius = max(2, int(round(min(shape) / 60)))
    reach = max(radius, int(round(min(shape) / 8)))
    centres = [(int(round(x * scale)), int(round(y * scale))) for x, y in prompt.points]
    if prompt.box is None:
        for centre, positive in zip(centres, prompt.positive, strict=True):
            if positive:
                cv2.circle(seeds, centre, reach, cv2.GC_PR_FGD, thickness=-1)
    for centre, positive in zip(centres, prompt.positive, strict=True):
        cv2.circle(seeds, centre, radius, cv2.GC_FGD if positive else cv2.GC_BGD, thickness=-1)
        if positive:
            cv2.circle(marked, centre, radius, 1, thickness=-1)
    return seeds, marked > 0


def _open_same_colour(small: np.ndarray, seeds: np.ndarray, marked: np.ndarray) -> None:
    """Let the marked colour's connected region be object, not background, in GrabCut's first colour models.

    A click only suggests a disc around itself, and a tracking step only the band around the last mask; the
    rest of a larger (or moved) flat object would start as probable background, teach the background model
    the object's colour and stay background. Pixels of the marked pixels' colour that connect to them start
    as probable object instead (unless that is half the image).
    """
    if not marked.any():
        return
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    close = np.linalg.norm(lab - np.median(lab[marked], axis=0), axis=-1) <= _SAME_COLOUR
    region = _keep_touching(close, marked)
    if region.any() and region.sum() < 0.5 * region.size:
        seeds[region & (seeds == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD


def _seed_from_mask(previous: np.ndarray) -> np.ndarray:
    """Seeds for the next frame: the object's core is sure, a band around its edge is open, the rest is not."""
    inside = cv2.distanceTransform(np.pad(previous, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    outside = cv2.distanceTransform((~previous).astype(np.uint8), cv2.DIST_L2, 5)
    band = max(3.0, _BAND * float(np.sqrt(previous.sum())))
    core = min(band, 0.6 * float(inside.max()))
    seeds = np.full(previous.shape, cv2.GC_BGD, np.uint8)
    seeds[outside <= band] = cv2.GC_PR_BGD
    seeds[inside > core] = cv2.GC_FGD
    return seeds


class GrabCutSegmenter(Segmenter):
    """Classical segmentation with OpenCV GrabCut: no model, no download, clearly labelled as such."""

    name = "GrabCut (classical)"
    is_classical = True

    def __init__(self, notice: str = "") -> None:
        self.notice = notice

    def _segment(self, image: np.ndarray, prompt: Prompt) -> SegmentResult:
        x0, y0, x1, y1 = _click_window(prompt, image.shape)
        window = image[y0:y1, x0:x1]
        local = _shift(prompt, x0, y0, window.shape)
        scale = min(1.0, float(np.sqrt(_CLICK_PIXELS / (window.shape[0] * window.shape[1]))))
        small = _resize(window, scale, cv2.INTER_AREA)
        seeds, marked = _seed_from_prompt(local, small.shape[:2], scale)
        _open_same_colour(small, seeds, marked)
        found = _keep_touching(_run_grabcut(small, seeds, _IMAGE_ITERATIONS), marked)
        mask = np.zeros(image.shape[:2], bool)
        mask[y0:y1, x0:x1] = _restore(found, window.shape)
        return rank_candidates([(mask, None)], segmenter=self.name, is_classical=True)

    def _follow(self, frame: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """The object on `frame`, re-seeded from its mask on the neighbouring frame."""
        if not previous.any():
            return previous.copy()
        scale = _track_scale(frame.shape)
        small = _resize(frame, scale, cv2.INTER_AREA)
        prior = _restore(previous, small.shape)
        if not prior.any():
            return np.zeros_like(previous)
        seeds = _seed_from_mask(prior)
        _open_same_colour(small, seeds, seeds == cv2.GC_FGD)
        found = _keep_touching(_run_grabcut(small, seeds, _TRACK_ITERATIONS), prior)
        return clean_mask(_restore(found, frame.shape))

    def _track(
        self,
        frames: list[np.ndarray],
        prompts: Mapping[ObjectId, Mapping[int, Prompt]],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Tracks:
        count = len(frames)
        total = len(prompts) * count
        done = 0
        tracks: Tracks = {}
        for object_id, marks in prompts.items():
            self._stop_if_cancelled(cancel, done, total)
            masks: dict[int, np.ndarray] = {}
            for position, prompt in sorted(marks.items()):
                self._stop_if_cancelled(cancel, done, total)
                masks[position] = (
                    prompt.mask if prompt.mask is not None else self._segment(frames[position], prompt).mask
                )
                done += 1
                if progress is not None:
                    progress(done, total)
            anchors = set(masks)
            first = min(anchors)
            # Forward from every mark up to the next one, then backward from the first mark to frame 0.
            order = [(p, p - 1) for p in range(first + 1, count) if p not in anchors]
            order += [(p, p + 1) for p in range(first - 1, -1, -1)]
            for position, source in order:
                self._stop_if_cancelled(cancel, done, total)
                masks[position] = self._follow(frames[position], masks[source])
                done += 1
                if progress is not None:
                    progress(done, total)
            tracks[object_id] = {position: masks[position] for position in range(count)}
        return tracks
