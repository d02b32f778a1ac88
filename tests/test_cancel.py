"""Cancel means stop: a cancelled answer or tracking run ends within one step and frees the model.

Gradio cancels by cancelling the task that awaits a handler; a blocking handler (the API's /ask, the page's
tracking) went on in its worker thread to the end of the answer or clip, holding the model. Here the work is
counted step by step (decoder forward passes, tracked frames, slowed a little so that a cancel lands mid-run)
and, once the cancel has been answered, nothing more may run; the next visitor's answer takes only its own
steps. Counting steps instead of timing them keeps the test exact on a loaded machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from .app_media import write_mask_png, write_scene_clip, write_scene_image
from .conftest import PreviewApp

LONG = 4096
"""Tokens asked for: with end-of-sequence masked, far more than any cancel lets run."""


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Steps:
    """A thread-safe step counter that remembers the count at the moment the work was told to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.at_stop: int | None = None

    def step(self) -> None:
        with self._lock:
            self.count += 1

    def stopped(self) -> None:
        with self._lock:
            if self.at_stop is None:
                self.at_stop = self.count


@pytest.fixture()
def decoder_steps(preview_app: PreviewApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[Steps]:
    """Counts the language model's forward passes (one per decoded token), 10 ms each; end-of-sequence masked
    so that an answer runs to its token limit unless stopped."""
    model = preview_app.service.model
    steps = Steps()

    def paced(module, args, kwargs) -> None:
        steps.step()
        time.sleep(0.01)

    handle = model.model.register_forward_pre_hook(paced, with_kwargs=True)
    monkeypatch.setattr(model, "eos_ids", set())
    try:
        yield steps
    finally:
        handle.remove()


def watch_stop(ws, steps: Steps, name: str) -> None:
    """Record the step count when `ws.<name>` is first called (what the cancel calls)."""
    original = getattr(ws, name)

    def stop(*args) -> None:
        steps.stopped()
        original(*args)

    setattr(ws, name, stop)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("cancel-media")
    scene = write_scene_image(folder)
    clip = write_scene_clip(folder, seconds=12)
    return {
        "image": scene.path,
        "disc": write_mask_png(scene.disc, folder / "disc.png"),
        "clip": clip,
    }


def test_a_cancelled_api_answer_stops_within_one_token_and_frees_the_model(
    preview_app: PreviewApp, media: dict, decoder_steps: Steps
) -> None:
    model = preview_app.service.model
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        client.predict(image=handle_file(media["image"]), api_name="/open")
        client.predict(handle_file(media["disc"]), 0, api_name="/add_object")
        ws = preview_app.workspace_of(client)
        watch_stop(ws, decoder_steps, "stop")
        job = client.submit("What is <object1> doing?", LONG, 1, api_name="/ask")
        assert wait_for(lambda: decoder_steps.count >= 20), "the answer never started"
        job.cancel()
        assert wait_for(lambda: decoder_steps.at_stop is not None), "the cancel never reached the worker"
        assert wait_for(lambda: not model.lock.locked(), timeout_s=10), "the model is still held"
        settled = decoder_steps.count
        time.sleep(0.5)
        assert decoder_steps.count == settled, "decoding went on after the cancel"
        assert settled <= decoder_steps.at_stop + 1, (settled, decoder_steps.at_stop)
        assert ws.session.history[-1].finish_reason == "stopped"
    finally:
        client.close()

    # The next visitor's answer takes its own eight steps (prefill + 7 tokens), nobody else's.
    other = Client(preview_app.url, verbose=False, download_files=False)
    try:
        other.predict(image=handle_file(media["image"]), api_name="/open")
        other.predict(handle_file(media["disc"]), 0, api_name="/add_object")
        before = decoder_steps.count
        answer = other.predict("What is <object1>?", 8, 1, api_name="/ask")
        assert isinstance(answer, str)
        assert decoder_steps.count - before == 8
    finally:
        other.close()


def test_a_cancelled_tracking_run_stops_within_one_frame(
    preview_app: PreviewApp, media: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """POST /gradio_api/cancel on a tracking run (what the Cancel button and a client's cancel send)."""
    segmenter = preview_app.service.segmenter
    steps = Steps()
    follow = segmenter._follow

    def slow_follow(*args):
        steps.step()
        time.sleep(0.2)
        return follow(*args)

    monkeypatch.setattr(segmenter, "_follow", slow_follow)
    client = Client(preview_app.url, verbose=False, download_files=False)
    session = client.session_hash
    try:
        frames = json.loads(client.predict(video=handle_file(media["clip"].path), api_name="/open"))["frames"]
        assert len(frames) >= 8
        client.predict(
            handle_file(write_mask_png(media["clip"].disc(frames[0]), tmp_path / "disc.png")),
            frames[0],
            api_name="/add_object",
        )
        ws = preview_app.workspace_of(client)
        watch_stop(ws.cancel, steps, "set")
        (index,) = [i for i, fn in preview_app.demo.fns.items() if fn.api_name == "on_track"]
        (trigger, _), *_ = preview_app.demo.fns[index].targets
        with httpx.Client(base_url=f"{preview_app.url}gradio_api/", timeout=30) as http:
            body = {"data": [None], "fn_index": index, "trigger_id": trigger, "session_hash": session}
            joined = http.post("queue/join", json=body)
            assert joined.status_code == 200, joined.text
            assert wait_for(lambda: steps.count >= 2), "tracking never started"
            cancelled = http.post(
                "cancel",
                json={"event_id": joined.json()["event_id"], "fn_index": index, "session_hash": session},
            )
            assert cancelled.status_code == 200, cancelled.text
        # /cancel answers once the worker has ended.
        settled = steps.count
        assert steps.at_stop is not None and settled <= steps.at_stop + 1, (settled, steps.at_stop)
        time.sleep(0.6)
        assert steps.count == settled, "tracking went on after the cancel"
        assert not ws.tracked
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _no_stray_work(preview_app: PreviewApp) -> Iterator[None]:
    yield
    assert wait_for(lambda: not preview_app.service.model.lock.locked(), timeout_s=10)
