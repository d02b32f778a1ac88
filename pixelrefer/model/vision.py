"""The VL3-SigLIP-NaViT tower and its preprocessing, as transformers' VideoLLaMA 3 parts.

PixelRefer checkpoints name the tower `DAMO-NLP-SG/VL3-SigLIP-NaViT` (or, in tests, a folder). Only that
repo's `config.json` and `preprocessor_config.json` are read; the weights live in the PixelRefer
checkpoint under `model.vision_encoder.vision_encoder.*`. What PixelRefer changes about the processor is
the size rule (spec §3.1): the official `smart_resize` scales tiny images up to the patch factor first,
and the pixel budget is divided among the images of one call; both are applied here. The bicubic resize
itself is pinned to one pass order (`bicubic_resize`), so a Pillow upgrade cannot change answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import VideoLlama3VisionConfig, VideoLlama3VisionModel
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.video_llama_3 import modeling_video_llama_3 as videollama3
from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import (
    VideoLlama3ImageProcessorPil,
)

from ..runtime.errors import InputError

__all__ = [
    "PATCH_SIZE",
    "FrameBatchedAttention",
    "PixelReferImageProcessor",
    "ProcessedImages",
    "VisionTower",
    "bicubic_resize",
    "load_vision_config",
    "smart_resize",
    "vision_config_from_dict",
]

PATCH_SIZE = 14

_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
)


def vision_config_from_dict(raw: dict) -> VideoLlama3VisionConfig:
    """The tower's config from its `config.json` contents (flat, or nested under `vision_config`), or from a
    PixelRefer config's `vision_encoder_config`."""
    values = raw.get("vision_config", raw) if isinstance(raw.get("vision_config"), dict) else raw
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in values]
    if missing:
        raise InputError(f"The vision encoder config lacks {', '.join(missing)}")
    return VideoLlama3VisionConfig(**{k: values[k] for k in _VISION_FIELDS if k in values})


