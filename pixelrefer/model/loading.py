"""Turning a checkpoint source into a ready model: files, config, strict weights, dtype, quantization, placement.

The official layout is a folder (or hub repo) with `config.json`, weights as safetensors or
`pytorch_model*.bin` (single or sharded with an index), tokenizer files and `generation_config.json`;
`mm_vision_encoder` names the VL3-SigLIP-NaViT repo (a hub id in the releases, a path relative to the
checkpoint in tests) of which only the two config files are read; when that hub repo cannot be had, the
checkpoint's own `vision_encoder_config` and the processor's defaults serve. Weights are loaded by transformers
(safetensors, or `.bin` through `torch.load(weights_only=True)`); every tensor must be used, except the
known-unused `mask_embedding` of Lite.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from ..runtime.devices import GIB, GpuInfo, Placement, PlacementError, plan_loading, visible_gpus
from ..runtime.errors import InputError
from ..runtime.hub import WeightsUnavailable, is_hub_id, resolve_source
from .config import PixelReferConfig
from .modeling import PixelReferForCausalLM
from .vision import PixelReferImageProcessor, build_processor, load_vision_config, vision_config_from_dict

__all__ = [
    "Loaded",
    "Quantization",
    "check_cpu_memory",
    "encoder_only_config",
    "estimate_weight_bytes",
    "load_checkpoint",
    "plan_checkpoint",
    "read_config",
    "route_int8_warnings",
]

Quantization = Literal["8bit", "4bit"] | None

_log = logging.getLogger(__name__)

KNOWN_UNUSED = ("model.region_encoder.mask_embedding.weight", "model.region_encoder.mask_embedding.bias")
# Full module-path prefixes: transformers matches skip patterns from the start of the name or as a suffix,
# so a bare "vision_encoder" would not keep "model.vision_encoder.*" unquantized.
UNQUANTIZED_MODULES = ["model.vision_encoder", "model.mm_projector", "model.region_encoder", "lm_head"]
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_CHECKPOINT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.bin",
    "merges.txt",
    "vocab.json",
    "*.txt",
    "*.model",
    "*.jinja",
]


@dataclass
class Loaded:
    """Everything `from_pretrained` produces; `PixelRefer` wraps it."""

    model: PixelReferForCausalLM
    tokenizer: PreTrainedTokenizerBase
    processor: PixelReferImageProcessor
    generation_config: GenerationConfig
    config: PixelReferConfig
    placement: Placement
    dtype: torch.dtype
    quantization: Quantization
    source: str
    folder: Path
    encoder_only: bool = False
    """No decoder layers (`encoder_only_config`): prompts are embedded here and decoded by a vLLM server."""


def read_config(folder: Path, *, token: str | None = None) -> PixelReferConfig:
    """The PixelRefer config with the vision tower's config attached."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsUnavailable(str(folder.name), "the folder has no config.json")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in ("pixelrefer_qwen2", "pixelreferlite_qwen2"):
        raise InputError(
            f"'{folder.name}' is not a PixelRefer checkpoint (model_type {model_type!r}; expected "
            "pixelrefer_qwen2 or pixelreferlite_qwen2)"
        )
    config = AutoConfig.from_pretrained(folder)
    if not config.mm_vision_encoder:
        raise InputError("The config names no mm_vision_encoder")
    try:
        vision_folder = resolve_source(
            config.mm_vision_encoder,
            base_dir=folder,
            allow_patterns=["config.json", "preprocessor_config.json"],
            token=token,
        )
    except WeightsUnavailable as exc:
        # A hub repo out of reach: the checkpoint holds the same tower config. A local folder that is
        # missing is a broken checkpoint, and stays an error.
        nested = config.vision_encoder_config
        if not (is_hub_id(config.mm_vision_encoder) and isinstance(nested, dict)):
            raise
        _log.warning("%s; using the checkpoint's vision_encoder_config instead", exc)
        vision_config, preprocessor = vision_config_from_dict(nested), {}
    else:
        vision_config, preprocessor = load_vision_config(vision_folder)
    config.vision_config = vision_config
    config.preprocessor = preprocessor
    return config


