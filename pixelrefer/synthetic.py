"""Random-weight checkpoints in the official PixelRefer layout, at any size.

No weights can be downloaded where tests run, and the offline preview must still work end to end, so the
package builds its own checkpoints: a byte-level BPE tokenizer with the Qwen2.5 special tokens and the
four PixelRefer tokens, `config.json` with the fields PixelRefer training writes, a VL3-SigLIP-NaViT
folder (config + preprocessor config) named relative to the checkpoint, `generation_config.json` and
the weights (safetensors or `.bin`, single or sharded). The same shapes as the released 2B and 7B models
are available as presets for memory estimates and GPU benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .config import PixelReferConfig, PixelReferLiteConfig, Variant
from .model import PixelReferForCausalLM

__all__ = [
    "BENCH",
    "RELEASE_2B",
    "RELEASE_7B",
    "RELEASES",
    "TINY",
    "ModelShape",
    "build_checkpoint",
    "model_config",
]

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_NON_SPECIAL = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
PIXELREFER_TOKENS = ["<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>"]
QWEN_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
VISION_FOLDER = "VL3-SigLIP-NaViT-synthetic"


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the LLM and the vision tower; `vocab_size=None` means the tokenizer's length."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_layers: int
    vision_heads: int
    tie_word_embeddings: bool = True
    vocab_size: int | None = None
    tokenizer_merges: int = 1000


TINY = ModelShape(64, 128, 2, 4, 2, 32, 64, 2, 2)
"""The fixtures' sizes: builds in well under a second."""

BENCH = ModelShape(1024, 3584, 16, 16, 4, 768, 3072, 12, 12, tokenizer_merges=4000)
"""About 300M parameters: large enough for CPU timings to mean something."""

RELEASE_2B = ModelShape(1536, 8960, 28, 12, 2, 1152, 4304, 27, 16, True, 151936)
"""The shapes of PixelRefer-2B / Lite-2B: Qwen2.5-1.5B and SigLIP-so400m (VL3-SigLIP-NaViT)."""

RELEASE_7B = ModelShape(3584, 18944, 28, 28, 4, 1152, 4304, 27, 16, False, 152064)
"""The shapes of PixelRefer-7B / Lite-7B: Qwen2.5-7B and SigLIP-so400m."""

RELEASES: dict[str, tuple[Variant, ModelShape]] = {
    "Alibaba-DAMO-Academy/PixelRefer-2B": ("full", RELEASE_2B),
    "Alibaba-DAMO-Academy/PixelRefer-7B": ("full", RELEASE_7B),
    "Alibaba-DAMO-Academy/PixelRefer-Lite-2B": ("lite", RELEASE_2B),
    "Alibaba-DAMO-Academy/PixelRefer-Lite-7B": ("lite", RELEASE_7B),
}

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "in",
    "on",
    "at",
    "to",
    "with",
    "and",
    "or",
    "but",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "has",
    "have",
    "had",
    "this",
    "that",
    "these",
    "those",
    "object",
    "region",
    "image",
    "video",
    "frame",
    "left",
    "right",
    "top",
    "bottom",
    "near",
    "behind",
    "front",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "white",
    "black",
    "grey",
    "dog",
    "cat",
    "person",
    "car",
    "tree",
    "sky",
    "grass",
    "table",
    "cup",
    "rocket",
    "horse",
    "camera",
    "relationship",
    "between",
    "describe",
    "detail",
    "what",
    "where",
    "which",
    "how",
    "why",
    "color",
    "shape",
    "moving",
    "still",
    "holding",
    "standing",
    "sitting",
    "looks",
    "appears",
    "there",
    "it",
    "its",
    "they",
    "their",
    "one",
    "two",
    "three",
    "first",
    "second",
    "marked",
    "scene",
]


def _corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), f"<region{rng.randint(0, 3)}>")
        if rng.random() < 0.2:
            words.append(f"{rng.randint(0, 99)}.")
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return out


def build_tokenizer(merges: int = 1000, seed: int = 0) -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE tokenizer, then Qwen2.5's added tokens, then PixelRefer's four."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + merges, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(4000, seed), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIALS[1:],
        model_max_length=32768,
    )
    wrapped.add_tokens(QWEN_NON_SPECIAL, special_tokens=False)
    wrapped.add_tokens(PIXELREFER_TOKENS, special_tokens=True)
    return wrapped


