"""The batch runner and its gallery: answers equal the chat's, bad items become error rows, restarts resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrefer import ChatSession, GenerationSettings, PixelRefer
from pixelrefer.batch import load_item, read_items, run_batch
from pixelrefer.cli import main as cli_main
from pixelrefer.media.masks import mask_to_rle, save_mask_png
from pixelrefer.media.video import load_frame_folder
from pixelrefer.report import write_report

from .conftest import REPO, fixtures_root
from .scenes import disc_mask, textured

SETTINGS = GenerationSettings(max_new_tokens=4)
H, W = 48, 64


@pytest.fixture(scope="module")
def model() -> PixelRefer:
    return PixelRefer.from_pretrained(
        str(fixtures_root() / "pixelrefer-lite-tiny" / "checkpoint"), device="cpu", dtype="float32"
    )


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good items (PNG and RLE masks, an image and a frame folder with a mask off the sampled frames) and bad ones."""
    root = tmp_path_factory.mktemp("batch")
    Image.fromarray(textured(H, W, 0)).save(root / "photo.png")
    frames = root / "frames"
    frames.mkdir()
    for k in range(9):
        Image.fromarray(textured(H, W, k)).save(frames / f"{k:03d}.png")
    one, two = disc_mask(H, W, (20, 20), 9), disc_mask(H, W, (30, 44), 8)
    save_mask_png(one, root / "one.png")
    save_mask_png(two, root / "two.png")
    save_mask_png(np.zeros((H, W), bool), root / "empty.png")
    save_mask_png(np.ones((10, 30), bool), root / "wrong_size.png")
    rows = [
        {"id": "png", "image": "photo.png", "objects": [{"mask": "one.png"}, {"masks": {"0": "two.png"}}],
         "questions": ["What is <object1>?", "And <object2>, <b>bold</b>?", {"describe": 2}]},
        {"id": "rle", "image": "photo.png", "objects": [{"mask": mask_to_rle(one)}], "questions": ["What is <object1>?"]},
        {"id": "clip", "video": "frames", "objects": [{"masks": {"1": "one.png", "2": mask_to_rle(two)}, "marked_frames": [1]}],
         "questions": ["What does <object1> do?"]},
        {"id": "missing", "image": "nowhere.png", "objects": [{"mask": "one.png"}], "questions": ["What?"]},
        {"id": "empty", "image": "photo.png", "objects": [{"mask": "empty.png"}], "questions": ["What is <object1>?"]},
        {"id": "size", "image": "photo.png", "objects": [{"mask": "wrong_size.png"}], "questions": ["What is <object1>?"]},
        {"id": "describe", "image": "photo.png", "objects": [{"mask": "one.png"}], "questions": [{"describe": 3}]},
        {"id": "png", "image": "photo.png", "objects": [{"mask": "one.png"}], "questions": ["Twice?"]},
    ]  # fmt: skip
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, "{not json")
    path = root / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = ["png", "rle", "clip"]
BAD = {
    "line-4": "not JSON",
    "missing": "not found: nowhere.png",
    "empty": "empty",
    "size": "30x10 but its frame is 64x48",
    "describe": "describe names object 3",
}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_equal_the_chat_and_bad_items_become_error_rows(model, items, tmp_path) -> None:
    out = tmp_path / "answers.jsonl"
    summary = run_batch(model, items, out, settings=SETTINGS, progress=None)
    rows = rows_of(out)
    by_id = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    assert summary.answered == 3 and summary.failed == len(BAD) + 1  # + the repeated id
    for item_id in GOOD:
        assert by_id[item_id][0]["error"] is None
    for item_id, words in BAD.items():
        (row,) = by_id[item_id]
        assert words in row["error"] and row["answers"] == []
    assert "used twice" in by_id["png"][1]["error"]
    # The same conversation through the chat gives the same ids.
    session = ChatSession(model, image=items.parent / "photo.png")
    session.add_object(disc_mask(H, W, (20, 20), 9))
    object2 = session.add_object(disc_mask(H, W, (30, 44), 8))
    expected = [list(session.ask("What is <object1>?", SETTINGS))[-1].exchange.answer_ids]
    expected.append(list(session.ask("And <object2>, <b>bold</b>?", SETTINGS))[-1].exchange.answer_ids)
    expected.append(list(session.describe(object2.id, SETTINGS))[-1].exchange.answer_ids)
    assert [a["token_ids"] for a in by_id["png"][0]["answers"]] == expected
    assert by_id["png"][0]["answers"][2]["question"] == "Describe <object2> in detail."


