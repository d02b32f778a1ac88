"""Uploads read only themselves: a playlist or reference file pointing at a video elsewhere on the server is
refused, by one message whatever its name and whether the target exists; plain containers still open;
listing a clip's frames stops at its budget; images are refused from their header before decoding."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pixelrefer.media.images import ImageError, check_image_file, load_image
from pixelrefer.media.limits import MediaLimits, MediaRejected
from pixelrefer.media.video import load_clip, probe_video, read_frames

from .corpus import png_header

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-y", "-hide_banner", "-loglevel", "error", *args], check=True)


def pattern_clip(path: Path, *codec: str, frames: int = 6, rate: int = 3) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=32x32:rate={rate}", "-frames:v", str(frames), *codec, str(path)
    )
    return path


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Private clips elsewhere on the "server" (mp4, mkv and mpegts), and a path that does not exist."""
    folder = tmp_path_factory.mktemp("private")
    h264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")
    return {
        "mp4": pattern_clip(folder / "private.mp4", *h264),
        "mkv": pattern_clip(folder / "private.mkv", *h264),
        "ts": pattern_clip(folder / "private.ts", *h264),
        "missing": folder / "nothing-here.ts",
    }


def hls(target: str) -> str:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n"


def crafted(secrets: dict[str, Path]) -> dict[str, str]:
    """Upload name → contents: every way the issue found (and a few more) to make ffmpeg open another file."""
    cases = {}
    for kind in ("ts", "mkv", "mp4", "missing"):
        target = secrets[kind]
        cases[f"abs_{kind}.m3u8"] = hls(str(target))
        cases[f"url_{kind}.m3u8"] = hls(f"file://{target}")
        cases[f"renamed_{kind}.mp4"] = hls(str(target))
        cases[f"concat_{kind}.ffconcat"] = f"ffconcat version 1.0\nfile '{target}'\n"
        cases[f"concat_{kind}.mkv"] = f"ffconcat version 1.0\nfile '{target}'\n"
    return cases


def refusal(name: str) -> str:
    return (
        f"{name} could not be read as a video (it is not an MP4/MOV, Matroska/WebM, AVI, Ogg, GIF or MPEG-TS "
        "file; playlists and files that refer to other files are refused)"
    )


def test_the_crafted_playlist_really_reads_the_private_file_without_the_guard(
    tmp_path: Path, secrets: dict[str, Path]
) -> None:
    """The threat is real: plain `ffmpeg -i playlist.m3u8` decodes the private clip's frames."""
    playlist = tmp_path / "upload.m3u8"
    playlist.write_text(hls(str(secrets["ts"])))
    decoded = subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            str(playlist),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=False,
    )
    assert len(decoded.stdout) >= 32 * 32 * 3


def test_every_playlist_is_refused_with_one_message_whether_the_target_exists(
    tmp_path: Path, secrets: dict[str, Path]
) -> None:
    for name, text in crafted(secrets).items():
        upload = tmp_path / name
        upload.write_text(text)
        for read in (probe_video, load_clip, lambda path: read_frames(path, [0])):
            with pytest.raises(MediaRejected) as refused:
                read(upload)
            assert str(refused.value) == refusal(name), name
            assert str(secrets["ts"].parent) not in str(refused.value)


def test_a_container_that_is_not_allowed_is_refused_by_its_bytes(tmp_path: Path) -> None:
    """FLV is a real single-file container, but not on the allow-list: refused whatever its name."""
    flv = pattern_clip(tmp_path / "clip.flv", "-c:v", "flv1")
    renamed = tmp_path / "clip.mp4"
    renamed.write_bytes(flv.read_bytes())
    for path in (flv, renamed):
        with pytest.raises(MediaRejected, match=r"could not be read as a video \(it is not an MP4/MOV"):
            probe_video(path)


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("clip.mp4", ("-c:v", "libx264", "-pix_fmt", "yuv420p")),
        ("clip.mov", ("-c:v", "libx264", "-pix_fmt", "yuv420p")),
        ("clip.mkv", ("-c:v", "libx264", "-pix_fmt", "yuv420p")),
        ("clip.webm", ("-c:v", "libvpx")),
        ("clip.avi", ("-c:v", "mpeg4")),
        ("clip.ts", ("-c:v", "mpeg2video")),
        ("clip.ogv", ("-c:v", "libtheora")),
        ("clip.gif", ()),
    ],
)
def test_plain_containers_open_by_their_bytes_whatever_their_name(
    tmp_path: Path, name: str, codec: tuple[str, ...]
) -> None:
    clip = pattern_clip(tmp_path / name, *codec)
    renamed = tmp_path / "upload.bin"
    renamed.write_bytes(clip.read_bytes())
    for path in (clip, renamed):
        info = probe_video(path)
        assert (info.width, info.height, info.n_frames) == (32, 32, 6), name
        assert info.complete
        frames = load_clip(path).frames
        assert frames and frames[0].shape == (32, 32, 3)


