"""Clips in and out: metadata, the frames the model sees, and overlay videos a browser can play.

Reading pipes ffmpeg's raw frames, decoding once from the start and keeping only the chosen ones (clips
have few keyframes, so seeking per frame is slower); moviepy parses the metadata. Which frames are chosen
is decided by `pixelrefer.media.sampling`, from an exact frame count: moviepy's own count is `int(duration *
fps)` with the duration rounded to 10 ms, which is one frame short on 29.97 fps clips, so the count and
rate come from the container's packets instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from moviepy.config import FFMPEG_BINARY
from moviepy.video.io.ffmpeg_reader import FFmpegInfosParser
from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter
from PIL import Image

from ..runtime.errors import InputError
from .limits import MediaLimits, MediaRejected, fit_within
from .masks import ObjectId, mask_bbox, object_color, to_bool_mask
from .sampling import FrameSample, sample_frames

__all__ = [
    "IMAGE_EXTENSIONS",
    "OVERLAY_MAX_PIXELS",
    "Clip",
    "TruncatedVideo",
    "VideoInfo",
    "load_clip",
    "load_frame_folder",
    "overlay_image",
    "overlay_plan",
    "probe_video",
    "read_frames",
    "write_clip_overlay",
    "write_overlay_video",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_TINT = 0.45


class TruncatedVideo(MediaRejected):
    """Fewer frames decode than the file holds packets for (a file cut short); `decoded` is how many did."""

    def __init__(self, message: str, *, decoded: int) -> None:
        super().__init__(message)
        self.decoded = decoded


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read before anything is decoded."""

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int
    duration: float
    start_time: float
    file_size: int
    complete: bool = True
    """False when the packet scan stopped at its budget: `n_frames` counts the frames scanned, `duration` is
    at least the container's own figure."""


