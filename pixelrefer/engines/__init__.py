"""Decode engines: `transformers` (in-process, the default) or `vllm` (a vLLM server fed prompt embeddings).

`build_engine` chooses; the engines themselves are imported only when chosen, so the default path never
needs vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..runtime.errors import InputError
from .base import DecodeEngine, DecodeRequest, EngineUnavailable

if TYPE_CHECKING:
    from ..model.inference import PixelRefer

__all__ = ["ENGINES", "DecodeEngine", "DecodeRequest", "EngineUnavailable", "build_engine"]

ENGINES = ("transformers", "vllm")
EngineName = Literal["transformers", "vllm"]


def build_engine(
    name: EngineName,
    model: PixelRefer,
    *,
    url: str = "",
    max_concurrency: int = 16,
    cache_dir: Path | None = None,
    server_options: dict | None = None,
) -> DecodeEngine:
    """The engine `name` for `model`.

    `vllm` exports the model's LLM (once, into the cache), then connects to `url` when given (a server
    started with `python -m pixelrefer engine`), else starts a vLLM server and stops it with the engine.
    Raises `EngineUnavailable` when vLLM cannot be started or reached.
    """
    if name == "transformers":
        from ..model.engine import TransformersEngine

        return TransformersEngine(model.model, model.generation_config, model.lock)

    if name != "vllm":
        raise InputError(f"Unknown engine '{name}': use {' or '.join(ENGINES)}")
    from .vllm_server import serve_checkpoint

    return serve_checkpoint(
        model.folder,
        model.dtype,
        model.placement.devices,
        model.generation_config,
        url=url,
        max_concurrency=max_concurrency,
        cache_dir=cache_dir,
        server_options=server_options,
    )
