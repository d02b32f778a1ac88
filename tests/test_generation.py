"""Decoding the official way (spec §3.6): the checkpoint's generation_config.json under mm_infer's overrides.

The fixtures' generation_config.json holds only bos/eos, so a synthetic checkpoint carries a Qwen2.5-style
file (repetition penalty, top-k, sampling defaults, an eos list). Decoding rules are checked on a stub
language model whose logits the test chooses, so every expected token is worked out by hand.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pixelrefer import GenerationSettings, GenerationTimeout, ObjectRef, PixelRefer, PrefixCache, Turn
from pixelrefer.model.generation import TextStream, build_logits_processors, decode, eos_token_ids
from pixelrefer.model.synthetic import build_checkpoint

QWEN_STYLE = {"repetition_penalty": 1.1, "top_k": 20, "temperature": 0.7, "top_p": 0.8, "do_sample": True}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic checkpoint whose generation_config.json looks like Qwen2.5-Instruct's."""
    path = build_checkpoint(tmp_path_factory.mktemp("qwen-style"), generation_config=QWEN_STYLE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": eos}))
    return path


@pytest.fixture(scope="module")
def model(folder: Path) -> PixelRefer:
    return PixelRefer.from_pretrained(str(folder), device="cpu")


def ids_of(model: PixelRefer, *tokens: str) -> list[int]:
    return model.tokenizer.convert_tokens_to_ids(list(tokens))


def small_call() -> dict:
    image = np.zeros((60, 80, 3), np.uint8)
    image[..., 1] = np.arange(60, dtype=np.uint8)[:, None] * 4
    image[10:40, 20:50] = (200, 40, 90)
    mask = np.zeros((60, 80), bool)
    mask[15:35, 25:45] = True
    return {"image": image, "regions": [mask]}


# ---------------------------------------------------------------------------------------------- settings


def test_the_checkpoint_generation_config_is_read(model: PixelRefer) -> None:
    config = model.generation_config
    assert config.repetition_penalty == 1.1
    assert config.top_k == 20
    assert model.eos_ids == set(ids_of(model, "<|im_end|>", "<|endoftext|>"))


def test_greedy_runs_only_the_repetition_penalty(model: PixelRefer) -> None:
    processors = build_logits_processors(GenerationSettings(), model.generation_config)
    assert [type(p) for p in processors] == [RepetitionPenaltyLogitsProcessor]
    assert processors[0].penalty == pytest.approx(1.1)


def test_sampling_takes_mm_infer_temperature_and_top_p_and_the_files_top_k(model: PixelRefer) -> None:
    processors = build_logits_processors(GenerationSettings(do_sample=True), model.generation_config)
    assert [type(p) for p in processors] == [
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    ]
    # mm_infer passes temperature 0.2 and top_p 0.9, overriding the file's 0.7 and 0.8; top_k is the file's.
    assert processors[1].temperature == pytest.approx(0.2)
    assert processors[2].top_k == 20
    assert processors[3].top_p == pytest.approx(0.9)


def test_a_callers_temperature_and_top_p_win(model: PixelRefer) -> None:
    settings = GenerationSettings(do_sample=True, temperature=0.5, top_p=0.95)
    processors = build_logits_processors(settings, model.generation_config)
    assert processors[1].temperature == pytest.approx(0.5)
    assert processors[3].top_p == pytest.approx(0.95)


def test_a_bos_eos_only_file_adds_no_penalty_and_the_official_top_k_default() -> None:
    config = GenerationConfig(bos_token_id=1400, eos_token_id=1402)
    assert len(build_logits_processors(GenerationSettings(), config)) == 0
    sampling = build_logits_processors(GenerationSettings(do_sample=True), config)
    assert [type(p) for p in sampling] == [TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper]
    # The official code ran transformers 4.46.3, whose GenerationConfig defaults top_k to 50.
    assert sampling[1].top_k == 50


def test_eos_ids_are_the_files_list_plus_the_tokenizers_eos(model: PixelRefer) -> None:
    im_end, endoftext = ids_of(model, "<|im_end|>", "<|endoftext|>")
    assert eos_token_ids(model.generation_config, model.tokenizer) == {im_end, endoftext}
    assert eos_token_ids(GenerationConfig(eos_token_id=endoftext), model.tokenizer) == {im_end, endoftext}
    assert eos_token_ids(GenerationConfig(), model.tokenizer) == {im_end}


@pytest.mark.parametrize(
    "bad", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}]
)
def test_invalid_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