def model_config(
    variant: Variant, shape: ModelShape, vocab_size: int, *, token_ids: dict[str, int] | None = None
) -> dict:
    """The `config.json` a PixelRefer training run writes, at `shape`."""
    ids = token_ids or {}
    return {
        "architectures": [
            "PixelreferQwen2ForCausalLM" if variant == "full" else "PixelreferliteQwen2ForCausalLM"
        ],
        "model_type": "pixelrefer_qwen2" if variant == "full" else "pixelreferlite_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": ids.get("<|endoftext|>"),
        "eos_token_id": ids.get("<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 32768,
        "max_window_layers": shape.num_hidden_layers,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "vocab_size": vocab_size,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": True,
        "image_aspect_ratio": "qwen2vl",
        "image_size": 28,
        "image_token_index": ids.get("<image>"),
        "region_token_index": ids.get("<REGION>"),
        "image_token_length": 1,
        "is_alignment": False,
        "mask_num": 32,
        "max_frames": 180,
        "mm_hidden_size": shape.vision_hidden_size,
        "mm_max_length": 8192,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_encoder": VISION_FOLDER,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "spatial_merge_size": 2,
        "tokenizer_model_max_length": 16384,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
        "use_token_compression": True,
    }


def _vision_config(shape: ModelShape) -> dict:
    return {
        "architectures": ["DAMOVLVisionModel"],
        "model_type": "damovl",
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_layers,
        "num_attention_heads": shape.vision_heads,
        "num_channels": 3,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "spatial_merge_size": 1,
    }


_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "DAMOVLImageProcessor",
    "max_pixels": 1857492,
    "merge_size": 1,
    "min_pixels": 3136,
    "patch_size": 14,
    "resample": 3,
    "rescale_factor": 1 / 255,
}


def _save_weights(state: dict[str, torch.Tensor], folder: Path, weights: str, shards: int) -> None:
    names = sorted(state)
    groups = [names[i::shards] for i in range(shards)]
    suffix = "safetensors" if weights == "safetensors" else "bin"
    stem = "model" if weights == "safetensors" else "pytorch_model"
    if shards == 1:
        files = {f"{stem}.{suffix}": names}
    else:
        files = {f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}": group for i, group in enumerate(groups)}
    for filename, keys in files.items():
        part = {k: state[k].contiguous() for k in keys}
        if weights == "safetensors":
            save_file(part, folder / filename, metadata={"format": "pt"})
        else:
            torch.save(part, folder / filename)
    if shards > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: f for f, keys in files.items() for k in keys},
        }
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))


def config_for(
    variant: Variant,
    shape: ModelShape,
    vocab_size: int | None = None,
    *,
    token_ids: dict[str, int] | None = None,
) -> PixelReferConfig:
    """The config object (vision tower attached) of a model of this variant and shape, e.g. to build on `meta`."""
    raw = model_config(variant, shape, vocab_size or shape.vocab_size or 151936, token_ids=token_ids)
    config_class = PixelReferConfig if variant == "full" else PixelReferLiteConfig
    config = config_class(**{k: v for k, v in raw.items() if k != "architectures"})
    config.vision_config = _vision_config(shape)
    return config


def _randomize(model: torch.nn.Module, std: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std, generator=generator)
            elif "norm" in name or name.endswith(("ln_local.weight", "ln_global.weight")):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.normal_(0.0, 0.1, generator=generator)


def build_checkpoint(
    folder: str | Path,
    *,
    variant: Variant = "full",
    shape: ModelShape = TINY,
    seed: int = 0,
    weights: Literal["safetensors", "bin"] = "safetensors",
    shards: int = 1,
    nested_vision_config: bool = False,
    generation_config: dict | None = None,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.2,
) -> Path:
    """Write a random-weight PixelRefer checkpoint (official layout) into `folder` and return it.

    Weights follow the fixtures' recipe: matrices N(0, init_std), biases N(0, 0.1), norm scales
    1 + N(0, 0.1), so that a model this small still produces varied (meaningless) text.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.tokenizer_merges, seed)
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(tokenizer_config, indent=2))
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_end|>", "<image>", "<REGION>"]
    }
    vocab_size = shape.vocab_size or len(tokenizer)
    config = model_config(variant, shape, vocab_size, token_ids=ids)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    vision = folder / VISION_FOLDER
    vision.mkdir(exist_ok=True)
    vision_config = _vision_config(shape)
    if nested_vision_config:
        vision_config = {"model_type": "videollama3_vision_encoder", "vision_config": vision_config}
    (vision / "config.json").write_text(json.dumps(vision_config, indent=2))
    (vision / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR, indent=2))
    generation = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    generation.update(generation_config or {})
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))

    torch.manual_seed(seed)
    model = PixelReferForCausalLM(config_for(variant, shape, vocab_size, token_ids=ids))
    _randomize(model, init_std, seed)
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    if shape.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if variant == "lite":
        width = shape.vision_hidden_size
        generator = torch.Generator().manual_seed(seed + 1)
        state["model.region_encoder.mask_embedding.weight"] = torch.randn(
            width, 1, 1, 1, generator=generator
        ).to(dtype)
        state["model.region_encoder.mask_embedding.bias"] = torch.zeros(width, dtype=dtype)
    _save_weights(state, folder, weights, shards)
    return folder
