"""Precompute while marking: warm answers equal cold ones, the worker yields to model events, stale work is dropped."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from pixelrefer import ChatLimits, ChatSession, GenerationSettings, PixelRefer, load_image
from pixelrefer.chat.gate import Gate
from pixelrefer.chat.warmup import Warmer
from pixelrefer.media.video import load_frame_folder
from pixelrefer.model.engine import DecodeEngine
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .conftest import fixture_case, fixture_mask, fixtures_root, image_session

QUESTION = "What is the relationship between <object1> and <object2>?"
SHORT = GenerationSettings(max_new_tokens=8)


def clip_session(model: PixelRefer) -> ChatSession:
    folder, case = fixture_case(model, "video_2objects")
    names = sorted(os.listdir(folder / case["frames_dir"]))
    extra = {i: load_image(folder / case["frames_dir"] / names[i]) for i in case["frame_ids"]}
    session = ChatSession(model, clip=load_frame_folder(folder / case["frames_dir"]), extra_frames=extra)
    frames = [case["frame_ids"][i] for i in case["mask_ids"]]
    masks = [fixture_mask(folder / name) for name in case["mask_files"]]
    position = 0
    for group in case.get("mask_ids_raw") or [[i] for i in range(len(masks))]:
        session.add_object({frames[position + j]: masks[position + j] for j in range(len(group))})
        position += len(group)
    return session


def answer(replies):
    return ChatSession.final(replies)


class Layers:
    """Counts forward calls of every network layer (the vision tower's and the LLM's)."""

    def __init__(self, model: PixelRefer, hold: threading.Event | None = None) -> None:
        self.calls = 0
        self.first = threading.Event()
        self.hold = hold
        self._handles = [
            layer.register_forward_pre_hook(self._count)
            for module in model.model.modules()
            if isinstance(module, nn.ModuleList)
            for layer in module
        ]

    def _count(self, *_) -> None:
        """The first layer the worker reaches waits for `hold`, so the test can act at a known point."""
        self.calls += 1
        self.first.set()
        if self.hold is not None and threading.current_thread() is not threading.main_thread():
            self.hold.wait(30)
            self.hold = None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize("make", [image_session, clip_session], ids=["image", "clip"])
def test_a_warm_first_answer_equals_a_cold_one_and_only_prefills_the_question(model, make) -> None:
    cold = answer(make(model).ask(QUESTION, SHORT))
    session = make(model)
    report = session.warm()
    assert report.stored and report.prefilled_rows == report.prompt_rows > 0
    layers = Layers(model)
    try:
        warm = answer(session.ask(QUESTION, SHORT))
    finally:
        layers.close()
    assert warm.answer_ids == cold.answer_ids
    if make is image_session:
        _, case = fixture_case(model, "image_2regions")
        assert warm.answer_ids == case["generated_ids"]
    # No vision-tower layer ran, and the LLM read only the question's rows (plus a few it shares with the
    # template's tail), once per decoded token after the first.
    llm_layers = model.config.num_hidden_layers
    reused = int(warm.timings["reused_prefix_rows"])
    assert reused >= report.prompt_rows - 8
    assert layers.calls == llm_layers * len(warm.answer_ids)


def test_warm_up_after_an_edit_reuses_the_media_and_equals_a_cold_run(model) -> None:
    session = image_session(model)
    session.warm()
    height, width = session.image.shape[:2]
    third = np.zeros((height, width), bool)
    third[100:140, 20:60] = True
    session.add_object(third)
    report = session.warm()
    assert report.stored
    if model.variant == "full":  # the image's rows come before the declaration: only what follows is run
        assert report.prefilled_rows < report.prompt_rows // 2
    question = "And <object3>?"
    warm = answer(session.ask(question, SHORT))
    cold_session = image_session(model, caching=False)
    cold_session.add_object(third)
    assert warm.answer_ids == answer(cold_session.ask(question, SHORT)).answer_ids


def test_warm_up_with_history_covers_the_conversation_so_far(model) -> None:
    session = image_session(model)
    answer(session.ask(QUESTION, SHORT))
    session.prefix_cache.clear()
    report = session.warm()
    assert report.stored and report.prompt_rows > len(session.last_prompt.input_ids)
    follow = answer(session.ask("Is <object2> larger?", SHORT))
    assert follow.timings["reused_prefix_rows"] >= report.prompt_rows - 8
    fresh = image_session(model, caching=False)
    fresh.history = list(session.history[:-1])
    assert answer(fresh.ask("Is <object2> larger?", SHORT)).answer_ids == follow.answer_ids


def test_the_worker_waits_while_a_model_event_runs(model) -> None:
    gate = Gate()
    warmer = Warmer(gate)
    session = image_session(model)
    layers = Layers(model)
    try:
        with gate.event():
            warmer.schedule("visitor", session)
            assert not warmer.wait(timeout=0.5)
            assert layers.calls == 0  # preprocessing may run, no network does
        assert warmer.wait(timeout=60)
        assert warmer.report("visitor").stored

        # Paused mid-forward: an event entering while the tower runs stops the worker at its next operation.
        layers.close()
        entered = threading.Event()
        layers = Layers(model, hold=entered)
        session.close()
        session = image_session(model)
        event = gate.event()
        warmer.schedule("visitor", session)
        assert layers.first.wait(timeout=60)
        event.__enter__()
        ran = layers.calls
        entered.set()
        time.sleep(0.3)
        assert layers.calls == ran  # it stopped inside the layer it was in
        assert not warmer.wait(timeout=0)
        event.__exit__(None, None, None)
        assert warmer.wait(timeout=60)
        report = warmer.report("visitor")
        assert report.stored and report.paused_s > 0.2
    finally:
        layers.close()
        warmer.close()


def test_a_change_cancels_the_job_and_nothing_stale_is_stored(model) -> None:
    gate = Gate()
    warmer = Warmer(gate)
    session = image_session(model)
    try:
        with gate.event():
            warmer.schedule("visitor", session)
            time.sleep(0.2)  # the job has started and waits for the gate
            session.remove_object(2)
        assert warmer.wait(timeout=60)
        report = warmer.report("visitor")
        assert not report.stored and report.reason.startswith("cancelled")
        assert len(session.feature_cache) == 0 and session.prefix_cache.cache is None

        warmer.schedule("visitor", session)
        assert warmer.wait(timeout=60) and warmer.report("visitor").stored
        assert session.prefix_cache.cache is not None

        # A closed workspace's job is dropped, waiting or running.
        with gate.event():
            warmer.schedule("visitor", session)
            warmer.drop("visitor")
        assert warmer.wait(timeout=60) and warmer.report("visitor") is None
    finally:
        warmer.close()


def test_warm_up_keeps_the_session_limits(model) -> None:
    small = image_session(model, limits=ChatLimits(cache_bytes=4096))
    small.warm()
    assert small.feature_cache.nbytes <= 4096
    refused = image_session(model, limits=ChatLimits(max_prompt_tokens=50))
    layers = Layers(model)
    try:
        report = refused.warm()
    finally:
        layers.close()
    assert not report.stored and report.reason.startswith("skipped") and layers.calls == 0
    assert ChatSession(model, image=refused.image, caching=False).warm_plan() is None


def test_an_engine_without_a_prefix_cache_gets_embeddings_only(model, monkeypatch) -> None:
    class Remote(DecodeEngine):
        """An engine that keeps no prefix of its own (the interface's default `warm_prefix`)."""

        name = "remote"
        max_concurrency = 1

        def decode(self, request):
            raise AssertionError("a warm-up never decodes")

    monkeypatch.setattr(model, "engine", Remote())
    session = image_session(model)
    report = session.warm()
    assert report.stored and report.prefilled_rows is None
    assert session.prefix_cache.cache is None and len(session.feature_cache) > 0

    seen = []

    class Caching(Remote):
        def warm_prefix(self, inputs_embeds, prefix):
            seen.append(inputs_embeds.shape[1])
            return inputs_embeds.shape[1]

    monkeypatch.setattr(model, "engine", Caching())
    report = image_session(model).warm()
    assert seen == [report.prompt_rows] and report.prefilled_rows == report.prompt_rows


def test_answers_hold_the_gate_while_they_stream(model) -> None:
    session = image_session(model)
    session.gate = Gate()
    replies = session.ask(QUESTION, SHORT)
    assert not session.gate.busy
    next(replies)
    assert session.gate.busy
    replies.close()  # an abandoned answer frees the gate too
    assert not session.gate.busy


def test_the_app_warms_while_marking(tmp_path: Path) -> None:
    checkpoint = fixtures_root() / "pixelrefer-tiny" / "checkpoint"
    settings = replace(
        AppSettings(),
        model=str(checkpoint),
        dtype="float32",
        device="cpu",
        sam2="grabcut",
        preview_dir=tmp_path,
    )
    service = Service(settings).start()
    folder, case = fixture_case(service.model, "image_2regions")
    visitor = Workspace(service)
    try:
        visitor.open_image(folder / case["image_file"])
        assert service.warmer.wait(timeout=60)
        assert service.warmer.report(visitor).stored  # the media alone, before any object
        rows, cols = np.nonzero(fixture_mask(folder / case["mask_files"][0]))
        visitor.click(float(cols.mean()), float(rows.mean()), "positive")
        visitor.keep()
        assert service.warmer.wait(timeout=60) and service.warmer.report(visitor).stored
        warm = answer(visitor.ask("What is <object1>?", SHORT))
        assert warm.timings["reused_prefix_rows"] > len(visitor.session.last_prompt.input_ids) // 2
        cold = ChatSession(service.model, image=visitor.image, caching=False)
        cold.add_object(visitor.session.objects[0].masks[0])
        assert answer(cold.ask("What is <object1>?", SHORT)).answer_ids == warm.answer_ids
    finally:
        visitor.close()
        service.warmer.close()
    assert service.warmer.report(visitor) is None
