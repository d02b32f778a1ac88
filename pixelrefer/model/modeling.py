"""The network: transformers' Qwen2 with the vision tower, the projector and the object tokenizer beside it.

Module names follow the official checkpoints (`model.vision_encoder.vision_encoder.*`,
`model.mm_projector.readout.*`, `model.region_encoder.*`), so transformers' `from_pretrained` loads them
directly, with its quantization and device maps. Everything PixelRefer adds happens before the LLM: the
inputs are spliced into one `inputs_embeds` and the Qwen2 forward runs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2Model, VideoLlama3VisionConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from ..runtime.errors import InputError
from .config import PixelReferConfig
from .objects import ObjectTokenizer
from .vision import VisionTower

__all__ = ["PixelReferForCausalLM", "Projector"]


class Projector(nn.Module):
    """`mlp2x_gelu`: vision width → LLM width, for the full model's image tokens."""

    def __init__(self, vision_width: int, hidden_size: int) -> None:
        super().__init__()
        self.readout = nn.Sequential(
            nn.Linear(vision_width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.readout[0].weight
        return self.readout(features.to(device=weight.device, dtype=weight.dtype))


class PixelReferModel(Qwen2Model):
    """Qwen2's decoder plus the vision tower, projector and object tokenizer (the `model.` prefix)."""

    def __init__(self, config: PixelReferConfig) -> None:
        super().__init__(config)
        vision_config = config.vision_config
        if isinstance(vision_config, dict):
            vision_config = VideoLlama3VisionConfig(**vision_config)
        if vision_config is None:
            raise InputError(
                "The config has no vision_config; load the model through PixelRefer.from_pretrained"
            )
        if config.mm_projector_type != "mlp2x_gelu":
            raise InputError(f"Unsupported mm_projector_type '{config.mm_projector_type}' (only mlp2x_gelu)")
        self.vision_encoder = VisionTower(vision_config)
        self.mm_projector = Projector(vision_config.hidden_size, config.hidden_size)
        self.region_encoder = ObjectTokenizer(config, vision_config.hidden_size)


class PixelReferForCausalLM(Qwen2ForCausalLM):
    """PixelRefer (full or Lite, by config): the checkpoint's module tree with Qwen2's causal-LM head."""

    config_class = PixelReferConfig
    _no_split_modules = ["Qwen2DecoderLayer", "VisionTower", "ObjectTokenizer", "Projector"]
    _keys_to_ignore_on_load_unexpected = [r"^model\.region_encoder\.mask_embedding\.(weight|bias)$"]

    def __init__(self, config: PixelReferConfig) -> None:
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = PixelReferModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def vision_tower(self) -> VisionTower:
        return self.model.vision_encoder

    @property
    def object_tokenizer(self) -> ObjectTokenizer:
        return self.model.region_encoder

    @property
    def projector(self) -> Projector:
        return self.model.mm_projector
