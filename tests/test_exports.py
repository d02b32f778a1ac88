"""The visitor's downloads (`pixelrefer.serve.exports`): what a visitor typed reaches the Markdown transcript as
text, never as HTML a viewer would run; the JSON transcript keeps it exactly as typed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from pixelrefer.model.generation import GenerationSettings
from pixelrefer.serve.workspace import Workspace

from .app_media import write_scene_image
from .conftest import PreviewApp

NAME = '<img src=x onerror="alert(1)">cup'
QUESTION = "Is <object1> <b>red</b>? <script>alert(2)</script>"


@pytest.fixture()
def chatted(preview_app: PreviewApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A workspace with one object named with HTML and one question holding HTML, answered by the preview."""
    scene = write_scene_image(tmp_path_factory.mktemp("exports"))
    ws = Workspace(preview_app.service)
    try:
        ws.open_image(scene.path)
        obj = ws.add_mask(np.asarray(scene.disc), 0)
        ws.rename(obj.id, NAME)
        ws.session.final(ws.ask(QUESTION, GenerationSettings(max_new_tokens=2)))
        yield ws
    finally:
        ws.close()


def test_the_markdown_transcript_shows_names_and_questions_as_text(chatted: Workspace) -> None:
    text = chatted.export_transcript("md").read_text()
    assert "<img" not in text and "<script>" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;cup" in text
    assert "**You:** Is &lt;object1&gt; &lt;b&gt;red&lt;/b&gt;? &lt;script&gt;alert(2)&lt;/script&gt;" in text
    assert "- &lt;object1&gt; (" in text


def test_the_json_transcript_keeps_what_was_typed(chatted: Workspace) -> None:
    record = json.loads(chatted.export_transcript("json").read_text())
    assert record["objects"][0]["name"] == NAME
    assert record["turns"][0]["question"] == QUESTION
