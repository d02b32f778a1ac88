"""The objects of an API request: `regions` (COCO RLE or PNG data URLs), or a picture's alpha channel.

Masks come from strangers, so nothing is allocated from what a mask claims until the claim is checked: an
RLE's `size` must be its picture's (the pixel limit already bounds that), its counts must add up to exactly
that many pixels and be non-negative (pycocotools' decoder trusts them and writes past its buffer when
they do not), and a PNG mask's header must declare the picture's size before its pixels are decoded. A
mask of another size is refused, as everywhere in the project: the client marked another picture.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..media.images import check_image_file
from ..media.limits import MediaLimits
from ..media.masks import mask_from_png
from .openai_request import RequestRefused, data_url_bytes

__all__ = ["alpha_mask", "decode_rle", "read_regions"]

_RLE_DIGITS = 48
"""pycocotools' compressed counts: 6-bit groups stored as characters from '0' (48) upwards."""


def _compressed_counts(counts: str, param: str) -> np.ndarray:
    """pycocotools' `rleFrString`, vectorised: LEB128-like 5-bit groups, sign in the last group's bit 4,
    and each count after the second stored as the difference from the count two before it."""
    codes = np.frombuffer(counts.encode("ascii", "replace"), np.uint8).astype(np.int64) - _RLE_DIGITS
    if codes.size == 0 or codes.min() < 0 or codes.max() > 63:
        raise RequestRefused(f"{param}.counts is not a COCO RLE string", param=param)
    more = (codes & 0x20) != 0
    if more[-1]:
        raise RequestRefused(f"{param}.counts ends in the middle of a number", param=param)
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise RequestRefused(f"{param}.counts holds a number too large for a mask", param=param)
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    even, odd = values[0::2].copy(), values[1::2].copy()
    even[1:] = np.cumsum(even[1:])
    odd[:] = np.cumsum(odd)
    values[0::2], values[1::2] = even, odd
    return values


def decode_rle(rle: Any, shape: tuple[int, int], param: str) -> np.ndarray:
    """A COCO RLE (`{"size": [h, w], "counts": str | [int, ...]}`) as a bool mask of `shape`, checked first."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise RequestRefused(f'{param} must be a COCO RLE {{"size": [h, w], "counts": ...}}', param=param)
    size = rle["size"]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise RequestRefused(f"{param}.size must be [height, width]", param=param)
    height, width = size
    if (height, width) != tuple(shape):
        raise RequestRefused(
            f"{param} is {width}x{height} but its frame is {shape[1]}x{shape[0]} (width x height)",
            param=param,
        )
    counts = rle["counts"]
    if isinstance(counts, str):
        values = _compressed_counts(counts, param)
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        if len(counts) > height * width + 1:
            raise RequestRefused(f"{param}.counts has more runs than the mask has pixels", param=param)
        values = np.asarray(counts, dtype=np.int64)
    else:
        raise RequestRefused(f"{param}.counts must be a string or an array of integers", param=param)
    if values.size and (values.min() < 0 or values.max() > height * width):
        raise RequestRefused(f"{param}.counts holds a run length outside 0..{height * width:,}", param=param)
    total = int(values.sum())
    if total != height * width:
        raise RequestRefused(
            f"{param}.counts covers {total:,} pixels; a {width}x{height} mask has {height * width:,}",
            param=param,
        )
    runs = np.repeat(np.arange(values.size) % 2 == 1, values)
    return np.ascontiguousarray(runs.reshape(width, height).T)


def _png_mask(url: str, shape: tuple[int, int], limits: MediaLimits, param: str) -> np.ndarray:
    max_bytes = int(limits.max_upload_mb * 1e6)
    _, data = data_url_bytes(url, max_bytes=max_bytes, what=param, param=param)
    try:
        width, height = check_image_file(data, limits)
    except ValueError as exc:
        raise RequestRefused(f"{param}: {exc}", param=param) from None
    if (height, width) != tuple(shape):
        raise RequestRefused(
            f"{param} is {width}x{height} but its frame is {shape[1]}x{shape[0]} (width x height)",
            param=param,
        )
    return mask_from_png(data)


def _mask(spec: Any, shape: tuple[int, int], limits: MediaLimits, param: str) -> np.ndarray:
    if isinstance(spec, str):
        return _png_mask(spec, shape, limits, param)
    if isinstance(spec, Mapping) and "counts" in spec:
        return decode_rle(spec, shape, param)
    raise RequestRefused(
        f'{param} must be a COCO RLE {{"size", "counts"}} or a PNG data URL (data:image/png;base64,...)',
        param=param,
    )


def read_regions(
    regions: list[Any],
    *,
    video: bool,
    shape: tuple[int, int],
    max_objects: int,
    limits: MediaLimits,
) -> list[dict[int, np.ndarray]]:
    """One `{frame index: mask}` per object (images: frame 0), every mask of the picture's `shape`.

    A clip's object is `{"<frame index>": mask, ...}`; an image's is a mask (or `{"0": mask}`). The object
    count is checked before any mask is decoded.
    """
    if len(regions) > max_objects:
        raise RequestRefused(
            f"regions holds {len(regions)} objects; the limit is {max_objects}", param="regions"
        )
    objects = []
    for number, spec in enumerate(regions):
        param = f"regions[{number}]"
        if isinstance(spec, Mapping) and "counts" not in spec:
            by_frame = {}
            for key, mask in spec.items():
                if not (isinstance(key, str) and key.isdigit() and len(key) < 10):
                    raise RequestRefused(f"{param}: {key!r} is not a frame index", param=param)
                if not video and key != "0":
                    raise RequestRefused(f"{param}: a picture has only frame 0, not {key}", param=param)
                by_frame[int(key)] = _mask(mask, shape, limits, f"{param}[{key!r}]")
            if not by_frame:
                raise RequestRefused(f"{param} has no masks", param=param)
            objects.append(by_frame)
        elif video:
            raise RequestRefused(
                f"{param}: in a clip, give each object as {{frame index: mask}} (frames of the file, "
                "counted from 0 at its native rate)",
                param=param,
            )
        else:
            objects.append({0: _mask(spec, shape, limits, param)})
    return objects


def alpha_mask(data: bytes) -> np.ndarray | None:
    """The mask a picture's alpha channel draws (alpha > 0, as Describe Anything reads it), or None when the
    picture has no transparency. Call after the picture passed its checks (`load_image`)."""
    with Image.open(io.BytesIO(data)) as image:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        if not has_alpha:
            return None
        upright = ImageOps.exif_transpose(image).convert("RGBA")
        alpha = np.asarray(upright)[..., 3]
    if alpha.min() > 0:
        raise RequestRefused(
            "No regions were given and the picture's alpha channel is opaque everywhere, so it marks no "
            "object: give regions, or make the pixels outside <object1> transparent",
            param="regions",
        )
    return alpha > 0
