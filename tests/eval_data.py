"""Fixture-sized benchmark files in each benchmark's official format, with media, for the eval tests.

Every region kind appears: polygons (LVIS, PACO, Ferret, DLC), compressed and uncompressed RLE
(VideoRefer, HC-STVG, LVIS, DLC), boxes (VG, Ref-L4), per-frame dicts (VideoRefer, HC-STVG Lite) and null
segmentations (VideoRefer-Q all-frame). Clips are the shared fixtures' 10-frame clip (176x132, a green
triangle and a purple disc), as a frame folder and as an mp4; images are small textured PNGs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pixelrefer.media.masks import load_mask_png, mask_to_rle, to_bool_mask

from .conftest import fixtures_root
from .scenes import textured

CLIP = fixtures_root() / "pixelrefer-tiny" / "cases" / "video_2objects" / "inputs"
CLIP_SIZE = (132, 176)  # height, width
IMAGE_A = (96, 128)
IMAGE_B = (80, 112)


def clip_mask(obj: int, frame: int) -> np.ndarray:
    """The fixture clip's mask of object `obj` (0 triangle, 1 disc) on `frame`."""
    return to_bool_mask(load_mask_png(CLIP / "frame_masks" / f"obj{obj}" / f"mask_{frame:03d}.png"))


def rle(mask: np.ndarray) -> dict:
    return mask_to_rle(mask)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def empty_rle(height: int, width: int) -> dict:
    return rle(np.zeros((height, width), bool))


def square(x: float, y: float, side: float) -> list[float]:
    """A polygon (COCO: flat x, y list) of a square."""
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def media_root(root: Path) -> Path:
    """COCO-style images (train2017/, val2017/), VG and Objects365 images, the clip as folder and mp4."""
    (root / "train2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(textured(*IMAGE_A, seed=1)).save(root / "train2017" / "000000000001.png")
    Image.fromarray(textured(*IMAGE_B, seed=2)).save(root / "val2017" / "000000000002.png")
    (root / "vg").mkdir()
    Image.fromarray(textured(*IMAGE_A, seed=3)).save(root / "vg" / "1.png")
    (root / "objects365").mkdir()
    Image.fromarray(textured(*IMAGE_B, seed=4)).save(root / "objects365" / "o1.png")
    (root / "dlc").mkdir()  # DLC-Bench's images/ folder
    shutil.copy(root / "train2017" / "000000000001.png", root / "dlc")
    shutil.copy(root / "val2017" / "000000000002.png", root / "dlc")
    (root / "other").mkdir()
    Image.fromarray(textured(*IMAGE_B, seed=5)).save(root / "other" / "x.png")
    shutil.copytree(CLIP / "frames", root / "clip_a")
    shutil.copy(CLIP / "video.mp4", root / "clip_b.mp4")
    return root


def _write(path: Path, data: object, lines: bool = False) -> Path:
    if lines:
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def videorefer_q(path: Path, allframe: bool = False) -> Path:
    """Three questions: two objects on a frame folder, one object on the mp4 (uncompressed RLE).
    The all-frame (Lite) file has masks on several frames, some of them null."""

    def objects(frames: list[int], null: tuple[int, ...] = ()) -> list[dict]:
        return [
            {
                str(f): {"segmentation": None if f in null else rle(clip_mask(obj, f))}
                for f in (frames if allframe else [5])
            }
            for obj in (0, 1)
        ]

    one = {str(f): {"segmentation": uncompressed_rle(clip_mask(1, f))} for f in ([2, 5] if allframe else [5])}
    records = [
        {
            "video": "clip_a",
            "Question": "What is the relationship between <object0><region> and <object1><region>?",
            "options": ["(A) near", "(B) far", "(C) touching", "(D) none"],
            "Answer": "(B) far",
            "type": "Relationship",
            "frame_idx": "5",
            "annotation": objects([1, 4, 5, 7], null=(4,)),
        },
        {
            "video": "clip_b.mp4",
            "Question": "Where is <object0><region> going?",
            "options": ["(A) down", "(B) up"],
            "Answer": "(A) down",
            "type": "Future Prediction",
            "frame_idx": "5",
            "annotation": [one],
        },
        {
            "video": "clip_a",
            "Question": "What colour is <object0><region>?",
            "options": ["(A) green", "(B) purple"],
            "Answer": "(A) green",
            "type": "Basic Questions",
            "frame_idx": "5",
            "annotation": [objects([3, 5])[0]],
        },
    ]
    return _write(path, records)


def videorefer_d(path: Path) -> Path:
    records = [
        {
            "video": "clip_a",
            "caption": "A green triangle moves left.",
            "frame_idx": "5",
            "annotation": [{str(f): {"segmentation": rle(clip_mask(0, f))} for f in (2, 5, 8)}],
        },
        {
            "video": "clip_b.mp4",
            "caption": "A purple disc moves down.",
            "frame_idx": "4",
            "annotation": [{str(f): {"segmentation": rle(clip_mask(1, f))} for f in (4, 6)}],
        },
    ]
    return _write(path, records)


def hcstvg_full(path: Path) -> Path:
    records = [
        {
            "video": "clip_b.mp4",
            "caption": "The disc rolls down.",
            "frame_idx": "6",
            "mask": rle(clip_mask(1, 6)),
        },
        {"video": "clip_a", "caption": "The triangle slides.", "frame_idx": 2, "mask": rle(clip_mask(0, 2))},
    ]
    return _write(path, records)


def hcstvg_lite(path: Path) -> Path:
    records = [
        {
            "video": ["clip_b.mp4"],
            "masks": [{str(f): rle(clip_mask(1, f)) for f in (1, 3, 6)}],
            "conversations": [
                {"from": "human", "value": "..."},
                {"from": "gpt", "value": "The disc rolls down."},
            ],
        }
    ]
    return _write(path, records)


def osprey(path: Path, categories: tuple[str, str, str]) -> Path:
    """Two images: a polygon and a compressed RLE on the train2017 one, a two-polygon region on val2017."""
    a = np.zeros(IMAGE_A, bool)
    a[10:40, 60:100] = True
    records = [
        {
            "file_name": "000000000001.png",
            "height": IMAGE_A[0],
            "width": IMAGE_A[1],
            "categories": [categories[0], categories[1]],
            "annotations": [{"segmentation": [square(5, 5, 30)]}, {"segmentation": rle(a)}],
            "region_num": [2, 2],
        },
        {
            "file_name": "000000000002.png",
            "height": IMAGE_B[0],
            "width": IMAGE_B[1],
            "categories": [categories[2]],
            "annotations": [{"segmentation": [square(2, 2, 10), square(50, 40, 20)]}],
        },
    ]
    return _write(path, records)


def dlc(path: Path) -> Path:
    """COCO: image 2 listed first; a polygon, an uncompressed RLE (iscrowd) and a compressed RLE; an
    annotation of an unlisted category is left out, as pycocotools' getAnnIds(catIds=all) leaves it."""
    b = np.zeros(IMAGE_B, bool)
    b[20:60, 30:90] = True
    a = np.zeros(IMAGE_A, bool)
    a[50:90, 10:50] = True
    data = {
        "images": [
            {"id": 2, "file_name": "000000000002.png", "height": IMAGE_B[0], "width": IMAGE_B[1]},
            {"id": 1, "file_name": "000000000001.png", "height": IMAGE_A[0], "width": IMAGE_A[1]},
        ],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 7, "segmentation": [square(10, 10, 40)], "iscrowd": 0},
            {"id": 201, "image_id": 2, "category_id": 7, "segmentation": uncompressed_rle(b), "iscrowd": 1},
            {"id": 102, "image_id": 1, "category_id": 7, "segmentation": rle(a), "iscrowd": 0},
            {"id": 999, "image_id": 1, "category_id": 8, "segmentation": [square(0, 0, 5)], "iscrowd": 0},
        ],
    }
    return _write(path, data)