def test_clip_masks_off_the_sampled_frames_are_read(items) -> None:
    clip_item = next(i for i in read_items(items) if i.id == "clip")
    loaded = load_item(clip_item, items.parent)
    clip = load_frame_folder(items.parent / "frames")
    assert 2 not in clip.indices and set(loaded.media["extra_frames"]) == {2}
    assert set(loaded.objects[0][0]) == {1, 2} and loaded.objects[0][1] == (1,)


def test_a_restart_skips_answered_items_and_retries_errors(model, items, tmp_path) -> None:
    out = tmp_path / "answers.jsonl"
    run_batch(model, items, out, settings=SETTINGS, progress=None)
    first = rows_of(out)
    with open(out, "a") as handle:
        handle.write('{"id": "cut')  # a run killed mid-write
    again = run_batch(model, items, out, settings=SETTINGS, progress=None)
    assert again.skipped == 4 and again.answered == 0  # the three good items, and the repeat of a done id
    assert again.failed == len(BAD)  # the error rows are retried (and fail again)
    lines = out.read_text().splitlines()
    assert len(lines) == len(first) + 1 + again.failed


def test_shards_cover_every_item_once(model, items, tmp_path) -> None:
    ids = []
    for k in range(2):
        out = tmp_path / f"shard{k}.jsonl"
        run_batch(model, items, out, settings=SETTINGS, shard=(k, 2), progress=None)
        ids += [row["id"] for row in rows_of(out)]
    assert sorted(ids) == sorted(item.id for item in read_items(items))


def test_report_shows_pictures_questions_and_answers_side_by_side(model, items, tmp_path) -> None:
    first, second = tmp_path / "full.jsonl", tmp_path / "lite.jsonl"
    run_batch(model, items, first, settings=SETTINGS, progress=None, model_name="Model A")
    run_batch(
        model,
        items,
        second,
        settings=GenerationSettings(max_new_tokens=2),
        progress=None,
        model_name="Model B",
    )
    page = write_report(items, [first, second], tmp_path / "report.html").read_text()
    assert "Model A" in page and "Model B" in page
    assert page.count("data:image/jpeg;base64,") == 3 + 1 + 1  # the clip's two masked frames, the others one
    assert "And &lt;object2&gt;, &lt;b&gt;bold&lt;/b&gt;?" in page and "<b>bold</b>" not in page
    assert "not found: nowhere.png" in page
    rows = {r["id"]: r for r in rows_of(first)}
    assert rows["rle"]["answers"][0]["answer"].replace("<", "&lt;").replace(">", "&gt;")[:10] in page


def test_cli_batch_with_report(items, tmp_path, capsys) -> None:
    out, report = tmp_path / "cli.jsonl", tmp_path / "cli.html"
    checkpoint = str(fixtures_root() / "pixelrefer-tiny" / "checkpoint")
    code = cli_main(["batch", str(items), "--out", str(out), "--model", checkpoint, "--dtype", "float32",
                     "--max-new-tokens", "3", "--report", str(report)])  # fmt: skip
    assert code == 3  # some items failed
    assert "3 answered" in capsys.readouterr().err
    assert report.is_file() and len(rows_of(out)) == 9
    assert cli_main(["batch", str(items), "--out", str(out), "--model", checkpoint, "--shard", "2/2"]) == 1
    assert "--shard is K/N" in capsys.readouterr().err


def test_the_example_items_load() -> None:
    path = REPO / "examples" / "batch" / "items.jsonl"
    for item in read_items(path):
        loaded = load_item(item, path.parent)
        assert loaded.objects and loaded.questions
