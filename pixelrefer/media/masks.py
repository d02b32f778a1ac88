"""Masks as the rest of the project sees them: bool HxW arrays, cleaned, coloured, saved and read back.

Every mask that enters the project (a brush layer, a SAM output, an uploaded PNG, a COCO RLE) goes through
`to_bool_mask`, so downstream code only ever meets one format. Colours are indexed by an object's colour
index rather than its position in a list, so an object keeps its colour when others are removed.
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from ..runtime.errors import InputError

__all__ = [
    "EmptyMaskError",
    "MaskSet",
    "ObjectId",
    "PALETTE",
    "clean_mask",
    "default_min_area",
    "export_png_zip",
    "export_rle_json",
    "fit_mask",
    "import_png_zip",
    "import_rle_json",
    "load_mask_png",
    "mask_bbox",
    "mask_from_png",
    "mask_from_rle",
    "mask_to_png",
    "mask_to_rle",
    "object_color",
    "require_mask",
    "save_mask_png",
    "to_bool_mask",
]

ObjectId: TypeAlias = int | str
MaskSet: TypeAlias = Mapping[ObjectId, Mapping[int, np.ndarray]]
"""Masks per object, then per frame position (an image is frame 0)."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (255, 225, 25),
)
"""Twelve colours that stay apart from each other (and readable on photos); later indices are generated."""

_GOLDEN = 0.618033988749895
_RLE_FORMAT = "pixelrefer-coco-rle/1"
_ZIP_MANIFEST = "manifest.json"


class EmptyMaskError(InputError):
    """A mask has no foreground pixels left, so there is no object to pass on."""


def to_bool_mask(mask: Any) -> np.ndarray:
    """One mask format for the whole project: a bool HxW array.

    Accepts bool arrays, 0/1 integers, 0-255 images (foreground from 128 up), floats in [0, 1] (from 0.5 up)
    or 0-255 floats, single-channel HxWx1, and HxWx4 RGBA layers (the alpha channel, as a brush layer
    stores it). An HxWx3 image counts every non-black pixel.
    """
    array = np.asarray(mask)
    if array.ndim == 3:
        if array.shape[2] == 1:
            array = array[..., 0]
        elif array.shape[2] == 4:
            array = array[..., 3]
        elif array.shape[2] == 3:
            array = (np.asarray(array) > 0).any(axis=2)
        else:
            raise InputError(f"A mask with {array.shape[2]} channels is not understood (use 1, 3 or 4)")
    if array.ndim != 2:
        raise InputError(f"A mask must be HxW (got shape {array.shape})")
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer):
        top = int(array.max()) if array.size else 0
        return array > 0 if top <= 1 else array >= 128
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("A mask must not contain NaN or infinite values")
        top = float(array.max()) if array.size else 0.0
        return array >= 0.5 if top <= 1.0 else array >= 127.5
    raise InputError(f"A mask of dtype {array.dtype} is not understood")


def fit_mask(
    mask: Any,
    frame_shape: Sequence[int],
    *,
    source_shape: Sequence[int] | None = None,
    what: str = "The mask",
) -> np.ndarray:
    """`mask` as a bool array of its frame's (height, width): the one rule for a mask meeting its frame.

    A mask must be drawn at its frame's size: the frame as held (`frame_shape`), or the picture as the
    caller gave it before it was shrunk (`source_shape`), whose mask is shrunk the same way (nearest
    neighbour) onto the held frame. Any other size is refused, even of the same aspect ratio: a mask from
    another picture would be stretched onto pixels nobody marked.
    """
    try:
        binary = to_bool_mask(mask)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
    frame = (int(frame_shape[0]), int(frame_shape[1]))
    if binary.shape == frame:
        return binary
    source = None if source_shape is None else (int(source_shape[0]), int(source_shape[1]))
    if binary.shape == source:
        return cv2.resize(binary.astype(np.uint8), (frame[1], frame[0]), interpolation=cv2.INTER_NEAREST) > 0
    uploaded = f" ({source[1]}x{source[0]} as uploaded)" if source not in (None, frame) else ""
    raise InputError(
        f"{what} is {binary.shape[1]}x{binary.shape[0]} but its frame is {frame[1]}x{frame[0]}{uploaded} "
        "(width x height)"
    )


def default_min_area(shape: Sequence[int]) -> int:
    """Specks and holes smaller than this many pixels are cleaned away: 0.05% of the image, at least 8."""
    return max(8, int(round(0.0005 * int(shape[0]) * int(shape[1]))))


def clean_mask(mask: Any, *, min_area: int | None = None) -> np.ndarray:
    """Drop small islands and fill small holes, so a mask is one clean object and not segmentation noise.

    Islands smaller than `min_area` go, except the largest one (a small object is still an object). Holes
    smaller than `min_area` (background regions not touching the image border) are filled. An empty
    mask stays empty; callers report that with `require_mask`.
    """
    full = to_bool_mask(mask)
    if not full.any():
        return full
    limit = default_min_area(full.shape) if min_area is None else int(min_area)
    # Only the mask's bounding box is looked at: every island lies inside it, and background touching the
    # box's edge touches the image's edge too (the pixel beyond it is background, and so is the whole strip
    # out to the image's edge), so the answer is the same as over the whole image, at a fraction of the cost.
    x0, y0, x1, y1 = mask_bbox(full)
    box = np.s_[y0:y1, x0:x1]
    result = full[box]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(result.astype(np.uint8), connectivity=8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = areas >= limit
        keep[int(np.argmax(areas))] = True
        result = np.concatenate([[False], keep])[labels]
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~result).astype(np.uint8), connectivity=4)
    if count > 1:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        small = stats[:, cv2.CC_STAT_AREA] < limit
        small[0] = False
        small[border] = False
        if small.any():
            result = result | small[labels]
    cleaned = np.zeros_like(full)
    cleaned[box] = result
    return cleaned


