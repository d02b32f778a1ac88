"""Readers of the benchmarks' own annotation files, as the official inference scripts read them.

Each reader turns a file into `EvalItem`s in the official scripts' item order: the media (a path under
`--media-root`, with the fallbacks the script evidently means), the regions per object and frame, the
frame the full model uses (`frame_idx`), the reference fields the official record keeps, and the item's
question data. Nothing is decoded here; a record that cannot be read becomes an item with a `problem`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .regions import Region

__all__ = ["BENCHMARKS", "Benchmark", "EvalItem", "read_benchmark"]


@dataclass
class EvalItem:
    """One question of a benchmark, as read (media not opened, regions not decoded)."""

    index: int
    id: str
    modality: Literal["image", "video"]
    media: tuple[str, ...]
    """Candidate paths relative to the media root; the first that exists is used."""
    objects: list[dict[int, Region]] = field(default_factory=list)
    """Per object, its regions by frame index (frame 0 for an image)."""
    frame_idx: int | None = None
    size: tuple[int, int] | None = None
    """(height, width) when the annotation file states it (polygons and boxes are drawn at this size)."""
    reference: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    """The item's own question data, for `prompts.prompt_for`."""
    problem: str = ""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its reader, and its annotation file and media folder as `eval run --help` lists them."""

    name: str
    read: Callable[[Path], list[EvalItem]]
    files: str


def _load_json(path: Path) -> Any:
    """A JSON document, or JSON lines (Ref-L4's question file and the official outputs are JSONL)."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _records(data: Any, what: str) -> list:
    if not isinstance(data, list):
        raise ValueError(f"{what} is a JSON list of records")
    return data


def _guarded(index: int, item_id: str, modality: str, build: Callable[..., EvalItem], *args: Any) -> EvalItem:
    """`build(*args)`, or a problem item: one unreadable record never hides the others."""
    try:
        return build(*args)
    except _UNREADABLE as exc:
        return _unreadable(index, item_id, modality, exc)


def _unreadable(index: int, item_id: str, modality: str, exc: Exception) -> EvalItem:
    detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
    return EvalItem(index, item_id, modality, (), problem=f"record {index} cannot be read: {detail}")


_UNREADABLE = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _frame_key(value: Any) -> int:
    key = int(value)
    if key < 0:
        raise ValueError(f"frame index {value!r} is negative")
    return key


def _optional_frame(record: Mapping) -> int | None:
    return _frame_key(record["frame_idx"]) if record.get("frame_idx") is not None else None


def _per_frame(annotation: Mapping, nested: bool) -> dict[int, Region]:
    """An object's `{frame: {"segmentation": s}}` (VideoRefer) or `{frame: s}` (HC-STVG Lite) dict."""
    if not isinstance(annotation, Mapping):
        raise ValueError("an object's annotation is a {frame: ...} dict")
    out = {}
    for key, value in annotation.items():
        if nested and not isinstance(value, Mapping):
            raise ValueError(f"frame {key}: expected {{'segmentation': ...}}")
        out[_frame_key(key)] = Region("segmentation", value["segmentation"] if nested else value)
    return out


def _videorefer_item(record: Mapping, index: int, answer_key: str, multiple_choice: bool) -> EvalItem:
    reference = {"video": record["video"], "Answer": record[answer_key]}
    fields = {}
    if multiple_choice:
        reference["type"] = record["type"]
        fields = {"Question": record["Question"], "options": list(record["options"])}
        reference.update(fields)
    objects = [_per_frame(ann, nested=True) for ann in record["annotation"]]
    return EvalItem(
        index,
        str(index),
        "video",
        (record["video"],),
        objects,
        _optional_frame(record),
        None,
        reference,
        fields,
    )


def read_videorefer_q(path: Path) -> list[EvalItem]:
    """VideoRefer-Bench-Q.json (full: the `frame_idx` mask) or VideoRefer-Bench-Q-allframe.json (Lite)."""
    records = _records(_load_json(path), "A VideoRefer-Bench-Q file")
    return [
        _guarded(i, str(i), "video", _videorefer_item, r, i, "Answer", True) for i, r in enumerate(records)
    ]


def read_videorefer_d(path: Path) -> list[EvalItem]:
    """VideoRefer-Bench-D.json: one object per clip, reference caption in "caption"."""
    records = _records(_load_json(path), "A VideoRefer-Bench-D file")
    return [
        _guarded(i, str(i), "video", _videorefer_item, r, i, "caption", False) for i, r in enumerate(records)
    ]


def _hcstvg_item(record: Mapping, index: int) -> EvalItem:
    if "masks" in record:
        video = record["video"][0] if isinstance(record["video"], list) else record["video"]
        objects = [_per_frame(ann, nested=False) for ann in record["masks"]]
        answer = record["conversations"][1]["value"]
        frame_idx = _optional_frame(record)
    else:
        video = record["video"]
        frame_idx = _frame_key(record["frame_idx"])
        objects = [{frame_idx: Region("segmentation", record["mask"])}]
        answer = record["caption"]
    reference = {"video": record["video"], "Answer": answer}
    return EvalItem(index, str(index), "video", (video,), objects, frame_idx, None, reference)


def read_hcstvg(path: Path) -> list[EvalItem]:
    """hc_stvg_val.json (full: one RLE `mask` on `frame_idx`, "caption") or hc-stvg-val-allframe.json
    (Lite: `video` is a one-element list, `masks` a list of {frame: RLE}, the answer in conversations[1])."""
    records = _records(_load_json(path), "An HC-STVG file")
    return [_guarded(i, str(i), "video", _hcstvg_item, r, i) for i, r in enumerate(records)]


def _coco_image(name: str) -> tuple[str, ...]:
    """Where a COCO image is: the official LVIS/PACO/Ferret scripts look in train2017, then val2017 (their
    full-model versions join the wrong path); a root that holds the images directly works too."""
    return (f"train2017/{name}", f"val2017/{name}", name)


def _osprey_image(record: Mapping, first: int) -> list[EvalItem]:
    size = (int(record["height"]), int(record["width"]))
    name = record["file_name"]
    numbers = record.get("region_num")
    items = []
    for position, (category, annotation) in enumerate(
        zip(record["categories"], record["annotations"], strict=True)
    ):
        index = first + position
        region_num = numbers[position] if isinstance(numbers, list) and position < len(numbers) else 0
        reference = {"image": name, "Answer": category, "region_num": region_num}
        objects = [{0: Region("segmentation", annotation["segmentation"])}]
        items.append(EvalItem(index, str(index), "image", _coco_image(name), objects, None, size, reference))
    return items


def read_osprey(path: Path) -> list[EvalItem]:
    """Osprey's lvis_val_1k_category.json / paco_val_1k_category.json: one item per (image, region)."""
    items: list[EvalItem] = []
    for record in _records(_load_json(path), "An Osprey LVIS/PACO file"):
        try:
            items += _osprey_image(record, len(items))
        except _UNREADABLE as exc:
            items.append(_unreadable(len(items), str(len(items)), "image", exc))
    return items


def _dlc_item(annotation: Mapping, image: Mapping, index: int) -> EvalItem:
    reference = {"id": str(annotation["id"]), "image": image["file_name"]}
    size = (int(image["height"]), int(image["width"]))
    objects = [{0: Region("segmentation", annotation["segmentation"])}]
    return EvalItem(
        index, str(annotation["id"]), "image", (image["file_name"],), objects, None, size, reference
    )


def read_dlc(path: Path) -> list[EvalItem]:
    """DLC-Bench's annotations.json (COCO): every annotation of every image, in pycocotools' order
    (images as listed; per image its annotations in file order, kept when their category is listed)."""
    data = _load_json(path)
    if not isinstance(data, Mapping):
        raise ValueError("DLC-Bench's annotations.json is a COCO dict with images and annotations")
    categories = {c["id"] for c in data.get("categories", [])}
    by_image: dict[Any, list] = {}
    for annotation in data.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    images = {image["id"]: image for image in data.get("images", [])}
    items: list[EvalItem] = []
    for image_id, image in images.items():
        for annotation in by_image.get(image_id, []):
            if categories and annotation.get("category_id") not in categories:
                continue
            index = len(items)
            item_id = str(annotation.get("id", index))
            items.append(_guarded(index, item_id, "image", _dlc_item, annotation, image, index))
    return items


def _ferret_item(record: Mapping, index: int) -> EvalItem:
    fields = {"text": record["text"], "category": record["category"]}
    reference = {"question_id": record["question_id"], "image": record["image"], **fields}
    objects = [{0: Region("segmentation", record["annotation"]["segmentation"])}]
    return EvalItem(
        index,
        str(record["question_id"]),
        "image",
        _coco_image(record["image"]),
        objects,
        None,
        None,
        reference,
        fields,
    )


def read_ferret(path: Path) -> list[EvalItem]:
    """Ferret-Bench referring reasoning as Osprey publishes it (box_refer_reason.json): a polygon per
    question, drawn at the image's own size (the file gives none)."""
    records = _records(_load_json(path), "A Ferret-Bench file")
    return [_guarded(i, str(i), "image", _ferret_item, r, i) for i, r in enumerate(records)]


def _vg_item(record: Mapping, index: int) -> EvalItem:
    name = record["image"][0]
    size = (int(record["height"]), int(record["width"]))
    reference = {"image": name, "Answer": record["caption"]}
    return EvalItem(
        index, str(index), "image", (name,), [{0: Region("box", record["boxes"][0])}], None, size, reference
    )


def read_vg(path: Path) -> list[EvalItem]:
    """vg_val_5000.json: the region is the first box, a filled rectangle (the official script ignores
    the masks the file also carries)."""
    records = _records(_load_json(path), "A VG file")
    return [_guarded(i, str(i), "image", _vg_item, r, i) for i, r in enumerate(records)]


def _refl4_item(record: Mapping, index: int) -> EvalItem:
    name = record["file_name"]
    size = (int(record["height"]), int(record["width"]))
    reference = {"image": name, "Answer": record["caption"]}
    return EvalItem(
        index, str(index), "image", (name,), [{0: Region("box", record["bbox"])}], None, size, reference
    )


def read_refl4(path: Path) -> list[EvalItem]:
    """ref-l4-val.json (JSON lines): the official scripts keep only the Objects365 images; the region is
    the box, a filled rectangle."""
    records = [
        r
        for r in _records(_load_json(path), "A Ref-L4 file")
        if isinstance(r, Mapping) and "objects365" in str(r.get("file_name", ""))
    ]
    return [_guarded(i, str(i), "image", _refl4_item, r, i) for i, r in enumerate(records)]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "videorefer-q",
            read_videorefer_q,
            "VideoRefer-Bench-Q.json (Lite: VideoRefer-Bench-Q-allframe.json) -> the videos' folder",
        ),
        Benchmark("videorefer-d", read_videorefer_d, "VideoRefer-Bench-D.json -> Panda-70M-part"),
        Benchmark(
            "hcstvg", read_hcstvg, "hc_stvg_val.json (Lite: hc-stvg-val-allframe.json) -> HC-STVG/video_parts"
        ),
        Benchmark("lvis", read_osprey, "Osprey's lvis_val_1k_category.json -> COCO (train2017/, val2017/)"),
        Benchmark("paco", read_osprey, "Osprey's paco_val_1k_category.json -> COCO (train2017/, val2017/)"),
        Benchmark("dlc", read_dlc, "DLC-Bench/annotations.json -> DLC-Bench/images"),
        Benchmark("ferret", read_ferret, "Osprey's box_refer_reason.json -> COCO (train2017/, val2017/)"),
        Benchmark("vg", read_vg, "vg_val_5000.json -> the VG images' folder"),
        Benchmark("refl4", read_refl4, "Ref-L4's ref-l4-val.json -> Ref-L4/images"),
        Benchmark("refl4-clair", read_refl4, "Ref-L4's ref-l4-val.json -> Ref-L4/images"),
    )
}


def read_benchmark(name: str, path: str | Path) -> list[EvalItem]:
    """The items of benchmark `name` from its annotation file (a file that is not the benchmark's
    format at all is a ValueError; single unreadable records are problem items)."""
    return BENCHMARKS[name].read(Path(path))
