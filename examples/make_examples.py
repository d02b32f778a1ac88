"""Regenerate the shipped examples (photos, clips, masks, manifest) from scikit-image's sample photos.

The photos come from the scikit-image wheel's `skimage/data/` folder (CC0 or public domain, see
CREDITS.md); scikit-image is read as a zip file here and is not a dependency of the project. Every mask
is made from the hand-placed marks below (GrabCut seeded by a box and strokes, or a hand-drawn outline),
and each clip frame is a known crop-and-scale of its photo, so an object's mask on a frame is the same
transform of the photo's mask: no segmentation model and no tracking are involved.

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimg
    python examples/make_examples.py /tmp/skimg/scikit_image-0.26.0-*.whl --preview /tmp/preview

`--preview DIR` also writes overlays of every mask (for clips, drawn on the frames decoded back from the
written mp4) to check the masks by eye. This script is a maintenance tool: the package and the tests never
import it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from pixelrefer.media.masks import clean_mask, save_mask_png  # noqa: E402
from pixelrefer.media.sampling import sample_frames  # noqa: E402
from pixelrefer.media.video import overlay_image, probe_video, read_frames  # noqa: E402

Point = tuple[float, float]
Stroke = tuple[Point, ...]

MAX_SIDE = 800
JPEG_QUALITY = 88
SKIMAGE_VERSION = "0.26.0"


@dataclass(frozen=True)
class Marks:
    """How one object's mask is made from its photo.

    With `outline`, the mask is that hand-drawn polygon, refined by GrabCut within `band` pixels of it
    when `band` is set. Otherwise GrabCut runs inside `box` (x0, y0, x1, y1; everything outside is
    background), seeded by sure-object strokes `fg`, sure-background strokes `bg` and an optional `prior`
    polygon of probable object. `minus` names objects of the same photo that sit in front of this one and
    are cut out of it. Coordinates are photo pixels.
    """

    name: str
    box: tuple[int, int, int, int] | None = None
    fg: tuple[Stroke, ...] = ()
    bg: tuple[Stroke, ...] = ()
    prior: Stroke | None = None
    outline: Stroke | None = None
    band: int = 0
    minus: tuple[str, ...] = ()
    width: int = 5


@dataclass(frozen=True)
class Photo:
    """A photo of `skimage/data/` with the objects marked on it."""

    file: str
    objects: tuple[Marks, ...]


@dataclass(frozen=True)
class View:
    """Where a clip frame looks: the centre and width (photo pixels) of the crop shown at the clip's size."""

    cx: float
    cy: float
    width: float


@dataclass(frozen=True)
class ImageSpec:
    """One image example: a photo, which of its objects are pre-marked (in order), and the question."""

    name: str
    photo: str
    objects: tuple[str, ...]
    question: str


@dataclass(frozen=True)
class ClipSpec:
    """One clip example: a camera move over a photo, from `start` to `end` with smooth easing."""

    name: str
    photo: str
    objects: tuple[str, ...]
    question: str
    size: tuple[int, int]
    fps: int
    seconds: float
    start: View
    end: View
    description: str = ""


def ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 48) -> Stroke:
    """A polygon approximating an ellipse (angle in degrees), for outlines and priors."""
    t = math.radians(angle)
    points = []
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = ax * math.cos(a), ay * math.sin(a)
        points.append((cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t)))
    return tuple(points)


def arc(cx: float, cy: float, ax: float, ay: float, start: float, stop: float, n: int) -> Stroke:
    """Points along an ellipse from angle `start` to `stop` (degrees, image axes: 270 is the top)."""
    angles = np.radians(np.linspace(start, stop, n))
    return tuple((cx + ax * math.cos(a), cy + ay * math.sin(a)) for a in angles)


