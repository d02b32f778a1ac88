"""Synthetic scenes with known masks: shapes over a busy background, still or moving.

The background is blocks of random colour with noise, so a segmenter cannot win by thresholding; the
objects are noisy flat colours, so their true masks are known exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

POLYGON = np.array([[40, 30], [150, 40], [170, 120], [90, 140], [30, 100]], np.int32)


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random-colour block pattern with pixel noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    base = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST).astype(int)
    return np.clip(base + rng.integers(-25, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def paint(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], seed: int = 1) -> np.ndarray:
    """`image` with the mask filled by a noisy flat colour."""
    rng = np.random.default_rng(seed)
    fill = np.clip(np.array(color) + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)
    result = image.copy()
    result[mask] = fill[mask]
    return result


def disc_mask(height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, centre, radius, 1, thickness=-1)
    return mask > 0


def polygon_mask(
    height: int, width: int, points: np.ndarray = POLYGON, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [points + np.array(offset, np.int32)], 1)
    return mask > 0


def disc_scene(height: int = 160, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    mask = disc_mask(height, width, (90, 80), 40)
    return paint(textured(height, width), mask, (200, 40, 40)), mask


def polygon_scene(height: int = 160, width: int = 200) -> tuple[np.ndarray, np.ndarray]:
    mask = polygon_mask(height, width)
    return paint(textured(height, width, seed=2), mask, (40, 60, 210)), mask


def moving_scene(
    n_frames: int, height: int = 160, width: int = 200
) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """A red disc moving right and down, and a blue polygon moving left, over a still background."""
    background = textured(height, width, seed=3)
    small = np.array([[0, 0], [40, 5], [45, 40], [10, 35]], np.int32)
    frames, truths = [], []
    for t in range(n_frames):
        disc = disc_mask(height, width, (40 + 6 * t, 45 + 3 * t), 24)
        poly = polygon_mask(height, width, small, (140 - 5 * t, 100)) & ~disc
        frame = paint(paint(background, disc, (210, 40, 40), seed=4), poly, (40, 60, 220), seed=5)
        frames.append(frame)
        truths.append({"disc": disc, "polygon": poly})
    return frames, truths


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A plain light colour gradient with mild noise, like a wall or the sky."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([175 + 45 * cols / width, 195 + 30 * rows / height, 215 - 35 * cols / width], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 4, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 80) -> np.ndarray:
    """The image after a JPEG round trip: blurred colour edges, as in any photo or video frame."""
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def flat_disc_frames(
    n_frames: int, height: int = 160, width: int = 200, step: int = 16
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A flat blue disc (radius 40) moving right `step` px a frame over a plain gradient, JPEG-compressed."""
    background = gradient(height, width, seed=1)
    frames, truths = [], []
    for t in range(n_frames):
        disc = disc_mask(height, width, (50 + step * t, height // 2), 40)
        frame = background.copy()
        frame[disc] = (20, 60, 200)
        frames.append(jpeg(frame))
        truths.append(disc)
    return frames, truths


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
