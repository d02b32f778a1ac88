"""Benchmark regions as the official scripts rasterise them: polygons, boxes, RLE (both kinds), null.

Every region becomes a COCO RLE first (`to_rle`), so checking a whole benchmark before the model loads
costs an area computation per mask (pycocotools reads the runs), not a decoded picture; `decode` gives
the bool mask when an item runs. The rules follow the official `annToMask`: a list is polygons, merged
into one mask; a dict whose counts are a list is an uncompressed RLE; any other dict a compressed RLE.
Boxes `[x, y, w, h]` are filled rectangles, as the official VG and Ref-L4 scripts draw them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pycocotools import mask as coco_mask

from ..runtime.errors import InputError

__all__ = ["Region", "RegionError", "area", "decode", "to_rle"]


class RegionError(InputError):
    """A region that cannot be read, or does not fit its frame; the item becomes an error row."""


@dataclass(frozen=True)
class Region:
    """One annotated region as the benchmark file gives it. `kind` "segmentation" holds polygons, an RLE
    dict or None (a null segmentation: the object is not annotated on that frame); "box" holds x, y, w, h."""

    kind: Literal["segmentation", "box"]
    value: Any


def _box_rle(box: Any, height: int, width: int) -> dict:
    if not isinstance(box, Sequence) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise RegionError(f"a box is [x, y, width, height]; got {box!r}")
    # The official scripts cut box values to int and slice; a negative start is clamped at 0 (as Ref-L4's
    # script does), where a plain numpy slice would wrap around to the other side of the picture.
    x, y, w, h = (int(v) for v in box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[max(0, y) : y + h, max(0, x) : x + w] = 1
    return coco_mask.encode(np.asfortranarray(mask))


def _polygon_rle(polygons: list, height: int, width: int) -> dict:
    if not polygons or not all(
        isinstance(p, Sequence)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(isinstance(v, (int, float)) for v in p)
        for p in polygons
    ):
        raise RegionError(
            "a polygon segmentation is a list of [x1, y1, x2, y2, ...] lists of 3 or more points"
        )
    return coco_mask.merge(coco_mask.frPyObjects([list(map(float, p)) for p in polygons], height, width))


def _rle(spec: Mapping[str, Any], height: int, width: int) -> dict:
    size, counts = spec.get("size"), spec.get("counts")
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise RegionError("an RLE has 'size': [height, width]")
    if (size[0], size[1]) != (height, width):
        raise RegionError(
            f"the mask is {size[1]}x{size[0]} but its frame is {width}x{height} (width x height)"
        )
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
            raise RegionError(
                "an uncompressed RLE's counts must be non-negative and add up to height x width"
            )
        return coco_mask.frPyObjects({"size": list(size), "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise RegionError("an RLE's counts are a string (compressed) or a list of numbers (uncompressed)")
    return {"size": list(size), "counts": counts}


def to_rle(region: Region, height: int, width: int) -> dict | None:
    """The region as a COCO RLE on a frame of height x width; None for a null segmentation."""
    if region.kind == "box":
        return _box_rle(region.value, height, width)
    value = region.value
    if value is None:
        return None
    if isinstance(value, list):
        return _polygon_rle(value, height, width)
    if isinstance(value, Mapping):
        return _rle(value, height, width)
    raise RegionError(f"a segmentation is polygons, an RLE dict or null; got {type(value).__name__}")


def area(rle: dict) -> int:
    """Pixels inside, from the runs alone (a corrupt compressed RLE is a RegionError)."""
    try:
        return int(coco_mask.area(rle))
    except Exception as exc:  # pycocotools raises bare errors on malformed counts
        raise RegionError(f"the RLE cannot be read ({type(exc).__name__})") from exc


def decode(rle: dict) -> np.ndarray:
    """The bool mask (height x width) of an RLE."""
    return coco_mask.decode(rle).astype(bool)