# ---------------------------------------------------------------------------------------------- stub LM


class ScriptedLM(torch.nn.Module):
    """A language model whose next-token logits are row `min(call, last)` of `script`."""

    def __init__(self, script: torch.Tensor) -> None:
        super().__init__()
        self.script = script
        self.calls = 0

    def forward(
        self, inputs_embeds: torch.Tensor, cache=None, use_cache: bool = True, logits_to_keep: int = 0
    ):
        row = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return SimpleNamespace(logits=row.expand(1, inputs_embeds.shape[1], -1).clone())


def stub_decode(script: torch.Tensor, settings: GenerationSettings, processors, eos=frozenset(), **kwargs):
    lm = ScriptedLM(script)
    steps = decode(
        lm,
        lambda ids: torch.zeros(1, ids.shape[1], 4),
        torch.zeros(1, 3, 4),
        settings=settings,
        processors=processors,
        eos_ids=set(eos),
        **kwargs,
    )
    return steps, lm


def one_hot_script(tokens: list[int], vocab: int = 10) -> torch.Tensor:
    script = torch.zeros(len(tokens), vocab)
    script[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return script


def test_the_penalty_applies_to_generated_tokens_under_greedy(model: PixelRefer) -> None:
    # Token 5 scores 2.0 and token 7 1.9 at every step. HF's penalty divides a positive logit by 1.1 once
    # a token was generated: step 0 (nothing generated yet) -> 5; step 1: 5 -> 1.818 < 1.9 -> 7;
    # from then on both are penalised (1.818 vs 1.727) -> 5, 5, 5.
    logits = torch.zeros(1, 10)
    logits[0, 5], logits[0, 7] = 2.0, 1.9
    settings = GenerationSettings(max_new_tokens=5)
    penalised = build_logits_processors(settings, model.generation_config)
    steps, _ = stub_decode(logits, settings, penalised)
    assert [s.token_id for s in steps] == [5, 7, 5, 5, 5]
    steps, _ = stub_decode(logits, settings, build_logits_processors(settings, GenerationConfig()))
    assert [s.token_id for s in steps] == [5, 5, 5, 5, 5]


def test_first_logits_are_the_raw_scores_before_the_penalty() -> None:
    logits = torch.linspace(-1, 1, 10)[None]
    settings = GenerationSettings(max_new_tokens=2)
    config = GenerationConfig(repetition_penalty=2.0)
    steps = list(
        stub_decode(logits, settings, build_logits_processors(settings, config), keep_first_logits=True)[0]
    )
    assert torch.equal(steps[0].logits, logits[0])
    assert steps[1].logits is None


@pytest.mark.parametrize("eos_token", ["<|im_end|>", "<|endoftext|>"])
def test_decoding_stops_at_either_eos(model: PixelRefer, eos_token: str) -> None:
    eos = ids_of(model, eos_token)[0]
    script = one_hot_script([3, 4, eos, 6, 7], vocab=model.config.vocab_size)
    steps, lm = stub_decode(
        script, GenerationSettings(max_new_tokens=10), LogitsProcessorList(), model.eos_ids
    )
    assert [s.token_id for s in steps] == [3, 4, eos]
    assert lm.calls == 3  # no forward pass after the eos


def test_decoding_stops_at_max_new_tokens() -> None:
    steps, lm = stub_decode(
        one_hot_script([1, 2, 3, 4, 5, 6]), GenerationSettings(max_new_tokens=4), LogitsProcessorList()
    )
    assert [s.token_id for s in steps] == [1, 2, 3, 4]
    assert lm.calls == 4


def test_the_stop_event_ends_decoding_after_the_current_token() -> None:
    stop = threading.Event()
    steps, lm = stub_decode(
        one_hot_script([1, 2, 3, 4]), GenerationSettings(max_new_tokens=4), LogitsProcessorList(), stop=stop
    )
    received = []
    for step in steps:
        received.append(step.token_id)
        stop.set()
    assert received == [1]
    assert lm.calls == 1


def test_a_passed_deadline_raises_generation_timeout_after_one_step() -> None:
    steps, lm = stub_decode(
        one_hot_script([1, 2, 3]),
        GenerationSettings(max_new_tokens=3),
        LogitsProcessorList(),
        deadline=time.monotonic() - 1,
    )
    received = []
    with pytest.raises(GenerationTimeout):
        for step in steps:
            received.append(step.token_id)
    assert received == [1]
    assert lm.calls == 1


def test_sampling_is_reproducible_per_seed_and_varies_across_seeds() -> None:
    logits = torch.zeros(1, 1000)  # uniform: every draw is the generator's
    config = GenerationConfig(top_k=0)

    def run(seed: int) -> list[int]:
        settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, seed=seed)
        return [
            s.token_id for s in stub_decode(logits, settings, build_logits_processors(settings, config))[0]
        ]

    assert run(7) == run(7)
    assert len({tuple(run(seed)) for seed in range(4)}) == 4


