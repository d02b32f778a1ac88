"""The shipped examples load, are small, and their masks sit on the frames the model actually sees.

Also checks that the loader refuses a broken manifest with an error naming the problem, since the app
relies on it to fail at start-up rather than when a visitor clicks an example.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moviepy.config import FFMPEG_BINARY
from PIL import Image

from pixelrefer.media.sampling import sample_frames
from pixelrefer.media.video import probe_video, read_frames
from pixelrefer.serve.examples import DEFAULT_EXAMPLES_DIR, Example, ExampleError, load_examples

EXAMPLES = DEFAULT_EXAMPLES_DIR
TAG = re.compile(r"<object(\d+)>")


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return load_examples(EXAMPLES)


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return json.loads((EXAMPLES / "examples.json").read_text())


def _videos(examples: list[Example]) -> list[Example]:
    return [example for example in examples if example.kind == "video"]


def test_manifest_loads_with_enough_examples(examples: list[Example]) -> None:
    kinds = [example.kind for example in examples]
    assert kinds.count("image") >= 3
    assert kinds.count("video") >= 2
    assert len({example.name for example in examples}) == len(examples)
    for example in examples:
        assert 1 <= len(example.objects) <= 3, example.name
        assert example.path.is_file() and example.path.is_relative_to(EXAMPLES)


def test_default_folder_is_the_shipped_one() -> None:
    assert Path(__file__).resolve().parent.parent / "examples" == EXAMPLES
    assert [e.name for e in load_examples()] == [e.name for e in load_examples(EXAMPLES)]


def test_every_referenced_file_exists_and_is_small(manifest: list[dict]) -> None:
    for entry in manifest:
        media = EXAMPLES / entry["file"]
        assert media.is_file(), entry["file"]
        assert media.stat().st_size < 400_000, f"{entry['file']} is {media.stat().st_size} bytes"
        for obj in entry["objects"]:
            for relative in obj["masks"].values():
                mask = EXAMPLES / relative
                assert mask.is_file(), relative
                assert mask.stat().st_size < 20_000, relative
    shipped = [p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    total = sum(p.stat().st_size for p in shipped)
    assert total < 3_000_000, f"examples/ holds {total / 1e6:.2f} MB"


def test_images_are_reencoded_and_small(examples: list[Example]) -> None:
    for example in examples:
        if example.kind != "image":
            continue
        with Image.open(example.path) as image:
            assert image.format == "JPEG", example.name
            assert image.mode == "RGB"
            assert max(image.size) <= 800
            assert image.size == example.size


def test_mask_files_are_binary_8bit_of_the_right_size(manifest: list[dict], examples: list[Example]) -> None:
    by_name = {example.name: example for example in examples}
    for entry in manifest:
        width, height = by_name[entry["name"]].size
        for obj in entry["objects"]:
            for relative in obj["masks"].values():
                with Image.open(EXAMPLES / relative) as png:
                    assert png.format == "PNG" and png.mode == "L", relative
                    values = np.asarray(png)
                assert values.shape == (height, width), relative
                assert set(np.unique(values).tolist()) == {0, 255}, f"{relative} is not 0/255 or is empty"


def test_masks_are_nonempty_and_match_their_frames(examples: list[Example]) -> None:
    for example in examples:
        width, height = example.size
        for obj in example.objects:
            assert obj.masks, f"{example.name}/{obj.name}"
            assert set(obj.marked_frames) <= set(obj.masks)
            for frame, mask in obj.masks.items():
                assert mask.dtype == bool and mask.shape == (height, width)
                # An object, not a speck, and not the whole frame.
                assert 0.001 < mask.mean() < 0.6, (
                    f"{example.name}/{obj.name} frame {frame}: {mask.mean():.4f}"
                )
            if example.kind == "image":
                assert list(obj.masks) == [0] and obj.marked_frames == (0,)


def test_objects_of_one_example_do_not_overlap(examples: list[Example]) -> None:
    for example in examples:
        for frame in example.frames:
            masks = [obj.masks[frame] for obj in example.objects if frame in obj.masks]
            for a in range(len(masks)):
                for b in range(a + 1, len(masks)):
                    shared = (masks[a] & masks[b]).sum() / min(masks[a].sum(), masks[b].sum())
                    assert shared < 0.02, f"{example.name} frame {frame}: objects {a + 1} and {b + 1} overlap"


def test_clips_are_short_browser_friendly_h264(examples: list[Example]) -> None:
    for example in _videos(examples):
        info = probe_video(example.path)
        assert 3.0 <= info.duration <= 6.0, example.name
        assert 10 <= info.fps <= 15, example.name
        assert info.width <= 640 and info.width % 2 == 0 and info.height % 2 == 0
        assert (info.width, info.height) == example.size
        listing = subprocess.run(
            [FFMPEG_BINARY, "-hide_banner", "-i", str(example.path)], capture_output=True, text=True
        ).stderr
        stream = next(line for line in listing.splitlines() if "Video:" in line)
        assert "h264" in stream and "yuv420p" in stream, stream
        assert "Audio:" not in listing


def test_clip_masks_are_on_the_frames_the_official_1fps_rule_samples(examples: list[Example]) -> None:
    for example in _videos(examples):
        info = probe_video(example.path)
        sampled = sample_frames(info.n_frames, source="file", native_fps=info.fps, fps=1).indices
        assert len(sampled) >= 3
        for obj in example.objects:
            assert tuple(sorted(obj.masks)) == sampled, f"{example.name}/{obj.name}"
            assert set(obj.marked_frames) <= set(sampled)


def test_clips_decode_at_the_manifest_frames_and_masks_follow_the_camera(examples: list[Example]) -> None:
    for example in _videos(examples):
        frames = read_frames(example.path, example.frames)
        assert len(frames) == len(example.frames)
        width, height = example.size
        for frame in frames:
            assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        # The camera moves, so neither the picture nor an object's mask can be the same on every frame.
        assert not np.array_equal(frames[0], frames[-1])
        decoded = dict(zip(example.frames, frames, strict=True))
        for obj in example.objects:
            first, last = obj.masks[example.frames[0]], obj.masks[example.frames[-1]]
            assert not np.array_equal(first, last), f"{example.name}/{obj.name} does not move"
            # The same object is under the mask on every frame: its mean colour barely changes.
            colours = np.array([decoded[f][mask].mean(axis=0) for f, mask in obj.masks.items()])
            drift = np.abs(colours - colours.mean(axis=0)).max()
            assert drift < 12, f"{example.name}/{obj.name}: colour under the mask drifts by {drift:.1f}"


def test_questions_reference_only_marked_objects(examples: list[Example]) -> None:
    for example in examples:
        referenced = {int(k) for k in TAG.findall(example.question)}
        assert referenced, f"{example.name}: the question names no object"
        assert referenced <= set(range(1, len(example.objects) + 1)), example.question
        assert referenced == set(range(1, len(example.objects) + 1)), (
            f"{example.name}: every marked object should be asked about"
        )
        assert "<object0>" not in example.question and "<region" not in example.question


def test_credits_name_every_example_file(manifest: list[dict]) -> None:
    credits = (EXAMPLES / "CREDITS.md").read_text()
    for entry in manifest:
        assert f"`{entry['file']}`" in credits, entry["file"]
    for phrase in (
        "scikit-image",
        "0.26.0",
        "CC0",
        "public domain",
        "Stefan van der Walt",
        "Rachel Michetti",
    ):
        assert phrase in credits


def test_generator_is_not_imported_by_the_package() -> None:
    root = EXAMPLES.parent
    sources = list((root / "pixelrefer").rglob("*.py")) + [p for p in [root / "app.py"] if p.exists()]
    for source in sources:
        assert "make_examples" not in source.read_text(), source


# ------------------------------------------------------------------------------------- loader checks


def _write_case(
    folder: Path, *, size: tuple[int, int] = (8, 6), mask: np.ndarray | None = None, **entry: Any
) -> Path:
    """A one-example folder: an 8x6 image, one mask (a 3x3 square by default), and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(folder / "photo.png")
    if mask is None:
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[1:4, 2:5] = 255
    Image.fromarray(mask.astype(np.uint8)).save(folder / "m.png")
    record = {
        "name": "case",
        "kind": "image",
        "file": "photo.png",
        "objects": [{"name": "square", "masks": {"0": "m.png"}, "marked_frames": [0]}],
        "question": "What is <object1>?",
    }
    record.update(entry)
    (folder / "examples.json").write_text(json.dumps([record]))
    return folder


