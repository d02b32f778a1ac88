"""`python -m pixelrefer batch`: many items (an image or a clip, marked objects, questions) → JSONL answers.

One JSON object per line of the items file; paths are relative to that file's folder:

    {"id": "cat", "image": "images/cat.jpg",
     "objects": [{"masks": {"0": "masks/cat/eye.png"}}, {"mask": {"size": [h, w], "counts": "..."}}],
     "questions": ["What colour is <object1>?", "And <object2>?", {"describe": 1}]}
    {"id": "pan", "video": "clips/cat_pan.mp4",
     "objects": [{"masks": {"0": "masks/pan/cat_f0.png", "12": "masks/pan/cat_f12.png"}, "marked_frames": [0]}],
     "questions": ["What is <object1> doing?"]}

A mask is a PNG path or a COCO RLE (`{"size", "counts"}`); clip masks are keyed by the clip's frame index
(any frame, sampled or not). An item's questions are one conversation, asked in order. Each item becomes
one output row; a bad item becomes an error row and the run goes on. Rows already answered (without an
error) are skipped when the run is restarted on the same output. Items run concurrently up to what the
engine decodes at once (vLLM: its batch; transformers: one at a time).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .chat.limits import ChatLimits
from .chat.session import ChatSession
from .media.images import load_image
from .media.limits import MediaLimits
from .media.masks import fit_mask as fit_frame_mask
from .media.masks import load_mask_png, mask_from_rle, to_bool_mask
from .model.generation import GenerationSettings
from .model.inference import PixelRefer
from .runtime.errors import InputError
from .runtime.jsonl import read_jsonl

__all__ = [
    "BatchItem",
    "BatchSummary",
    "ItemError",
    "Progress",
    "Waiting",
    "append_rows",
    "check_items",
    "check_provenance",
    "fit_mask",
    "load_item",
    "read_items",
    "run_batch",
]


class ItemError(InputError):
    """An item that cannot be answered; becomes its error row."""


@dataclass
class BatchItem:
    """One line of the items file, as read (media not loaded yet)."""

    id: str
    line: int
    raw: dict[str, Any]
    problem: str = ""


@dataclass
class LoadedItem:
    """An item's media and objects, ready for a chat session."""

    media: dict[str, Any]
    objects: list[tuple[dict[int, np.ndarray], tuple[int, ...]]]
    questions: list[str | int]


@dataclass
class BatchSummary:
    """What a run did: items answered, failed and skipped (already done), and its wall time."""

    answered: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return (self.answered + self.failed) / self.seconds if self.seconds else 0.0


def read_items(path: Path) -> list[BatchItem]:
    """Every line of the items file; a line that is not a JSON object, or a repeated id, is a problem item."""
    items: list[BatchItem] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                items.append(
                    BatchItem(f"line-{number}", number, {}, f"line {number} is not JSON ({exc.msg})")
                )
                continue
            if not isinstance(raw, dict):
                items.append(BatchItem(f"line-{number}", number, {}, f"line {number} is not a JSON object"))
                continue
            item_id = str(raw.get("id") or f"line-{number}")
            problem = f"the id '{item_id}' is used twice" if item_id in seen else ""
            seen.add(item_id)
            items.append(BatchItem(item_id, number, raw, problem))
    return items


