"""Limits as configuration: one place (`pixelrefer.media.limits`, `AppSettings`), the table of docs/limits.md
in step with the defaults, a flag and an environment variable for each, and one precise message per limit."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrefer.chat.limits import ChatLimits
from pixelrefer.chat.session import ChatSession, Exchange
from pixelrefer.media.images import ImageError, load_image
from pixelrefer.media.limits import LimitExceeded, MediaLimits, MediaRejected
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.serve.service import AppSettings, Service

from .conftest import REPO

SHORT = GenerationSettings(max_new_tokens=3)


def limits_table() -> list[dict[str, str]]:
    """The table of docs/limits.md ("## The limits"), one dict per row keyed by the header."""
    text = (REPO / "docs" / "limits.md").read_text()
    section = text.split("\n## The limits\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def number(cell: str) -> float | None:
    """'50 MB' → 50, '16,384' → 16384, '1 GiB' → 2**30, '—' → None."""
    if cell in {"—", "-", ""}:
        return None
    found = re.match(r"([\d,.]+)\s*(GiB)?", cell)
    assert found, f"not a number: {cell!r}"
    value = float(found.group(1).replace(",", ""))
    return value * 2**30 if found.group(2) else value


def setting(holder: object, path: str) -> object:
    for part in path.split("."):
        holder = getattr(holder, part)
    return holder


def library_value(path: str) -> object:
    group, _, name = path.rpartition(".")
    if group == "media":
        return getattr(MediaLimits(), name)
    if group == "chat" or name == "max_new_tokens":
        return getattr(ChatLimits(), name)
    return None


def test_the_readme_table_states_the_app_and_library_defaults() -> None:
    rows = limits_table()
    app = AppSettings()
    seen = set()
    for row in rows:
        path = row["setting"].strip("`")
        seen.add(path)
        assert number(row["app default"]) == pytest.approx(setting(app, path)), row
        library = library_value(path)
        assert number(row["library default"]) == (None if library is None else pytest.approx(library)), row
    limits = {f"media.{f.name}" for f in fields(MediaLimits)} | {f"chat.{f.name}" for f in fields(ChatLimits)}
    limits = limits - {"chat.max_new_tokens"}  # one setting in the app: AppSettings.max_new_tokens
    limits |= {"max_new_tokens", "concurrency", "queue_size", "max_sessions", "session_ttl_s"}
    assert seen == limits


@pytest.mark.parametrize("row", limits_table(), ids=lambda row: row["setting"].strip("`"))
def test_each_flag_in_the_table_sets_its_limit(row: dict[str, str]) -> None:
    path = row["setting"].strip("`")
    flag = re.search(r"`(--[a-z0-9-]+)", row["how to change"]).group(1)
    current = setting(AppSettings(), path)
    wanted = 7 if isinstance(current, int) else 7.5
    parsed = AppSettings.parse([flag, str(wanted)], env={})
    assert setting(parsed, path) == wanted
    variable = "PIXELREFER_" + flag[2:].replace("-", "_").upper()
    assert setting(AppSettings.parse([], env={variable: str(wanted)}), path) == wanted


def test_the_default_parse_is_the_default_settings_and_the_token_limit_is_one_setting() -> None:
    assert AppSettings.parse([], env={}) == AppSettings()
    assert AppSettings().chat.max_new_tokens == AppSettings().max_new_tokens == 512
    assert replace(AppSettings(), max_new_tokens=2048).chat.max_new_tokens == 2048
    assert AppSettings.parse(["--generation-timeout-s", "none"], env={}).chat.generation_timeout_s is None
    for bad in (["--max-objects", "many"], ["--max-upload-mb", "0"], ["--max-frames", "-3"]):
        with pytest.raises(SystemExit):
            AppSettings.parse(bad, env={})


def test_every_message_names_the_limit_the_value_and_the_excess() -> None:
    media = MediaLimits(max_upload_mb=50, max_pixels=50_000_000)
    with pytest.raises(MediaRejected, match=r"^clip\.mp4 is 212\.4 MB; the limit is 50 MB\. "):
        media.check_upload_size(212_400_000, "clip.mp4")
    with pytest.raises(
        MediaRejected,
        match=r"^The frames of c\.mp4 are 8200x8200 = 67,240,000 pixels; the limit is 50,000,000 pixels \(1\.3x too many\)",
    ):
        media.check_pixels(8200, 8200, "The frames of c.mp4 are")
    chat = ChatLimits(
        max_objects=2, max_question_chars=10, max_new_tokens=8, max_history=3, max_prompt_tokens=100
    )
    cases = [
        (lambda: chat.check_object_count(2), "This would be object 3; the limit is 2 objects. Delete one to mark another."),
        (lambda: chat.check_question("x" * 25), "The question is 25 characters long; the limit is 10 (15 over). Shorten it."),
        (lambda: chat.check_new_tokens(1000), "max_new_tokens is 1,000; the limit is 8 (992 over)."),
        (lambda: chat.check_history(3), "This chat already has 3 questions and answers; the limit is 3. Clear the chat (the objects stay) to ask more."),
        (lambda: chat.check_prompt(150, 8, 32768), "The conversation is too long: 150 prompt tokens; the limit is 100 prompt tokens (50 over). Clear the chat, or use fewer objects or frames."),
        (lambda: chat.check_prompt(90, 30, 110), "The conversation is too long: 90 prompt tokens; with 30 new tokens the model's context of 110 allows 80 (10 over). Clear the chat, or use fewer objects or frames."),
    ]  # fmt: skip
    for check, message in cases:
        with pytest.raises(LimitExceeded) as refusal:
            check()
        assert str(refusal.value) == message
    chat.check_object_count(1)
    chat.check_question("x" * 10)
    chat.check_new_tokens(8)
    chat.check_history(2)
    chat.check_prompt(100, 8, 32768)
    assert "Up to 2 objects" in chat.describe() and "50 megapixels" in media.describe()


# ---------------------------------------------------------------------- images


def test_an_image_over_the_upload_size_is_refused_only_with_limits(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    size = path.stat().st_size
    assert load_image(path).shape == (8, 8, 3)
    with pytest.raises(ImageError, match=rf"^photo\.png is {size / 1e6:.1f} MB; the limit is 1e-05 MB"):
        load_image(path, limits=MediaLimits(max_upload_mb=1e-5))


def test_pils_decompression_bomb_limit_is_a_clear_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIL refuses images over twice `Image.MAX_IMAGE_PIXELS` while opening them; that becomes our message."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError) as refusal:
        load_image(path)
    assert str(refusal.value) == (
        "wide.png declares 10,000 pixels; the limit is 2,000 pixels. It was refused unread (a decompression bomb?)."
    )


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    with pytest.raises(
        ImageError, match=r"^big\.png is 40x30 = 1,200 pixels; the limit is 1,000 pixels \(1\.2x too many\)"
    ):
        load_image(path, max_pixels=1000)
    with pytest.raises(ImageError, match=r"^big\.png is 40x30"):
        load_image(path, limits=MediaLimits(max_pixels=1000))
    with pytest.raises(ImageError, match=r"^The image is 40x30 = 1,200 pixels"):
        load_image(np.zeros((30, 40, 3), np.uint8), max_pixels=1000)


# ---------------------------------------------------------------------- a chat at its limits


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    settings = replace(
        AppSettings(), preview_dir=tmp_path_factory.mktemp("preview"), sam2="grabcut", device="cpu"
    )
    return Service(settings).start().model


def session_with(model, limits: ChatLimits) -> ChatSession:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    session = ChatSession(model, image=image, limits=limits)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    session.add_object(mask)
    return session


def answer(replies) -> Exchange:
    return ChatSession.final(replies)


def test_the_history_limit_refuses_the_next_question_until_the_chat_is_cleared(model) -> None:
    session = session_with(model, ChatLimits(max_history=2))
    answer(session.ask("What is <object1>?", SHORT))
    answer(session.ask("And its colour?", SHORT))
    with pytest.raises(
        LimitExceeded, match=r"^This chat already has 2 questions and answers; the limit is 2\."
    ):
        session.ask("And its size?", SHORT)
    with pytest.raises(LimitExceeded, match="the limit is 2"):
        session.describe(1, SHORT)
    # Regenerating replaces the last answer, so it is allowed at the limit.
    assert answer(session.regenerate(SHORT)).question == "And its colour?"
    assert len(session.history) == 2
    session.clear()
    assert answer(session.ask("And its size?", SHORT)).answer_ids


def test_longer_answers_than_the_limit_are_refused_before_anything_runs(model) -> None:
    session = session_with(model, ChatLimits(max_new_tokens=8))
    with pytest.raises(LimitExceeded, match=r"^max_new_tokens is 9; the limit is 8 \(1 over\)\.$"):
        session.ask("What is <object1>?", GenerationSettings(max_new_tokens=9))
    assert session.feature_cache.nbytes == 0 and session.history == []
    answer(session.ask("What is <object1>?", GenerationSettings(max_new_tokens=8)))
    with pytest.raises(LimitExceeded, match=r"^max_new_tokens is 20; the limit is 8"):
        session.regenerate(GenerationSettings(max_new_tokens=20))
    assert len(session.history) == 1


def test_a_prompt_over_the_limit_is_refused_before_the_networks_run(model) -> None:
    session = session_with(model, ChatLimits(max_prompt_tokens=20))
    with pytest.raises(
        LimitExceeded,
        match=r"^The conversation is too long: \d+ prompt tokens; the limit is 20 prompt tokens \(\d+ over\)",
    ):
        answer(session.ask("What is <object1>?", SHORT))
    assert session.feature_cache.nbytes == 0 and session.history == []