def require_mask(mask: Any, what: str = "The mask") -> np.ndarray:
    """Return the mask as bool HxW, or raise `EmptyMaskError` saying it is empty (never pass one on)."""
    result = to_bool_mask(mask)
    if not result.any():
        raise EmptyMaskError(f"{what} is empty: nothing was selected. Mark the object again.")
    return result


def mask_bbox(mask: Any) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) with exclusive ends, or None for an empty mask."""
    array = to_bool_mask(mask)
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def object_color(color_index: int) -> tuple[int, int, int]:
    """The RGB colour of an object, fixed by its colour index so it never changes while it lives."""
    if color_index < 0:
        raise ValueError("A colour index is never negative")
    if color_index < len(PALETTE):
        return PALETTE[color_index]
    hue = (color_index * _GOLDEN) % 1.0
    value = 0.95 if color_index % 2 else 0.8
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def mask_to_png(mask: Any) -> bytes:
    """A mask as an 8-bit greyscale PNG (0 and 255), the form image tools open."""
    buffer = io.BytesIO()
    Image.fromarray(to_bool_mask(mask).astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_from_png(data: bytes | str | os.PathLike) -> np.ndarray:
    """Read a PNG mask (greyscale, RGB or RGBA with alpha) back into bool HxW."""
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else Path(data)
    with Image.open(source) as image:
        return to_bool_mask(np.asarray(image))


def save_mask_png(mask: Any, path: str | os.PathLike) -> Path:
    """Write one mask as a PNG file."""
    target = Path(path)
    target.write_bytes(mask_to_png(mask))
    return target


def load_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read one PNG mask file."""
    return mask_from_png(Path(path))


def mask_to_rle(mask: Any) -> dict[str, Any]:
    """COCO run-length encoding (`{"size": [h, w], "counts": str}`), as pycocotools writes it."""
    array = np.asfortranarray(to_bool_mask(mask).astype(np.uint8))
    rle = coco_mask.encode(array)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_from_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed string counts or uncompressed list counts) to bool HxW."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        encoded = {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    return coco_mask.decode(encoded).astype(bool)


def export_rle_json(
    masks: MaskSet,
    path: str | os.PathLike,
    *,
    source_frames: Sequence[int] | None = None,
) -> Path:
    """Write masks per object and per frame as COCO RLE annotations in one JSON file.

    `source_frames[pos]` (optional) records which frame of the source clip each frame position came from,
    so the file can be matched against the original video.
    """
    annotations = []
    for object_id, frames in masks.items():
        for position in sorted(frames):
            array = to_bool_mask(frames[position])
            entry: dict[str, Any] = {
                "object_id": object_id,
                "frame": int(position),
                "segmentation": mask_to_rle(array),
                "area": int(array.sum()),
                "bbox": _coco_bbox(array),
            }
            if source_frames is not None:
                entry["source_frame"] = int(source_frames[position])
            annotations.append(entry)
    target = Path(path)
    target.write_text(json.dumps({"format": _RLE_FORMAT, "annotations": annotations}, indent=1))
    return target


def import_rle_json(path: str | os.PathLike) -> dict[ObjectId, dict[int, np.ndarray]]:
    """Read a file written by `export_rle_json` (or a bare list of such annotations) back into masks."""
    data = json.loads(Path(path).read_text())
    annotations = data["annotations"] if isinstance(data, dict) else data
    result: dict[ObjectId, dict[int, np.ndarray]] = {}
    for entry in annotations:
        result.setdefault(entry["object_id"], {})[int(entry["frame"])] = mask_from_rle(entry["segmentation"])
    return result


def export_png_zip(masks: MaskSet, path: str | os.PathLike) -> Path:
    """Write one PNG per object and frame into a zip (`object-<n>/frame-<pos>.png`) with a manifest."""
    manifest = []
    target = Path(path)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for number, (object_id, frames) in enumerate(masks.items(), start=1):
            names = {}
            for position in sorted(frames):
                name = f"object-{number}/frame-{int(position):05d}.png"
                archive.writestr(name, mask_to_png(frames[position]))
                names[str(int(position))] = name
            manifest.append({"object_id": object_id, "frames": names})
        archive.writestr(_ZIP_MANIFEST, json.dumps({"objects": manifest}, indent=1))
    return target


def import_png_zip(path: str | os.PathLike) -> dict[ObjectId, dict[int, np.ndarray]]:
    """Read a zip written by `export_png_zip` back into masks."""
    result: dict[ObjectId, dict[int, np.ndarray]] = {}
    with zipfile.ZipFile(Path(path)) as archive:
        manifest = json.loads(archive.read(_ZIP_MANIFEST))
        for entry in manifest["objects"]:
            frames = result.setdefault(entry["object_id"], {})
            for position, name in entry["frames"].items():
                frames[int(position)] = mask_from_png(archive.read(name))
    return result


def _coco_bbox(mask: np.ndarray) -> list[int]:
    box = mask_bbox(mask)
    if box is None:
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]
