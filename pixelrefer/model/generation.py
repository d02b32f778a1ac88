"""Decoding: the official generation settings, a KV cache that outlives a turn, streaming text, stopping.

The official `mm_infer` passes `do_sample`, `temperature` (0.2 when sampling), `top_p` (0.9) and
`max_new_tokens`; everything else (`top_k`, `repetition_penalty`, the eos list) comes from the
checkpoint's `generation_config.json`. A repetition penalty applies under greedy decoding too, and only
to the tokens generated in this turn (generation starts from embeddings, so HF's id buffer starts empty).
Sampling draws from a `torch.Generator` seeded per request, so a seed always gives the same answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerBase
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..runtime.errors import InputError, Stopped
from .cache import PrefixCache

__all__ = [
    "GenerationSettings",
    "GenerationTimeout",
    "StepOutput",
    "TextStream",
    "build_logits_processors",
    "decode",
    "eos_token_ids",
]


OFFICIAL_DEFAULT_TOP_K = 50
"""GenerationConfig's top_k default in transformers 4.46.3, the version the official code pins (5.x has None)."""


class GenerationTimeout(Stopped):
    """Decoding ran past its time budget; the tokens so far are kept."""


@dataclass(frozen=True)
class GenerationSettings:
    """What a caller may choose per request; `None` leaves the official default.

    `max_new_tokens` defaults to the official `mm_infer`'s 2048; the app and the CLI set their own limit.
    """

    max_new_tokens: int = 2048
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature == 0:
            # Sampling at temperature 0 is greedy decoding; say so instead of dividing by zero.
            object.__setattr__(self, "do_sample", False)
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise InputError("temperature must not be negative")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")


def build_logits_processors(settings: GenerationSettings, config: GenerationConfig) -> LogitsProcessorList:
    """The processors HF would run for the official call: penalty always, warpers only when sampling."""
    processors = LogitsProcessorList()
    penalty = config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=float(penalty)))
    if settings.do_sample:
        temperature = 0.2 if settings.temperature is None else settings.temperature
        top_p = 0.9 if settings.top_p is None else settings.top_p
        if temperature > 0 and temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        # A file without top_k meant transformers 4.46's default of 50 for the official code.
        top_k = OFFICIAL_DEFAULT_TOP_K if config.top_k is None else int(config.top_k)
        if top_k != 0:
            processors.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=top_p))
    return processors


def eos_token_ids(config: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The checkpoint's eos ids plus the tokenizer's (`<|im_end|>`), the official stopping criterion."""
    ids = config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    return found


@dataclass
class StepOutput:
    """One decoded token; `logits` (the scores before any processing) only for the first step when asked for."""

    token_id: int
    logits: torch.Tensor | None = None


def decode(
    lm: torch.nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    inputs_embeds: torch.Tensor,
    *,
    settings: GenerationSettings,
    processors: LogitsProcessorList,
    eos_ids: set[int],
    prefix: PrefixCache | None = None,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    keep_first_logits: bool = False,
) -> Iterator[StepOutput]:
    """Yield generated tokens one at a time from `inputs_embeds` (1, L, D).

    `embed(ids)` embeds new tokens. Setting `stop` ends decoding before the next forward pass; once
    `deadline` (time.monotonic) has passed, `GenerationTimeout` is raised. When `prefix` is given its
    cache is reused and updated, so the next turn re-encodes only what changed; a failure mid-step
    clears it instead, since the cache may then be half-updated.
    """
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    cache, start = prefix.take(inputs_embeds) if prefix is not None else (DynamicCache(), 0)
    fed = [inputs_embeds[0]]
    generated: list[int] = []

    def keep() -> None:
        if prefix is not None:
            prefix.store(cache, torch.cat(fed)[: cache.get_seq_length()])

    try:
        with torch.inference_mode():
            out = lm(inputs_embeds=inputs_embeds[:, start:], cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :].float()
            for step in range(settings.max_new_tokens):
                history = torch.tensor([generated], dtype=torch.long, device=logits.device)
                scores = processors(history, logits.clone())
                if settings.do_sample:
                    probs = torch.softmax(scores.float().cpu(), dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator)[0, 0])
                else:
                    token = int(torch.argmax(scores, dim=-1)[0])
                generated.append(token)
                first = keep_first_logits and step == 0
                yield StepOutput(token, logits[0].detach().cpu() if first else None)
                if token in eos_ids or step + 1 == settings.max_new_tokens:
                    break
                if stop is not None and stop.is_set():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise GenerationTimeout("The answer took longer than its time budget")
                token_embed = embed(torch.tensor([[token]], dtype=torch.long))
                fed.append(token_embed[0].to(inputs_embeds.device))
                out = lm(inputs_embeds=token_embed, cache=cache, use_cache=True)
                logits = out.logits[:, -1, :].float()
    except (GeneratorExit, GenerationTimeout):
        keep()
        raise
    except BaseException:
        if prefix is not None:
            prefix.clear()
        raise
    keep()


_CONTROL = {code: None for code in [*range(0, 9), 11, 12, *range(14, 32), 127]}


class TextStream:
    """Turns token ids into text increments, never showing added tokens (`<REGION>`, `<image>`, ...).

    The whole text is re-decoded at each step and only complete characters are released, so
    multi-byte characters split across tokens come out whole.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._hidden = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
        self._ids: list[int] = []
        self._sent = 0

    def text_of(self, ids: list[int]) -> str:
        """Display text of `ids`: added and special tokens removed, and no control characters."""
        kept = [i for i in ids if i not in self._hidden]
        text = self._tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.translate(_CONTROL)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self.text_of(self._ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self._sent :]
        self._sent = len(text)
        return piece

    def flush(self) -> str:
        text = self.text_of(self._ids)
        piece = text[self._sent :]
        self._sent = len(text)
        return piece
