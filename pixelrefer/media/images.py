"""Reading an image from whatever a caller has into the one form the model takes: RGB uint8 (H, W, 3).

Photos are turned upright by their EXIF orientation (as OpenCV's reader, used by the official code, does);
greyscale, palette, CMYK, 16-bit and alpha images are converted; animated images give their first frame.
Decoding is refused before it starts when the file is larger than the upload limit or its header declares
more than `max_pixels` (see `pixelrefer.media.limits.MediaLimits`); corrupt, truncated and mislabelled files
are refused with a message that says which.
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import MediaLimits, MediaRejected, fit_within, pixel_refusal

__all__ = ["ImageError", "ImageInput", "check_image_file", "load_image", "shrink_image"]

ImageInput = np.ndarray | torch.Tensor | Image.Image | str | os.PathLike | bytes

DEFAULT_MAX_PIXELS = MediaLimits().max_pixels
"""Images larger than this are refused unless a caller passes its own limit."""


class ImageError(MediaRejected):
    """The input is not a usable image; the message says why (a `MediaRejected`, so a `ValueError`)."""


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("The image array contains NaN or infinite values")
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.max(initial=0) > 255:
            return (
                (array.astype(np.float64) * (255.0 / max(int(array.max()), 65535))).round().astype(np.uint8)
            )
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ImageError(f"Unsupported image array type {array.dtype}")


def _from_pil(image: Image.Image) -> np.ndarray:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.int64)
        top = 65535 if array.max(initial=0) > 255 else 255
        return _from_array((np.clip(array, 0, top) * (255.0 / top)).round().astype(np.uint8))
    if image.mode == "F":
        return _from_array(np.asarray(image, dtype=np.float32))
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _bomb_pixels(exc: Image.DecompressionBombError) -> int | None:
    """The pixel count PIL's decompression-bomb refusal names (it never says the width and height)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


@contextmanager
def _checked_open(
    source: str | os.PathLike | bytes, limits: MediaLimits | None, limit: int
) -> Iterator[tuple[Image.Image, str]]:
    """The open (not yet decoded) image of a file or bytes, after the size and header checks.

    Errors inside the `with` body (decoding) are turned into `ImageError`s like those of opening.
    """
    if isinstance(source, bytes | bytearray):
        handle: io.BytesIO | Path = io.BytesIO(source)
        name = "the uploaded image"
        size = len(source)
    else:
        handle = Path(source)
        name = handle.name
        if not handle.is_file():
            raise ImageError(f"No such image file: {name}")
        size = handle.stat().st_size
    if size == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    if limits is not None:
        try:
            limits.check_upload_size(size, name)
        except MediaRejected as exc:
            raise ImageError(str(exc)) from None
    try:
        with Image.open(handle) as image:
            refusal = pixel_refusal(f"{name} is", *image.size, limit)
            if refusal:
                raise ImageError(refusal)
            yield image, name
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        declared = _bomb_pixels(exc)
        claim = f"declares {declared:,} pixels" if declared else "declares more pixels than allowed"
        ceiling = min(limit, 2 * (Image.MAX_IMAGE_PIXELS or limit))
        raise ImageError(
            f"{name} {claim}; the limit is {ceiling:,} pixels. It was refused unread (a decompression bomb?)."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image that can be read: its contents are not in a known image format "
            "(PNG, JPEG, WebP, GIF, BMP, TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, MemoryError) as exc:
        raise ImageError(f"{name} could not be decoded: it may be truncated or corrupt") from exc


def check_image_file(
    source: str | os.PathLike | bytes,
    limits: MediaLimits | None = None,
    *,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """Refuse an image file (or bytes) over the limits from its size and header alone; its (width, height).

    The check `load_image` makes before decoding, for callers that hand the file on to another decoder
    (Gradio's editor, a mask reader): nothing past the header is read.
    """
    limit = max_pixels if max_pixels is not None else (limits or MediaLimits()).max_pixels
    with _checked_open(source, limits, limit) as (image, _):
        return image.size


def load_image(
    source: ImageInput,
    *,
    max_pixels: int | None = None,
    limits: MediaLimits | None = None,
) -> np.ndarray:
    """Any image (array, tensor, PIL image, path or bytes) as RGB uint8 (H, W, 3).

    Files and bytes are checked before their pixels are decoded (see `check_image_file`): the upload size
    (when `limits` are given), then the size the header declares against `max_pixels` (default
    `limits.max_pixels`, else `DEFAULT_MAX_PIXELS`), so a decompression bomb costs a header read.
    Refusals are `ImageError`s that name the file by its base name only (messages reach visitors; server
    paths must not).
    """
    limit = max_pixels if max_pixels is not None else (limits or MediaLimits()).max_pixels
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.size == 0:
            raise ImageError("The image is empty")
        result = _from_array(source)
    elif isinstance(source, Image.Image):
        result = _from_pil(source)
    else:
        with _checked_open(source, limits, limit) as (image, _):
            image.load()
            result = _from_pil(image)
    refusal = pixel_refusal("The image is", result.shape[1], result.shape[0], limit)
    if refusal:
        raise ImageError(refusal)
    return result


def shrink_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` shrunk by the one rule (`fit_within`) with area averaging; returned as is when it fits."""
    height, width = image.shape[:2]
    fitted = fit_within(width, height, max_side)
    if fitted == (width, height):
        return image
    return cv2.resize(image, fitted, interpolation=cv2.INTER_AREA)
