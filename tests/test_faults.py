"""Faults: out of memory while generating or tracking, weights that cannot be had, answers over their time.

Each must cost the visitor one clear message and the app nothing: memory is released, the next request
works, a session's caches are not left half-written, and a Space without weights serves the preview
instead of crash-looping. Out-of-memory errors are injected (`torch.OutOfMemoryError`, what CUDA raises).
"""

from __future__ import annotations

import asyncio
import html
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pixelrefer import cli
from pixelrefer.chat import limits as limits_module
from pixelrefer.chat.limits import ChatLimits
from pixelrefer.chat.session import ChatSession, Exchange
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.model.synthetic import build_checkpoint
from pixelrefer.serve.budget import FULL_MESSAGE
from pixelrefer.serve.render import history
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .corpus import BASE_SIZE, Corpus, middle_mask

if TYPE_CHECKING:
    from .conftest import PreviewApp  # the fixture's type; only for annotations

OOM_MESSAGE = FULL_MESSAGE  # issue 16: an allocator's out-of-memory in a visitor's action is 'server full'
SHORT = GenerationSettings(max_new_tokens=6)


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def answer(replies) -> Exchange:
    return ChatSession.final(replies)


@pytest.fixture()
def releases(preview_app: PreviewApp, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the app's calls of `MemoryBudget.recover` (and still frees everything)."""
    calls: list[int] = []
    recover = preview_app.service.budget.recover

    def counted(ws: Workspace | None) -> None:
        calls.append(1)
        recover(ws)

    monkeypatch.setattr(preview_app.service.budget, "recover", counted)
    return calls


# ---------------------------------------------------------------------- out of memory


def test_out_of_memory_while_generating_is_one_message_and_the_next_answer_works(
    preview_app: PreviewApp,
    client: Client,
    corpus: Corpus,
    releases: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client.predict(image=handle_file(corpus.base_image), api_name="/open")
    client.predict(handle_file(corpus.base_mask), 0, api_name="/add_object")
    expected = client.predict("What is <object1>?", 6, 1234, api_name="/ask")

    llm = preview_app.service.model.model
    with monkeypatch.context() as patch:
        patch.setattr(llm, "forward", out_of_memory)
        with pytest.raises(AppError, match=rf"^{OOM_MESSAGE}$"):
            client.predict("What is <object1> made of?", 6, 1234, api_name="/ask")
    assert releases == [1]
    # The refused question left no trace, and the session's caches give the same answer as before.
    client.predict("What is <object1> made of?", 6, 1234, api_name="/ask")
    fresh = Client(preview_app.url, verbose=False, download_files=False)
    try:
        fresh.predict(image=handle_file(corpus.base_image), api_name="/open")
        fresh.predict(handle_file(corpus.base_mask), 0, api_name="/add_object")
        assert fresh.predict("What is <object1>?", 6, 1234, api_name="/ask") == expected
    finally:
        fresh.close()


def test_out_of_memory_while_tracking_is_one_message_and_tracking_then_works(
    preview_app: PreviewApp, corpus: Corpus, releases: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracking is a UI event (not in the API): its handler is called as Gradio calls it."""
    ws = Workspace(preview_app.service)
    try:
        ws.open_video(corpus.base_clip)
        ws.session.add_object(
            {ws.frame_index: middle_mask(BASE_SIZE[1], BASE_SIZE[0])}, marked_frames=[ws.frame_index]
        )
        quiet = lambda *args, **kwargs: None  # noqa: E731 - stands in for gr.Progress
        toasts: list[str] = []
        with monkeypatch.context() as patch:
            patch.setattr(preview_app.service.segmenter, "track", out_of_memory)
            patch.setattr(gr, "Warning", lambda message, *args, **kwargs: toasts.append(message))
            kept = asyncio.run(preview_app.page.events.on_track(ws, progress=quiet))
        # A page event: the message is a toast and every output keeps its value (no error state).
        assert toasts == [html.escape(OOM_MESSAGE)]
        assert kept == gr.skip()
        assert releases == [1]
        assert not ws.tracked
        outputs = asyncio.run(preview_app.page.events.on_track(ws, progress=quiet))
        assert outputs[preview_app.page.ui.state] is ws and ws.tracked
        (obj,) = ws.objects()
        assert sorted(obj.masks) == list(ws.clip.indices)
    finally:
        ws.close()


def test_a_session_survives_out_of_memory_mid_answer_with_clean_caches(
    tmp_path: Path, corpus: Corpus
) -> None:
    """In the library the error propagates (the app turns it into the message); the session is unharmed."""
    service = Service(replace(AppSettings(), preview_dir=tmp_path, sam2="grabcut", device="cpu")).start()
    model = service.model
    session = ChatSession(model, image=corpus.base_image)
    session.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
    first = answer(session.ask("What is <object1>?", SHORT))

    calls = {"n": 0}
    forward = model.model.forward

    def fails_on_the_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(*args, **kwargs)

    model.model.forward = fails_on_the_third_step
    try:
        with pytest.raises(torch.OutOfMemoryError):
            answer(session.ask("And its colour?", SHORT))
    finally:
        del model.model.forward
    assert [e.question for e in session.history] == ["What is <object1>?"]
    second = answer(session.ask("And its colour?", SHORT))

    reference = ChatSession(model, image=corpus.base_image, caching=False)
    reference.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
    assert answer(reference.ask("What is <object1>?", SHORT)).answer_ids == first.answer_ids
    assert answer(reference.ask("And its colour?", SHORT)).answer_ids == second.answer_ids


# ---------------------------------------------------------------------- weights unavailable


def started(tmp_path: Path, **changes) -> Service:
    settings = replace(AppSettings(), preview_dir=tmp_path / "preview", **{"device": "cpu", **changes})
    return Service(settings).start()


def test_unreachable_weights_give_the_preview_and_a_banner(tmp_path: Path) -> None:
    service = started(tmp_path, model="no-such-owner/no-such-model", sam2="no-such-owner/no-such-sam")
    assert service.preview and service.model is not None
    assert service.segmenter is not None and service.segmenter.is_classical
    banner = service.banner
    assert banner.startswith("**Offline preview.** Cannot load 'no-such-owner/no-such-model': offline mode")
    assert "**Masks:** Cannot load 'no-such-owner/no-such-sam'" in banner
    assert "GrabCut" in banner


def test_a_broken_checkpoint_gives_the_preview_not_a_crash_and_not_a_loop(
    tmp_path: Path, corpus: Corpus
) -> None:
    broken = tmp_path / "secret-models" / "PixelRefer-broken"
    build_checkpoint(broken, variant="full")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    service = started(tmp_path, model=str(broken), sam2="grabcut")
    assert service.preview
    assert "Cannot load 'PixelRefer-broken'" in service.banner
    assert str(tmp_path) not in service.banner
    # Asking again for the same broken model neither raises nor leaves the app without a model.
    for _ in range(3):
        assert service.load(str(broken)) is service.model is not None
    ws = Workspace(service)
    try:
        ws.open_image(corpus.base_image)
        ws.session.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
        assert answer(ws.ask("What is <object1>?", SHORT)).answer_ids
    finally:
        ws.close()


def test_a_segmenter_on_a_missing_device_falls_back_to_grabcut(tmp_path: Path) -> None:
    service = started(tmp_path, model="no-such-owner/no-such-model", sam2="tiny", device="cuda:7")
    assert service.segmenter is not None and service.segmenter.is_classical
    assert service.model is not None and service.preview


# ---------------------------------------------------------------------- time budget


def test_an_answer_over_its_time_budget_is_stopped_and_says_so(tmp_path: Path, corpus: Corpus) -> None:
    settings = replace(
        AppSettings(),
        preview_dir=tmp_path,
        sam2="grabcut",
        device="cpu",
        chat=ChatLimits(generation_timeout_s=1e-9),
    )
    service = Service(settings).start()
    ws = Workspace(service)
    try:
        ws.open_image(corpus.base_image)
        ws.session.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
        exchange = answer(ws.ask("What is <object1>?", GenerationSettings(max_new_tokens=50)))
        assert exchange.finish_reason == "timeout"
        assert len(exchange.answer_ids) == 1  # the deadline is checked after every token
        shown = history(ws)
        assert shown[-1]["role"] == "assistant"
        assert shown[-1]["content"].endswith(" *(stopped: time budget reached)*")
        # The session goes on: the next question is asked, and stopped the same way.
        assert (
            answer(ws.ask("And <object1>?", GenerationSettings(max_new_tokens=50))).finish_reason == "timeout"
        )
        assert len(ws.session.history) == 2
    finally:
        ws.close()


def test_the_cli_notes_an_answer_cut_by_its_time_budget(
    tmp_path: Path, corpus: Corpus, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build_checkpoint(tmp_path / "tiny", variant="full")
    monkeypatch.setattr(limits_module, "ChatLimits", lambda: ChatLimits(generation_timeout_s=1e-9))
    args = [
        "--image",
        str(corpus.base_image),
        "--mask",
        str(corpus.base_mask),
        "--json",
        "What is <object1>?",
    ]
    assert cli.main(["chat", "--model", str(tmp_path / "tiny"), "--max-new-tokens", "50", *args]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["token_ids"]) == 1
    assert captured.err == "note: the answer was cut off by its time budget of 1e-09 s\n"


def test_a_generation_budget_of_none_means_no_budget(tmp_path: Path, corpus: Corpus) -> None:
    service = started(tmp_path, model="no-such-owner/no-such-model", sam2="grabcut")
    session = ChatSession(
        service.model, image=corpus.base_image, limits=ChatLimits(generation_timeout_s=None)
    )
    session.add_object(np.ones((BASE_SIZE[1], BASE_SIZE[0]), bool))
    exchange = answer(session.ask("What is <object1>?", GenerationSettings(max_new_tokens=3)))
    assert exchange.finish_reason in ("length", "eos")