@dataclass(frozen=True)
class Clip:
    """The sampled frames of a clip: `frames[k]` is source frame `indices[k]`, shown at `timestamps[k]` s."""

    frames: tuple[np.ndarray, ...]
    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    native_fps: float
    source: Literal["file", "folder"]
    notes: tuple[str, ...] = ()
    source_size: tuple[int, int] | None = None
    """(width, height) of the frames before they were shrunk (`MediaLimits.fit_size`); None if they were not."""
    path: Path | None = None
    """The file the frames came from (a video file; None for a folder of frames)."""
    source_frames: int = 0
    """How many of the file's frames the clip covers (0 .. source_frames - 1, after the duration limit), which
    the overlay video plays at `native_fps`; 0 when unknown."""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def source_shape(self) -> tuple[int, int]:
        """(height, width) of the frames as the caller's file holds them: a mask may be drawn at that size."""
        width, height = self.source_size or self.size
        return height, width

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames as decoded."""
        height, width = self.frames[0].shape[:2]
        return width, height


_CONTAINERS = "MP4/MOV, Matroska/WebM, AVI, Ogg, GIF or MPEG-TS"
"""What `_demuxer` accepts, in words for messages."""

_STILLS = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_SOUNDS = (b"ID3", b"fLaC", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
_MOV_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_TS_PACKET = 188


def _is_mpegts(head: bytes) -> bool:
    """Three sync bytes one transport packet apart (188-byte packets, or 192 with a 4-byte time code)."""
    for first, step in ((0, _TS_PACKET), (4, _TS_PACKET + 4)):
        offsets = range(first, first + 3 * step, step)
        if len(head) > offsets[-1] and all(head[k] == 0x47 for k in offsets):
            return True
    return False


def _demuxer(path: Path) -> str:
    """The one ffmpeg demuxer a clip is opened with, chosen from the file's first bytes, never its name.

    Only plain single-file containers are accepted: a playlist (HLS, concat) or any format that names
    other files or URLs is refused with the same message whatever it points to, so an upload can neither
    read a server file nor tell which ones exist. A still image gets its own message.
    """
    with path.open("rb") as handle:
        head = handle.read(1024)
    if head[4:8] in _MOV_BOXES:
        return "mov"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if _is_mpegts(head):
        return "mpegts"
    kind = next((kind for magic, kind in _STILLS.items() if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WEBP"
    if kind:
        raise MediaRejected(
            f"{path.name} is a still image ({kind}), not a video: open it as an image instead"
        )
    if head.startswith(_SOUNDS) or (head[:4] == b"RIFF" and head[8:12] == b"WAVE"):
        raise MediaRejected(f"{path.name} has no video stream (only audio)")
    raise MediaRejected(
        f"{path.name} could not be read as a video (it is not an {_CONTAINERS} file; playlists and "
        "files that refer to other files are refused)"
    )


def _input(path: Path, demuxer: str) -> list[str]:
    """ffmpeg's input arguments for one uploaded file: its demuxer forced, only the `file` protocol, and
    no external references (MOV's `dref` boxes), so ffmpeg opens this one path and nothing else."""
    options = ["-enable_drefs", "0"] if demuxer == "mov" else []
    return ["-protocol_whitelist", "file", "-f", demuxer, *options, "-i", f"file:{path.resolve()}"]


@dataclass(frozen=True)
class _Scan:
    count: int
    rate: Fraction | None
    complete: bool
    timed_out: bool


def _scan_packets(path: Path, demuxer: str, limits: MediaLimits) -> _Scan:
    """Count the video packets and read the exact frame rate from their durations (no decoding).

    The listing is read as it streams and stops at `limits.max_scan_packets` packets or after
    `limits.max_scan_s` seconds, so a file of millions of tiny packets costs a bounded scan. A file cut
    short lists the packets it still holds; ffmpeg's complaints about the missing rest do not make it
    unreadable, so only an empty listing is an error (raised by the caller).
    """
    command = [FFMPEG_BINARY, "-hide_banner", "-nostdin", "-loglevel", "error", *_input(path, demuxer)]
    command += ["-map", "0:v:0", "-c", "copy", "-frames:v", str(limits.max_scan_packets + 1)]
    command += ["-f", "framecrc", "-"]
    time_base = None
    durations: Counter[int] = Counter()
    count = 0
    complete = True
    timed_out = threading.Event()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as lister:
        assert lister.stdout is not None
        timer = threading.Timer(limits.max_scan_s, lambda: (timed_out.set(), lister.kill()))
        timer.start()
        try:
            for line in lister.stdout:
                if line.startswith("#tb 0:"):
                    time_base = Fraction(line.split(":", 1)[1].strip())
                elif line.strip() and not line.startswith("#"):
                    fields = [field.strip() for field in line.split(",")]
                    if fields[0] == "0":
                        if count == limits.max_scan_packets:
                            complete = False
                            break
                        count += 1
                        durations[int(fields[3])] += 1
        finally:
            timer.cancel()
            lister.kill()
    typical = durations.most_common(1)[0][0] if durations else 0
    rate = 1 / (typical * time_base) if time_base and typical > 0 else None
    return _Scan(count, rate, complete and not timed_out.is_set(), timed_out.is_set())


def _container(path: Path, demuxer: str) -> tuple[bool, str]:
    """ffmpeg's reading of a file without decoding it: (whether it opened, its report).

    The report names the file by its base name only, since parts of it end up in messages to visitors.
    """
    command = [FFMPEG_BINARY, "-hide_banner", "-nostdin", *_input(path, demuxer)]
    report = subprocess.run(command, capture_output=True, text=True, check=False).stderr
    for spelling in (f"file:{path.resolve()}", str(path.resolve()), str(path)):
        report = report.replace(spelling, path.name)
    opened = re.search(r"^Input #0, \S+?, from", report, flags=re.MULTILINE) is not None
    return opened, report


def _unreadable(name: str, report: str) -> MediaRejected:
    """A refusal for a file ffmpeg cannot open, with ffmpeg's own reason (its last meaningful line)."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    reasons = [line for line in lines if "output file" not in line.lower()]
    reason = reasons[-1] if reasons else "not a known video format"
    for prefix in (f"file:{name}: ", f"{name}: "):
        reason = reason.removeprefix(prefix)
    return MediaRejected(f"{name} could not be read as a video ({reason[:200]})")


def _stream_infos(name: str, report: str) -> dict[str, Any]:
    """moviepy's reading of ffmpeg's report (size, rotation, rate, start), from our own restricted run."""
    try:
        return FFmpegInfosParser(report, name).parse()
    except (OSError, IndexError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise _unreadable(name, report) from exc


def _upright_size(infos: Mapping[str, Any]) -> tuple[int, int]:
    width, height = infos["video_size"]
    if abs(infos.get("video_rotation", 0)) in (90, 270):
        width, height = height, width
    return int(width), int(height)


def probe_video(path: str | os.PathLike, limits: MediaLimits | None = None) -> VideoInfo:
    """Read a video file's metadata, refusing what cannot be a usable clip, before any frame is decoded.

    Refused, each with its own message: a missing or empty file, a file over the upload size, one whose
    bytes are not an accepted container (playlists included, see `_demuxer`), a still image, one ffmpeg
    cannot read, a file without a video stream, frames over the pixel limit, and a video stream without
    readable frames. Messages name the file by its base name only.
    """
    limits = limits or MediaLimits()
    source = Path(path)
    name = source.name
    if not source.is_file():
        raise MediaRejected(f"{name} does not exist")
    file_size = source.stat().st_size
    if file_size == 0:
        raise MediaRejected(f"{name} is empty (0 bytes)")
    limits.check_upload_size(file_size, name)
    demuxer = _demuxer(source)
    opened, report = _container(source, demuxer)
    if not opened:
        raise _unreadable(name, report)
    if not re.search(r"Stream #\S+.*: Video:", report):
        others = sorted(set(re.findall(r"Stream #\S+.*?: (Audio|Subtitle|Data|Attachment):", report)))
        held = f"only {' and '.join(kind.lower() for kind in others)}" if others else "no streams at all"
        raise MediaRejected(f"{name} has no video stream ({held})")
    infos = _stream_infos(name, report)
    if not infos.get("video_found") or not infos.get("video_size"):
        raise MediaRejected(f"{name} has no video stream that can be read")
    width, height = _upright_size(infos)
    limits.check_pixels(width, height, f"The frames of {name} are")
    scan = _scan_packets(source, demuxer, limits)
    if scan.count == 0:
        if scan.timed_out:
            raise MediaRejected(
                f"{name} could not be read as a video (listing its frames took over {limits.max_scan_s:g} s)"
            )
        raise MediaRejected(
            f"{name} has a video stream without any readable frames: it may be truncated or corrupt"
        )
    fps = float(scan.rate) if scan.rate else float(infos.get("video_fps") or 0.0)
    if not fps > 0:
        raise MediaRejected(f"{name} does not say its frame rate, so its frames cannot be timed")
    duration = scan.count / fps
    if not scan.complete:
        duration = max(duration, float(infos.get("duration") or 0.0))
    return VideoInfo(
        path=source,
        width=width,
        height=height,
        fps=fps,
        n_frames=scan.count,
        duration=duration,
        start_time=float(infos.get("start") or 0.0),
        file_size=file_size,
        complete=scan.complete,
    )


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Decode the frames at `indices` (any order, repeats allowed) as HxWx3 uint8 RGB, in that order.

    Decodes once from the start up to the last index; `size` (width, height) resizes in ffmpeg. Frame `i`
    is the i-th frame the decoder presents, one per packet (`-fps_mode passthrough`): a variable-rate clip
    is neither padded nor thinned to a constant rate, so indices mean what `probe_video` counted. A frame
    that cannot be decoded (a file cut short) is a `MediaRejected`, never a silently repeated frame. The
    file is opened as `probe_video` opens it: by its bytes' container, reading that one file only.
    """
    indices = list(indices)
    if not indices:
        return []
    if min(indices) < 0:
        raise InputError("Frame indices are never negative")
    source = Path(path)
    demuxer = _demuxer(source)
    if size is None:
        opened, report = _container(source, demuxer)
        if not opened:
            raise _unreadable(source.name, report)
        size = _upright_size(_stream_infos(source.name, report))
    wanted = set(indices)
    kept: dict[int, np.ndarray] = {}
    position = 0
    for position, frame in enumerate(_decode(source, demuxer, max(indices) + 1, size), start=1):
        if position - 1 in wanted:
            kept[position - 1] = frame.copy()
    missing = sorted(wanted - set(kept))
    if missing:
        raise TruncatedVideo(
            f"{source.name} could not be decoded at frame {missing[0]} (it yields {position} frames): "
            "it may be truncated or corrupt",
            decoded=position,
        )
    return [kept[index] for index in indices]


def _decode(source: Path, demuxer: str, count: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The first `count` frames as the decoder presents them (one per packet), at `size` (width, height), one
    at a time: each array is a view of a buffer read for it alone. Stops early when the file yields fewer."""
    width, height = size
    command = [FFMPEG_BINARY, "-nostdin", "-loglevel", "error", *_input(source, demuxer), "-map", "0:v:0"]
    command += ["-frames:v", str(count), "-fps_mode", "passthrough", "-vf", f"scale={width}:{height}"]
    command += ["-sws_flags", "bicubic", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    frame_bytes = width * height * 3
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as decoder:
        assert decoder.stdout is not None
        try:
            for _ in range(count):
                data = decoder.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    return
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
        finally:
            decoder.stdout.close()
            decoder.kill()


def _sample(n_frames: int, info: VideoInfo, fps: float, cap: int, notes: list[str]) -> FrameSample:
    """The official file rule over the first `n_frames`, noting a frame cap or a clip too short to sample."""
    uncapped = sample_frames(n_frames, source="file", native_fps=info.fps, fps=fps, max_frames=10**9)
    sample = sample_frames(
        n_frames, source="file", native_fps=info.fps, fps=fps, max_frames=cap, start_time=info.start_time
    )
    if not sample.indices:
        # The official rule takes no frame from a clip shorter than one sampling step (ffmpeg's fps filter
        # outputs nothing); a visitor's half-second clip still deserves an answer, about its last frame.
        sample = FrameSample((n_frames - 1,), (info.start_time,))
        notes.append(
            f"The clip is {n_frames / info.fps:.2f} s long, shorter than one step of sampling at {fps:g} fps, "
            "so its last frame is used."
        )
    if len(uncapped) > cap:
        notes.append(
            f"Sampling at {fps:g} fps gives {len(uncapped)} frames; the limit is {cap}, "
            f"so {cap} frames spread evenly over the clip are used."
        )
    return sample


def load_clip(
    path: str | os.PathLike,
    limits: MediaLimits | None = None,
    *,
    fps: float = 1.0,
    max_frames: int = 768,
) -> Clip:
    """Sample a video file the way the official loader does (ffmpeg `fps` with `round=down`, then a cap).

    Limits are checked before decoding: an oversized file is refused; a long clip keeps its first
    `max_duration_s` seconds; large frames are shrunk; at most `min(max_frames, limits.max_frames)` frames.
    A file cut short (fewer decodable frames than packets) is sampled again over the frames it does
    yield. `Clip.notes` says what was kept whenever anything was cut.
    """
    limits = limits or MediaLimits()
    info = probe_video(path, limits)
    notes: list[str] = []
    n_frames = info.n_frames
    estimate = round(info.duration * info.fps)
    if info.complete:
        total = f"{info.n_frames}"
    else:
        total = f"about {estimate}" if estimate > info.n_frames else f"more than {info.n_frames}"
    if info.duration > limits.max_duration_s:
        n_frames = min(n_frames, max(1, int(limits.max_duration_s * info.fps)))
        notes.append(
            f"Only the first {limits.max_duration_s:g} s of this {info.duration:.1f} s clip were kept "
            f"(frames 0-{n_frames - 1} of {total})."
        )
    elif not info.complete:
        notes.append(f"Only the first {n_frames} frames of this clip ({total} frames) were read.")
    cap = min(max_frames, limits.max_frames)
    size = limits.fit_size(info.width, info.height)
    if size != (info.width, info.height):
        notes.append(f"Frames were shrunk from {info.width}x{info.height} to {size[0]}x{size[1]}.")
    decode_size = size if size != (info.width, info.height) else None
    sampling: list[str] = []
    sample = _sample(n_frames, info, fps, cap, sampling)
    try:
        frames = read_frames(info.path, sample.indices, size=decode_size)
    except TruncatedVideo as cut:
        if cut.decoded == 0:
            raise
        notes.append(
            f"The file ends early: only {cut.decoded} of its {info.n_frames} frames could be decoded, "
            "so the clip is sampled from those."
        )
        sampling = []
        n_frames = min(cut.decoded, n_frames)
        sample = _sample(n_frames, info, fps, cap, sampling)
        frames = read_frames(info.path, sample.indices, size=decode_size)
    notes += sampling
    source_size = (info.width, info.height) if decode_size else None
    return Clip(
        tuple(frames),
        sample.indices,
        sample.timestamps,
        info.fps,
        "file",
        tuple(notes),
        source_size,
        path=info.path,
        source_frames=n_frames,
    )


def load_frame_folder(
    folder: str | os.PathLike,
    limits: MediaLimits | None = None,
    *,
    fps: float = 1.0,
    max_frames: int = 768,
) -> Clip:
    """Sample a folder of frames the way the official loader does: names sorted as plain strings, 3 fps.

    Only the chosen images are opened. A folder longer than `max_duration_s` (at 3 fps) keeps its first
    frames; large frames are shrunk.
    """
    limits = limits or MediaLimits()
    source = Path(folder)
    if not source.is_dir():
        raise MediaRejected(f"{source.name} is not a folder of frames")
    names = sorted(entry.name for entry in source.iterdir() if entry.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise MediaRejected(f"{source.name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    notes = []
    total = sum((source / name).stat().st_size for name in names)
    limits.check_upload_size(total, source.name)
    folder_fps = 3.0
    n_frames = len(names)
    if n_frames / folder_fps > limits.max_duration_s:
        n_frames = max(1, int(limits.max_duration_s * folder_fps))
        notes.append(
            f"Only the first {limits.max_duration_s:g} s ({n_frames} of {len(names)} frames at 3 fps) were kept."
        )
    cap = min(max_frames, limits.max_frames)
    sample = sample_frames(n_frames, source="folder", fps=fps, max_frames=cap)
    frames = []
    source_size = None
    for index in sample.indices:
        with Image.open(source / names[index]) as image:
            frame = np.asarray(image.convert("RGB"))
        width, height = frame.shape[1], frame.shape[0]
        fitted = limits.fit_size(width, height)
        if fitted != (width, height):
            frame = cv2.resize(frame, fitted, interpolation=cv2.INTER_AREA)
            source_size = source_size or (width, height)
            note = f"Frames larger than {limits.max_side}px on a side were shrunk."
            if note not in notes:
                notes.append(note)
        frames.append(frame)
    return Clip(
        tuple(frames), sample.indices, sample.timestamps, folder_fps, "folder", tuple(notes), source_size
    )


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """The most interior pixel of the mask (ties: first in raster order), so the label sits on the object."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(col), int(row)


def _draw_label(canvas: np.ndarray, text: str, anchor: tuple[int, int], color: tuple[int, int, int]) -> None:
    height, width = canvas.shape[:2]
    scale = max(0.35, min(height, width) / 700)
    thickness = max(1, int(round(scale * 2)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, thickness)
    x = int(np.clip(anchor[0] - text_w // 2 - pad, 0, max(0, width - text_w - 2 * pad)))
    y = int(np.clip(anchor[1] - text_h // 2 - pad, 0, max(0, height - text_h - baseline - 2 * pad)))
    cv2.rectangle(
        canvas, (x, y), (x + text_w + 2 * pad, y + text_h + baseline + 2 * pad), color, thickness=-1
    )
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    origin = (x + pad, y + pad + text_h)
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)


def overlay_image(
    image: np.ndarray,
    masks: Mapping[ObjectId, Any],
    colors: Mapping[ObjectId, int],
    *,
    alpha: float = _TINT,
) -> np.ndarray:
    """Draw each object in its own colour: a tint over the mask, its outline, and its label (e.g. "1").

    `colors[label]` is the object's colour index (see `pixelrefer.media.masks.object_color`). Empty masks draw
    nothing. Returns a new HxWx3 uint8 image.
    """
    base = np.asarray(image)
    if base.ndim != 3 or base.shape[2] != 3:
        raise ValueError(f"Expected an HxWx3 RGB image, got shape {base.shape}")
    shapes = []
    for label, raw in masks.items():
        mask = to_bool_mask(raw)
        if mask.shape != base.shape[:2]:
            raise ValueError(f"Mask for {label} is {mask.shape}, the image is {base.shape[:2]}")
        if mask.any():
            shapes.append((label, mask, object_color(colors[label])))
    result = np.array(base, dtype=np.uint8)
    if shapes:
        # Tints are blended in floats over the objects' bounding box only, the rest is copied as it is.
        x0, y0, x1, y1 = mask_bbox(np.logical_or.reduce([mask for _, mask, _ in shapes]))
        box = np.s_[y0:y1, x0:x1]
        canvas = result[box].astype(np.float32)
        for _, mask, color in shapes:
            inside = mask[box]
            canvas[inside] = canvas[inside] * (1 - alpha) + np.asarray(color, np.float32) * alpha
        result[box] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    line = max(1, int(round(min(base.shape[:2]) / 250)))
    for _, mask, color in shapes:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(result, contours, -1, color, thickness=line, lineType=cv2.LINE_AA)
    for label, mask, color in shapes:
        _draw_label(result, str(label), _label_anchor(mask), color)
    return result


def _encode(drawn: Iterable[np.ndarray], size: tuple[int, int], fps: float, target: Path) -> Path:
    """Frames of `size` (width, height) as an mp4 browsers play: H.264, yuv420p, sides padded to even."""
    width, height = size
    even_w, even_h = width + width % 2, height + height % 2
    params = ["-pix_fmt", "yuv420p", "-movflags", "+faststart", "-crf", "20"]
    with FFMPEG_VideoWriter(
        str(target), (even_w, even_h), fps, codec="libx264", preset="veryfast", ffmpeg_params=params
    ) as writer:
        for frame in drawn:
            if (even_w, even_h) != (width, height):
                frame = np.pad(frame, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
            writer.write_frame(np.ascontiguousarray(frame))
    return target


def write_overlay_video(
    frames: Sequence[np.ndarray],
    masks_by_object: Mapping[ObjectId, Mapping[int, Any]],
    colors: Mapping[ObjectId, int],
    fps: float,
    path: str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write every frame with its objects drawn on it as an mp4 browsers play (H.264, yuv420p, even sides).

    `masks_by_object[obj][k]` is the mask of object `obj` on `frames[k]`; frames without a mask for an object
    show it nothing. `captions[k]`, when given, is written in the frame's top-left corner. Frames are rendered
    one at a time, so memory stays at one frame.
    """
    if not frames:
        raise ValueError("No frames to write")
    if fps <= 0:
        raise ValueError("fps must be positive")
    height, width = frames[0].shape[:2]

    def drawn() -> Iterator[np.ndarray]:
        for position, frame in enumerate(frames):
            if frame.shape[:2] != (height, width):
                raise ValueError(
                    f"Frame {position} is {frame.shape[:2]}, the first frame is {(height, width)}"
                )
            present = {
                obj: per_frame[position]
                for obj, per_frame in masks_by_object.items()
                if position in per_frame
            }
            image = overlay_image(frame, present, colors)
            if captions is not None:
                _draw_caption(image, captions[position])
            yield image
            if progress is not None:
                progress(position + 1, len(frames))

    return _encode(drawn(), (width, height), fps, Path(path))


OVERLAY_MAX_PIXELS = 250_000_000
"""Pixels an overlay video of a whole clip may render (frames x width x height), checked before decoding: a
30 s clip at 30 fps keeps up to about 0.28 megapixels a frame (704x396); a longer or larger clip is written
smaller. Decoding, drawing and encoding cost time in proportion; memory is one frame whatever the size."""

_OVERLAY_MIN_SIDE = 96
"""Below this longer side the whole clip is not worth playing: the sampled frames are written instead."""


def overlay_plan(clip: Clip, max_pixels: int = OVERLAY_MAX_PIXELS) -> tuple[int, int] | None:
    """The (width, height) the clip's overlay is written at, frame for frame at its own rate, or None when it
    cannot be (a folder of frames, the file gone, or too many frames for `max_pixels` even when small)."""
    if clip.source != "file" or clip.path is None or clip.source_frames <= 0 or not clip.path.is_file():
        return None
    width, height = clip.size
    per_frame = max_pixels / clip.source_frames
    if width * height <= per_frame:
        return width, height
    side = int(max(width, height) * (per_frame / (width * height)) ** 0.5)
    if side < _OVERLAY_MIN_SIDE:
        return None
    return fit_within(width, height, side)


def write_clip_overlay(
    clip: Clip,
    masks_by_frame: Mapping[ObjectId, Mapping[int, Any]],
    colors: Mapping[ObjectId, int],
    path: str | os.PathLike,
    *,
    max_pixels: int = OVERLAY_MAX_PIXELS,
) -> Path:
    """The clip with its objects drawn on it, as an mp4 that plays at the clip's own frame rate.

    `masks_by_frame[obj][i]` is object `obj`'s mask on source frame `i`, known on the sampled frames. Every
    frame the clip covers is decoded again from its file (one at a time, at the size `overlay_plan` allows)
    and tinted with the masks of the nearest sampled frame, so an object is drawn where it was tracked, held
    for half a sampling step either side. When the whole clip cannot be played (`overlay_plan` is None), the
    sampled frames are written, each captioned "sampled frame k of n", at up to 4 frames a second.
    """
    target = Path(path)
    size = overlay_plan(clip, max_pixels)
    if size is None:
        return _sampled_overlay(clip, masks_by_frame, colors, target)
    indices = np.asarray(clip.indices)
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    resized: dict[int, dict[ObjectId, np.ndarray]] = {}

    def masks_at(position: int) -> dict[ObjectId, np.ndarray]:
        """The masks of sampled frame `position`, at the overlay's size (only the current one is kept)."""
        if position not in resized:
            resized.clear()
            frame_index = clip.indices[position]
            resized[position] = {
                obj: _resize_mask(to_bool_mask(per_frame[frame_index]), size)
                for obj, per_frame in masks_by_frame.items()
                if frame_index in per_frame
            }
        return resized[position]

    def nearest(frame_index: int) -> int:
        after = int(np.searchsorted(ordered, frame_index))
        candidates = [k for k in (after - 1, after) if 0 <= k < len(ordered)]
        best = min(candidates, key=lambda k: (abs(int(ordered[k]) - frame_index), k))
        return int(order[best])

    def drawn() -> Iterator[np.ndarray]:
        demuxer = _demuxer(clip.path)
        for frame_index, frame in enumerate(_decode(clip.path, demuxer, clip.source_frames, size)):
            yield overlay_image(frame, masks_at(nearest(frame_index)), colors)

    return _encode(drawn(), size, clip.native_fps, target)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def _sampled_overlay(
    clip: Clip,
    masks_by_frame: Mapping[ObjectId, Mapping[int, Any]],
    colors: Mapping[ObjectId, int],
    target: Path,
) -> Path:
    """The sampled frames only, each captioned as such, at their own spacing (1 to 4 frames a second)."""
    masks = {
        obj: {k: per_frame[f] for k, f in enumerate(clip.indices) if f in per_frame}
        for obj, per_frame in masks_by_frame.items()
    }
    fps = max(1.0, min(4.0, len(clip) / max(clip.timestamps[-1], 1e-6)))
    captions = [
        f"sampled frame {k + 1} of {len(clip)} (t = {t:.1f} s)" for k, t in enumerate(clip.timestamps)
    ]
    return write_overlay_video(list(clip.frames), masks, colors, fps, target, captions=captions)


def _draw_caption(canvas: np.ndarray, text: str) -> None:
    """White text on a dark band in the top-left corner, sized to the frame."""
    height, width = canvas.shape[:2]
    scale = max(0.3, min(height, width) / 900)
    thickness = max(1, int(round(scale * 2)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, thickness * 2)
    cv2.rectangle(canvas, (0, 0), (min(width, text_w + 2 * pad), text_h + baseline + 2 * pad), (0, 0, 0), -1)
    origin = (pad, pad + text_h)
    cv2.putText(
        canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA
    )
