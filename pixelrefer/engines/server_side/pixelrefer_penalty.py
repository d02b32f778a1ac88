"""Runs inside the vLLM server (its own venv; imports only vLLM and torch): the official repetition penalty.

The checkpoints' `generation_config.json` sets a repetition penalty that, since generation starts from
embeddings, transformers applies to the tokens generated in this turn only. vLLM's own penalty also
counts the prompt's token ids, which an embeddings prompt does not have, so the server is started with
this processor instead, and requests ask for it with `vllm_xargs={"generated_repetition_penalty": p}`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

KEY = "generated_repetition_penalty"


class GeneratedRepetitionPenalty(AdapterLogitsProcessor):
    """transformers' RepetitionPenaltyLogitsProcessor over the generated ids."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> Callable | None:
        penalty = float((params.extra_args or {}).get(KEY, 1.0))
        if penalty == 1.0:
            return None

        def apply(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if not output_ids:
                return logits
            ids = torch.tensor(sorted(set(output_ids)), dtype=torch.long, device=logits.device)
            scores = logits.index_select(-1, ids)
            scores = torch.where(scores < 0, scores * penalty, scores / penalty)
            return logits.index_copy(-1, ids, scores)

        return apply
