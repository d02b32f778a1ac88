"""Decode engines: `transformers` (in-process, the default) or `vllm` (a vLLM server fed prompt embeddings).

`build_engine` chooses; the engines themselves are imported only when chosen, so the default path never
needs vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

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
        from .transformers_engine import TransformersEngine

        return TransformersEngine(model.model, model.generation_config, model._lock)
    if name != "vllm":
        raise InputError(f"Unknown engine '{name}': use {' or '.join(ENGINES)}")
    from .export import export_llm
    from .vllm_engine import VllmEngine

    export = export_llm(model.folder, model.dtype, cache_dir)
    server = None
    if not url:
        from .vllm_server import VllmServer

        if export.head_dim < 32 and not torch.cuda.is_available():
            raise EngineUnavailable(
                f"vLLM's CPU attention needs a head size of at least 32; this LLM's is {export.head_dim}"
            )
        options = {"max_num_seqs": max_concurrency, **(server_options or {})}
        options.setdefault("dtype", str(model.dtype).removeprefix("torch."))
        server = VllmServer(export, **options)
        url = server.url
    try:
        return VllmEngine(
            url,
            export.name,
            model.generation_config,
            dtype=model.dtype,
            max_concurrency=max_concurrency,
            server=server,
        )
    except BaseException:
        if server is not None:
            server.close()
        raise
