"""Clips whose frames say which frame they are: three grey stripes spell the index in base 16.

Flat grey survives H.264 (no chroma, no edges inside a stripe), so after encoding, decoding and even
resizing, `frame_number` reads back exactly which source frame a decoder returned.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

STRIPES = 3


def coded_frame(index: int, width: int = 32, height: int = 32) -> np.ndarray:
    """A greyscale HxW frame that encodes `index` (< 16**3)."""
    frame = np.zeros((height, width), np.uint8)
    bounds = np.linspace(0, height, STRIPES + 1).astype(int)
    for digit in range(STRIPES):
        frame[bounds[digit] : bounds[digit + 1]] = ((index >> (4 * digit)) & 15) * 16 + 8
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Read back the index of a decoded (RGB or grey) coded frame."""
    grey = np.asarray(frame)[..., 0] if np.asarray(frame).ndim == 3 else np.asarray(frame)
    height = grey.shape[0]
    bounds = np.linspace(0, height, STRIPES + 1)
    value = 0
    for digit in range(STRIPES):
        top, bottom = bounds[digit], bounds[digit + 1]
        quarter = (bottom - top) / 4
        band = grey[int(top + quarter) : max(int(top + quarter) + 1, int(bottom - quarter))]
        value += int(round((float(np.median(band)) - 8) / 16)) << (4 * digit)
    return value


def write_coded_clip(path: Path, n_frames: int, rate: str, width: int = 32, height: int = 32) -> Path:
    """An H.264 mp4 of `n_frames` coded frames at frame rate `rate` (e.g. "30000/1001"), made by ffmpeg."""
    data = b"".join(coded_frame(i, width, height).tobytes() for i in range(n_frames))
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
    ]
    command += [
        "-s",
        f"{width}x{height}",
        "-r",
        rate,
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    subprocess.run(command, input=data, check=True)
    return path
