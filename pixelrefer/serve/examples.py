"""The shipped examples: photos and clips with pre-marked objects and a question, read from a manifest.

One click in the app loads an example complete with its objects, so the manifest is checked here, on
load, with errors naming the entry and the file: a broken example should fail at start-up (and in the
tests), not when a visitor clicks it. The manifest (`examples.json`) is a list of entries
`{"name", "kind": "image"|"video", "file", "objects": [{"name", "masks": {"<frame>": "<png>"},
"marked_frames": [<frame>]}], "question"}`; paths are relative to the manifest's folder; images use frame 0.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..media.images import ImageError, check_image_file
from ..media.limits import MediaLimits, MediaRejected
from ..media.masks import load_mask_png
from ..media.video import overlay_image, probe_video, read_frames
from ..runtime.errors import InputError

__all__ = [
    "DEFAULT_EXAMPLES_DIR",
    "MANIFEST",
    "Example",
    "ExampleError",
    "ExampleObject",
    "load_examples",
    "thumbnail",
]

MANIFEST = "examples.json"
DEFAULT_EXAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "examples"
"""`examples/` beside the package, as in the repository and the Docker image."""

_OBJECT_TAG = re.compile(r"<object(\d+)>")
_KINDS = ("image", "video")


class ExampleError(InputError):
    """The examples manifest or one of its files is wrong; the message names the entry and the file."""


@dataclass(frozen=True)
class ExampleObject:
    """One pre-marked object: its masks (bool HxW) by frame index, and the frames the marks were made on."""

    name: str
    masks: dict[int, np.ndarray]
    marked_frames: tuple[int, ...]


@dataclass(frozen=True)
class Example:
    """One example: the media file, its objects in `<object1>`, `<object2>` ... order, and a question."""

    name: str
    kind: Literal["image", "video"]
    path: Path
    objects: tuple[ExampleObject, ...]
    question: str
    size: tuple[int, int]
    """(width, height) of the image or of the clip's frames."""

    @property
    def frames(self) -> tuple[int, ...]:
        """Every frame index that carries a mask of some object, in order."""
        return tuple(sorted({frame for obj in self.objects for frame in obj.masks}))