def test_loader_reads_a_valid_case(tmp_path: Path) -> None:
    (example,) = load_examples(_write_case(tmp_path))
    assert example.kind == "image" and example.size == (8, 6)
    mask = example.objects[0].masks[0]
    assert mask.dtype == bool and mask.sum() == 9 and mask[2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"file": "missing.jpg"}, "missing.jpg does not exist"),
        ({"file": "../photo.png"}, "outside"),
        ({"kind": "gif"}, "neither 'image' nor 'video'"),
        ({"question": "Compare <object1> and <object2>."}, "<object2>"),
        ({"question": "  "}, "question is empty"),
        ({"objects": []}, "no objects"),
        ({"objects": [{"name": "square", "masks": {"3": "m.png"}, "marked_frames": [3]}]}, "past the end"),
        ({"objects": [{"name": "square", "masks": {"0": "m.png"}, "marked_frames": []}]}, "marked_frames"),
        ({"objects": [{"name": "square", "masks": {"0": "nope.png"}, "marked_frames": [0]}]}, "nope.png"),
    ],
)
def test_loader_names_what_is_wrong(tmp_path: Path, change: dict, message: str) -> None:
    folder = _write_case(tmp_path / "case", **change)
    with pytest.raises(ExampleError, match=re.escape(message)):
        load_examples(folder)


def test_loader_refuses_masks_of_the_wrong_size_or_empty(tmp_path: Path) -> None:
    wrong = _write_case(tmp_path / "wrong", size=(7, 6))
    with pytest.raises(ExampleError, match=r"m\.png is 7x6, the frames are 8x6"):
        load_examples(wrong)
    empty = _write_case(tmp_path / "empty", mask=np.zeros((6, 8), np.uint8))
    with pytest.raises(ExampleError, match=r"m\.png is empty"):
        load_examples(empty)


def test_loader_refuses_a_missing_or_malformed_manifest(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match="does not exist"):
        load_examples(tmp_path)
    (tmp_path / "examples.json").write_text("{not json")
    with pytest.raises(ExampleError, match="not valid JSON"):
        load_examples(tmp_path)
    (tmp_path / "examples.json").write_text('{"name": "x"}')
    with pytest.raises(ExampleError, match="list of examples"):
        load_examples(tmp_path)


def test_loader_refuses_duplicate_names(tmp_path: Path) -> None:
    folder = _write_case(tmp_path)
    entries = json.loads((folder / "examples.json").read_text())
    (folder / "examples.json").write_text(json.dumps(entries * 2))
    with pytest.raises(ExampleError, match="unique"):
        load_examples(folder)
