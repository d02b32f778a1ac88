"""The decode-engine seam: the library prepares the LLM input (ids, embeddings, object rows), an engine decodes.

Everything up to `inputs_embeds` is PixelRefer's own (vision tower, SAOT/OCI, the splice) and runs in
this process; only the Qwen2 decoder is handed over. `transformers` decodes in-process (the default, one
answer at a time); `vllm` sends the embeddings to a vLLM server, which decodes many answers at once. This
module is the interface only: it imports no engine.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..model.cache import PrefixCache
from ..model.generation import GenerationSettings, StepOutput

__all__ = ["DecodeEngine", "DecodeRequest", "EngineUnavailable"]


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

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to free
        """Free what the engine holds (a server process it started)."""
