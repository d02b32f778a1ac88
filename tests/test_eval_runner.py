"""The runner machinery `batch` and `eval run` share, and the batch runner's defects fixed for both:
rows appended as done (and after a cut line), the progress bar's time per item and ETA, a line while
loading, `batch --check` validating items with no model loaded (and refusing sampling flags without --sample
before it), and `batch` refusing to append to a file another run wrote."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrefer.batch import Progress, Waiting, append_rows
from pixelrefer.cli import main
from pixelrefer.media.masks import save_mask_png

from .conftest import fixtures_root
from .scenes import disc_mask, textured


def test_append_rows_adds_seconds_keeps_order_one_at_a_time_and_mends_a_cut_line(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text('{"id": "old"}\n{"id": "cu')  # a run killed mid-row
    seen = []
    bar = Progress(3, io.StringIO())
    append_rows(
        out,
        [1, 2, 3],
        lambda k: {"id": k, "error": "bad" if k == 2 else None},
        progress=bar,
        on_row=seen.append,
    )
    lines = out.read_text().splitlines()
    assert lines[:2] == ['{"id": "old"}', '{"id": "cu']
    rows = [json.loads(line) for line in lines[2:]]
    assert [r["id"] for r in rows] == [1, 2, 3] and all(r["seconds"] >= 0 for r in rows)
    assert [r["id"] for r in seen] == [1, 2, 3] and (bar.done, bar.failed) == (3, 1)


def test_append_rows_with_workers_writes_every_row_once(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    append_rows(out, list(range(20)), lambda k: {"id": k, "error": None}, workers=4)
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == list(range(20))


def test_progress_shows_time_per_item_and_eta() -> None:
    stream = io.StringIO()
    bar = Progress(4, stream)
    bar.started -= 8.0  # as if the first item took 8 s
    bar.step(False)
    line = stream.getvalue().splitlines()[-1]
    assert "1/4 items" in line and "8.0 s/item" in line and "ETA 0:24" in line
    bar.step(True)
    bar.step(False)
    bar.step(False)
    assert stream.getvalue().splitlines()[-1].endswith("ETA done, 1 errors")


def test_waiting_says_what_it_waits_for_while_it_does() -> None:
    stream = io.StringIO()
    with Waiting("loading ckpt", stream, every=0.05):
        time.sleep(0.2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "loading ckpt..." and lines[-1].startswith("loading ckpt: done in ")
    assert any(line.startswith("loading ckpt... ") and line.endswith(" s") for line in lines[1:-1])


def test_batch_check_validates_every_item_before_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(textured(48, 64, 0)).save(tmp_path / "photo.png")
    save_mask_png(disc_mask(48, 64, (20, 20), 9), tmp_path / "one.png")
    save_mask_png(np.zeros((48, 64), bool), tmp_path / "empty.png")
    items = tmp_path / "items.jsonl"
    rows = [
        {
            "id": "good",
            "image": "photo.png",
            "objects": [{"mask": "one.png"}],
            "questions": ["What is <object1>?"],
        },
        {"id": "gone", "image": "nowhere.png", "objects": [{"mask": "one.png"}], "questions": ["What?"]},
    ]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A model folder that does not exist: --check never gets to loading one.
    argv = [
        "batch",
        str(items),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--model",
        str(tmp_path / "none"),
        "--check",
    ]
    capsys.readouterr()
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "item gone: image not found: nowhere.png" in err and "1 items with problems" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert main([*argv[:-1], "--temperature", "0.5"]) != 0
    assert "--temperature only applies when sampling" in capsys.readouterr().err


def test_batch_rows_record_provenance_and_another_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(textured(48, 64, 0)).save(tmp_path / "photo.png")
    save_mask_png(disc_mask(48, 64, (20, 20), 9), tmp_path / "one.png")
    items = tmp_path / "items.jsonl"
    row = {
        "id": "a",
        "image": "photo.png",
        "objects": [{"mask": "one.png"}],
        "questions": ["What is <object1>?"],
    }
    items.write_text(json.dumps(row) + "\n")
    out = tmp_path / "answers.jsonl"
    model = fixtures_root() / "pixelrefer-lite-tiny" / "checkpoint"
    argv = [
        "batch",
        str(items),
        "--out",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    provenance = json.loads(out.read_text())["provenance"]
    assert provenance["model"] == str(model) and provenance["variant"] == "lite"
    assert provenance["dtype"] == "float32" and provenance["settings"]["max_new_tokens"] == 3
    capsys.readouterr()
    assert main([*argv, "--max-new-tokens", "4"]) == 1
    assert "settings.max_new_tokens: 3 -> 4" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1
    assert main([*argv, "--max-new-tokens", "4", "--force"]) == 0
    assert "0 answered, 0 errors, 1 already done" in capsys.readouterr().err
