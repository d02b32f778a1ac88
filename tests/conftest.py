"""Shared fixtures: a tiny random SAM 2.1 checkpoint and clips whose frames carry their own index."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random SAM 2.1 checkpoint (official layout), built once per test run."""
    from pixelrefer.sam import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("sam2-tiny"))


@pytest.fixture(scope="session")
def sam2(tiny_sam2_dir: Path):
    """The SAM 2.1 segmenter on the tiny checkpoint, on the CPU in float32."""
    from pixelrefer.sam import Sam2Segmenter, sam_placement

    # Random weights produce denormal floats that slow CPU kernels down by orders of magnitude.
    torch.set_flush_denormal(True)
    return Sam2Segmenter.load(str(tiny_sam2_dir), placement=sam_placement("cpu", "float32"))


@pytest.fixture(scope="session")
def coded_clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`coded_clip(n_frames, rate, width=32, height=32)`: an mp4 whose frames encode their index (cached)."""
    from .framecode import write_coded_clip

    folder = tmp_path_factory.mktemp("clips")
    made: dict[tuple, Path] = {}

    def make(n_frames: int, rate: str, width: int = 32, height: int = 32) -> Path:
        key = (n_frames, rate, width, height)
        if key not in made:
            name = f"clip_{n_frames}_{rate.replace('/', '-')}_{width}x{height}.mp4"
            made[key] = write_coded_clip(folder / name, n_frames, rate, width, height)
        return made[key]

    return make
