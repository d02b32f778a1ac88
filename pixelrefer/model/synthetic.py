"""Random-weight checkpoints in the official PixelRefer layout, at any size.

No weights can be downloaded where tests run, and the offline preview must still work end to end, so the
package builds its own checkpoints, loadable by the official code too: a byte-level BPE tokenizer with the
Qwen2.5 added tokens and the four PixelRefer tokens (`tokenizer.json`, and `vocab.json` + `merges.txt` for
the slow Qwen2 tokenizer the official loader uses), `config.json` with the fields PixelRefer training
writes (the tower's config nested as `vision_encoder_config`), a VL3-SigLIP-NaViT folder (config,
preprocessor config and the tower's own `model.safetensors`, from which the official code builds it)
named relative to the checkpoint, `generation_config.json` and the weights (safetensors or `.bin`, single
or sharded). The same shapes as the released 2B and 7B models are available as presets for memory
estimates and GPU benchmarks.
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
from .modeling import PixelReferForCausalLM

__all__ = [
    "BENCH",
    "RELEASE_2B",
    "RELEASE_7B",
    "RELEASES",
    "TINY",
    "ModelShape",
    "build_checkpoint",
    "build_tokenizer",
    "config_for",
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
VISION_PREFIX = "model.vision_encoder.vision_encoder."
RELEASE_VOCAB = 151669
"""151,643 Qwen2.5 BPE tokens + 22 Qwen2.5 added tokens + PixelRefer's 4: the training script's
`resize_token_embeddings(len(tokenizer))` leaves every release with this many embedding rows."""


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the LLM and the vision tower; `vocab_size=None` means the tokenizer's length.

    `head_dim=None` is hidden_size / num_attention_heads (Qwen2.5; vLLM's CPU attention needs >= 32).
    `max_window_layers=None` is num_hidden_layers. `init_std` is the default spread of random matrices.
    """

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
    head_dim: int | None = None
    max_window_layers: int | None = None
    init_std: float = 0.2


TINY = ModelShape(64, 128, 2, 4, 2, 32, 64, 2, 2)
"""The fixtures' sizes: builds in well under a second."""

BENCH = ModelShape(1024, 3584, 16, 16, 4, 768, 3072, 12, 12, tokenizer_merges=4000, init_std=0.05)
"""About 300M parameters: large enough for CPU timings to mean something. A 4,282-token vocabulary and
matrices N(0, 0.05), so greedy decoding emits varied tokens (at 0.02 it repeats one token)."""

RELEASE_2B = ModelShape(
    1536, 8960, 28, 12, 2, 1152, 4304, 27, 16, True, RELEASE_VOCAB, max_window_layers=21, init_std=0.02
)
"""The shapes of PixelRefer-2B / Lite-2B: Qwen2.5-1.5B and SigLIP-so400m (VL3-SigLIP-NaViT)."""

RELEASE_7B = ModelShape(
    3584, 18944, 28, 28, 4, 1152, 4304, 27, 16, False, RELEASE_VOCAB, max_window_layers=28, init_std=0.02
)
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


_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ng", "st"]
_UNICODE = ["café", "naïve", "Größe", "señor", "日本", "東京", "😀", "—", "…", "Ωmega"]


def _corpus(lines: int, seed: int, words: int) -> list[str]:
    """English-like lines over `_WORDS` plus `words` made-up words (Zipf-distributed), so BPE finds merges
    until the vocabulary asked for, with numbers, placeholders-lookalikes and some non-ASCII text."""
    rng = random.Random(seed)
    made: set[str] = set()
    while len(made) < words:
        made.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    lexicon = _WORDS + sorted(made)
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(lexicon))]
    out = []
    for _ in range(lines):
        line = rng.choices(lexicon, weights, k=rng.randint(4, 14))
        if rng.random() < 0.3:
            line.insert(rng.randint(0, len(line)), f"<region{rng.randint(0, 3)}>")
        if rng.random() < 0.2:
            line.append(f"{rng.randint(0, 99)}.")
        if rng.random() < 0.05:
            line.append(rng.choice(_UNICODE))
        out.append(" ".join(line).capitalize() + rng.choice([".", "?", "!", ","]))
    return out