def fit_mask(
    mask: np.ndarray, shape: tuple[int, int], what: str, source_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A mask of its frame's size by the library's one rule (`pixelrefer.media.masks.fit_mask`), as an ItemError."""
    try:
        return fit_frame_mask(mask, shape, source_shape=source_shape, what=what)
    except InputError as exc:
        raise ItemError(str(exc)) from exc


def _inside(base: Path, relative: Any, what: str) -> Path:
    if not isinstance(relative, str) or not relative:
        raise ItemError(f"{what} must be a path")
    path = (base / relative).resolve()
    if not path.exists():
        raise ItemError(f"{what} not found: {relative}")
    return path


def _mask(spec: Any, base: Path, what: str) -> np.ndarray:
    try:
        if isinstance(spec, Mapping):
            mask = mask_from_rle(spec)
        else:
            mask = to_bool_mask(load_mask_png(_inside(base, spec, what)))
    except ItemError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ItemError(f"{what} cannot be read ({type(exc).__name__}: {exc})") from exc
    return mask


def _object_masks(spec: Any, number: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    if not isinstance(spec, Mapping):
        raise ItemError(f"object {number} must be an object with 'mask' or 'masks'")
    masks = spec.get("masks", {"0": spec["mask"]} if "mask" in spec else None)
    if not isinstance(masks, Mapping) or not masks:
        raise ItemError(f"object {number} has no masks")
    marked = spec.get("marked_frames", [])
    if not isinstance(marked, list) or not all(isinstance(f, int) for f in marked):
        raise ItemError(f"object {number}: marked_frames must be a list of frame indices")
    return dict(masks), tuple(marked)


def _questions(raw: dict[str, Any], n_objects: int) -> list[str | int]:
    questions = raw.get("questions", [raw["question"]] if "question" in raw else None)
    if not isinstance(questions, list) or not questions:
        raise ItemError("the item has no questions")
    out: list[str | int] = []
    for question in questions:
        if isinstance(question, str):
            out.append(question)
        elif isinstance(question, Mapping) and isinstance(question.get("describe"), int):
            if not 1 <= question["describe"] <= n_objects:
                raise ItemError(f"describe names object {question['describe']}, but there are {n_objects}")
            out.append(int(question["describe"]))
        else:
            raise ItemError('a question is a string or {"describe": K}')
    return out


def load_item(item: BatchItem, base: Path, limits: MediaLimits | None = None) -> LoadedItem:
    """Read an item's media and masks, checked; raises ItemError (or the library's media errors)."""
    from .media.video import load_clip, load_frame_folder, probe_video, read_frames

    if item.problem:
        raise ItemError(item.problem)
    raw = item.raw
    if ("image" in raw) == ("video" in raw):
        raise ItemError("give exactly one of 'image' or 'video'")
    objects = raw.get("objects")
    if not isinstance(objects, list) or not objects:
        raise ItemError("the item has no objects")
    specs = [_object_masks(spec, k) for k, spec in enumerate(objects, start=1)]
    questions = _questions(raw, len(specs))
    if "image" in raw:
        image = load_image(_inside(base, raw["image"], "image"), limits=limits)
        loaded = []
        for number, (masks, marked) in enumerate(specs, start=1):
            if set(masks) != {"0"}:
                raise ItemError(f"object {number}: an image has only frame 0")
            mask = _mask(masks["0"], base, f"the mask of object {number}")
            loaded.append(({0: fit_mask(mask, image.shape[:2], f"the mask of object {number}")}, marked))
        return LoadedItem({"image": image}, loaded, questions)
    source = _inside(base, raw["video"], "video")
    clip = load_frame_folder(source, limits) if source.is_dir() else load_clip(source, limits)
    shape = clip.frames[0].shape[:2]
    loaded = []
    for number, (masks, marked) in enumerate(specs, start=1):
        by_frame = {}
        for key, spec in masks.items():
            if not str(key).isdigit():
                raise ItemError(f"object {number}: frame '{key}' is not a frame index")
            by_frame[int(key)] = fit_mask(
                _mask(spec, base, f"object {number}'s mask on frame {key}"),
                shape,
                "a mask",
                clip.source_shape,
            )
        loaded.append((by_frame, marked))
    wanted = sorted({f for masks, _ in loaded for f in masks} - set(clip.indices))
    extra: dict[int, np.ndarray] = {}
    if wanted:
        if source.is_dir():
            names = sorted(p.name for p in source.iterdir())
            if wanted[-1] >= len(names):
                raise ItemError(f"the folder has {len(names)} frames; a mask is on frame {wanted[-1]}")
            extra = {f: load_image(source / names[f], limits=limits) for f in wanted}
        else:
            count = probe_video(source, limits).n_frames
            if wanted[-1] >= count:
                raise ItemError(f"a mask is on frame {wanted[-1]}, but the clip has frames 0-{count - 1}")
            extra = dict(zip(wanted, read_frames(source, wanted, size=(shape[1], shape[0])), strict=True))
    return LoadedItem({"clip": clip, "extra_frames": extra}, loaded, questions)


def answer_item(
    model: PixelRefer, loaded: LoadedItem, settings: GenerationSettings, limits: ChatLimits
) -> list[dict]:
    """The item's questions as one conversation; returns one record per question."""
    session = ChatSession(model, **loaded.media, limits=limits)
    try:
        ids = [session.add_object(masks, marked_frames=marked).id for masks, marked in loaded.objects]
        answers = []
        for question in loaded.questions:
            if isinstance(question, int):
                replies = session.describe(ids[question - 1], settings)
            else:
                replies = session.ask(question, settings)
            exchange = ChatSession.final(replies)

            answers.append(
                {
                    "question": exchange.question,
                    "answer": exchange.answer,
                    "finish_reason": exchange.finish_reason,
                    "token_ids": exchange.answer_ids,
                }
            )
        return answers
    finally:
        session.close()