def estimate_weight_bytes(config: PixelReferConfig, dtype: torch.dtype, quantization: Quantization) -> int:
    """Bytes of weights once loaded, counted on a meta-device model (LLM linears shrink when quantized)."""
    with torch.device("meta"):
        model = PixelReferForCausalLM(config)
    element = torch.finfo(dtype).bits // 8
    per_quantized = {None: element, "8bit": 1.0, "4bit": 0.5 + 0.07}[quantization]
    total = 0.0
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        quantized = (
            quantization is not None
            and param.dim() == 2
            and name.startswith("model.layers.")
            and not any(part in name for part in UNQUANTIZED_MODULES)
        )
        total += param.numel() * (per_quantized if quantized else element)
    return int(total)


CPU_HEADROOM = 0.15
"""Memory kept free beyond the weights for a CPU load (activations, tokenizer, the app itself)."""


def check_cpu_memory(need_bytes: int, dtype: torch.dtype, available_bytes: int | None = None) -> None:
    """Refuse a CPU load whose weights do not fit in the memory available now (`psutil`), before a byte is
    read: otherwise the out-of-memory killer ends the process mid-load (7B in float32 needs about 30 GB)."""
    available = int(psutil.virtual_memory().available) if available_bytes is None else int(available_bytes)
    if need_bytes * (1 + CPU_HEADROOM) <= available:
        return
    name = str(dtype).removeprefix("torch.")
    raise PlacementError(
        f"The model needs about {need_bytes / GIB:.1f} GiB of memory in {name} (plus {CPU_HEADROOM:.0%} to run); "
        f"this machine has {available / GIB:.1f} GiB available. Use a smaller model, --dtype bfloat16 "
        "(half of float32), or a GPU"
    )


DECODER_KEYS = (r"^model\.layers\.",)
"""The checkpoint tensors an encoder-only load (a vLLM engine decodes) leaves on disk."""


def encoder_only_config(config: PixelReferConfig) -> PixelReferConfig:
    """`config` without the decoder layers and the LM head: what the app holds when a vLLM server decodes.

    The app still embeds the prompt (token embeddings, vision tower, projector, object tokenizer); the
    decoder's weights would only sit on the GPU a second time beside the server's copy. The LM head is
    dropped once loaded (`load_checkpoint`): an untied one (7B, 1 GiB in bfloat16) is read, then freed.
    """
    encoder = copy.deepcopy(config)
    encoder.num_hidden_layers = 0
    if getattr(encoder, "layer_types", None) is not None:
        encoder.layer_types = []
    return encoder


class _Once(logging.Filter):
    """Lets a message through the first time, then only counts it (`repeats`)."""

    def __init__(self, note: str) -> None:
        super().__init__()
        self.note = note
        self.shown = False
        self.repeats = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.shown:
            self.repeats += 1
            return False
        self.shown = True
        record.msg = f"{record.getMessage()} ({self.note}; shown once)"
        record.args = ()
        return True


INT8_LOGGER = "bitsandbytes.autograd._functions"


def route_int8_warnings() -> _Once:
    """bitsandbytes logs "inputs will be cast ... to float16" on every 8-bit matrix product (about 196 lines
    per generated token for Qwen2.5-1.5B): keep the first, as one line that says why, and count the rest.

    LLM.int8() always quantizes its inputs from float16 (bitsandbytes 0.50 has no float32 path), so in
    8-bit mode the model runs in its dtype except for those inputs, which overflow past 65504.
    """
    logger = logging.getLogger(INT8_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, _Once):
            return existing
    once = _Once(
        "each 8-bit product's input is converted to float16 by bitsandbytes; the rest runs in the model's dtype"
    )
    logger.addFilter(once)
    return once


def _check_files(folder: Path, source: str) -> None:
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise WeightsUnavailable(source, "no weights found (model.safetensors or pytorch_model*.bin)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise WeightsUnavailable(source, "no tokenizer files found")


def _quantization_config(quantization: Quantization, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED_MODULES)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
        )
    raise InputError(f"Unknown quantization '{quantization}': use none, 8bit or 4bit")


