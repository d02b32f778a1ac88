"""Test-only SAM 2.1 checkpoints: a tiny random-weight model in the official layout, saved in well under a
second, so tests exercise the same loading path as the real checkpoints without a download."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Sam2VideoConfig, Sam2VideoModel

__all__ = ["build_tiny_sam2"]


def build_tiny_sam2(folder: str | os.PathLike, *, image_size: int = 128, seed: int = 0) -> Path:
    """Save a tiny random-weight SAM 2.1 checkpoint (about 0.4M parameters) that both models load.

    It has the official layout (a `sam2_video` config and safetensors weights), so tests (and the GPU
    check's dry run) exercise the same loading path as the real checkpoints, in well under a second.

    """
    if image_size % 32:
        raise ValueError("image_size must be a multiple of 32")
    stride = [image_size // 4, image_size // 8, image_size // 16]
    # Tracking needs the model width to be a multiple of the 64-channel memories (hard-wired in the memory
    # attention, and object pointers are split into memory-sized pieces); 128 is the narrowest that works.
    config = Sam2VideoConfig(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 12,
                "num_attention_heads": 1,
                "embed_dim_per_stage": [12, 24, 48, 96],
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "blocks_per_stage": [1, 1, 2, 1],
                # A global block must not open a stage (transformers' Hiera divides by its window of 0 there).
                "global_attention_blocks": [3],
                "window_size_per_stage": [4, 4, 4, 2],
                "image_size": [image_size, image_size],
            },
            "backbone_channel_list": [96, 48, 24, 12],
            "backbone_feature_sizes": [[s, s] for s in stride],
            "fpn_hidden_size": 128,
        },
        prompt_encoder_config={"hidden_size": 128, "image_size": image_size, "mask_input_channels": 8},
        mask_decoder_config={
            "hidden_size": 128,
            "mlp_dim": 64,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 32,
        },
        image_size=image_size,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[stride[2], stride[2]],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    target = Path(folder)
    model.save_pretrained(target)
    return target
