"""The memory budget as a visitor of the app meets it (offline preview, `gradio_client`): a full server says
what to do, an allocator's out-of-memory in an answer says the same, and the visitor's work is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from .app_media import write_mask_png, write_scene_image
from .conftest import PreviewApp


@pytest.fixture
def client(preview_app: PreviewApp) -> Iterator[Client]:
    connected = Client(preview_app.url, verbose=False, download_files=False)
    yield connected
    connected.close()
    preview_app.service.budget.limits = {}


def test_a_full_server_tells_the_visitor_what_to_do(
    preview_app: PreviewApp, client: Client, tmp_path: Path
) -> None:
    scene = write_scene_image(tmp_path)
    mask = write_mask_png(scene.disc, tmp_path / "disc.png")
    client.predict(image=handle_file(scene.path), api_name="/open")
    assert client.predict(handle_file(mask), 0, api_name="/add_object") == "<object1>"
    budget = preview_app.service.budget
    budget.free()  # else the earlier tests' visitors' caches (one app for the session) are dropped to make room
    budget.limits = {"cpu": budget.usage()["cpu"]}
    bigger = write_scene_image(tmp_path, 960, 720)
    with pytest.raises(AppError, match="The server is full right now: try a shorter clip"):
        client.predict(image=handle_file(bigger.path), api_name="/open")
    # The refused upload changed nothing: the object is still there to ask about.
    budget.limits = {}
    assert client.predict("What is <object1>?", 4, 1, api_name="/ask")


def test_out_of_memory_in_an_answer_is_the_full_message_not_a_traceback(
    preview_app: PreviewApp, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = write_scene_image(tmp_path)
    client.predict(image=handle_file(scene.path), api_name="/open")
    client.predict(handle_file(write_mask_png(scene.disc, tmp_path / "disc.png")), 0, api_name="/add_object")
    model = preview_app.service.model

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield

    monkeypatch.setattr(model, "stream", exhausted)
    with pytest.raises(AppError) as refused:
        client.predict("What is <object1>?", 4, 1, api_name="/ask")
    assert "The server is full right now" in str(refused.value)
    assert "CUDA" not in str(refused.value) and "Traceback" not in str(refused.value)
    monkeypatch.undo()
    assert client.predict("What is <object1>?", 4, 1, api_name="/ask")