@contextmanager
def _quiet() -> Iterator[None]:
    """transformers' load-time chatter (progress bars, tensor-parallel notes) is not for our users."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _strict(info: dict, config: PixelReferConfig, *, encoder_only: bool = False) -> None:
    if encoder_only:
        info = {
            **info,
            "unexpected_keys": [
                k for k in info.get("unexpected_keys", []) if not any(re.match(p, k) for p in DECODER_KEYS)
            ],
        }
    missing = [
        k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and config.tie_word_embeddings)
    ]
    unexpected = [k for k in info.get("unexpected_keys", []) if k not in KNOWN_UNUSED]
    mismatched = [
        f"{item[0]} (checkpoint {list(item[1])}, model {list(item[2])})"
        if isinstance(item, tuple) and len(item) == 3
        else str(item[0] if isinstance(item, tuple) else item)
        for item in info.get("mismatched_keys", [])
    ]
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(sorted(missing)[:10]))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(sorted(unexpected)[:10]))
    if mismatched:
        problems.append("tensors of the wrong shape: " + ", ".join(sorted(mismatched)[:10]))
    if problems:
        raise InputError("The checkpoint does not match the model: " + "; ".join(problems))


@dataclass(frozen=True)
class CheckpointPlan:
    """A checkpoint resolved and planned, nothing loaded: enough to export and serve its LLM."""

    folder: Path
    config: PixelReferConfig
    placement: Placement
    dtype: torch.dtype
    quantization: Quantization


def plan_checkpoint(
    source: str,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    quantization: Quantization = None,
    token: str | None = None,
    encoder_only: bool = False,
    gpus: list[GpuInfo] | None = None,
) -> CheckpointPlan:
    """Resolve `source` and decide placement and dtype from its config alone (no weight is read)."""
    if quantization in ("none", ""):
        quantization = None
    if quantization not in (None, "8bit", "4bit"):
        raise InputError(f"Unknown quantization '{quantization}': use none, 8bit or 4bit")
    folder = resolve_source(source, allow_patterns=_CHECKPOINT_PATTERNS, token=token)
    _check_files(folder, str(source))
    config = read_config(folder, token=token)
    if encoder_only:
        config = encoder_only_config(config)
        quantization = None  # only the decoder's linears are ever quantized
    placement, torch_dtype = plan_loading(
        device,
        dtype,
        visible_gpus() if gpus is None else gpus,
        lambda chosen: estimate_weight_bytes(config, chosen, quantization),
        quantized=quantization is not None,
    )
    return CheckpointPlan(folder, config, placement, torch_dtype, quantization)


def load_checkpoint(
    source: str,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    quantization: Quantization = None,
    attn_implementation: str = "sdpa",
    token: str | None = None,
    encoder_only: bool = False,
) -> Loaded:
    """Resolve, check and load a PixelRefer checkpoint; any failure is raised before weights are read.

    `encoder_only`: no decoder layers or LM head (`encoder_only_config`), for an app whose answers a vLLM
    server decodes; the model then embeds prompts but cannot decode them itself.
    """
    plan = plan_checkpoint(
        source, device=device, dtype=dtype, quantization=quantization, token=token, encoder_only=encoder_only
    )
    folder, config, placement = plan.folder, plan.config, plan.placement
    torch_dtype, quantization = plan.dtype, plan.quantization
    if quantization == "8bit":
        route_int8_warnings()
    if placement.devices == ("cpu",):
        check_cpu_memory(estimate_weight_bytes(config, torch_dtype, quantization), torch_dtype)
    config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    with _quiet():
        try:
            model, info = PixelReferForCausalLM.from_pretrained(
                folder,
                config=config,
                dtype=torch_dtype,
                device_map=placement.device_map,
                max_memory=placement.max_memory,
                quantization_config=_quantization_config(quantization, torch_dtype),
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                weights_only=True,
            )
        except pickle.UnpicklingError as exc:
            # torch's own message suggests weights_only=False, which is exactly what must not be done.
            raise InputError(
                f"Cannot load '{source}': a pytorch_model*.bin file holds objects other than tensors, so it "
                "was refused (weights are only read as plain tensors); use a safetensors checkpoint"
            ) from exc
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            raise InputError(
                f"Cannot load '{source}': its weight files are not a mapping of tensor names to tensors "
                f"({type(exc).__name__})"
            ) from exc
        _strict(info, config, encoder_only=encoder_only)
        if encoder_only:
            model.lm_head = None  # the server computes the logits
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation_config = GenerationConfig.from_model_config(config)
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        processor=build_processor(config.preprocessor),
        generation_config=generation_config,
        config=config,
        placement=placement,
        dtype=torch_dtype,
        quantization=quantization,
        source=str(source),
        folder=folder,
        encoder_only=encoder_only,
    )
