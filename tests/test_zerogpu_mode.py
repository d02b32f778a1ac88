"""ZeroGPU mode's parts in this process (no `spaces` here): when it is on, what a session carries across a
call, and the calls run inline (ZeroGPU forced without the package) with the answers of the local calls."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pixelrefer import ChatSession, InputError, PixelRefer
from pixelrefer.chat.limits import ChatLimits
from pixelrefer.media.limits import LimitExceeded
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.serve.service import AppSettings
from pixelrefer.serve.zerogpu import answer_duration, environment_says_zero_gpu, track_duration
from pixelrefer.serve.zerogpu_calls import LocalCalls, ZeroGpuCalls

from .app_process import REPO
from .conftest import fixtures_root, image_session

GREEDY = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def model() -> PixelRefer:
    checkpoint = fixtures_root() / "pixelrefer-tiny" / "checkpoint"
    return PixelRefer.from_pretrained(str(checkpoint), device="cpu", dtype="float32")


def test_the_mode_follows_the_spaces_rule_and_the_flag() -> None:
    for value, on in (("true", True), ("1", True), ("t", True), ("yes", False), ("", False)):
        assert environment_says_zero_gpu({"SPACES_ZERO_GPU": value}) is on, value
    assert AppSettings.parse([], env={}).zero_gpu is False
    assert AppSettings.parse(["--zero-gpu"], env={}).zero_gpu is True
    assert AppSettings.parse([], env={"PIXELREFER_ZERO_GPU": "1"}).zero_gpu is True


def test_durations_are_computed_from_each_call(model: PixelRefer) -> None:
    session = image_session(model)
    short, long = (
        answer_duration(session, None, GREEDY),
        answer_duration(session, None, GenerationSettings(max_new_tokens=2000)),
    )
    assert isinstance(short, int) and short < long <= 300
    clip = SimpleNamespace(clip=[None] * 16)  # a session's state on a 16-frame clip: more to encode
    assert answer_duration(clip, None, GREEDY) > short
    assert track_duration([None] * 4, {}) < track_duration([None] * 16, {})


def test_a_pickled_session_carries_the_conversation_not_the_model_or_caches(model: PixelRefer) -> None:
    session = image_session(model)
    ChatSession.final(session.ask("What is <object1>?", GREEDY))
    assert session.cache_bytes > 0
    copy = pickle.loads(pickle.dumps(session))
    assert copy.model is None and copy.cache_bytes == 0 and copy.gate is None
    assert [e.answer_ids for e in copy.history] == [e.answer_ids for e in session.history]
    # The copy, given a model, continues the conversation exactly as the original (caches recomputed).
    copy.model = model
    there = ChatSession.final(copy.ask("And <object2>?", GREEDY))
    here = ChatSession.final(session.ask("And <object2>?", GREEDY))
    assert there.answer_ids == here.answer_ids
    session.history.pop()
    before = session.version
    session.adopt(copy)
    assert [e.answer_ids for e in session.history] == [e.answer_ids for e in copy.history]
    assert session.version > before  # a warm-up planned before is stale


def test_forced_zerogpu_without_spaces_answers_inline_as_local_calls(model: PixelRefer) -> None:
    service = SimpleNamespace(model=model)
    local, zero = image_session(model), image_session(model)
    for question in ("What is <object1>?", "And <object2>?"):
        a = ChatSession.final(LocalCalls(service).answer(local, "ask", (question,), GREEDY))
        b = ChatSession.final(ZeroGpuCalls(service).answer(zero, "ask", (question,), GREEDY))
        assert a.answer_ids == b.answer_ids and a.answer == b.answer
    assert [e.answer_ids for e in local.history] == [e.answer_ids for e in zero.history]


def test_a_refused_request_costs_no_call(model: PixelRefer) -> None:
    """The request's checks run in the caller, as in the normal mode: refused before any GPU call."""
    calls, session = ZeroGpuCalls(SimpleNamespace(model=None)), image_session(model)  # a call would fail
    with pytest.raises(InputError, match="is not a marked object"):
        calls.answer(session, "ask", ("<object9>?",), GREEDY)
    with pytest.raises(InputError, match="no answer to regenerate"):
        calls.answer(session, "regenerate", (), GREEDY)
    ChatSession.final(LocalCalls(None).answer(session, "ask", ("What is <object1>?",), GREEDY))
    calls.answer(session, "regenerate", (), GREEDY).close()  # checked on a copy: nothing taken off
    assert len(session.history) == 1


def test_an_error_in_a_call_comes_back_with_its_class_and_message(model: PixelRefer) -> None:
    """Found only in the call (the prompt is over the limit): raised here as itself, not ZeroGPU's bare name."""
    session = image_session(model, limits=ChatLimits(max_prompt_tokens=50))
    replies = ZeroGpuCalls(SimpleNamespace(model=model)).answer(
        session, "ask", ("What is <object1>?",), GREEDY
    )
    with pytest.raises(LimitExceeded, match="the limit is 50 prompt tokens"):
        ChatSession.final(replies)
    assert session.history == []


def test_stop_ends_the_answer_of_a_call(model: PixelRefer) -> None:
    calls = ZeroGpuCalls(SimpleNamespace(model=model))
    session = image_session(model)
    replies = calls.answer(
        session, "ask", ("Tell me about <object1>.",), GenerationSettings(max_new_tokens=4000)
    )
    next(replies)
    calls.stop(session)
    done = ChatSession.final(replies)
    assert done.finish_reason == "stopped" and len(done.answer_ids) < 4000
    assert session.history[-1] is done


ZEROGPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}
"""The torch versions ZeroGPU supports (hub docs, spaces-zerogpu.md, 2026-08)."""


def _pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {re.split(r"[=<>!~]", line)[0]: line for line in lines if line}


def test_the_space_front_matter_and_requirements_fit_zerogpu() -> None:
    """The documented front matter is a Gradio-SDK Space on a Python ZeroGPU supports with the app's gradio;
    requirements-zerogpu.txt pins a supported torch and is otherwise requirements.txt (kept in step)."""
    hosting = (REPO / "docs" / "hosting.md").read_text()
    block = hosting.split("**The Space.**", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    front = yaml.safe_load(block.strip().strip("-"))
    app_pins, zero_pins = _pins(REPO / "requirements.txt"), _pins(REPO / "requirements-zerogpu.txt")
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert app_pins["gradio"] == f"gradio=={front['sdk_version']}"
    assert str(front["python_version"]) in {"3.10", "3.12"}
    assert zero_pins["torch"].removeprefix("torch==") in ZEROGPU_TORCH
    shared = {
        name: pin
        for name, pin in app_pins.items()
        if name not in {"torch", "torchvision", "gradio", "gradio_client"}
    }
    assert {name: zero_pins.get(name) for name in shared} == shared
