"""The in-process engine: transformers' Qwen2 forward with the prefix KV cache, one answer at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from transformers import GenerationConfig

from ..model.generation import StepOutput, build_logits_processors, decode
from .base import DecodeEngine, DecodeRequest

__all__ = ["TransformersEngine"]


class TransformersEngine(DecodeEngine):
    """Decodes with the loaded model itself; `lock` is the model's, so encoding and decoding never overlap."""

    name = "transformers"

    def __init__(
        self, lm: torch.nn.Module, generation_config: GenerationConfig, lock: threading.Lock
    ) -> None:
        self._lm = lm
        self._generation_config = generation_config
        self._lock = lock

    @property
    def max_concurrency(self) -> int:
        return 1

    def decode(self, request: DecodeRequest) -> Iterator[StepOutput]:
        embed_tokens = self._lm.model.embed_tokens
        processors = build_logits_processors(request.settings, self._generation_config)
        with self._lock:
            yield from decode(
                self._lm,
                lambda t: embed_tokens(t.to(embed_tokens.weight.device)),
                request.inputs_embeds,
                settings=request.settings,
                processors=processors,
                eos_ids=request.eos_ids,
                prefix=request.prefix,
                stop=request.stop,
                deadline=request.deadline,
                keep_first_logits=request.keep_first_logits,
            )
