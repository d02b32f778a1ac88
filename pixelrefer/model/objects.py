"""The Scale-Adaptive Object Tokenizer (SAOT) and Lite's Object-Centric Infusion (OCI).

An object mask becomes a handful of LLM tokens in four steps: a crop around the mask, rescaled so that
small objects cover about `mask_num` patches and large ones about 100 (50 for Lite); the crop's vision
features plus a position map of where the crop sits in the frame; the features under the mask on the
crop's patch grid; k-means down to `mask_num` vectors. Lite then lets those vectors attend to a 224-px
view of the crop and a 336-px view of the whole frame before the MLP. The oddities of the official code
(the position-map axis swap, the one-pixel-short crop of the full model, Lite reusing the first mask's
local view per frame, uint8 bilinear mask resizing) are kept: the checkpoints were trained with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..media.limits import LimitExceeded
from ..runtime.errors import InputError
from .config import PixelReferConfig, Variant

__all__ = [
    "OBJECT_BUDGET",
    "CropPlan",
    "ObjectCrop",
    "ObjectTokenizer",
    "check_crop",
    "crop_plan",
    "kmeans",
    "plan_crop",
    "pool_mask_features",
    "position_map",
]

PATCH = 14
MARGIN = 2 * PATCH
GLOBAL_SIZE = 336
LOCAL_SIZE = 224


@dataclass
class ObjectCrop:
    """One mask, ready for the vision tower: the rescaled crop and the mask on the crop's patch grid."""

    crop: np.ndarray
    grid_mask: torch.Tensor
    n_tokens: int
    box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    n_cells: int
    global_view: np.ndarray | None = None
    local_view: np.ndarray | None = None


OBJECT_BUDGET = 4
"""An object's crop may hold at most this many times the vision tower's pixel budget (`config.max_pixels`).

The crop plan scales a mask's box by `ceil(sqrt(196 * mask_num / area))`: a compact object's crop stays
near the budget (a one-pixel object in a 12 MP photo: about 3.3x), but a few specks far apart make a tiny
area over a wide box, e.g. two 4x4 specks at opposite corners of a 4032x3024 photo: a 56434x42322 crop and
a feature upsample of 12 million cells. Four times the budget (25.7 M pixels for the releases) admits every
connected mark and refuses those before any tensor exists."""


@dataclass(frozen=True)
class CropPlan:
    """Where one mask's crop is cut (rows `top:bottom`, columns `left:right`) and the size it is scaled to."""

    top: int
    left: int
    bottom: int
    right: int
    out_h: int
    out_w: int
    area: int
    box: tuple[int, int, int, int]
    """The mask's own bounding box (top, left, bottom, right), inclusive."""

    @property
    def pixels(self) -> int:
        """Pixels of the scaled crop; its patch grid (the size features are upsampled to) is this / 14^2."""
        return self.out_h * self.out_w


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _plan_full(mask: np.ndarray, mask_num: int) -> CropPlan:
    height, width = mask.shape
    r0, r1, c0, c1 = _bounds(mask)
    top, left = max(0, r0 - MARGIN), max(0, c0 - MARGIN)
    bottom, right = min(height - 1, r1 + MARGIN), min(width - 1, c1 + MARGIN)
    # The box is inclusive but the official slice excludes its last row and column.
    crop_h, crop_w = bottom - top, right - left
    # The official scale is computed on a torch int64 sum, i.e. in float32.
    area = np.float32(mask.sum())
    scale: float = math.ceil(math.sqrt(float(np.float32(196 * mask_num) / area)))
    if scale == 1 and np.float32(area / np.float32(196)) > 100:
        scale = 1 / math.sqrt(float(np.float32(np.float32(area / np.float32(196)) / np.float32(100))))
    out_h = math.ceil(crop_h * scale / PATCH) * PATCH
    out_w = math.ceil(crop_w * scale / PATCH) * PATCH
    return CropPlan(top, left, bottom, right, out_h, out_w, int(area), (r0, c0, r1, c1))


def _plan_lite(mask: np.ndarray, mask_num: int) -> CropPlan:
    height, width = mask.shape
    r0, r1, c0, c1 = _bounds(mask)
    top, left = max(0, r0 - MARGIN), max(0, c0 - MARGIN)
    bottom_excl, right_excl = min(height, r1 + 1 + MARGIN), min(width, c1 + 1 + MARGIN)
    crop_h, crop_w = bottom_excl - top, right_excl - left
    area = int(mask.sum())
    scale: float = math.ceil(math.sqrt(196.0 * mask_num / max(area, 1)))
    if scale == 1 and area / 196.0 > 50.0:
        scale = 1.0 / math.sqrt((area / 196.0) / 50.0)
    out_h = int(math.ceil(crop_h * scale / PATCH) * PATCH)
    out_w = int(math.ceil(crop_w * scale / PATCH) * PATCH)
    return CropPlan(top, left, bottom_excl, right_excl, out_h, out_w, area, (r0, c0, r1, c1))