def test_listing_frames_stops_at_the_packet_budget(tmp_path: Path) -> None:
    clip = pattern_clip(tmp_path / "many.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p", frames=900, rate=300)
    full = probe_video(clip)
    assert (full.n_frames, full.complete) == (900, True)
    limits = MediaLimits(max_scan_packets=100)
    info = probe_video(clip, limits)
    assert (info.n_frames, info.complete) == (100, False)
    assert info.duration == pytest.approx(3.0, abs=0.05)  # the container's figure, not 100 / 300 fps
    loaded = load_clip(clip, limits)
    assert max(loaded.indices) < 100
    assert loaded.notes[0] == "Only the first 100 frames of this clip (about 900 frames) were read."
    short = load_clip(clip, MediaLimits(max_scan_packets=100, max_duration_s=0.2))
    assert short.notes[0] == "Only the first 0.2 s of this 3.0 s clip were kept (frames 0-59 of about 900)."


def test_listing_frames_stops_at_the_time_budget(tmp_path: Path) -> None:
    clip = pattern_clip(tmp_path / "slow.mkv", "-c:v", "libx264", "-pix_fmt", "yuv420p", frames=60)
    began = time.perf_counter()
    with pytest.raises(
        MediaRejected,
        match=r"^slow\.mkv could not be read as a video \(listing its frames took over 1e-06 s\)$",
    ):
        probe_video(clip, MediaLimits(max_scan_s=1e-6))
    assert time.perf_counter() - began < 5


# ---------------------------------------------------------------------- images before decoding


def test_an_image_file_is_checked_from_its_header_without_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "layer.png"
    bomb.write_bytes(png_header(13000, 13000))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(
        ImageError, match=r"^layer\.png is 13000x13000 = 169,000,000 pixels; the limit is 50,000,000"
    ):
        check_image_file(bomb, MediaLimits())
    small = tmp_path / "ok.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(small)
    assert check_image_file(small, MediaLimits()) == (40, 30)
    text = tmp_path / "note.png"
    text.write_text("not a picture")
    with pytest.raises(ImageError, match=r"^note\.png is not an image that can be read"):
        check_image_file(text, MediaLimits())
    with pytest.raises(ImageError, match=r"^ok\.png is 40x30 = 1,200 pixels; the limit is 1,000"):
        load_image(small, limits=MediaLimits(max_pixels=1000))


def test_the_brush_panel_refuses_a_bomb_layer_unread_and_passes_a_real_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the browser sends as a brush layer is checked before Gradio's editor decodes it."""
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData
    from PIL import ImageFile

    from pixelrefer.serve.brush import brush_layer, painter
    from pixelrefer.serve.service import APP_MEDIA_LIMITS

    editor = painter(APP_MEDIA_LIMITS, type="numpy")
    bomb = tmp_path / "layer.png"
    bomb.write_bytes(png_header(13000, 13000))
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def spy(image: ImageFile.ImageFile):
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(gr.Error) as refused:
        editor.preprocess(EditorData(layers=[FileData(path=str(bomb))]))
    assert refused.value.message.startswith("layer.png is 13000x13000 = 169,000,000 pixels; the limit is")
    assert decoded == []
    stroke = np.zeros((30, 40, 4), np.uint8)
    stroke[5:10, 5:20] = (255, 0, 255, 255)
    layer = tmp_path / "stroke.png"
    Image.fromarray(stroke).save(layer)
    value = editor.preprocess(EditorData(layers=[FileData(path=str(layer))]))
    mask = brush_layer(value)
    assert mask.shape == (30, 40) and mask.sum() == 75 and mask[5:10, 5:20].all()