def check_provenance(out_path: Path, provenance: Mapping[str, Any], *, known_only: bool = False) -> None:
    """Refuse to append to an answers file whose rows were made with another provenance (rows written
    before rows carried one are not compared). `known_only`: only what is known before the model loads."""
    from .eval.provenance import refuse_mixed

    if not out_path.is_file():
        return
    earlier = []
    with open(out_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            if isinstance(row, dict) and isinstance(row.get("provenance"), dict):
                earlier.append(row["provenance"])
    refuse_mixed(earlier, provenance, out_path.name, known_only=known_only)


def finished_ids(out_path: Path) -> set[str]:
    """Ids of the rows already answered without an error (what a restart skips)."""
    done: set[str] = set()
    if not out_path.is_file():
        return done
    with open(out_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            if isinstance(row, dict) and not row.get("error") and "id" in row:
                done.add(str(row["id"]))
    return done


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Waiting:
    """While a slow step runs (loading a model, starting an engine), say so and how long it has taken:
    a line at the start, then the elapsed time every `every` seconds, and the total at the end."""

    def __init__(self, what: str, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.what, self.every = what, every
        self.stream = stream if stream is not None else sys.stderr
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        started = time.perf_counter()
        while not self._done.wait(self.every):
            self.stream.write(f"{self.what}... {time.perf_counter() - started:.0f} s\n")
            self.stream.flush()

    def __enter__(self) -> Waiting:
        self.started = time.perf_counter()
        self.stream.write(f"{self.what}...\n")
        self.stream.flush()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        if exc_info[0] is None:
            self.stream.write(f"{self.what}: done in {time.perf_counter() - self.started:.1f} s\n")
            self.stream.flush()


class Progress:
    """A one-line progress bar with the time per item and the ETA on a terminal (a line per 10% elsewhere)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        self._shown = -1

    def step(self, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        filled = int(30 * self.done / max(self.total, 1))
        eta = _duration((self.total - self.done) / rate) if self.done < self.total else "done"
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} items, {rate:.2f} items/s, "
            f"{elapsed / self.done:.1f} s/item, ETA {eta}, {self.failed} errors"
        )
        decile = 10 * self.done // max(self.total, 1)
        if self._tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
        elif decile != self._shown:
            self.stream.write(line + "\n")
        self._shown = decile
        self.stream.flush()


def _error_text(exc: BaseException) -> str:
    from .runtime.redact import scrub

    return scrub(" ".join(str(exc).split()) or type(exc).__name__)


def run_batch(
    model: PixelRefer,
    items_path: str | Path,
    out_path: str | Path,
    *,
    settings: GenerationSettings | None = None,
    limits: ChatLimits | None = None,
    media_limits: MediaLimits | None = None,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int], Progress] | None = Progress,
    model_name: str = "",
    provenance: Mapping[str, Any] | None = None,
    force: bool = False,
) -> BatchSummary:
    """Answer every item of `items_path` not yet answered in `out_path` (appended to, one row per item).

    `shard=(k, n)` takes every n-th item from the k-th, for data-parallel runs (one process per GPU, each
    with its own output). `workers` defaults to what the engine decodes at once. With `provenance` (see
    `eval.provenance.model_provenance`) every row records it, and a file holding rows of another
    provenance is refused unless `force`.
    """
    items_path, out_path = Path(items_path), Path(out_path)
    settings = settings or GenerationSettings()
    limits = limits or ChatLimits()
    index, count = shard
    if not 0 <= index < count:
        raise InputError(f"shard {index}/{count}: the first number goes from 0 to {count - 1}")
    if provenance is not None and not force:
        check_provenance(out_path, provenance)
    items = read_items(items_path)[index::count]
    done = finished_ids(out_path)
    todo = [item for item in items if item.id not in done]
    summary = BatchSummary(skipped=len(items) - len(todo))
    name = model_name or Path(model.source).name
    base = items_path.parent
    started = time.perf_counter()

    def work(item: BatchItem) -> dict[str, Any]:
        row: dict[str, Any] = {"id": item.id, "model": name, "engine": model.engine.name}
        try:
            loaded = load_item(item, base, media_limits)
            row["answers"] = answer_item(model, loaded, settings, limits)
            row["error"] = None
        except Exception as exc:  # one bad item is its error row, never the end of the run
            row["answers"] = []
            row["error"] = _error_text(exc)
        if provenance is not None:
            row["provenance"] = dict(provenance)
        return row

    summary.answered, summary.failed = append_rows(
        out_path,
        todo,
        work,
        workers=max(1, workers or model.engine.max_concurrency),
        progress=progress(len(todo)) if progress is not None else None,
    )
    summary.seconds = time.perf_counter() - started
    return summary


def append_rows(
    out_path: Path,
    todo: Sequence[Any],
    work: Callable[[Any], dict[str, Any]],
    *,
    workers: int = 1,
    progress: Progress | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[int, int]:
    """Append `work(item)` for each item to a JSONL file, `workers` items at once, each row as it is done;
    the rows answered and failed.

    `work` returns the row (with "error" set when the item failed) and `seconds` is added, the item's
    wall time. Shared by `batch` and `eval run`: same resumable file, progress bar and worker pool.
    """
    lock = threading.Lock()
    outcomes: Counter[bool] = Counter()

    def one(item: Any) -> None:
        began = time.perf_counter()
        row = work(item)
        row["seconds"] = round(time.perf_counter() - began, 3)
        with lock:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            outcomes[bool(row.get("error"))] += 1
            if on_row is not None:
                on_row(row)
            if progress is not None:
                progress.step(bool(row.get("error")))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a+", encoding="utf-8") as handle:
        if handle.tell() > 0:
            handle.seek(handle.tell() - 1)
            if handle.read(1) != "\n":
                handle.write("\n")  # a run killed mid-row: the next row starts on its own line
        if workers <= 1:
            for item in todo:
                one(item)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="batch") as pool:
                list(pool.map(one, todo))
    return outcomes[False], outcomes[True]


def last_rows(path: Path) -> dict[str, dict]:
    """The row of each id in an answers file: the last answered one, else the last error (runs retry errors)."""
    rows: dict[str, dict] = {}
    for row in read_jsonl(path):
        if "id" in row:
            earlier = rows.get(str(row["id"]))
            if earlier is None or not row.get("error") or earlier.get("error"):
                rows[str(row["id"])] = row  # an error row never hides an answer
    return rows


def check_items(
    items_path: Path,
    shard: tuple[int, int] = (0, 1),
    limits: MediaLimits | None = None,
    stream: TextIO | None = None,
) -> list[tuple[str, str]]:
    """Every item of the shard read once (media and masks) before any model loads, with a progress line;
    (id, problem) of each item that cannot be answered. The run reads them again: a check is not a cache."""
    index, count = shard
    items = read_items(items_path)[index::count]
    bar = Progress(len(items), stream) if items else None
    problems = []
    for item in items:
        try:
            load_item(item, items_path.parent, limits)
        except Exception as exc:
            problems.append((item.id, _error_text(exc)))
        if bar is not None:
            bar.step(bool(problems and problems[-1][0] == item.id))
    return problems


def iter_loaded(
    items_path: Path, limits: MediaLimits | None = None
) -> Iterator[tuple[BatchItem, LoadedItem | None, str]]:
    """Each item with its media loaded (None and the reason when it cannot be), for the report."""
    for item in read_items(items_path):
        try:
            yield item, load_item(item, items_path.parent, limits), ""
        except Exception as exc:
            yield item, None, _error_text(exc)
