"""The bad-input corpus through the Python API: `Workspace` (what the app drives), `ChatSession` and
`PixelRefer.prepare`.

Every case gets its answer or its refusal (the exact kind and message), and the next request on the same
workspace or session is answered: a refusal leaves nothing half-done behind. All run on the offline
preview's tiny random PixelRefer (full variant), with the app's limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelrefer.chat.session import ChatSession, Exchange
from pixelrefer.media.images import load_image
from pixelrefer.media.limits import LimitExceeded
from pixelrefer.media.video import Clip, load_clip
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

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
    Outcome,
    QuestionCase,
    middle_mask,
)

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    """The app's shared state, started as the app starts it offline: preview model, GrabCut."""
    settings = replace(
        AppSettings(), preview_dir=tmp_path_factory.mktemp("preview"), sam2="grabcut", device="cpu"
    )
    started = Service(settings).start()
    assert started.preview and started.model is not None and started.model.variant == "full"
    return started


@pytest.fixture(scope="module")
def workspace(service: Service) -> Iterator[Workspace]:
    """One visitor for the whole module: every case runs on it, one after the other."""
    visitor = Workspace(service)
    yield visitor
    visitor.close()


@pytest.fixture(scope="module")
def base_clip(corpus: Corpus) -> Clip:
    return load_clip(corpus.base_clip, APP_LIMITS)


def answer(replies) -> Exchange:
    """Run an answer to its end and return the finished exchange."""
    return ChatSession.final(replies)


def expect(outcome: Outcome, run: Callable[[], Any]) -> Any:
    """Run a case: an answer where it is valid (returned), else its exact refusal (kind and message)."""
    if outcome.answers:
        return run()
    with pytest.raises(outcome.error, match=outcome.message) as refusal:
        run()
    assert type(refusal.value).__name__ != "AssertionError"
    return None


def answered(exchange: Exchange) -> None:
    assert exchange.finish_reason in ("eos", "length") and exchange.answer_ids


def next_request_works(workspace: Workspace, corpus: Corpus) -> None:
    """After any case, the same visitor opens the base image, marks it and gets an answer."""
    workspace.open_image(corpus.base_image)
    workspace.session.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
    answered(answer(workspace.ask("What is <object1>?", SHORT)))


def open_case(workspace: Workspace, case: MediaCase, path: Path) -> Exchange:
    """What the app does with an upload: open it, mark one object on its first (sampled) frame, ask."""
    if case.kind == "image":
        workspace.open_image(path)
    else:
        workspace.open_video(path)
    frame = workspace.frame_index
    height, width = workspace.frame.shape[:2]
    workspace.session.add_object({frame: case.object_mask(height, width)}, marked_frames=[frame])
    return answer(workspace.ask("What is <object1>?", SHORT))


# ---------------------------------------------------------------------- media files


@pytest.mark.parametrize("case", IMAGE_CASES + VIDEO_CASES, ids=lambda case: case.name)
def test_media_file_through_the_workspace(workspace: Workspace, corpus: Corpus, case: MediaCase) -> None:
    exchange = expect(case.outcome, lambda: open_case(workspace, case, corpus.media(case)))
    if exchange is not None:
        answered(exchange)
        if case.note:
            assert any(re.search(case.note, note) for note in workspace.notes), workspace.notes
    next_request_works(workspace, corpus)


@pytest.mark.parametrize("case", IMAGE_CASES + VIDEO_CASES, ids=lambda case: case.name)
def test_media_file_through_a_chat_session(service: Service, corpus: Corpus, case: MediaCase) -> None:
    """The library's own readers with the app's limits: `load_image` / `load_clip`, then a session."""
    path = corpus.media(case)

    def run() -> tuple[ChatSession, Exchange]:
        if case.kind == "image":
            image = load_image(path, limits=APP_LIMITS)
            session = ChatSession(service.model, image=image)
            session.add_object(case.object_mask(*image.shape[:2]))
            return session, answer(session.ask("What is <object1>?", SHORT))
        clip = load_clip(path, APP_LIMITS)
        if case.note:
            assert any(re.search(case.note, note) for note in clip.notes), clip.notes
        session = ChatSession(service.model, clip=clip)
        session.add_object({clip.indices[0]: case.object_mask(*clip.frames[0].shape[:2])})
        return session, answer(session.ask("What is <object1>?", SHORT))

    result = expect(case.outcome, run)
    if result is not None:
        session, exchange = result
        answered(exchange)
        answered(answer(session.ask("And its colour?", SHORT)))


# ---------------------------------------------------------------------- masks


def mask_session(service: Service, corpus: Corpus, base_clip: Clip, case: MaskCase) -> ChatSession:
    if case.on_clip:
        return ChatSession(service.model, clip=base_clip)
    return ChatSession(service.model, image=corpus.base_image)