PHOTOS: dict[str, Photo] = {
    "chelsea": Photo(
        "chelsea.png",
        (
            Marks(
                "left eye",
                box=(128, 78, 215, 154),
                fg=(((150, 112), (192, 118)), ((170, 95), (170, 135))),
                bg=(((128, 150), (150, 153)), ((205, 80), (214, 100))),
                prior=ellipse(171, 116, 36, 30, 10),
            ),
            Marks(
                "right eye",
                box=(288, 100, 350, 172),
                fg=(((305, 135), (333, 135)), ((318, 115), (318, 158))),
                prior=ellipse(318, 136, 22, 28, -8),
            ),
            Marks(
                "nose",
                box=(222, 218, 300, 272),
                fg=(((240, 236), (284, 236)), ((262, 236), (259, 257))),
                bg=(((224, 222), (298, 222)),),
            ),
        ),
    ),
    "coffee": Photo(
        "coffee.png",
        (
            Marks(
                "spoon",
                outline=(
                    *arc(412, 80, 12, 15, 180, 360, 12),
                    (423, 88),
                    (419, 102),
                    (414, 114),
                    (411, 130),
                    (407, 150),
                    (402, 172),
                    (395, 192),
                    (389, 207),
                    (386, 221),
                    (385, 236),
                    *arc(367, 283, 40, 42, -70, 250, 40),
                    (371, 236),
                    (374, 219),
                    (380, 204),
                    (388, 188),
                    (395, 170),
                    (400, 150),
                    (404, 130),
                    (405, 114),
                    (402, 100),
                ),
                band=2,
            ),
            Marks(
                "cup",
                outline=(
                    *arc(288, 112, 115, 95, 180, 360, 40),
                    (402, 125),
                    (398, 148),
                    (392, 170),
                    (385, 190),
                    (376, 207),
                    (365, 221),
                    (352, 233),
                    (340, 244),
                    (330, 258),
                    (322, 272),
                    (308, 282),
                    (285, 286),
                    (262, 283),
                    (256, 288),
                    (248, 300),
                    (236, 307),
                    (222, 308),
                    (208, 302),
                    (200, 288),
                    (198, 270),
                    (201, 250),
                    (208, 234),
                    (218, 225),
                    (205, 213),
                    (194, 196),
                    (185, 175),
                    (178, 150),
                    (174, 128),
                ),
                band=4,
                minus=("spoon",),
            ),
            Marks(
                "saucer",
                box=(70, 60, 488, 396),
                fg=(((110, 200), (100, 280)), ((460, 220), (450, 300)), ((180, 355), (350, 370))),
                bg=(((70, 60), (140, 70)), ((488, 380), (420, 396))),
                prior=ellipse(279, 229, 203, 160),
                minus=("cup", "spoon"),
            ),
        ),
    ),
    "astronaut": Photo(
        "astronaut.png",
        (
            Marks(
                "helmet",
                outline=(
                    (274, 512),
                    (276, 470),
                    (280, 440),
                    (287, 410),
                    (296, 388),
                    (310, 372),
                    (328, 360),
                    (345, 351),
                    (361, 346),
                    (380, 344),
                    (400, 344),
                    (420, 347),
                    (439, 353),
                    (456, 363),
                    (472, 378),
                    (483, 393),
                    (490, 410),
                    (495, 430),
                    (498, 448),
                    (506, 458),
                    (512, 470),
                    (512, 512),
                ),
                band=4,
            ),
            Marks(
                "astronaut",
                outline=(
                    (26, 512),
                    (22, 457),
                    (20, 414),
                    (22, 370),
                    (26, 336),
                    (35, 301),
                    (48, 266),
                    (57, 249),
                    (69, 244),
                    (88, 231),
                    (112, 215),
                    (113, 188),
                    (127, 165),
                    (140, 157),
                    (160, 151),
                    (178, 150),
                    (185, 146),
                    (181, 127),
                    (173, 112),
                    (162, 96),
                    (154, 73),
                    (156, 58),
                    (169, 38),
                    (192, 23),
                    (215, 17),
                    (238, 16),
                    (265, 25),
                    (285, 42),
                    (296, 62),
                    (301, 81),
                    (298, 100),
                    (290, 115),
                    (283, 127),
                    (277, 131),
                    (272, 150),
                    (275, 165),
                    (285, 177),
                    (292, 181),
                    (304, 208),
                    (306, 231),
                    (318, 244),
                    (332, 252),
                    (343, 262),
                    (352, 292),
                    (359, 327),
                    (361, 349),
                    (370, 360),
                    (300, 512),
                ),
                band=4,
                minus=("helmet",),
            ),
            Marks(
                "space shuttle model",
                outline=(
                    (429, 0),
                    (434, 15),
                    (437, 35),
                    (441, 41),
                    (447, 38),
                    (452, 42),
                    (455, 55),
                    (456, 120),
                    (456, 200),
                    (457, 222),
                    (456, 270),
                    (440, 272),
                    (420, 270),
                    (400, 272),
                    (380, 270),
                    (368, 264),
                    (367, 240),
                    (360, 230),
                    (354, 224),
                    (356, 214),
                    (370, 197),
                    (382, 180),
                    (382, 110),
                    (384, 90),
                    (384, 50),
                    (386, 42),
                    (390, 38),
                    (394, 40),
                    (397, 46),
                    (398, 30),
                    (400, 12),
                    (402, 0),
                ),
                band=4,
            ),
        ),
    ),
    "rocket": Photo(
        "rocket.jpg",
        (
            Marks(
                "rocket",
                outline=(
                    (322, 126),
                    (327, 128),
                    (330, 133),
                    (333, 142),
                    (334, 155),
                    (334, 179),
                    (331, 182),
                    (331, 404),
                    (313, 404),
                    (313, 182),
                    (310, 179),
                    (310, 155),
                    (311, 142),
                    (314, 133),
                    (317, 128),
                ),
            ),
            Marks(
                "lightning tower",
                outline=(
                    (443, 123),
                    (450, 123),
                    (452, 190),
                    (459, 190),
                    (462, 260),
                    (470, 340),
                    (480, 427),
                    (437, 427),
                    (439, 260),
                    (440, 190),
                    (444, 190),
                ),
            ),
        ),
    ),
}

IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec(
        "cat", "chelsea", ("left eye", "nose"), "What colour is <object1>, and what colour is <object2>?"
    ),
    ImageSpec(
        "coffee",
        "coffee",
        ("cup", "spoon", "saucer"),
        "What is in <object1>, and where does <object2> lie relative to <object3>?",
    ),
    ImageSpec(
        "astronaut",
        "astronaut",
        ("astronaut", "helmet", "space shuttle model"),
        "What is <object1> wearing, and how are <object2> and <object3> related to her work?",
    ),
)

CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec(
        "rocket_push_in",
        "rocket",
        ("rocket", "lightning tower"),
        "What is <object1>, and what does <object2> beside it do?",
        size=(640, 426),
        fps=12,
        seconds=5.0,
        start=View(320, 213.5, 640),
        end=View(365, 250, 420),
        description="a slow push-in from the whole launch pad towards the rocket",
    ),
    ClipSpec(
        "cat_pan",
        "chelsea",
        ("left eye", "right eye"),
        "Do <object1> and <object2> belong to the same animal? Describe both of them.",
        size=(450, 300),
        fps=12,
        seconds=5.0,
        start=View(196, 112, 300),
        end=View(282, 176, 300),
        description="a moving crop drifting from the cat's left eye across to its right eye",
    ),
    ClipSpec(
        "coffee_zoom",
        "coffee",
        ("spoon", "cup"),
        "Where is <object1> resting, and what is inside <object2>?",
        size=(600, 400),
        fps=12,
        seconds=4.0,
        start=View(300, 200, 600),
        end=View(295, 165, 440),
        description="a zoom from the whole table onto the cup and spoon",
    ),
)


# ----------------------------------------------------------------------------------------------- masks


def _draw(seeds: np.ndarray, strokes: Sequence[Stroke], label: int, width: int) -> None:
    for stroke in strokes:
        points = np.round(np.asarray(stroke, np.float64)).astype(np.int32)
        if len(points) == 1:
            cv2.circle(seeds, tuple(int(v) for v in points[0]), width, label, -1)
        else:
            cv2.polylines(seeds, [points], False, label, width)