def build_tokenizer(merges: int = 1000, seed: int = 0) -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE tokenizer of 256 + `merges` tokens, then Qwen2.5's added tokens, then
    PixelRefer's four (in that order, as the releases number them)."""
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
    tokenizer.train_from_iterator(_corpus(max(4000, 3 * merges), seed, merges), trainer)
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
    """The `config.json` a PixelRefer training run writes, at `shape` (the tower's config nested in it)."""
    ids = token_ids or {}
    name = "PixelreferQwen2" if variant == "full" else "PixelreferliteQwen2"
    config = {
        "architectures": [f"{name}ForCausalLM"],
        "auto_map": {
            "AutoConfig": f"configuration_{variant}.{name}Config",
            "AutoModelForCausalLM": f"modeling_{variant}.{name}ForCausalLM",
        },
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
        "max_window_layers": shape.max_window_layers or shape.num_hidden_layers,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "vocab_size": vocab_size,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3",
        "use_cache": True,
        "image_aspect_ratio": "qwen2vl",
        "image_size": 28,
        "image_token_index": ids.get("<image>"),
        "region_token_index": ids.get("<REGION>"),
        "image_token_length": 1,
        "is_alignment": False,
        "llm_lr": 1e-05,
        "mask_num": 32,
        "max_frames": 180,
        "mm_hidden_size": shape.vision_hidden_size,
        "mm_max_length": 8192,
        "mm_projector_lr": 1e-05,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_encoder": VISION_FOLDER,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "region_encoder_lr": 1e-05,
        "spatial_merge_size": 2,
        "tokenizer_model_max_length": 16384,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
        "use_token_compression": True,
        "vision_encoder": None,
        "vision_encoder_config": {**_vision_config(shape), "torch_dtype": "bfloat16"},
        "vision_encoder_lr": 0,
    }
    if shape.head_dim is not None:
        config["head_dim"] = shape.head_dim
    return config


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


def _tokenizer_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    """`tokenizer_config.json` as the releases' transformers (4.46) writes it for a Qwen2 tokenizer.

    The slow tokenizer only knows the added tokens from `added_tokens_decoder`, and the official
    processor reads `padding_side`.
    """
    added = {
        str(index): {
            "content": token.content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token.special,
        }
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": QWEN_SPECIALS[1:],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 16384,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
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
    raw = model_config(variant, shape, vocab_size or shape.vocab_size or RELEASE_VOCAB, token_ids=token_ids)
    config_class = PixelReferConfig if variant == "full" else PixelReferLiteConfig
    config = config_class(**{k: v for k, v in raw.items() if k not in ("architectures", "auto_map")})
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
    init_std: float | None = None,
) -> Path:
    """Write a random-weight PixelRefer checkpoint (official layout) into `folder` and return it.

    Weights follow the fixtures' recipe: matrices N(0, init_std) (default `shape.init_std`), biases
    N(0, 0.1), norm scales 1 + N(0, 0.1), so that a random model still produces varied (meaningless) text.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.tokenizer_merges, seed)
    tokenizer.save_pretrained(folder)
    # The official loader reads the slow Qwen2 tokenizer's files; the added tokens live in the config.
    tokenizer.backend_tokenizer.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer), indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": QWEN_SPECIALS[1:],
            },
            indent=2,
        )
    )
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_end|>", "<image>", "<REGION>"]
    }
    vocab_size = shape.vocab_size or len(tokenizer)
    config = model_config(variant, shape, vocab_size, token_ids=ids)
    config["torch_dtype"] = config["vision_encoder_config"]["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    vision = folder / VISION_FOLDER
    vision.mkdir(exist_ok=True)
    vision_config = {**_vision_config(shape), "torch_dtype": config["torch_dtype"]}
    if nested_vision_config:
        vision_config = {"model_type": "videollama3_vision_encoder", "vision_config": vision_config}
    (vision / "config.json").write_text(json.dumps(vision_config, indent=2))
    (vision / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR, indent=2))
    generation = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    generation.update(generation_config or {})
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))

    torch.manual_seed(seed)
    model = PixelReferForCausalLM(config_for(variant, shape, vocab_size, token_ids=ids))
    _randomize(model, shape.init_std if init_std is None else init_std, seed)
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    tower = {k.removeprefix(VISION_PREFIX): v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    save_file(
        {k: v.contiguous() for k, v in tower.items()}, vision / "model.safetensors", metadata={"format": "pt"}
    )
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
