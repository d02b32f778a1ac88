"""The bad-input corpus through the app's API endpoints, with `gradio_client`, against the offline preview.

One client (one visitor session) sends every case, one after the other: each gets its answer or its
specific message, and the next request on the same session is answered. The messages are the library's
(see `test_corpus_api.py`): the app only passes them on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError

from pixelrefer.media.images import load_image
from pixelrefer.media.video import load_clip

from .corpus import (
    APP_LIMITS,
    BASE_SIZE,
    IMAGE_CASES,
    MASK_CASES,
    QUESTION_CASES,
    VIDEO_CASES,
    Corpus,
    MaskCase,
    MediaCase,
    QuestionCase,
    write_mask,
)

if TYPE_CHECKING:
    from .conftest import PreviewApp  # the fixture's type; only for annotations

TOKENS = 4


@pytest.fixture(scope="module")
def client(preview_app: PreviewApp, corpus: Corpus) -> Iterator[Client]:
    """One visitor for the whole module. Every test leaves it with a picture and an <object1> to ask
    about, so a refused upload can be followed by a question on what the session still holds."""
    connected = Client(preview_app.url, verbose=False, download_files=False)
    next_request_works(connected, corpus)
    yield connected
    connected.close()


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app-masks")


def open_media(client: Client, path: Path, kind: str) -> dict:
    if kind == "image":
        return json.loads(client.predict(image=handle_file(path), api_name="/open"))
    return json.loads(client.predict(video=handle_file(path), api_name="/open"))


def ask(client: Client, question: str = "What is <object1>?", tokens: int = TOKENS) -> str:
    return client.predict(question, tokens, 1234, api_name="/ask")


def next_request_works(client: Client, corpus: Corpus) -> None:
    """The same visitor opens the base image, marks it and gets an answer."""
    assert open_media(client, corpus.base_image, "image") == {"kind": "image", "frames": [0], "notes": []}
    assert client.predict(handle_file(corpus.base_mask), 0, api_name="/add_object") == "<object1>"
    assert isinstance(ask(client), str)


def decoded_size(case: MediaCase, path: Path) -> tuple[int, int]:
    """(height, width) of the picture the object is marked on, as the library decodes it (before the
    app shrinks large images: a mask of the original size is shrunk with them)."""
    if case.kind == "image":
        return load_image(path).shape[:2]
    return load_clip(path, APP_LIMITS).frames[0].shape[:2]


@pytest.mark.parametrize("case", IMAGE_CASES + VIDEO_CASES, ids=lambda case: case.name)
def test_media_file(client: Client, corpus: Corpus, masks: Path, case: MediaCase) -> None:
    path = corpus.media(case)
    opened = False

    def run() -> None:
        nonlocal opened
        summary = open_media(client, path, case.kind)
        opened = True
        assert summary["kind"] == case.kind
        if case.note:
            assert any(re.search(case.note, note) for note in summary["notes"]), summary["notes"]
        mask = write_mask(case.object_mask(*decoded_size(case, path)), masks / f"{case.name}.png", "png")
        assert client.predict(handle_file(mask), summary["frames"][0], api_name="/add_object") == "<object1>"
        assert isinstance(ask(client), str)  # a random model's answer may decode to nothing

    if case.outcome.answers:
        run()
    else:
        # Refused at opening (a bad file: the session keeps what it had) or at asking (an object the
        # model cannot take: the session holds the new media).
        with pytest.raises(AppError, match=case.outcome.message):
            run()
    if opened:
        next_request_works(client, corpus)
    else:
        assert isinstance(ask(client), str)


@pytest.mark.parametrize("case", [c for c in MASK_CASES if c.file is not None], ids=lambda case: case.name)
def test_mask_file(client: Client, corpus: Corpus, case: MaskCase) -> None:
    media = corpus.base_clip if case.on_clip else corpus.base_image
    summary = open_media(client, media, "video" if case.on_clip else "image")
    frame = case.frame if case.frame is not None else summary["frames"][0]
    mask = handle_file(corpus.mask_files[case.name])
    if case.outcome.answers:
        assert client.predict(mask, frame, api_name="/add_object") == "<object1>"
        assert isinstance(ask(client), str)
    else:
        with pytest.raises(AppError, match=case.outcome.message):
            client.predict(mask, frame, api_name="/add_object")
            ask(client)
        # The refused mask left no object behind; a valid one becomes <object1>.
        base = handle_file(corpus.base_mask)  # the clip has the base image's size
        assert client.predict(base, summary["frames"][0], api_name="/add_object") == "<object1>"
        assert isinstance(ask(client), str)


@pytest.fixture()
def two_objects(client: Client, corpus: Corpus, masks: Path) -> Client:
    open_media(client, corpus.base_image, "image")
    height, width = BASE_SIZE[1], BASE_SIZE[0]
    corner = np.zeros((height, width), bool)
    corner[2:12, 2:20] = True
    client.predict(handle_file(corpus.base_mask), 0, api_name="/add_object")
    second = write_mask(corner, masks / "corner.png", "png")
    assert client.predict(handle_file(second), 0, api_name="/add_object") == "<object2>"
    return client


@pytest.mark.parametrize("case", QUESTION_CASES, ids=lambda case: case.name)
def test_question(two_objects: Client, corpus: Corpus, case: QuestionCase) -> None:
    if case.outcome.answers:
        assert isinstance(ask(two_objects, case.text), str)
    else:
        with pytest.raises(AppError, match=case.outcome.message):
            ask(two_objects, case.text)
    assert isinstance(ask(two_objects, "And <object2>?"), str)


def test_asking_before_marking_an_object(client: Client, corpus: Corpus) -> None:
    open_media(client, corpus.base_image, "image")
    with pytest.raises(AppError, match="Mark an object first"):
        ask(client, "What is this?")
    next_request_works(client, corpus)


def test_a_hundred_objects(client: Client, corpus: Corpus, masks: Path) -> None:
    """Sent eight at a time, so the test stays quick: they arrive in any order but run one at a time."""
    open_media(client, corpus.base_image, "image")
    tags, refusals = [], []
    for batch in range(0, 100, 8):
        jobs = []
        for index in range(batch, min(batch + 8, 100)):
            mask = np.zeros((BASE_SIZE[1], BASE_SIZE[0]), bool)
            mask[(index // 10) * 6 : (index // 10) * 6 + 5, (index % 10) * 9 : (index % 10) * 9 + 8] = True
            path = write_mask(mask, masks / f"object_{index}.png", "png")
            jobs.append(client.submit(handle_file(path), 0, api_name="/add_object"))
        for job in jobs:
            try:
                tags.append(job.result())
            except AppError as exc:
                refusals.append(str(exc))
    assert sorted(tags, key=lambda tag: int(tag[7:-1])) == [f"<object{k}>" for k in range(1, 17)]
    assert len(refusals) == 84
    assert set(refusals) == {"This would be object 17; the limit is 16 objects. Delete one to mark another."}
    assert isinstance(ask(client, "How do <object1> and <object16> relate?"), str)


def test_too_many_new_tokens_are_refused_with_the_limit(
    preview_app: PreviewApp, client: Client, corpus: Corpus
) -> None:
    limit = preview_app.service.settings.max_new_tokens
    next_request_works(client, corpus)
    # The route guard checks the number against the API's declared range before the handler runs.
    with pytest.raises(
        ValidationError, match=rf"max_new_tokens must be between 1 and {limit:,}, got 1,000,000"
    ):
        ask(client, tokens=1_000_000)
    next_request_works(client, corpus)
