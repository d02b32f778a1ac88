"""`eval run`: a benchmark's items → prediction rows (see `rows.py`), with the official prompts and masks.

Two passes. `plan_items` checks every item before any model loads: its media is found and its size and
frame count read from headers, every region is turned into an RLE at its frame's size and measured, the
masks the variant uses are chosen, and the prompt is built and parsed; a problem is that item's error
row, never a surprise an hour into the run. `run_eval` then answers the planned items, decoding only the
chosen masks, through `batch.append_rows` (the same resumable file, worker pool and progress bar as
`batch`), refusing to resume a file written with another provenance.

Mask selection, as the official scripts choose: an image's one region; the full model on a clip takes
each object's mask on `frame_idx` (one annotated frame; the clip itself is sampled at 1 fps, at most
768 frames); Lite takes every non-empty annotated mask of each object, on the frames that carry them, or
fewer when `masks_per_object` / `max_region_tokens` are set (evenly spaced, as a chat chooses).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..batch import BatchSummary, Progress, append_rows
from ..media.images import check_image_file, load_image
from ..media.limits import MediaLimits
from ..media.video import IMAGE_EXTENSIONS, load_clip, load_frame_folder, probe_video, read_frames
from ..model.config import Variant
from ..model.generation import GenerationSettings
from ..model.inference import PixelRefer, Video
from ..model.processing import parse_instruction
from ..runtime.errors import InputError
from .benchmarks import BENCHMARKS, EvalItem
from .prompts import prompt_for
from .provenance import refuse_mixed
from .regions import area, decode, to_rle
from .rows import SCHEMA, official_record, read_rows

__all__ = [
    "EVAL_LIMITS",
    "ObjectOptions",
    "Plan",
    "check_resume",
    "plan_items",
    "problems_summary",
    "run_eval",
    "write_official",
]

EVAL_LIMITS = MediaLimits(
    max_upload_mb=1e6,
    max_duration_s=1e7,
    max_side=1 << 16,
    max_frames=768,
    max_scan_packets=10**7,
    max_scan_s=600.0,
)
"""Benchmark media as the official loader reads it: no trimming, no shrinking (the masks are at the frames'
own size), the official cap of 768 sampled frames; pixels per image stay bounded (`max_pixels`)."""


@dataclass(frozen=True)
class ObjectOptions:
    """How many of an object's annotated masks Lite sees: None = every one (the official scripts)."""

    masks_per_object: int | None = None
    max_region_tokens: int | None = None


@dataclass
class _MediaInfo:
    path: Path
    size: tuple[int, int]
    """(height, width) of the frames."""
    n_frames: int = 1
    fps: float | None = None
    names: tuple[str, ...] = ()
    """A frame folder's image names, sorted as the official loader sorts them."""


@dataclass
class Plan:
    """A checked item: where its media is, the chosen masks (as RLE, by object and frame) and its prompt."""

    item: EvalItem
    media: _MediaInfo | None = None
    masks: list[dict[int, dict]] = field(default_factory=list)
    prompt: str = ""
    problem: str = ""