def crop_plan(mask: np.ndarray, variant: Variant, mask_num: int) -> CropPlan:
    """The crop one non-empty boolean mask would get, from its box and area alone: nothing is allocated."""
    if not mask.any():
        raise InputError("The mask is empty")
    return _plan_full(mask, mask_num) if variant == "full" else _plan_lite(mask, mask_num)


def check_crop(plan: CropPlan, limit: int, what: str = "The object") -> None:
    """Refuse a crop plan over `limit` pixels, saying why it is large and what to do instead."""
    if plan.pixels <= limit:
        return
    r0, c0, r1, c1 = plan.box
    raise LimitExceeded(
        f"{what} is too spread out to encode: its {plan.area:,} marked pixels span a {c1 - c0 + 1}x{r1 - r0 + 1} "
        f"box, which makes a {plan.out_w}x{plan.out_h} crop = {plan.pixels:,} pixels; the limit is {limit:,} "
        f"pixels ({plan.pixels / limit:.1f}x too many). Mark it as one connected region (stray specks far "
        "from the object cause this)."
    )


def _crop_full(frame: np.ndarray, mask: np.ndarray, plan: CropPlan, mask_num: int) -> ObjectCrop:
    height, width = frame.shape[:2]
    top, left, bottom, right = plan.top, plan.left, plan.bottom, plan.right
    if bottom == top or right == left:
        raise InputError("The mask touches only the last row or column of the frame; it cannot be cropped")
    crop = frame[top:bottom, left:right]
    crop_mask = mask[top:bottom, left:right]
    resized = cv2.resize(np.ascontiguousarray(crop), (plan.out_w, plan.out_h))
    grid = F.interpolate(
        torch.from_numpy(crop_mask.astype(np.uint8))[None, None],
        size=(plan.out_h // PATCH, plan.out_w // PATCH),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    n_cells = int((grid > 0).sum())
    return ObjectCrop(
        crop=resized,
        grid_mask=grid,
        n_tokens=min(mask_num, int(grid.sum())),
        box=(top, left, bottom, right),
        frame_size=(height, width),
        n_cells=n_cells,
    )


def _crop_lite(frame: np.ndarray, mask: np.ndarray, plan: CropPlan, mask_num: int) -> ObjectCrop:
    height, width = frame.shape[:2]
    top, left, bottom_excl, right_excl = plan.top, plan.left, plan.bottom, plan.right
    out_h, out_w = plan.out_h, plan.out_w
    crop = frame[top:bottom_excl, left:right_excl]
    crop_mask = mask[top:bottom_excl, left:right_excl].astype(np.float32)
    grow = out_h >= bottom_excl - top or out_w >= right_excl - left
    resized = cv2.resize(
        np.ascontiguousarray(crop), (out_w, out_h), interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA
    )
    grid = torch.from_numpy(
        cv2.resize(crop_mask, (out_w // PATCH, out_h // PATCH), interpolation=cv2.INTER_LINEAR)
    ).reshape(out_h // PATCH, out_w // PATCH)
    return ObjectCrop(
        crop=resized,
        grid_mask=grid,
        n_tokens=mask_num,
        box=(top, left, min(height - 1, bottom_excl - 1), min(width - 1, right_excl - 1)),
        frame_size=(height, width),
        n_cells=int((grid > 0).sum()),
        local_view=cv2.resize(
            np.ascontiguousarray(crop), (LOCAL_SIZE, LOCAL_SIZE), interpolation=cv2.INTER_AREA
        ),
    )


def plan_crop(
    frame: np.ndarray, mask: np.ndarray, variant: Variant, mask_num: int, *, max_pixels: int | None = None
) -> ObjectCrop:
    """Cut and rescale the crop of one non-empty boolean mask on its (H, W, 3) uint8 frame.

    With `max_pixels`, a plan over that many pixels is refused (`check_crop`) before the crop is made.
    """
    plan = crop_plan(mask, variant, mask_num)
    if max_pixels is not None:
        check_crop(plan, max_pixels)
    crop = _crop_full if variant == "full" else _crop_lite
    return crop(frame, mask, plan, mask_num)


def global_view(frame: np.ndarray) -> np.ndarray:
    """Lite's whole-frame context image."""
    return cv2.resize(np.ascontiguousarray(frame), (GLOBAL_SIZE, GLOBAL_SIZE), interpolation=cv2.INTER_AREA)


def position_map(
    height: int, width: int, box: tuple[int, int, int, int], frame_size: tuple[int, int]
) -> torch.Tensor:
    """(height, width, 2) map of where each crop cell lies in the frame, with the official axis swap.

    The box is (top, left, bottom, right) but is read as (x0, y0, x1, y1): channel 0 runs along the
    columns over the box's row span divided by W - 1, channel 1 along the rows over its column span.
    """
    b0, b1, b2, b3 = box
    frame_h, frame_w = frame_size
    x = torch.arange(width, dtype=torch.float32) / width
    x = x.repeat(height, 1)
    x = (x * (b2 - b0) + b0) / max(frame_w - 1, 1)
    y = torch.arange(height, dtype=torch.float32) / height
    y = y.unsqueeze(1).repeat(1, width)
    y = (y * (b3 - b1) + b1) / max(frame_h - 1, 1)
    return torch.stack([x, y], dim=2)


def kmeans(tokens: torch.Tensor, k: int, iterations: int, permutation: torch.Tensor) -> torch.Tensor:
    """The official k-means: seeded by `permutation[:k]`, stops (keeping the old centroids) when stable."""
    centroids = tokens[permutation[:k].to(tokens.device)]
    for _ in range(iterations):
        distances = torch.sum((tokens.unsqueeze(1) - centroids.unsqueeze(0)) ** 2, dim=2)
        labels = torch.argmin(distances, dim=1)
        updated = torch.stack(
            [tokens[labels == i].mean(dim=0) if (labels == i).any() else centroids[i] for i in range(k)]
        )
        if torch.allclose(centroids, updated, atol=1e-6):
            break
        centroids = updated
    return centroids


UPSAMPLE_CHANNELS = 128
"""Channels resized at once when features are upsampled to the mask grid: a spread-out object's full
float32 upsample (1152 channels x millions of cells) would take ~0.6 GB at once; channel by channel the
peak is a ninth of that plus the cells kept, and each value is exactly what one resize gives."""


def pool_mask_features(
    features: torch.Tensor, grid_mask: torch.Tensor, k: int, iterations: int, permutation: torch.Tensor | None
) -> torch.Tensor:
    """Feature vectors under the mask (row-major), reduced to `k` by k-means when there are more.

    `features` is (1, C, h, w); it is resized bilinearly to the mask grid first when the grids differ,
    `UPSAMPLE_CHANNELS` at a time, keeping only the cells under the mask.
    """
    selected = grid_mask.to(features.device) > 0
    size = tuple(grid_mask.shape[-2:])
    if tuple(features.shape[-2:]) != size:
        tokens = torch.cat(
            [
                F.interpolate(part, size=size, mode="bilinear", align_corners=False)[0][:, selected]
                for part in features.split(UPSAMPLE_CHANNELS, dim=1)
            ]
        ).permute(1, 0)
    else:
        tokens = features[0][:, selected].permute(1, 0)
    if len(tokens) > k:
        if permutation is None:
            raise ValueError("k-means needs a permutation when the mask covers more cells than tokens")
        tokens = kmeans(tokens, k, iterations, permutation)
    return tokens


class ObjectTokenizer(nn.Module):
    """`model.region_encoder`: crop features + position → pooled object vectors → LLM embeddings.

    Lite adds the two OCI cross-attention stages. Lite checkpoints also store an unused
    `mask_embedding` convolution; it is deliberately not built (the loader lists it as known-unused).
    """

    def __init__(self, config: PixelReferConfig, vision_width: int) -> None:
        super().__init__()
        self.variant = config.variant
        self.mask_num = config.mask_num
        self.iterations = config.kmeans_iterations
        self.feat_linear = nn.Sequential(
            nn.Linear(vision_width, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.pos_linear = nn.Linear(2, vision_width)
        if self.variant == "lite":
            heads = 8
            self.fusion_attention_local = nn.MultiheadAttention(vision_width, heads, batch_first=True)
            self.fusion_attention_global = nn.MultiheadAttention(vision_width, heads, batch_first=True)
            self.ln_local = nn.LayerNorm(vision_width)
            self.ln_global = nn.LayerNorm(vision_width)

    def pool(
        self, crop_features: torch.Tensor, crop: ObjectCrop, permutation: torch.Tensor | None
    ) -> torch.Tensor:
        """Object vectors of one mask from its crop's (h, w, C) vision features."""
        height, width = crop_features.shape[:2]
        pos = position_map(height, width, crop.box, crop.frame_size).to(crop_features)
        features = (crop_features + self.pos_linear(pos)).permute(2, 0, 1).unsqueeze(0)
        if self.variant == "full":
            return pool_mask_features(
                features.float(), crop.grid_mask, self.mask_num, self.iterations, permutation
            )
        tokens = pool_mask_features(features, crop.grid_mask, self.mask_num, self.iterations, permutation)
        return F.pad(tokens, (0, 0, 0, self.mask_num - len(tokens)))

    def infuse(self, queries: torch.Tensor, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """Lite's OCI: (N, K, C) object vectors attend to their local, then global, views."""
        attended = self.fusion_attention_local(self.ln_local(queries), local, local)[0]
        queries = queries + attended
        attended = self.fusion_attention_global(self.ln_global(queries), global_, global_)[0]
        return queries + attended

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Object vectors (n, C) → LLM embeddings (n, hidden)."""
        weight = self.feat_linear[0].weight
        return self.feat_linear(vectors.to(device=weight.device, dtype=weight.dtype))
