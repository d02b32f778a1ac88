"""The file rule in `pixelrefer.media.sampling` against the real ffmpeg `fps=N:round=down` filter.

The official loader decodes clips with that filter; here generated clips whose frames carry their own
index go through the same ffmpeg binary, and the source frames that come out must be exactly the ones the
rule predicts.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction

import imageio_ffmpeg
import numpy as np
import pytest

from pixelrefer.media.sampling import sample_frames

from .framecode import frame_number

# (frames, native rate): 30 fps 10 s, 25 fps 7.3 s (182 and 183 frames), 29.97 fps 10 s, 3 fps 10 frames.
CLIPS = [(300, "30"), (182, "25"), (183, "25"), (300, "30000/1001"), (10, "3")]


def ffmpeg_fps_frames(path, fps: float, size: int = 32) -> list[int]:
    """Which source frames ffmpeg's fps filter (round=down) outputs, read from the frames themselves."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path)]
    command += ["-vf", f"fps={fps}:round=down", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)
    return [frame_number(frame) for frame in frames]


@pytest.mark.parametrize(("n_frames", "rate"), CLIPS)
@pytest.mark.parametrize("fps", [1, 2])
def test_file_rule_matches_ffmpeg(coded_clip, n_frames: int, rate: str, fps: float) -> None:
    path = coded_clip(n_frames, rate)
    expected = sample_frames(
        n_frames, source="file", native_fps=float(Fraction(rate)), fps=fps, max_frames=10**6
    )
    assert ffmpeg_fps_frames(path, fps) == list(expected.indices)


def test_coded_clip_decodes_every_frame(coded_clip) -> None:
    # The check above is only as good as the frame codes: at a high output rate every source frame
    # comes out (duplicated), so all indices must be read back in order.
    seen = ffmpeg_fps_frames(coded_clip(300, "30000/1001"), 60)
    assert sorted(set(seen)) == list(range(300))
    assert seen == sorted(seen)


def test_timestamps_and_cap_follow_the_official_labels() -> None:
    sample = sample_frames(300, source="file", native_fps=30000 / 1001, fps=1, max_frames=768, start_time=0.5)
    assert sample.indices == (29, 59, 89, 119, 149, 179, 209, 239, 269, 299)
    assert sample.timestamps == pytest.approx([0.5 + k for k in range(10)])
    capped = sample_frames(300, source="file", native_fps=30, fps=1, max_frames=4)
    assert capped.indices == tuple(sample.indices[i] for i in np.linspace(0, 9, 4, dtype=int))
    assert capped.timestamps == (0.0, 3.0, 6.0, 9.0)
