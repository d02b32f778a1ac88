"""Video IO: exact metadata, the frames the official rules choose, limits with clear words, overlays."""

from __future__ import annotations

import subprocess
import wave

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pixelrefer.media.limits import MediaLimits, MediaRejected
from pixelrefer.media.masks import object_color
from pixelrefer.media.sampling import sample_frames
from pixelrefer.media.video import (
    load_clip,
    load_frame_folder,
    overlay_image,
    probe_video,
    read_frames,
    write_overlay_video,
)

from .framecode import coded_frame, frame_number
from .scenes import disc_mask


@pytest.mark.parametrize(
    ("n_frames", "rate", "fps"), [(300, "30000/1001", 30000 / 1001), (10, "3", 3.0), (183, "25", 25.0)]
)
def test_probe_is_exact(coded_clip, n_frames: int, rate: str, fps: float) -> None:
    info = probe_video(coded_clip(n_frames, rate))
    assert info.n_frames == n_frames
    assert info.fps == pytest.approx(fps, rel=1e-9)
    assert (info.width, info.height) == (32, 32)
    assert info.duration == pytest.approx(n_frames / fps)
    assert info.start_time == 0.0 and info.file_size > 0


def test_read_frames_in_any_order(coded_clip) -> None:
    path = coded_clip(300, "30000/1001")
    frames = read_frames(path, [250, 3, 3, 0, 299])
    assert [frame_number(frame) for frame in frames] == [250, 3, 3, 0, 299]
    assert all(frame.shape == (32, 32, 3) and frame.dtype == np.uint8 for frame in frames)
    assert read_frames(path, []) == []
    with pytest.raises(ValueError):
        read_frames(path, [-1])


def test_read_frames_resized(coded_clip) -> None:
    frames = read_frames(coded_clip(20, "10", 64, 48), [7], size=(32, 24))
    assert frames[0].shape == (24, 32, 3) and frame_number(frames[0]) == 7


@pytest.mark.parametrize(("n_frames", "rate", "fps"), [(300, "30000/1001", 1), (183, "25", 2), (10, "3", 1)])
def test_load_clip_samples_by_the_file_rule(coded_clip, n_frames: int, rate: str, fps: float) -> None:
    clip = load_clip(coded_clip(n_frames, rate), fps=fps)
    expected = sample_frames(
        n_frames, source="file", native_fps=probe_video(coded_clip(n_frames, rate)).fps, fps=fps
    )
    assert clip.indices == expected.indices and clip.timestamps == expected.timestamps
    assert [frame_number(frame) for frame in clip.frames] == list(clip.indices)
    assert clip.timestamps == pytest.approx([k / fps for k in range(len(clip))])
    assert clip.source == "file" and clip.notes == () and clip.size == (32, 32)