def test_top_k_restricts_sampling_to_the_best_tokens() -> None:
    logits = torch.arange(100, dtype=torch.float32)[None] / 100  # nearly flat, token 99 best
    config = GenerationConfig(top_k=3)
    settings = GenerationSettings(max_new_tokens=64, do_sample=True, temperature=1.0, top_p=1.0, seed=0)
    drawn = {s.token_id for s in stub_decode(logits, settings, build_logits_processors(settings, config))[0]}
    assert drawn <= {97, 98, 99}
    assert len(drawn) > 1


# ---------------------------------------------------------------------------------------------- end to end


def test_the_stop_event_through_the_model(model: PixelRefer) -> None:
    stop = threading.Event()
    stop.set()
    result = model.generate(
        **small_call(),
        instruction="Describe <region>.",
        settings=GenerationSettings(max_new_tokens=6),
        stop=stop,
    )
    assert len(result.token_ids) == 1
    assert result.finish_reason == "stopped"


def test_sampled_generation_repeats_with_its_seed(model: PixelRefer) -> None:
    def run(seed: int) -> list[int]:
        settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0, seed=seed)
        return model.generate(**small_call(), instruction="Describe <region>.", settings=settings).token_ids

    assert run(11) == run(11)
    assert len({tuple(run(seed)) for seed in (1, 2, 3, 4)}) > 1


def test_the_prefix_cache_reuses_rows_and_changes_nothing(model: PixelRefer) -> None:
    settings = GenerationSettings(max_new_tokens=6)
    first = [Turn("user", ("What is ", ObjectRef(0), "?"))]
    prefix = PrefixCache()
    answer = model.generate(**small_call(), turns=first, settings=settings, prefix=prefix)
    assert prefix.reused_rows == 0
    follow_up = [
        *first,
        Turn("assistant", token_ids=tuple(answer.token_ids)),
        Turn("user", ("And its colour?",)),
    ]
    cached = model.generate(
        **small_call(), turns=follow_up, settings=settings, prefix=prefix, return_logits=True
    )
    fresh = model.generate(**small_call(), turns=follow_up, settings=settings, return_logits=True)
    assert cached.token_ids == fresh.token_ids
    torch.testing.assert_close(cached.first_logits, fresh.first_logits, atol=1e-4, rtol=1e-4)
    assert prefix.reused_rows > 0
    assert cached.timings["reused_prefix_rows"] == prefix.reused_rows
    # The first prompt and every generated token that was fed back (all but the last) are reused.
    assert prefix.reused_rows == len(answer.input_ids) + len(answer.token_ids) - 1


def test_the_shown_text_never_contains_added_tokens(model: PixelRefer) -> None:
    stream = TextStream(model.tokenizer)
    words = model.encode_text("a red disc")
    added = ids_of(
        model, "<REGION>", "<image>", "<|stream_end|>", "<|im_end|>", "<|endoftext|>", "<|fim_prefix|>"
    )
    text = "".join(stream.push(i) for i in [*words[:1], *added, *words[1:]]) + stream.flush()
    assert text == "a red disc"
    assert stream.text_of(added) == ""
