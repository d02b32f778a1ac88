"""Generated media for the app tests: a photo-like image with two bold objects, and a clip of a moving disc.

The objects are flat, saturated colours on a light, gently textured gradient, so the classical segmenter
of the offline preview finds them from one click or a box, and their true masks are known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter
from PIL import Image

from .scenes import gradient

DISC_RGB = (20, 60, 200)
SQUARE_RGB = (235, 140, 30)


@dataclass(frozen=True)
class SceneImage:
    """A PNG with a blue disc (clicked) and an orange square (boxed), and their true masks."""

    path: Path
    disc: np.ndarray
    square: np.ndarray
    disc_centre: tuple[int, int]
    square_box: tuple[int, int, int, int]
    """(x0, y0, x1, y1), inclusive corners of the square."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.disc.shape[1], self.disc.shape[0]


@dataclass(frozen=True)
class SceneClip:
    """An H.264 clip of a blue disc moving right; `centres[i]` is the disc's centre on source frame i."""

    path: Path
    fps: int
    centres: tuple[tuple[int, int], ...]
    radius: int
    size: tuple[int, int]

    def disc(self, frame: int) -> np.ndarray:
        """The disc's true mask on source frame `frame`."""
        return disc_mask(self.size, self.centres[frame], self.radius)


def backdrop(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A light colour gradient with mild noise: plain enough for GrabCut, not a flat fill."""
    return gradient(height, width, seed)


def disc_mask(size: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.circle(mask, centre, radius, 1, thickness=-1)
    return mask > 0


def write_scene_image(folder: Path, width: int = 480, height: int = 360) -> SceneImage:
    disc_centre = (int(width * 0.31), height // 2)
    disc = disc_mask((width, height), disc_centre, int(height * 0.2))
    x0, y0, x1, y1 = int(width * 0.63), int(height * 0.25), int(width * 0.87), int(height * 0.7)
    square = np.zeros((height, width), bool)
    square[y0 : y1 + 1, x0 : x1 + 1] = True
    image = backdrop(width, height)
    image[disc] = DISC_RGB
    image[square] = SQUARE_RGB
    path = folder / f"scene_{width}x{height}.png"
    Image.fromarray(image).save(path)
    return SceneImage(path, disc, square, disc_centre, (x0, y0, x1, y1))


def write_mask_png(mask: np.ndarray, path: Path) -> Path:
    """A mask as an 8-bit PNG (255 inside), the way a visitor or a script would save one."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)
    return path


def write_scene_clip(
    folder: Path, *, seconds: int = 4, fps: int = 8, step: int = 2, width: int = 320, height: int = 240
) -> SceneClip:
    """`seconds` s at `fps` (1 fps sampling keeps one frame per second); the disc moves right `step` px a frame.

    Slow enough for the classical tracker, which follows an object from one sampled frame to the next.
    """
    radius = 40
    centres = tuple((60 + step * t, height // 2) for t in range(seconds * fps))
    background = backdrop(width, height, seed=1)
    path = folder / f"moving_disc_{seconds}s_{fps}fps.mp4"
    params = ["-pix_fmt", "yuv420p", "-crf", "16"]
    with FFMPEG_VideoWriter(str(path), (width, height), fps, codec="libx264", ffmpeg_params=params) as out:
        for centre in centres:
            frame = background.copy()
            frame[disc_mask((width, height), centre, radius)] = DISC_RGB
            out.write_frame(frame)
    return SceneClip(path, fps, centres, radius, (width, height))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
