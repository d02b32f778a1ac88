"""`python -m pixelrefer chat`: real runs as separate processes, error handling in-process (start-up is slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelrefer.cli import main

from .conftest import REPO, fixtures_root

FULL = fixtures_root() / "pixelrefer-tiny"
LITE = fixtures_root() / "pixelrefer-lite-tiny"
IMAGE_CASE = FULL / "cases" / "image_2regions"
QUESTION = "What is the relationship between <object1> and <object2>?"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pixelrefer", "chat", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_image_json_is_one_object_and_matches_fixture() -> None:
    case = json.loads((IMAGE_CASE / "case.json").read_text())
    done = run_cli(
        "--model", str(FULL / "checkpoint"),
        "--dtype", "float32",  # the fixture's ids were recorded in float32
        "--image", str(IMAGE_CASE / "inputs" / "image.png"),
        "--mask", str(IMAGE_CASE / "inputs" / "mask_0.png"),
        "--mask", str(IMAGE_CASE / "inputs" / "mask_1.png"),
        "--max-new-tokens", "8",
        "--json",
        QUESTION,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert set(payload) == {"text", "token_ids", "timings"}
    assert payload["token_ids"] == case["generated_ids"]
    assert "<|stream_end|>" not in payload["text"] and payload["text"]
    assert done.stderr == ""


def test_video_folder_streams_the_answer() -> None:
    case_dir = LITE / "cases" / "video_2objects"
    case = json.loads((case_dir / "case.json").read_text())
    inputs = case_dir / "inputs"
    masks = []
    for number, frames in ((1, (1, 4, 7)), (2, (2, 5))):
        for frame in frames:
            masks += [
                "--mask",
                f"{number}@{frame}:{inputs / 'frame_masks' / f'obj{number - 1}' / f'mask_{frame:03d}.png'}",
            ]
    done = run_cli(
        "--model", str(LITE / "checkpoint"),
        "--dtype", "float32",
        "--video", str(inputs / "frames"),
        *masks,
        "--max-new-tokens", "8",
        "--json",
        QUESTION,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token_ids"] == case["generated_ids"]


def test_sampling_is_deterministic_across_processes() -> None:
    args = [
        "--model", str(FULL / "checkpoint"),
        "--image", str(IMAGE_CASE / "inputs" / "image.png"),
        "--mask", str(IMAGE_CASE / "inputs" / "mask_0.png"),
        "--max-new-tokens", "12", "--sample", "--temperature", "1.0", "--seed", "99",
        "What is <object1>?",
    ]  # fmt: skip
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout.strip()


def test_bad_source_fails_in_one_line() -> None:
    done = run_cli(
        "--model", "no-such-owner/no-such-model",
        "--image", str(IMAGE_CASE / "inputs" / "image.png"),
        "--mask", str(IMAGE_CASE / "inputs" / "mask_0.png"),
        "What is <object1>?",
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no-such-owner/no-such-model" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--image", "missing.png", "--mask", "m.png", "q <object1>"], "image not found"),
        (["--image", str(IMAGE_CASE / "inputs" / "image.png"), "--mask", "nope.png", "q"], "mask not found"),
        (
            [
                "--image",
                str(IMAGE_CASE / "inputs" / "image.png"),
                "--mask",
                str(IMAGE_CASE / "inputs" / "mask_0.png"),
                "What about <object2>?",
            ],
            "<object2> is not a marked object",
        ),
        (
            [
                "--image",
                str(IMAGE_CASE / "inputs" / "image.png"),
                "--mask",
                str(
                    fixtures_root()
                    / "pixelrefer-tiny"
                    / "cases"
                    / "video_2objects"
                    / "inputs"
                    / "frame_masks"
                    / "obj0"
                    / "mask_000.png"
                ),
                "q <object1>",
            ],
            "frame is 200x150",
        ),
        (
            [
                "--video",
                str(FULL / "cases" / "video_2objects" / "inputs" / "frames"),
                "--mask",
                "bad-spec.png",
                "q",
            ],
            "FRAME:PATH",
        ),
        (["--image", str(IMAGE_CASE / "inputs" / "case.json"), "--mask", "x", "q"], "image not found"),
        (["--image", str(IMAGE_CASE / "case.json"), "--mask", "x.png", "q"], "not an image"),
        (["--image", "a.png"], "required"),
    ],
)
def test_input_errors_before_loading(args: list[str], fragment: str, capsys, tmp_path: Path) -> None:
    status = main(["chat", "--model", str(tmp_path / "never-loaded"), *args])
    captured = capsys.readouterr()
    assert status != 0
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_help_documents_video_masks(capsys) -> None:
    assert main(["chat", "--help"]) == 0
    assert "K@FRAME:PATH" in capsys.readouterr().out