class TestLimits:
    def test_oversized_upload_is_refused_before_reading(self, coded_clip) -> None:
        with pytest.raises(MediaRejected, match=r"MB; the limit is 0.001 MB"):
            load_clip(coded_clip(300, "30"), MediaLimits(max_upload_mb=0.001))

    def test_long_clip_keeps_its_start(self, coded_clip) -> None:
        clip = load_clip(coded_clip(300, "30000/1001"), MediaLimits(max_duration_s=4))
        assert clip.indices == (29, 59, 89)
        assert [frame_number(frame) for frame in clip.frames] == [29, 59, 89]
        assert clip.notes == ("Only the first 4 s of this 10.0 s clip were kept (frames 0-118 of 300).",)

    def test_frame_cap_spreads_the_frames(self, coded_clip) -> None:
        clip = load_clip(coded_clip(300, "30"), MediaLimits(max_frames=4))
        assert clip.indices == (29, 119, 209, 299)
        assert clip.timestamps == (0.0, 3.0, 6.0, 9.0)
        assert "limit is 4" in clip.notes[0] and "10 frames" in clip.notes[0]

    def test_large_frames_are_shrunk(self, coded_clip) -> None:
        clip = load_clip(coded_clip(20, "10", 64, 48), MediaLimits(max_side=32))
        assert clip.size == (32, 24) and clip.notes == ("Frames were shrunk from 64x48 to 32x24.",)
        assert [frame_number(frame) for frame in clip.frames] == [9, 19]

    def test_fit_size_keeps_sides_even(self) -> None:
        limits = MediaLimits(max_side=1000)
        assert limits.fit_size(640, 480) == (640, 480)
        assert limits.fit_size(3000, 1687) == (1000, 562)
        assert "1000px" in limits.describe() and "768 frames" in limits.describe()

    def test_not_a_video(self, tmp_path) -> None:
        text = tmp_path / "notes.mp4"
        text.write_text("hello")
        with pytest.raises(MediaRejected, match="could not be read as a video"):
            load_clip(text)
        sound = tmp_path / "tone.wav"
        with wave.open(str(sound), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(np.zeros(8000, np.int16).tobytes())
        with pytest.raises(MediaRejected, match="no video stream"):
            probe_video(sound)
        with pytest.raises(MediaRejected, match="does not exist"):
            probe_video(tmp_path / "missing.mp4")


def write_folder(folder, n_frames: int, size: tuple[int, int] = (32, 32)) -> list[str]:
    folder.mkdir()
    names = []
    for i in range(n_frames):
        name = f"frame_{i}.png"
        Image.fromarray(coded_frame(i, *size)).save(folder / name)
        names.append(name)
    return sorted(names)


class TestFolder:
    def test_names_sorted_as_strings(self, tmp_path) -> None:
        names = write_folder(tmp_path / "frames", 25)
        assert names[:4] == ["frame_0.png", "frame_1.png", "frame_10.png", "frame_11.png"]
        clip = load_frame_folder(tmp_path / "frames", fps=1)
        expected = sample_frames(25, source="folder", fps=1)
        assert clip.indices == expected.indices and clip.timestamps == expected.timestamps
        shown = [int(names[i][6:-4]) for i in clip.indices]
        assert [frame_number(frame) for frame in clip.frames] == shown
        assert clip.source == "folder" and clip.native_fps == 3.0

    def test_limits(self, tmp_path) -> None:
        write_folder(tmp_path / "big", 30, size=(64, 48))
        clip = load_frame_folder(tmp_path / "big", MediaLimits(max_side=32, max_duration_s=5))
        assert max(clip.indices) < 15 and clip.size == (32, 24)
        assert clip.notes == (
            "Only the first 5 s (15 of 30 frames at 3 fps) were kept.",
            "Frames larger than 32px on a side were shrunk.",
        )
        (tmp_path / "empty").mkdir()
        with pytest.raises(MediaRejected, match="holds no images"):
            load_frame_folder(tmp_path / "empty")


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((90, 120, 3), 128, np.uint8)
    return image, disc_mask(90, 120, (40, 45), 20), disc_mask(90, 120, (95, 45), 15)


class TestOverlay:
    def test_tint_outline_and_label(self) -> None:
        image, first, second = scene()
        drawn = overlay_image(image, {"1": first, "2": second}, {"1": 0, "2": 5})
        assert drawn.shape == image.shape and drawn.dtype == np.uint8
        red = np.array(object_color(0))
        tinted = np.round(128 * 0.55 + red * 0.45)
        ring = disc_mask(90, 120, (40, 45), 14) & ~disc_mask(90, 120, (40, 45), 11)
        assert np.abs(drawn[ring].astype(int) - tinted).max() <= 1
        edge = first & ~disc_mask(90, 120, (40, 45), 19)
        assert (np.abs(drawn[edge].astype(int) - red).sum(axis=1) < 40).mean() > 0.5
        far = np.ones((90, 120), bool)
        far[:, :10] = False
        far &= ~disc_mask(90, 120, (40, 45), 23) & ~disc_mask(90, 120, (95, 45), 18)
        assert (drawn[far] == 128).all()
        label_box = np.all(drawn[35:56, 30:51] == red, axis=-1)
        assert label_box.sum() > 20
        assert not np.all(drawn[35:56, 30:51] == red, axis=-1).all()

    def test_empty_masks_draw_nothing(self) -> None:
        image, first, _ = scene()
        assert np.array_equal(overlay_image(image, {1: np.zeros_like(first)}, {1: 3}), image)

    def test_shapes_are_checked(self) -> None:
        image, first, _ = scene()
        with pytest.raises(ValueError, match="Mask for 1"):
            overlay_image(image, {1: first[:50]}, {1: 0})
        with pytest.raises(ValueError, match="RGB"):
            overlay_image(image[..., 0], {1: first}, {1: 0})


def stream_line(path) -> str:
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return next(line for line in result.stderr.splitlines() if "Video:" in line)


def test_overlay_video_plays_in_browsers(tmp_path) -> None:
    frames = [np.full((65, 81, 3), 60 + 20 * k, np.uint8) for k in range(6)]
    masks = {
        7: {k: disc_mask(65, 81, (25 + 3 * k, 30), 20) for k in range(6)},
        9: {2: disc_mask(65, 81, (65, 30), 10)},
    }
    seen = []
    path = write_overlay_video(
        frames,
        masks,
        {7: 1, 9: 2},
        12.0,
        tmp_path / "overlay.mp4",
        progress=lambda done, total: seen.append(done),
    )
    assert seen == [1, 2, 3, 4, 5, 6]
    line = stream_line(path)
    assert "h264" in line and "yuv420p" in line
    info = probe_video(path)
    assert (info.n_frames, info.width, info.height) == (6, 82, 66)
    assert info.fps == pytest.approx(12.0)
    decoded = read_frames(path, list(range(6)))
    green = np.array(object_color(1), float)
    for k, frame in enumerate(decoded):
        grey = 60 + 20 * k
        inside = frame[44:47, 24 + 3 * k : 27 + 3 * k].reshape(-1, 3).mean(axis=0)  # below the label
        assert np.abs(inside - (grey * 0.55 + green * 0.45)).max() < 12
        assert np.abs(frame[60:63, 2:5].astype(float) - grey).max() < 8


def test_overlay_video_refuses_nonsense(tmp_path) -> None:
    with pytest.raises(ValueError, match="No frames"):
        write_overlay_video([], {}, {}, 10, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="fps"):
        write_overlay_video([np.zeros((4, 4, 3), np.uint8)], {}, {}, 0, tmp_path / "x.mp4")
