"""Configuration of both PixelRefer variants: a Qwen2 config plus the fields PixelRefer training writes.

The config is the single source of sizes. `model_type` decides the variant: `pixelrefer_qwen2` is the
full "Vision-Object" model (image tokens + object tokens), `pixelreferlite_qwen2` the "Object-Only" Lite
model (object tokens with Object-Centric Infusion, no image tokens). The vision tower's config lives in
another repo (`mm_vision_encoder`), and training also copied it into `vision_encoder_config`; the loader
attaches one of them as `vision_config` before the model is built.
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Qwen2Config, VideoLlama3VisionConfig

__all__ = ["PixelReferConfig", "PixelReferLiteConfig", "Variant"]

Variant = Literal["full", "lite"]


@strict
class PixelReferConfig(Qwen2Config):
    """Full PixelRefer (model_type `pixelrefer_qwen2`)."""

    model_type = "pixelrefer_qwen2"

    mm_vision_encoder: str | None = None
    vision_encoder: str | None = None
    vision_encoder_config: dict | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int = 1152
    spatial_merge_size: int = 2
    mm_max_length: int = 8192
    use_token_compression: bool = True
    mask_num: int = 32
    image_token_index: int | None = None
    region_token_index: int | None = None
    vision_config: dict | VideoLlama3VisionConfig | None = None

    @property
    def variant(self) -> Variant:
        return "full"

    @property
    def max_pixels(self) -> int:
        """The processor's pixel budget: mm_max_length merged tokens of merge^2 patches of 14^2 pixels."""
        return self.mm_max_length * self.spatial_merge_size**2 * 14 * 14

    @property
    def kmeans_iterations(self) -> int:
        return 5


@strict
class PixelReferLiteConfig(PixelReferConfig):
    """PixelRefer-Lite (model_type `pixelreferlite_qwen2`)."""

    model_type = "pixelreferlite_qwen2"

    @property
    def variant(self) -> Variant:
        return "lite"

    @property
    def kmeans_iterations(self) -> int:
        return 3


AutoConfig.register(PixelReferConfig.model_type, PixelReferConfig, exist_ok=True)
AutoConfig.register(PixelReferLiteConfig.model_type, PixelReferLiteConfig, exist_ok=True)
