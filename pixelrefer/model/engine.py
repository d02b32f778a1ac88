"""The decode-engine seam: the library prepares the LLM input (ids, embeddings, object rows), an engine decodes.

Everything up to `inputs_embeds` is PixelRefer's own (vision tower, SAOT/OCI, the splice) and runs in
this process; only the Qwen2 decoder is handed over. The interface lives here, beside the model, with the
in-process engine the model decodes with by default (`TransformersEngine`, one answer at a time); other
engines (`pixelrefer.engines`, e.g. a vLLM server fed the embeddings) sit a layer above and implement it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from .cache import PrefixCache
from .generation import GenerationSettings, StepOutput, build_logits_processors, decode

__all__ = ["DecodeEngine", "DecodeRequest", "EngineUnavailable", "TransformersEngine"]


class EngineUnavailable(RuntimeError):
    """The engine cannot be started or reached; the message says what to do."""


@dataclass
class DecodeRequest:
    """One answer to decode from `inputs_embeds` (1, L, D).

    `prefix` is the conversation's KV cache for engines that keep it in this process (the transformers
    engine); a serving engine keys its own cache by the rows it is sent, and uses `prefix` only to tell
    conversations apart (its cache is salted per conversation). `stop` ends decoding within a step;
    past `deadline` (time.monotonic) `GenerationTimeout` is raised, the tokens so far yielded.
    """

    inputs_embeds: torch.Tensor
    settings: GenerationSettings
    eos_ids: set[int]
    prefix: PrefixCache | None = None
    stop: threading.Event | None = None
    deadline: float | None = None
    keep_first_logits: bool = False


class DecodeEngine(ABC):
    """Decodes token ids from prompt embeddings with the official generation settings."""

    name: str = ""

    @property
    @abstractmethod
    def max_concurrency(self) -> int:
        """How many answers it decodes at the same time (1: callers queue)."""

    @abstractmethod
    def decode(self, request: DecodeRequest) -> Iterator[StepOutput]:
        """Yield the generated tokens one at a time; an eos id, when decoding ends on one, is last."""

    def warm_prefix(self, inputs_embeds: torch.Tensor, prefix: PrefixCache) -> int | None:
        """Precompute the KV rows of a prompt's start ahead of its answer (the warm-up asks every engine);
        returns the rows computed, or None for an engine that keeps no prefix of its own (the default)."""
        return None

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to free
        """Free what the engine holds (a server process it started)."""


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

    def warm_prefix(self, inputs_embeds: torch.Tensor, prefix: PrefixCache) -> int:
        """Fill `prefix` in this process: the first decoding step's forward, without the logits."""
        return prefix.fill(self._lm, inputs_embeds)