def _polygon_mask(shape: tuple[int, int], polygon: Stroke) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(np.asarray(polygon) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return canvas > 0


def _grabcut(image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """GrabCut from a seed map of cv2.GC_* labels, with a fixed k-means seed so reruns give the same mask."""
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[..., ::-1])
    cv2.grabCut(bgr, seeds, None, bgd, fgd, 10, cv2.GC_INIT_WITH_MASK)
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


def make_mask(image: np.ndarray, marks: Marks, earlier: dict[str, np.ndarray]) -> np.ndarray:
    """The object's mask on the photo, from its marks."""
    shape = image.shape[:2]
    if marks.outline is not None:
        drawn = _polygon_mask(shape, marks.outline)
        if marks.band > 0:
            # Let the photo's edges decide only within `band` pixels of the drawn outline.
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * marks.band + 1,) * 2)
            inner = cv2.erode(drawn.astype(np.uint8), kernel) > 0
            outer = cv2.dilate(drawn.astype(np.uint8), kernel) > 0
            seeds = np.full(shape, cv2.GC_BGD, np.uint8)
            seeds[outer] = cv2.GC_PR_BGD
            seeds[drawn] = cv2.GC_PR_FGD
            seeds[inner] = cv2.GC_FGD
        else:
            seeds = None
    else:
        if marks.box is None:
            raise ValueError(f"{marks.name}: GrabCut needs a box or an outline")
        x0, y0, x1, y1 = marks.box
        seeds = np.full(shape, cv2.GC_BGD, np.uint8)
        seeds[y0:y1, x0:x1] = cv2.GC_PR_BGD
        if marks.prior is not None:
            seeds[_polygon_mask(shape, marks.prior) & (seeds == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
    if seeds is None:
        mask = drawn
    else:
        _draw(seeds, marks.bg, cv2.GC_BGD, marks.width)
        _draw(seeds, marks.fg, cv2.GC_FGD, marks.width)
        for name in marks.minus:
            seeds[earlier[name]] = cv2.GC_BGD
        mask = _grabcut(image, seeds)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    for name in marks.minus:
        mask &= ~earlier[name]
    return _largest_part(clean_mask(mask))


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """Keep the biggest connected piece plus pieces at least a tenth of its size (an object, not specks)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= areas.max() / 10])
    return keep[labels]


# ----------------------------------------------------------------------------------------------- clips


def _ease(t: float) -> float:
    return t * t * (3 - 2 * t)


def view_at(spec: ClipSpec, frame: int, n_frames: int) -> View:
    """The crop shown on `frame`: an eased interpolation from the start view to the end view."""
    t = _ease(frame / max(1, n_frames - 1))
    return View(
        spec.start.cx + (spec.end.cx - spec.start.cx) * t,
        spec.start.cy + (spec.end.cy - spec.start.cy) * t,
        spec.start.width + (spec.end.width - spec.start.width) * t,
    )


def view_matrix(view: View, size: tuple[int, int], photo_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine map from photo pixels to frame pixels for `view`, kept inside the photo."""
    out_w, out_h = size
    photo_w, photo_h = photo_size
    scale = out_w / view.width
    half_w, half_h = out_w / scale / 2, out_h / scale / 2
    cx = min(max(view.cx, half_w), photo_w - half_w)
    cy = min(max(view.cy, half_h), photo_h - half_h)
    # The view is in edge coordinates (pixel x spans [x, x + 1]); OpenCV maps pixel centres.
    return np.array(
        [
            [scale, 0.0, out_w / 2 - 0.5 + scale * (0.5 - cx)],
            [0.0, scale, out_h / 2 - 0.5 + scale * (0.5 - cy)],
        ]
    )


def warp_image(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A frame: the photo seen through the view (bilinear)."""
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def warp_mask(mask: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The same transform applied to a mask: bilinear coverage, object where at least half covered."""
    moved = cv2.warpAffine(mask.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    return moved >= 0.5


def write_clip(frames: Sequence[np.ndarray], fps: int, path: Path) -> None:
    """An H.264 yuv420p mp4 that browsers play, through moviepy 2, frame k exactly at time k / fps.

    moviepy's ImageSequenceClip looks frames up by comparing float start times and shows frame k - 1 at
    some times k / fps (and drops the last frame), which would put every mask on the wrong picture; a
    VideoClip that rounds t * fps to the frame index writes each frame once, in order.
    """
    from moviepy import VideoClip

    last = len(frames) - 1
    clip = VideoClip(frame_function=lambda t: frames[min(last, round(t * fps))], duration=len(frames) / fps)
    try:
        clip.write_videofile(
            str(path),
            fps=fps,
            codec="libx264",
            audio=False,
            logger=None,
            ffmpeg_params=["-pix_fmt", "yuv420p"],
        )
    finally:
        clip.close()


def check_clip(frames: Sequence[np.ndarray], path: Path) -> None:
    """Decode the written clip and make sure frame k is source frame k (not a neighbour, not a duplicate)."""
    decoded = read_frames(path, list(range(len(frames))))
    for k, (source, picture) in enumerate(zip(frames, decoded, strict=True)):
        error = np.abs(source.astype(np.int16) - picture).mean()
        if error > 4:
            raise SystemExit(f"{path.name}: frame {k} differs from its source by {error:.1f} on average")
        for j in (k - 1, k + 1):
            if 0 <= j < len(frames) and np.abs(frames[j].astype(np.int16) - picture).mean() < error:
                raise SystemExit(f"{path.name}: frame {k} looks more like source frame {j}")


# ----------------------------------------------------------------------------------------------- output


def read_wheel(wheel: Path) -> tuple[Callable[[str], np.ndarray], str]:
    """A reader of `skimage/data/<file>` as RGB from the wheel, and the wheel's scikit-image version."""
    archive = zipfile.ZipFile(wheel)
    version = next(
        (
            match.group(1)
            for name in archive.namelist()
            if (match := re.match(r"scikit_image-([^/]+)\.dist-info/METADATA$", name))
        ),
        None,
    )
    if version is None:
        raise SystemExit(f"{wheel} is not a scikit-image wheel")

    def load(file: str) -> np.ndarray:
        with Image.open(io.BytesIO(archive.read(f"skimage/data/{file}"))) as image:
            return np.asarray(image.convert("RGB"))

    return load, version


def fit(image: np.ndarray) -> np.ndarray:
    """At most MAX_SIDE pixels on the long side (the shipped photos already are; kept for other sources)."""
    height, width = image.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=JPEG_QUALITY, optimize=True, progressive=False)


def _preview(image: np.ndarray, masks: Sequence[np.ndarray], path: Path) -> None:
    drawn = overlay_image(
        image, {k + 1: m for k, m in enumerate(masks)}, {k + 1: k for k in range(len(masks))}
    )
    Image.fromarray(drawn).save(path)


def build(wheel: Path, out: Path, preview: Path | None) -> list[dict]:
    """Write photos, clips, masks and the manifest under `out`; return the manifest entries."""
    load, version = read_wheel(wheel)
    if version != SKIMAGE_VERSION:
        print(f"note: wheel is scikit-image {version}, CREDITS.md names {SKIMAGE_VERSION}", file=sys.stderr)
    for folder in ("images", "clips", "masks"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    if preview is not None:
        preview.mkdir(parents=True, exist_ok=True)

    photos: dict[str, np.ndarray] = {}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for key, photo in PHOTOS.items():
        original = load(photo.file)
        image = fit(original)
        if image.shape != original.shape:
            raise SystemExit(f"{photo.file} would be resized, but its marks are in original pixels")
        photos[key] = image
        masks[key] = {}
        for marks in photo.objects:
            mask = make_mask(image, marks, masks[key])
            if not mask.any():
                raise SystemExit(f"{key}/{marks.name}: the mask is empty")
            masks[key][marks.name] = mask
        if preview is not None:
            _preview(image, list(masks[key].values()), preview / f"photo_{key}.png")

    entries: list[dict] = []
    for spec in IMAGES:
        image = photos[spec.photo]
        file = Path("images") / f"{spec.name}.jpg"
        _save_jpeg(image, out / file)
        objects = []
        for k, name in enumerate(spec.objects, start=1):
            mask_file = Path("masks") / spec.name / f"obj{k}_f0.png"
            (out / mask_file).parent.mkdir(parents=True, exist_ok=True)
            save_mask_png(masks[spec.photo][name], out / mask_file)
            objects.append({"name": name, "masks": {"0": mask_file.as_posix()}, "marked_frames": [0]})
        entries.append(
            {
                "name": spec.name,
                "kind": "image",
                "file": file.as_posix(),
                "objects": objects,
                "question": spec.question,
            }
        )
        if preview is not None:
            _preview(image, [masks[spec.photo][n] for n in spec.objects], preview / f"image_{spec.name}.png")

    for spec in CLIPS:
        image = photos[spec.photo]
        n_frames = round(spec.fps * spec.seconds)
        if spec.size[0] % 2 or spec.size[1] % 2 or spec.size[0] > 640:
            raise SystemExit(f"{spec.name}: the size must be even and at most 640 wide")
        photo_size = (image.shape[1], image.shape[0])
        matrices = [view_matrix(view_at(spec, f, n_frames), spec.size, photo_size) for f in range(n_frames)]
        file = Path("clips") / f"{spec.name}.mp4"
        frames = [warp_image(image, m, spec.size) for m in matrices]
        write_clip(frames, spec.fps, out / file)
        check_clip(frames, out / file)
        info = probe_video(out / file)
        if info.n_frames != n_frames or (info.width, info.height) != spec.size:
            raise SystemExit(f"{file}: wrote {n_frames} frames at {spec.size}, read back {info}")
        sampled = sample_frames(info.n_frames, source="file", native_fps=info.fps, fps=1).indices
        objects = []
        for k, name in enumerate(spec.objects, start=1):
            per_frame = {}
            for frame in sampled:
                moved = warp_mask(masks[spec.photo][name], matrices[frame], spec.size)
                if not moved.any():
                    raise SystemExit(f"{spec.name}/{name}: out of view on frame {frame}")
                mask_file = Path("masks") / spec.name / f"obj{k}_f{frame}.png"
                (out / mask_file).parent.mkdir(parents=True, exist_ok=True)
                save_mask_png(moved, out / mask_file)
                per_frame[str(frame)] = mask_file.as_posix()
            objects.append({"name": name, "masks": per_frame, "marked_frames": [sampled[0]]})
        entries.append(
            {
                "name": spec.name,
                "kind": "video",
                "file": file.as_posix(),
                "objects": objects,
                "question": spec.question,
            }
        )
        if preview is not None:
            decoded = read_frames(out / file, sampled)
            tiles = []
            for frame, picture in zip(sampled, decoded, strict=True):
                frame_masks = [np.asarray(Image.open(out / o["masks"][str(frame)])) > 0 for o in objects]
                tiles.append(overlay_image(picture, dict(enumerate(frame_masks, 1)), {1: 0, 2: 1, 3: 2}))
            Image.fromarray(np.concatenate(tiles, axis=0)).save(preview / f"clip_{spec.name}.png")

    (out / "examples.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: the wheel in, the examples folder (this one by default) out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="scikit-image wheel (pip download --no-deps scikit-image)")
    parser.add_argument("--out", type=Path, default=ROOT, help="examples folder to write (default: this one)")
    parser.add_argument("--preview", type=Path, help="also write mask overlays here, to check by eye")
    args = parser.parse_args(argv)
    entries = build(args.wheel, args.out, args.preview)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(entries)} examples written to {args.out} ({total / 1e6:.2f} MB in the folder)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
