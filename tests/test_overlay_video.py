"""The clip's overlay MP4 (`pixelrefer.media.video.write_clip_overlay`, the download and the app's player): every
frame of the clip at its own frame rate, each tinted with the nearest sampled frame's masks; bounded in pixels
before anything is decoded; the sampled frames, captioned as such, when the whole clip cannot be played. Read
back with the project's own reader; the coded clips say which source frame each written frame is."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pixelrefer.media.limits import MediaLimits
from pixelrefer.media.masks import object_color
from pixelrefer.media.video import load_clip, overlay_plan, probe_video, read_frames, write_clip_overlay

from .framecode import frame_number


def right_box(height: int = 48, width: int = 64) -> np.ndarray:
    """A mask in the right quarter, where it cannot change the stripes' medians that number the frame."""
    mask = np.zeros((height, width), bool)
    mask[8:40, 50:62] = True
    return mask


def tinted(frame: np.ndarray, plain: float) -> bool:
    """Whether red rises over the box's inside by a good part of 45 % of the object's colour."""
    height, width = frame.shape[:2]
    inside = frame[int(height * 0.45) : int(height * 0.55), int(width * 0.83) : int(width * 0.92), 0]
    return float(inside.mean()) - plain > 0.3 * (object_color(0)[0] - plain)


def test_the_overlay_plays_every_frame_at_the_clips_rate_with_the_nearest_sampled_mask(
    coded_clip, tmp_path: Path
) -> None:
    clip = load_clip(coded_clip(36, "12", 64, 48))
    assert clip.indices == (11, 23, 35) and clip.source_frames == 36 and clip.native_fps == 12
    # Object 1 is known on the middle sampled frame only (marked there, not tracked).
    out = write_clip_overlay(clip, {1: {23: right_box()}}, {1: 0}, tmp_path / "overlay.mp4")
    info = probe_video(out)
    assert (info.n_frames, info.fps, info.width, info.height) == (36, pytest.approx(12.0), 64, 48)
    frames = read_frames(out, range(info.n_frames))
    assert [frame_number(f[:, :40]) for f in frames] == list(range(36))
    shown = [i for i, frame in enumerate(frames) if tinted(frame, float(frame[24, 56, 1]))]
    # Nearest to source frame 23 of (11, 23, 35): frames 18..29 (a tie goes to the earlier sampled frame).
    assert shown == list(range(18, 30))


def test_the_duration_limit_bounds_the_overlay_like_the_clip(coded_clip, tmp_path: Path) -> None:
    clip = load_clip(coded_clip(36, "12", 64, 48), MediaLimits(max_duration_s=2.0))
    assert clip.source_frames == 24
    masks = {1: {f: right_box() for f in clip.indices}}
    info = probe_video(write_clip_overlay(clip, masks, {1: 0}, tmp_path / "overlay.mp4"))
    assert (info.n_frames, info.fps) == (24, pytest.approx(12.0))


def test_the_pixel_budget_shrinks_the_overlay_before_decoding_or_falls_back_to_captioned_samples(
    coded_clip, tmp_path: Path
) -> None:
    clip = load_clip(coded_clip(36, "12", 192, 144))
    mask = np.zeros((144, 192), bool)
    mask[24:120, 150:186] = True
    masks = {1: {f: mask for f in clip.indices}}
    budget = 36 * 96 * 72
    assert overlay_plan(clip, budget) == (96, 72)
    small = write_clip_overlay(clip, masks, {1: 0}, tmp_path / "small.mp4", max_pixels=budget)
    info = probe_video(small)
    assert (info.n_frames, info.fps, info.width, info.height) == (36, pytest.approx(12.0), 96, 72)
    frames = read_frames(small, range(36))
    assert [frame_number(f[:, :60]) for f in frames] == list(range(36))
    assert all(tinted(frame, float(frame[36, 84, 1])) for frame in frames)  # the mask shrunk with the frame

    assert overlay_plan(clip, 36 * 80 * 60) is None  # under the smallest side worth playing
    sampled = write_clip_overlay(clip, masks, {1: 0}, tmp_path / "sampled.mp4", max_pixels=36 * 80 * 60)
    info = probe_video(sampled)
    assert info.n_frames == len(clip) == 3
    assert info.fps == pytest.approx(1.5)  # 3 frames over 2 s, within 1..4 frames a second
    for frame in read_frames(sampled, range(3)):
        band = frame[:12, :100]  # the caption: white letters on a dark band, top left
        assert band.min() < 30 and band.max() > 200


def test_a_clip_whose_file_is_gone_writes_its_sampled_frames(coded_clip, tmp_path: Path) -> None:
    copy = tmp_path / "clip.mp4"
    shutil.copy(coded_clip(36, "12", 64, 48), copy)
    clip = load_clip(copy)
    copy.unlink()
    assert overlay_plan(clip) is None
    info = probe_video(write_clip_overlay(clip, {}, {}, tmp_path / "overlay.mp4"))
    assert info.n_frames == 3
