"""The LLM part of a PixelRefer checkpoint as a plain Qwen2 folder, which a serving engine loads.

The tensors are read from the checkpoint's files (the official weights' values, whatever precision or
quantization the app loaded them in) and written once into a cache folder keyed by the checkpoint's files.
The served model's name is a hash of the tensors' content, so two checkpoints with the same LLM (as the
full and Lite tiny test checkpoints built with one seed) share one server, and a server started for
another checkpoint is recognised as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["LlmExport", "default_cache_dir", "export_llm"]

NOT_LLM = ("model.vision_encoder.", "model.mm_projector.", "model.region_encoder.")
QWEN2_FIELDS = (
    "attention_dropout", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
    "intermediate_size", "max_position_embeddings", "max_window_layers", "num_attention_heads",
    "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_scaling", "rope_theta",
    "sliding_window", "tie_word_embeddings", "use_sliding_window", "vocab_size",
)  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja",
)  # fmt: skip
_MARKER = "pixelrefer_export.json"


@dataclass(frozen=True)
class LlmExport:
    """An exported Qwen2 folder and the name it is served under."""

    folder: Path
    name: str
    hidden_size: int
    head_dim: int


def default_cache_dir() -> Path:
    """`$PIXELREFER_CACHE` or ~/.cache/pixelrefer: where exports and the engine's venv live."""
    return Path(os.environ.get("PIXELREFER_CACHE") or Path.home() / ".cache" / "pixelrefer")


def _weight_files(folder: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            names = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / name for name in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError("The checkpoint has no weight files")


def _llm_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if _is_llm(key):
                        yield key, handle.get_tensor(key)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key, tensor in state.items():
                if _is_llm(key):
                    yield key, tensor


def _is_llm(key: str) -> bool:
    return (key.startswith("model.") and not key.startswith(NOT_LLM)) or key == "lm_head.weight"


def _files_key(folder: Path, files: list[Path], dtype: torch.dtype) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in [folder / "config.json", *files]:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(str(dtype).encode())
    return digest.hexdigest()[:16]


def export_llm(checkpoint: str | Path, dtype: torch.dtype, cache_dir: Path | None = None) -> LlmExport:
    """Write (once) the Qwen2 folder of `checkpoint`'s LLM in `dtype`; return where it is and its name."""
    folder = Path(checkpoint)
    config = json.loads((folder / "config.json").read_text())
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    files = _weight_files(folder)
    target = (cache_dir or default_cache_dir()) / "llm" / _files_key(folder, files, dtype)
    if (target / _MARKER).is_file():
        return LlmExport(target, json.loads((target / _MARKER).read_text())["name"], hidden, head_dim)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        state = {key: tensor.to(dtype).contiguous() for key, tensor in _llm_tensors(files)}
        if config.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].view(torch.uint8).numpy().tobytes() if state[key].numel() else b"")
        save_file(state, work / "model.safetensors", metadata={"format": "pt"})
        qwen2 = {key: config[key] for key in QWEN2_FIELDS if key in config}
        qwen2.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", torch_dtype=str(dtype)[6:])
        (work / "config.json").write_text(json.dumps(qwen2, indent=2))
        # Only the stopping ids: sampling settings are sent with every request, as the transformers path uses them.
        generation = (
            json.loads((folder / "generation_config.json").read_text())
            if (folder / "generation_config.json").is_file()
            else {}
        )
        kept = {k: generation[k] for k in ("bos_token_id", "eos_token_id") if k in generation}
        (work / "generation_config.json").write_text(json.dumps(kept, indent=2))
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, work / name)
        digest.update(json.dumps(qwen2, sort_keys=True).encode())
        name = f"pixelrefer-llm-{digest.hexdigest()[:16]}"
        (work / _MARKER).write_text(json.dumps({"name": name, "source": folder.name}))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return LlmExport(target, name, hidden, head_dim)