@pytest.mark.parametrize("case", [c for c in MASK_CASES if c.as_array], ids=lambda case: case.name)
def test_mask_through_a_chat_session(
    service: Service, corpus: Corpus, base_clip: Clip, case: MaskCase
) -> None:
    session = mask_session(service, corpus, base_clip, case)
    height, width = BASE_SIZE[1], BASE_SIZE[0]
    frame = case.frame if case.frame is not None else (base_clip.indices[0] if case.on_clip else 0)
    mask = case.mask(height, width)
    exchange = expect(
        case.outcome,
        lambda: (session.add_object({frame: mask}), answer(session.ask("What is <object1>?", SHORT))),
    )
    if exchange is not None:
        answered(exchange[1])
    # The session is untouched by a refused mask: a valid one is added and answered about.
    start = base_clip.indices[0] if case.on_clip else 0
    added = session.add_object({start: middle_mask(height, width)})
    answered(answer(session.ask(f"What is {added.tag}?", SHORT)))


@pytest.mark.parametrize(
    "case",
    [c for c in MASK_CASES if c.as_array and not c.on_clip and c.frame is None],
    ids=lambda case: case.name,
)
def test_mask_through_prepare(service: Service, corpus: Corpus, case: MaskCase) -> None:
    """The stateless model call: the same mask gives the same outcome, before any network runs."""
    mask = case.mask(BASE_SIZE[1], BASE_SIZE[0])
    model = service.model
    call = {"image": corpus.base_image, "instruction": "<image>\nWhat is <region>?"}
    prepared = expect(case.outcome, lambda: model.prepare(regions=[mask], **call))
    if prepared is not None:
        assert len(prepared.objects) == 1 and prepared.prompt.region_positions
    good = model.prepare(regions=[middle_mask(BASE_SIZE[1], BASE_SIZE[0])], **call)
    assert good.prompt.region_positions


# ---------------------------------------------------------------------- objects


def two_objects(service: Service, corpus: Corpus) -> ChatSession:
    session = ChatSession(service.model, image=corpus.base_image)
    height, width = BASE_SIZE[1], BASE_SIZE[0]
    session.add_object(middle_mask(height, width))
    corner = np.zeros((height, width), bool)
    corner[2:12, 2:20] = True
    session.add_object(corner)
    return session


def test_asking_with_no_object_is_refused_then_marking_one_works(service: Service, corpus: Corpus) -> None:
    session = ChatSession(service.model, image=corpus.base_image)
    with pytest.raises(
        ValueError, match="Mark an object first: the model answers questions about marked objects"
    ):
        answer(session.ask("What is this?", SHORT))
    session.add_object(middle_mask(BASE_SIZE[1], BASE_SIZE[0]))
    answered(answer(session.ask("What is <object1>?", SHORT)))


def test_a_hundred_objects_stop_at_the_limit_and_the_chat_goes_on(service: Service, corpus: Corpus) -> None:
    session = ChatSession(service.model, image=corpus.base_image, limits=AppSettings().chat)
    limit = session.limits.max_objects
    refusals = []
    for index in range(100):
        mask = np.zeros((BASE_SIZE[1], BASE_SIZE[0]), bool)
        mask[(index // 10) * 6 : (index // 10) * 6 + 5, (index % 10) * 9 : (index % 10) * 9 + 8] = True
        try:
            session.add_object(mask)
        except LimitExceeded as exc:
            refusals.append(str(exc))
    assert len(session.objects) == limit == 16
    assert len(refusals) == 100 - limit
    assert set(refusals) == {"This would be object 17; the limit is 16 objects. Delete one to mark another."}
    answered(answer(session.ask("How do <object1> and <object16> relate?", SHORT)))


# ---------------------------------------------------------------------- questions


def special_counts(session: ChatSession) -> dict[str, int]:
    """How many chat-template, image and region token ids the last prompt holds."""
    ids = session.last_prompt.input_ids
    specials = session.model.specials
    return {name: ids.count(getattr(specials, name)) for name in ("im_start", "im_end", "image", "region")}


@pytest.mark.parametrize("case", QUESTION_CASES, ids=lambda case: case.name)
def test_question_through_a_chat_session(service: Service, corpus: Corpus, case: QuestionCase) -> None:
    session = two_objects(service, corpus)
    exchange = expect(case.outcome, lambda: answer(session.ask(case.text, SHORT)))
    if exchange is not None:
        answered(exchange)
        assert session.history[-1].question == case.text.strip()
        if case.control_text:
            # Typed control text stays plain text: exactly the turns, image and regions of a plain question.
            asked = special_counts(session)
            plain = two_objects(service, corpus)
            answer(plain.ask("How do <object1> and <object2> relate?", SHORT))
            assert asked == special_counts(plain)
    else:
        assert session.history == []
    answered(answer(session.ask("What is <object2>?", SHORT)))
