"""Reading an image from whatever a caller has into the one form the model takes: RGB uint8 (H, W, 3).

Photos are turned upright by their EXIF orientation (as OpenCV's reader, used by the official code, does);
greyscale, palette, CMYK, 16-bit and alpha images are converted; animated images give their first frame.
Decoding is refused before it starts when the image is larger than `max_pixels`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "ImageInput", "load_image"]

ImageInput = np.ndarray | torch.Tensor | Image.Image | str | os.PathLike | bytes

DEFAULT_MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    """The input is not a usable image; the message says why."""


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


def load_image(source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image (array, tensor, PIL image, path or bytes) as RGB uint8 (H, W, 3)."""
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.size == 0:
            raise ImageError("The image is empty")
        result = _from_array(source)
    elif isinstance(source, Image.Image):
        result = _from_pil(source)
    else:
        if isinstance(source, bytes):
            handle: io.BytesIO | Path = io.BytesIO(source)
            name = "the uploaded image"
        else:
            handle = Path(source)
            name = handle.name
            if not handle.is_file():
                raise ImageError(f"No such image file: {name}")
            if handle.stat().st_size == 0:
                raise ImageError(f"{name} is empty (0 bytes)")
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name} is {width}x{height} pixels, more than the limit of {max_pixels:,} pixels"
                    )
                image.load()
                result = _from_pil(image)
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{name} is not an image that can be read ({type(exc).__name__})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name} could not be decoded: it may be truncated or corrupt") from exc
    if result.shape[0] * result.shape[1] > max_pixels:
        raise ImageError(
            f"The image has {result.shape[0] * result.shape[1]:,} pixels, more than {max_pixels:,}"
        )
    return result