def load_vision_config(folder: Path) -> tuple[VideoLlama3VisionConfig, dict]:
    """Read the tower's `config.json` (flat, or nested under `vision_config`) and `preprocessor_config.json`."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"The vision encoder folder has no config.json: {folder.name}")
    config = vision_config_from_dict(json.loads(config_path.read_text()))
    pre_path = folder / "preprocessor_config.json"
    preprocessor = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
    return config, preprocessor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The official target size: a multiple of `factor` per side, the area within [min_pixels, max_pixels].

    Unlike transformers' copy, a side shorter than `factor` first scales the image so that side equals it.
    """
    if height < factor or width < factor:
        scale = factor / min(height, width)
        width = round(scale * width)
        height = round(scale * height)
    elif max(height, width) / min(height, width) > 200:
        ratio = max(height, width) / min(height, width)
        raise InputError(
            f"The picture is too elongated for the vision encoder ({width}x{height} pixels, {ratio:.0f}:1; "
            "it takes at most 200:1)"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:
        raise InputError(f"The image ({width}x{height}) is too small to be resized for the vision encoder")
    return h_bar, w_bar


def bicubic_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's antialiased bicubic resize of a (C, H, W) uint8 image, widths first, then heights.

    That is the order Pillow <= 12 (what the official demo's requirements resolve to, and our pin) runs its
    two passes in, rounding to 8 bits in between. Pillow 13 may run them the other way round when one side
    shrinks and the other grows (up to 2/255 on a few percent of pixels of a photo), so each pass here is
    its own one-axis resize, which has a single order in every version.
    """
    channels_last = np.ascontiguousarray(np.moveaxis(image, 0, -1))
    picture = Image.fromarray(channels_last[..., 0] if channels_last.shape[-1] == 1 else channels_last)
    if picture.width != width:
        picture = picture.resize((width, picture.height), Image.Resampling.BICUBIC)
    if picture.height != height:
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    out = np.asarray(picture)
    return np.moveaxis(out if out.ndim == 3 else out[..., None], -1, 0)


class PixelReferImageProcessor(VideoLlama3ImageProcessorPil):
    """VideoLLaMA 3's PIL processor with the official PixelRefer size rule and a pinned bicubic pass order."""

    def resize(self, image: np.ndarray, size: SizeDict, resample, factor: int, **kwargs) -> np.ndarray:
        height, width = image.shape[-2:]
        target_h, target_w = smart_resize(height, width, factor, size.shortest_edge, size.longest_edge)
        if image.dtype == np.uint8 and PILImageResampling(resample) == PILImageResampling.BICUBIC:
            return bicubic_resize(image, target_h, target_w)
        return super(VideoLlama3ImageProcessorPil, self).resize(
            image=image, size=SizeDict(height=target_h, width=target_w), resample=resample
        )


@dataclass
class ProcessedImages:
    """Patch rows of several images, with each image's (t, h, w) patch grid and merge size."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    merge_sizes: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        """Patch rows of each image."""
        return list(self.pixel_values.split(self.grid_thw.prod(dim=1).tolist()))


def build_processor(preprocessor: dict) -> PixelReferImageProcessor:
    """The processor with the tower repo's normalisation; sizes are given per call."""
    return PixelReferImageProcessor(
        image_mean=preprocessor.get("image_mean", [0.5, 0.5, 0.5]),
        image_std=preprocessor.get("image_std", [0.5, 0.5, 0.5]),
        rescale_factor=preprocessor.get("rescale_factor", 1 / 255),
        resample=PILImageResampling(preprocessor.get("resample", PILImageResampling.BICUBIC)),
        min_pixels=preprocessor.get("min_pixels", 56 * 56),
        patch_size=preprocessor.get("patch_size", PATCH_SIZE),
    )


def preprocess_images(
    processor: PixelReferImageProcessor,
    images: list[np.ndarray],
    *,
    downsampling: int,
    max_pixels: int,
    merge_size: int,
    shared_by: int | None = None,
) -> ProcessedImages:
    """Resize, normalise and patchify `images` as one official `_process_image` call.

    `max_pixels` is the model's budget (mm_max_length x merge^2 x 14^2); the official code divides it by
    (merge / downsampling)^2 and then by the number of images in the call, `shared_by` (default: all of
    `images`; pass the call's full count when processing only some of its images).
    """
    count = len(images) if shared_by is None else shared_by
    per_image = int(int(max_pixels / (merge_size / downsampling) ** 2) // count)
    rows, grids = [], []
    for image in images:
        out = processor(
            images=image,
            size={"shortest_edge": processor.size["shortest_edge"], "longest_edge": per_image},
            merge_size=downsampling,
            input_data_format="channels_last",
            return_tensors="pt",
        )
        rows.append(out["pixel_values"])
        grids.append(out["image_grid_thw"])
    grid_thw = torch.cat(grids)
    return ProcessedImages(
        torch.cat(rows), grid_thw, torch.full((grid_thw.shape[0],), downsampling, dtype=torch.long)
    )


def _runs(lengths: list[int], max_batch: Callable[[int], int]) -> Iterator[tuple[int, int]]:
    """(length, count) for consecutive images of equal length, at most `max_batch(length)` at a time."""
    index = 0
    while index < len(lengths):
        length = lengths[index]
        count = 1
        limit = max(1, max_batch(length))
        while index + count < len(lengths) and lengths[index + count] == length and count < limit:
            count += 1
        yield length, count
        index += count


class FrameBatchedAttention(videollama3.VideoLlama3VisionAttention):
    """The tower's attention within each image, with runs of equal-size images batched into one call.

    transformers' SDPA/eager path calls attention once per image and layer, so a 768-frame clip through
    the 27 layers is 20,736 calls. Images never attend to each other, so each run of consecutive images of
    one size is one batched call (the same maths per image); a run is split so that no call's score matrix
    exceeds `max_scores` elements, which bounds eager attention's memory. Flash attention already takes the
    packed sequence in one variable-length call and is left as it is.
    """

    max_scores = 2**28

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        max_seqlen: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if videollama3.is_flash_attention_requested(self.config):
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        seq_length = hidden_states.shape[0]
        shape = (seq_length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape)
        key = self.k_proj(hidden_states).view(shape)
        value = self.v_proj(hidden_states).view(shape)
        query, key = videollama3.apply_rotary_pos_emb_vision(query, key, *position_embeddings)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, videollama3.eager_attention_forward
        )
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        outputs, start = [], 0
        for length, count in _runs(lengths, lambda n: self.max_scores // (self.num_heads * n * n)):
            end = start + length * count
            q, k, v = (
                rows[start:end].view(count, length, self.num_heads, self.head_dim).transpose(1, 2)
                for rows in (query, key, value)
            )
            output, _ = attention(
                self,
                q,
                k,
                v,
                attention_mask=None,
                scaling=self.scaling,
                dropout=0.0 if not self.training else self.attention_dropout,
                is_causal=False,
                **kwargs,
            )
            outputs.append(output.reshape(count * length, -1))
            start = end
        return self.out_proj(torch.cat(outputs).contiguous()), None


class VisionTower(nn.Module):
    """Holds the tower under the checkpoint's `vision_encoder.vision_encoder` prefix."""

    def __init__(self, config: VideoLlama3VisionConfig) -> None:
        super().__init__()
        self.vision_encoder = VideoLlama3VisionModel(config)
        for layer in self.vision_encoder.encoder.layers:
            # Same parameters, batched forward: swapping the class keeps the weights and their names.
            layer.self_attn.__class__ = FrameBatchedAttention

    @property
    def hidden_size(self) -> int:
        return self.vision_encoder.config.hidden_size

    def forward(self, images: ProcessedImages, *, round_to_bfloat16: bool = False) -> torch.Tensor:
        """Features per patch (merge 1) or per merged 2x2 block (merge 2), images concatenated."""
        device = self.vision_encoder.embeddings.patch_embedding.weight.device
        pixels = images.pixel_values
        if round_to_bfloat16:
            pixels = pixels.to(torch.bfloat16)
        return self.vision_encoder(
            pixel_values=pixels.to(device),
            grid_thw=images.grid_thw.to(device),
            merge_sizes=images.merge_sizes.to(device),
        ).last_hidden_state