def _field(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in entry:
        raise ExampleError(f"{where}: '{key}' is missing")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ExampleError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _inside(folder: Path, relative: str, where: str) -> Path:
    """A manifest path as a file inside the examples folder (no absolute paths, no escaping with '..')."""
    if not relative or Path(relative).is_absolute():
        raise ExampleError(f"{where}: '{relative}' must be a path relative to {folder}")
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ExampleError(f"{where}: '{relative}' points outside {folder}")
    if not path.is_file():
        raise ExampleError(f"{where}: {relative} does not exist")
    return path


def _media(kind: str, path: Path, where: str) -> tuple[tuple[int, int], int]:
    """(width, height) and frame count of the example's image or clip."""
    if kind == "image":
        try:
            return check_image_file(path, MediaLimits()), 1
        except ImageError as exc:
            raise ExampleError(f"{where}: {exc}") from exc
    try:
        info = probe_video(path)
    except MediaRejected as exc:
        raise ExampleError(f"{where}: {exc}") from exc
    return (info.width, info.height), info.n_frames


def _frame_index(key: Any, n_frames: int, where: str) -> int:
    text = str(key)
    if not text.isdigit():
        raise ExampleError(f"{where}: frame '{text}' is not a frame index")
    frame = int(text)
    if frame >= n_frames:
        raise ExampleError(f"{where}: frame {frame} is past the end ({n_frames} frames)")
    return frame


def _load_object(
    folder: Path, raw: Any, size: tuple[int, int], n_frames: int, kind: str, where: str
) -> ExampleObject:
    if not isinstance(raw, dict):
        raise ExampleError(f"{where}: an object must be a JSON object")
    name = _field(raw, "name", str, where).strip()
    if not name:
        raise ExampleError(f"{where}: the object has no name")
    where = f"{where} '{name}'"
    files = _field(raw, "masks", dict, where)
    if not files:
        raise ExampleError(f"{where}: no masks")
    masks: dict[int, np.ndarray] = {}
    for key, relative in files.items():
        frame = _frame_index(key, n_frames, where)
        if kind == "image" and frame != 0:
            raise ExampleError(f"{where}: an image has only frame 0, not {frame}")
        if not isinstance(relative, str):
            raise ExampleError(f"{where}: the mask of frame {frame} must be a path")
        path = _inside(folder, relative, where)
        try:
            check_image_file(path, MediaLimits())
            mask = load_mask_png(path)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ExampleError(f"{where}: {relative} is not a readable mask ({exc})") from exc
        if mask.shape != (size[1], size[0]):
            raise ExampleError(
                f"{where}: {relative} is {mask.shape[1]}x{mask.shape[0]}, the frames are {size[0]}x{size[1]}"
            )
        if not mask.any():
            raise ExampleError(f"{where}: {relative} is empty")
        masks[frame] = mask
    marked = _field(raw, "marked_frames", list, where)
    if not marked:
        raise ExampleError(f"{where}: 'marked_frames' is empty")
    marked_frames = tuple(_frame_index(frame, n_frames, where) for frame in marked)
    missing = [frame for frame in marked_frames if frame not in masks]
    if missing:
        raise ExampleError(f"{where}: marked frames {missing} have no mask")
    return ExampleObject(name, dict(sorted(masks.items())), marked_frames)


def _load_entry(folder: Path, raw: Any, position: int) -> Example:
    where = f"{MANIFEST} entry {position}"
    if not isinstance(raw, dict):
        raise ExampleError(f"{where}: an entry must be a JSON object")
    name = _field(raw, "name", str, where).strip()
    if not name:
        raise ExampleError(f"{where}: the example has no name")
    where = f"example '{name}'"
    kind = _field(raw, "kind", str, where)
    if kind not in _KINDS:
        raise ExampleError(f"{where}: kind '{kind}' is neither 'image' nor 'video'")
    path = _inside(folder, _field(raw, "file", str, where), where)
    size, n_frames = _media(kind, path, where)
    raw_objects = _field(raw, "objects", list, where)
    if not raw_objects:
        raise ExampleError(f"{where}: no objects are marked")
    objects = tuple(
        _load_object(folder, obj, size, n_frames, kind, f"{where}, <object{k}>")
        for k, obj in enumerate(raw_objects, start=1)
    )
    question = _field(raw, "question", str, where).strip()
    if not question:
        raise ExampleError(f"{where}: the question is empty")
    unknown = sorted({int(k) for k in _OBJECT_TAG.findall(question)} - set(range(1, len(objects) + 1)))
    if unknown:
        tags = ", ".join(f"<object{k}>" for k in unknown)
        raise ExampleError(
            f"{where}: the question refers to {tags}, but only {len(objects)} objects are marked"
        )
    return Example(name, cast(Literal["image", "video"], kind), path, objects, question, size)


def load_examples(folder: str | os.PathLike | None = None) -> list[Example]:
    """Read and check every example in `folder/examples.json` (default: the shipped `examples/`)."""
    root = Path(folder) if folder is not None else DEFAULT_EXAMPLES_DIR
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ExampleError(f"{manifest} does not exist")
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExampleError(f"{manifest} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ExampleError(f"{manifest} must hold a list of examples")
    examples = [_load_entry(root, raw, position) for position, raw in enumerate(entries)]
    names = [example.name for example in examples]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExampleError(f"{manifest}: example names must be unique ({', '.join(repeated)})")
    return examples


def thumbnail(example: Example, side: int = 200) -> np.ndarray:
    """The example's picture (a clip's first marked frame) with its objects drawn, at most `side` px: what
    the page shows for a visitor to pick, so the objects are seen before the example is opened."""
    frame = example.frames[0] if example.frames else 0
    if example.kind == "image":
        with Image.open(example.path) as opened:
            picture = np.asarray(opened.convert("RGB"))
    else:
        (picture,) = read_frames(example.path, [frame])
    masks = {k: obj.masks[frame] for k, obj in enumerate(example.objects) if frame in obj.masks}
    drawn = overlay_image(picture, masks, {k: k for k in masks})
    scale = side / max(drawn.shape[:2])
    if scale >= 1:
        return drawn
    size = (max(1, round(drawn.shape[1] * scale)), max(1, round(drawn.shape[0] * scale)))
    return np.asarray(Image.fromarray(drawn).resize(size, Image.Resampling.LANCZOS))