def _media_info(item: EvalItem, root: Path, cache: dict[Path, _MediaInfo]) -> _MediaInfo:
    for relative in item.media:
        path = root / relative
        if path.exists():
            break
    else:
        tried = " or ".join(item.media) or "(none given)"
        raise InputError(f"the {item.modality} {tried} is not under {root}")
    if path in cache:
        return cache[path]
    if item.modality == "image":
        width, height = check_image_file(path, EVAL_LIMITS)
        info = _MediaInfo(path, (height, width))
    elif path.is_dir():
        names = tuple(sorted(p.name for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        if not names:
            raise InputError(f"the frame folder {path.name} holds no images")
        width, height = check_image_file(path / names[0], EVAL_LIMITS)
        info = _MediaInfo(path, (height, width), len(names), 3.0, names)
    else:
        video = probe_video(path, EVAL_LIMITS)
        info = _MediaInfo(path, (video.height, video.width), video.n_frames, video.fps)
    cache[path] = info
    return info


def _spread(frames: list[int], budget: int) -> list[int]:
    """At most `budget` of `frames`, evenly spaced, first and last kept (the chat's rule for Lite clips)."""
    if len(frames) <= budget:
        return frames
    picks = np.linspace(0, len(frames) - 1, budget).round().astype(int)
    return [frames[i] for i in sorted(set(picks.tolist()))]


def _choose(
    item: EvalItem, info: _MediaInfo, variant: Variant, options: ObjectOptions, mask_num: int
) -> list[dict[int, dict]]:
    height, width = info.size
    chosen = []
    for number, regions in enumerate(item.objects, start=1):
        if item.modality == "image" or variant == "full":
            frame = 0 if item.modality == "image" else item.frame_idx
            if frame is None:
                raise InputError(
                    "the full model uses each object's mask on frame_idx, and this item has none "
                    "(is this the Lite all-frame file?)"
                )
            if frame not in regions:
                raise InputError(f"object {number} has no region on frame {frame}")
            rle = to_rle(regions[frame], height, width)
            if rle is None:
                raise InputError(f"object {number}'s segmentation on frame {frame} is null")
            if area(rle) == 0:
                raise InputError(f"object {number}'s mask on frame {frame} is empty")
            chosen.append({frame: rle})
            continue
        visible = {}
        for frame in sorted(regions):
            rle = to_rle(regions[frame], height, width)
            if rle is not None and area(rle) > 0:
                visible[frame] = rle
        if not visible:
            raise InputError(f"object {number} has no non-empty mask")
        frames = list(visible)
        budgets = [options.masks_per_object] if options.masks_per_object else []
        if options.max_region_tokens:
            budgets.append(max(1, options.max_region_tokens // (mask_num * len(item.objects))))
        if budgets:
            frames = _spread(frames, min(budgets))
        chosen.append({f: visible[f] for f in frames})
    last = max(f for masks in chosen for f in masks)
    if last >= info.n_frames:
        raise InputError(f"a mask is on frame {last}, but {info.path.name} has frames 0-{info.n_frames - 1}")
    return chosen


def plan_item(
    item: EvalItem,
    benchmark: str,
    variant: Variant,
    root: Path,
    options: ObjectOptions,
    mask_num: int,
    cache: dict[Path, _MediaInfo],
) -> Plan:
    """Check one item and choose its masks; a problem is recorded on the plan, never raised."""
    plan = Plan(item)
    try:
        if item.problem:
            raise InputError(item.problem)
        if not item.objects:
            raise InputError("the item has no regions")
        plan.media = _media_info(item, root, cache)
        if item.size is not None and item.size != plan.media.size:
            (h, w), (fh, fw) = item.size, plan.media.size
            raise InputError(
                f"the annotation says the image is {w}x{h}, but {plan.media.path.name} is {fw}x{fh}"
            )
        plan.masks = _choose(item, plan.media, variant, options, mask_num)
        plan.prompt = prompt_for(benchmark, variant, item.fields)
        parse_instruction(plan.prompt, len(plan.masks), item.modality)
    except (InputError, ValueError, OSError, KeyError, TypeError) as exc:
        plan.problem = " ".join(str(exc).split()) or type(exc).__name__
    return plan


def plan_items(
    items: Sequence[EvalItem],
    benchmark: str,
    variant: Variant,
    root: str | Path,
    options: ObjectOptions | None = None,
    *,
    mask_num: int = 32,
    stream: TextIO | None = None,
) -> list[Plan]:
    """Every item checked (headers and region runs only); a progress line per 10% on `stream`."""
    if benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
    options = options or ObjectOptions()
    cache: dict[Path, _MediaInfo] = {}
    plans = []
    bar = Progress(len(items), stream) if stream is not None and items else None
    for item in items:
        plans.append(plan_item(item, benchmark, variant, Path(root), options, mask_num, cache))
        if bar is not None:
            bar.step(bool(plans[-1].problem))
    return plans


def _frames_at(info: _MediaInfo, frames: Sequence[int]) -> dict[int, np.ndarray]:
    """The annotated frames at the clip's own size (the masks' size)."""
    if info.names:
        return {f: load_image(info.path / info.names[f], limits=EVAL_LIMITS) for f in frames}
    return dict(zip(frames, read_frames(info.path, list(frames)), strict=True))


def _media_arguments(plan: Plan, variant: Variant) -> dict[str, Any]:
    info = plan.media
    assert info is not None
    if plan.item.modality == "image":
        return {"image": load_image(info.path, limits=EVAL_LIMITS)}
    annotated = _frames_at(info, sorted({f for masks in plan.masks for f in masks}))
    if variant == "lite":
        # Lite sees no frame tokens: only the annotated frames, at `Time frame/fps`.
        return {"video": Video(frames=[], timestamps=[], annotated=annotated, fps=info.fps or 3.0)}
    load = load_frame_folder if info.names else load_clip
    clip = load(info.path, EVAL_LIMITS, fps=1.0, max_frames=768)
    return {"video": Video(list(clip.frames), list(clip.timestamps), annotated, clip.native_fps)}


def render_template(model: PixelRefer, input_ids: Sequence[int]) -> str:
    """The chat template as sent, runs of `<image>`/`<REGION>` tokens written once with their count."""
    text = model.tokenizer.decode(
        list(input_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return re.sub(
        r"((<image>|<REGION>))(?:\2)+",
        lambda m: f"{m[2]}x{len(m[0]) // len(m[2])}",
        text,
    )


def answer(
    model: PixelRefer, plan: Plan, settings: GenerationSettings, *, record_template: bool = False
) -> dict[str, Any]:
    """Prediction, finish reason (and the rendered template) of one planned item."""
    media = _media_arguments(plan, model.variant)
    regions = [{f: decode(rle) for f, rle in masks.items()} for masks in plan.masks]
    prepared = model.prepare(regions=regions, instruction=plan.prompt, seed=settings.seed, **media)
    result = model.generate(prepared=prepared, settings=settings)
    out = {"prediction": result.text, "finish_reason": result.finish_reason}
    if record_template:
        out["template"] = render_template(model, prepared.input_ids)
    return out


def check_resume(out_path: str | Path, provenance: Mapping[str, Any], *, known_only: bool = False) -> None:
    """Refuse to append to a predictions file written with another provenance (InputError naming what
    differs). `known_only` compares only what is known before the model loads."""
    path = Path(out_path)
    if path.is_file():
        earlier = (row.get("provenance") or {} for row in read_rows(path))
        refuse_mixed(earlier, provenance, path.name, known_only=known_only)


def _done_ids(out_path: Path) -> set[str]:
    if not out_path.is_file():
        return set()
    return {str(row["id"]) for row in read_rows(out_path) if not row.get("error")}


def _error_text(exc: BaseException) -> str:
    from ..runtime.redact import scrub

    return scrub(" ".join(str(exc).split()) or type(exc).__name__)


def run_eval(
    model: PixelRefer,
    benchmark: str,
    plans: Sequence[Plan],
    out_path: str | Path,
    *,
    provenance: Mapping[str, Any],
    settings: GenerationSettings,
    workers: int | None = None,
    record_template: bool = False,
    force: bool = False,
    progress: Callable[[int], Progress] | None = Progress,
) -> BatchSummary:
    """Answer every planned item not yet answered in `out_path` (appended to, one row per item)."""
    out_path = Path(out_path)
    if not force:
        check_resume(out_path, provenance)
    done = _done_ids(out_path)
    todo = [plan for plan in plans if plan.item.id not in done]
    summary = BatchSummary(skipped=len(plans) - len(todo))
    started = time.perf_counter()

    def work(plan: Plan) -> dict[str, Any]:
        item = plan.item
        row: dict[str, Any] = {
            "schema": SCHEMA,
            "benchmark": benchmark,
            "id": item.id,
            "index": item.index,
            "reference": item.reference,
            "prompt": plan.prompt,
        }
        try:
            if plan.problem:
                raise InputError(plan.problem)
            row.update(answer(model, plan, settings, record_template=record_template))
            row["error"] = None
        except Exception as exc:  # one bad item is its error row, never the end of the run
            row.update(prediction="", finish_reason="error", error=_error_text(exc))
        row["provenance"] = dict(provenance)
        return row

    summary.answered, summary.failed = append_rows(
        out_path,
        todo,
        work,
        workers=max(1, workers or model.engine.max_concurrency),
        progress=progress(len(todo)) if progress is not None and todo else None,
    )
    summary.seconds = time.perf_counter() - started
    return summary


def write_official(out_path: str | Path, official_path: str | Path) -> tuple[int, int]:
    """The official inference script's records of every answered item, in the official item order, as
    JSON lines (the official scorers read `<stem>_*.json` for `--pred-path <stem>.json`). Returns
    (records written, items left out because they have only error rows)."""
    latest: dict[str, dict] = {}
    for row in read_rows(out_path):
        earlier = latest.get(str(row["id"]))
        if earlier is None or not row.get("error") or earlier.get("error"):
            latest[str(row["id"])] = row  # an error row never hides an answer
    answered = sorted((r for r in latest.values() if not r.get("error")), key=lambda r: r["index"])
    official = Path(official_path)
    official.parent.mkdir(parents=True, exist_ok=True)
    with open(official, "w", encoding="utf-8") as handle:
        for row in answered:
            handle.write(json.dumps(official_record(row)) + "\n")
    return len(answered), len(latest) - len(answered)


def problems_summary(plans: Sequence[Plan], limit: int = 10, stream: TextIO | None = None) -> int:
    """Print the first `limit` problems (one line each) and return how many items have one."""
    stream = stream if stream is not None else sys.stderr
    bad = [p for p in plans if p.problem]
    for plan in bad[:limit]:
        stream.write(f"  item {plan.item.id}: {plan.problem}\n")
    if len(bad) > limit:
        stream.write(f"  ... and {len(bad) - limit} more\n")
    return len(bad)
