"""A stand-in for OpenCV on the GPU check's machine, which has no `cv2` and whose wheel (63 MB) does not fit
the wheels budget (docs/gpu.md). The chat path uses OpenCV only to resize pictures and masks on the CPU; this
does those resizes with torch (bilinear, area and nearest, OpenCV's pixel-centre convention), so timings
are comparable and the pixels close but not identical. Anything else refuses loudly.

Only `bench/gpu_check.py` puts this folder on `sys.path`, and only when `cv2` cannot be imported.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INTER_NEAREST = 0
INTER_LINEAR = 1
INTER_AREA = 3
_MODES = {INTER_NEAREST: "nearest-exact", INTER_LINEAR: "bilinear", INTER_AREA: "area"}


def resize(src: np.ndarray, dsize: tuple[int, int], interpolation: int = INTER_LINEAR) -> np.ndarray:
    """`cv2.resize(src, (width, height), interpolation=...)` for 2-D and HxWxC arrays."""
    width, height = int(dsize[0]), int(dsize[1])
    array = np.ascontiguousarray(src)
    planes = array[..., None] if array.ndim == 2 else array
    tensor = torch.from_numpy(planes.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    mode = _MODES.get(interpolation)
    if mode is None:
        raise NotImplementedError(f"the GPU check's cv2 stand-in has no interpolation {interpolation}")
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(tensor, size=(height, width), mode=mode, **kwargs)[0].permute(1, 2, 0).numpy()
    if array.dtype == np.bool_:
        out = out >= 0.5
    elif np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(array.dtype)
    return out[..., 0] if array.ndim == 2 else out


def __getattr__(name: str):
    raise NotImplementedError(
        f"cv2.{name} is not available in the GPU check's stand-in (bench/standins/cv2.py): install "
        "opencv-python-headless for it"
    )
