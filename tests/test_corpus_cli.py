"""The bad-input corpus through `python -m pixelrefer chat`: in-process (`cli.main`) for every case that does
not depend on the app's limits, and four cases as real processes (start-up costs seconds each).

A valid input exits 0 with one JSON answer; anything else exits non-zero with exactly one line on stderr,
`error: <the library's message>`, no traceback and nothing on stdout. The CLI differs from the app in one
rule: a clip's mask may be on any frame of the file (the CLI decodes it), not only on a sampled one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from pixelrefer.cli import main
from pixelrefer.media.images import load_image
from pixelrefer.media.video import load_clip
from pixelrefer.model.synthetic import build_checkpoint

from .conftest import REPO
from .corpus import (
    ANSWER,
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
    refused,
    write_mask,
)

CLI_MASK_OUTCOMES = {
    "clip_frame_missing": ANSWER,
    "clip_frame_beyond_end": refused(ValueError, r"a mask is on frame 9999, but the clip has frames 0-23"),
}
"""The CLI decodes a mask's frame from the file itself, so any frame of the clip is fine."""


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-checkpoint") / "tiny"
    build_checkpoint(folder, variant="full")
    return folder


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-masks")


def chat(capsys: pytest.CaptureFixture[str], checkpoint: Path, *args: str) -> Run:
    status = main(["chat", "--model", str(checkpoint), "--max-new-tokens", "4", "--json", *args])
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)


def check(run: Run, outcome: Outcome) -> None:
    """An answer: exit 0, one JSON object, nothing on stderr. A refusal: exit 1 or 2, one stderr line."""
    if outcome.answers:
        assert run.status == 0, run.err
        assert run.err == ""
        payload = json.loads(run.out)
        assert set(payload) == {"text", "token_ids", "timings"} and payload["token_ids"]
        return
    assert run.status in (1, 2)
    assert run.out == ""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: ") and "Traceback" not in run.err
    assert re.search(outcome.message, lines[0]), lines[0]


def media_args(case: MediaCase, path: Path, masks: Path, corpus: Corpus) -> list[str]:
    """--image/--video and one mask of the decoded size (the base mask where the file cannot be read)."""
    try:
        if case.kind == "image":
            height, width = load_image(path).shape[:2]
            mask = write_mask(case.object_mask(height, width), masks / f"{case.name}.png", "png")
            return ["--image", str(path), "--mask", str(mask)]
        clip = load_clip(path)
        height, width = clip.frames[0].shape[:2]
        mask = write_mask(case.object_mask(height, width), masks / f"{case.name}.png", "png")
        return ["--video", str(path), "--mask", f"{clip.indices[0]}:{mask}"]
    except ValueError:
        return [
            f"--{case.kind}",
            str(path),
            "--mask",
            str(corpus.base_mask) if case.kind == "image" else f"0:{corpus.base_mask}",
        ]


@pytest.mark.parametrize(
    "case", [c for c in IMAGE_CASES + VIDEO_CASES if not c.limit_dependent], ids=lambda case: case.name
)
def test_media_file(capsys, checkpoint: Path, masks: Path, corpus: Corpus, case: MediaCase) -> None:
    run = chat(capsys, checkpoint, *media_args(case, corpus.media(case), masks, corpus), "What is <object1>?")
    check(run, case.outcome)


@pytest.mark.parametrize("case", [c for c in MASK_CASES if c.file is not None], ids=lambda case: case.name)
def test_mask_file(capsys, checkpoint: Path, corpus: Corpus, case: MaskCase) -> None:
    path = corpus.mask_files[case.name]
    if case.on_clip:
        media = ["--video", str(corpus.base_clip), "--mask", f"{case.frame}:{path}"]
    elif case.frame is not None:
        media = ["--image", str(corpus.base_image), "--mask", f"{case.frame}:{path}"]
        case = replace(
            case, outcome=refused(ValueError, r"mask not found: 3:")
        )  # the CLI takes no frame for images
    else:
        media = ["--image", str(corpus.base_image), "--mask", str(path)]
    check(
        chat(capsys, checkpoint, *media, "What is <object1>?"), CLI_MASK_OUTCOMES.get(case.name, case.outcome)
    )


@pytest.fixture(scope="module")
def corner_mask(masks: Path) -> Path:
    corner = np.zeros((BASE_SIZE[1], BASE_SIZE[0]), bool)
    corner[2:12, 2:20] = True
    return write_mask(corner, masks / "corner.png", "png")


@pytest.mark.parametrize("case", QUESTION_CASES, ids=lambda case: case.name)
def test_question(capsys, checkpoint: Path, corpus: Corpus, corner_mask: Path, case: QuestionCase) -> None:
    media = ["--image", str(corpus.base_image), "--mask", str(corpus.base_mask), "--mask", str(corner_mask)]
    check(chat(capsys, checkpoint, *media, "--", case.text), case.outcome)


def test_more_objects_than_the_limit(capsys, checkpoint: Path, corpus: Corpus) -> None:
    many = ["--mask", str(corpus.base_mask)] * 17
    run = chat(capsys, checkpoint, "--image", str(corpus.base_image), *many, "What is <object17>?")
    check(run, refused(ValueError, r"This would be object 17; the limit is 16 objects"))


def test_too_many_new_tokens(capsys, checkpoint: Path, corpus: Corpus) -> None:
    media = ["--image", str(corpus.base_image), "--mask", str(corpus.base_mask)]
    status = main(
        ["chat", "--model", str(checkpoint), *media, "--max-new-tokens", "100000", "What is <object1>?"]
    )
    run = Run(status, *capsys.readouterr())
    check(run, refused(ValueError, r"max_new_tokens is 100,000; the limit is 16,384 \(83,616 over\)"))


# ---------------------------------------------------------------------- as separate processes


def run_cli(*args: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "pixelrefer", "chat", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def case_named(name: str) -> MediaCase | QuestionCase:
    return next(c for c in (*IMAGE_CASES, *VIDEO_CASES, *QUESTION_CASES) if c.name == name)


@pytest.mark.parametrize("name", ["bomb_100000x100000.png", "half.mp4"])
def test_a_bad_file_in_a_real_process(checkpoint: Path, masks: Path, corpus: Corpus, name: str) -> None:
    case = case_named(name)
    run = run_cli(
        "--model", str(checkpoint), *media_args(case, corpus.media(case), masks, corpus), "What is <object1>?"
    )
    check(run, case.outcome)


@pytest.mark.parametrize("name", ["100000_chars", "all_control_text"])
def test_a_question_in_a_real_process(checkpoint: Path, corpus: Corpus, corner_mask: Path, name: str) -> None:
    case = case_named(name)
    media = ["--image", str(corpus.base_image), "--mask", str(corpus.base_mask), "--mask", str(corner_mask)]
    run = run_cli("--model", str(checkpoint), *media, "--max-new-tokens", "4", "--json", "--", case.text)
    check(run, case.outcome)