def ferret(path: Path) -> Path:
    records = [
        {
            "question_id": 0,
            "image": "000000000001.png",
            "category": "reason",
            "text": "What might be the purpose of the object <region> on the table?",
            "annotation": {"bbox": [20.0, 30.0, 40.5, 20.25], "segmentation": [square(20.0, 30.0, 20.25)]},
        },
        {
            "question_id": 3,
            "image": "000000000002.png",
            "category": "reason",
            "text": "What is the object <region> used for?",
            "annotation": {"bbox": [5, 5, 30, 30], "segmentation": [square(5, 5, 30)]},
        },
    ]
    return _write(path, records)


def vg(path: Path) -> Path:
    records = [
        {
            "image": ["vg/1.png"],
            "height": IMAGE_A[0],
            "width": IMAGE_A[1],
            "caption": "a red block",
            "mask": [],
            "boxes": [[10, 20, 30, 40]],
        },
        {
            "image": ["vg/1.png"],
            "height": IMAGE_A[0],
            "width": IMAGE_A[1],
            "caption": "the corner",
            "mask": [],
            "boxes": [[-4, -2, 20, 12]],
        },
    ]
    return _write(path, records)


def refl4(path: Path) -> Path:
    """JSON lines; only the Objects365 records count."""
    records = [
        {
            "file_name": "other/x.png",
            "height": IMAGE_B[0],
            "width": IMAGE_B[1],
            "caption": "x",
            "bbox": [1, 1, 9, 9],
        },
        {
            "file_name": "objects365/o1.png",
            "height": IMAGE_B[0],
            "width": IMAGE_B[1],
            "caption": "a small box on the left",
            "bbox": [3.7, 4.2, 30.9, 20.5],
        },
    ]
    return _write(path, records, lines=True)
