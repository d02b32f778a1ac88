"""The page's structure: importing `app` builds nothing, and the one error rule tells a caller's mistake (an
`InputError`, its message shown) from a bug (anything else, a numpy `ValueError` included: a generic apology,
logged with its traceback), for plain and streaming page events and for the named API alike."""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pixelrefer.runtime.errors import InputError
from pixelrefer.serve.workspace import Workspace

from .app_media import SceneImage, write_mask_png, write_scene_image
from .conftest import PreviewApp

APOLOGY = "Something went wrong (ValueError); please try again."


def numpy_value_error() -> None:
    """A real numpy failure, whose message ("cannot reshape array ...") is no message for a visitor."""
    np.zeros(3).reshape(2, 2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[SceneImage, Path]:
    folder = tmp_path_factory.mktemp("page-media")
    image = write_scene_image(folder)
    return image, write_mask_png(image.disc, folder / "disc.png")


@pytest.fixture()
def toasts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The warnings a page event shows."""
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *args, **kwargs: shown.append(message))
    return shown


@pytest.fixture()
def workspace(preview_app: PreviewApp, scene: tuple[SceneImage, Path]) -> Iterator[Workspace]:
    """A visitor with the scene open and its disc kept as <object1>."""
    image, mask = scene
    ws = Workspace(preview_app.service)
    try:
        ws.open_image(image.path)
        ws.add_mask(np.asarray(image.disc), 0)
        yield ws
    finally:
        ws.close()


def test_importing_app_builds_no_service_and_reads_no_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`app` executed afresh with a command line it would refuse and a Service that fails if it is ever made."""
    import app
    from pixelrefer.serve import service

    def refused(*args, **kwargs) -> None:
        raise AssertionError("importing app built a Service")

    monkeypatch.setattr(sys, "argv", ["app.py", "--no-such-flag"])
    monkeypatch.setattr(service.Service, "__init__", refused)
    fresh = importlib.reload(app)
    assert not any(isinstance(value, service.Service) for value in vars(fresh).values())
    assert callable(fresh.build) and callable(fresh.main)


def test_a_numpy_value_error_in_a_page_event_is_the_apology(
    preview_app: PreviewApp,
    workspace: Workspace,
    toasts: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(Workspace, "click", lambda *args, **kwargs: numpy_value_error())
    with caplog.at_level(logging.ERROR, logger="pixelrefer.app"):
        kept = preview_app.page.events.on_click(workspace, "Object (click)", SimpleNamespace(index=[10, 10]))
    assert toasts == [APOLOGY]
    assert kept == gr.skip()  # every output keeps its value
    (record,) = [r for r in caplog.records if r.name == "pixelrefer.app"]
    assert record.exc_info is not None and "cannot reshape" in str(record.exc_info[1])


def test_an_input_error_in_the_same_place_is_shown_with_its_message(
    preview_app: PreviewApp, workspace: Workspace, toasts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args, **kwargs):
        raise InputError("Click inside the picture")

    monkeypatch.setattr(Workspace, "click", refused)
    preview_app.page.events.on_click(workspace, "Object (click)", SimpleNamespace(index=[10, 10]))
    assert toasts == ["Click inside the picture"]


def test_a_numpy_value_error_mid_answer_is_the_apology_and_the_chat_stays(
    preview_app: PreviewApp, workspace: Workspace, toasts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streaming event: the error comes while the answer streams; the chat is put back as it stands."""

    def failing(*args, **kwargs):
        yield from ()
        numpy_value_error()

    monkeypatch.setattr(Workspace, "ask", failing)
    shown = list(preview_app.page.events.on_send(workspace, "What is <object1>?", 8, False, 0.2, 0.9, 1))
    assert toasts == [APOLOGY]
    assert shown == [{preview_app.page.ui.chatbot: []}]


def test_a_numpy_value_error_in_the_named_api_is_the_apology(
    preview_app: PreviewApp, scene: tuple[SceneImage, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, mask = scene
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        client.predict(image=handle_file(image.path), api_name="/open")
        monkeypatch.setattr(Workspace, "add_mask", lambda *args, **kwargs: numpy_value_error())
        with pytest.raises(AppError, match=rf"^{re.escape(APOLOGY)}$"):
            client.predict(handle_file(mask), 0, api_name="/add_object")
    finally:
        client.close()


def test_the_api_adds_an_object_as_keep_does(
    preview_app: PreviewApp, scene: tuple[SceneImage, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/add_object` goes through `Workspace.add_mask`: the object gets its marks entry and the warm-up starts."""
    image, mask = scene
    warmed: list[Workspace] = []
    schedule = preview_app.service.warmer.schedule
    monkeypatch.setattr(
        preview_app.service.warmer, "schedule", lambda ws, session: (warmed.append(ws), schedule(ws, session))
    )
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        client.predict(image=handle_file(image.path), api_name="/open")
        warmed.clear()
        assert client.predict(handle_file(mask), 0, api_name="/add_object") == "<object1>"
        (ws,) = set(warmed)
        assert ws.marks == {1: {}} and [o.id for o in ws.objects()] == [1]
    finally:
        client.close()
