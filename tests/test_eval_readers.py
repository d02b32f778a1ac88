"""`eval run`'s readers and mask selection on fixture-sized files in each benchmark's official format.

No model here: every benchmark's file is read, every region kind rasterised and checked against masks
built independently (the clip's PNG masks, numpy rectangles, pycocotools' own polygon rasteriser), and the
masks each variant uses are those the official scripts choose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from pixelrefer.eval.benchmarks import read_benchmark
from pixelrefer.eval.regions import Region, RegionError, decode, to_rle
from pixelrefer.eval.run import ObjectOptions, plan_items

from . import eval_data as data


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-readers")
    media = data.media_root(root / "media")
    return {
        "media": media,
        "q": data.videorefer_q(root / "q.json"),
        "q-all": data.videorefer_q(root / "q-all.json", allframe=True),
        "d": data.videorefer_d(root / "d.json"),
        "hcstvg": data.hcstvg_full(root / "hcstvg.json"),
        "hcstvg-lite": data.hcstvg_lite(root / "hcstvg-all.json"),
        "lvis": data.osprey(root / "lvis.json", ("cat", "dog", "bird")),
        "dlc": data.dlc(root / "dlc.json"),
        "ferret": data.ferret(root / "ferret.json"),
        "vg": data.vg(root / "vg.json"),
        "refl4": data.refl4(root / "refl4.json"),
    }


def masks_of(plan) -> list[dict[int, np.ndarray]]:
    return [{f: decode(r) for f, r in masks.items()} for masks in plan.masks]


def test_videorefer_q_full_uses_each_objects_frame_idx_mask(files):
    items = read_benchmark("videorefer-q", files["q"])
    assert [i.id for i in items] == ["0", "1", "2"]
    assert items[0].reference == {
        "video": "clip_a",
        "Answer": "(B) far",
        "type": "Relationship",
        "Question": "What is the relationship between <object0><region> and <object1><region>?",
        "options": ["(A) near", "(B) far", "(C) touching", "(D) none"],
    }
    plans = plan_items(items, "videorefer-q", "full", files["media"])
    assert [p.problem for p in plans] == ["", "", ""]
    first = masks_of(plans[0])
    assert [sorted(m) for m in first] == [[5], [5]]
    assert np.array_equal(first[0][5], data.clip_mask(0, 5)) and np.array_equal(
        first[1][5], data.clip_mask(1, 5)
    )
    # The second item's region is an uncompressed RLE on the mp4; it decodes to the same mask.
    assert plans[1].media.path.name == "clip_b.mp4" and plans[1].media.n_frames == 10
    assert np.array_equal(masks_of(plans[1])[0][5], data.clip_mask(1, 5))


def test_videorefer_q_lite_uses_every_non_null_mask_and_the_budgets(files):
    items = read_benchmark("videorefer-q", files["q-all"])
    plans = plan_items(items, "videorefer-q", "lite", files["media"])
    # Frame 4 is null for both objects of item 0 and is skipped (the official script would reuse a stale mask).
    assert [[sorted(m) for m in p.masks] for p in plans] == [[[1, 5, 7], [1, 5, 7]], [[2, 5]], [[3, 5]]]
    assert np.array_equal(masks_of(plans[0])[1][7], data.clip_mask(1, 7))
    two = plan_items(items, "videorefer-q", "lite", files["media"], ObjectOptions(masks_per_object=2))
    assert [sorted(m) for m in two[0].masks] == [[1, 7], [1, 7]]  # evenly spaced, ends kept
    tokens = plan_items(items, "videorefer-q", "lite", files["media"], ObjectOptions(max_region_tokens=128))
    assert [sorted(m) for m in tokens[0].masks] == [[1, 7], [1, 7]]  # 128 tokens / (32 x 2 objects)
    assert [sorted(m) for m in tokens[1].masks] == [[2, 5]]  # one object: 4 masks allowed, 2 exist


def test_full_model_refuses_an_item_without_frame_idx_and_lite_refuses_all_null(files, tmp_path):
    records = json.loads(files["q-all"].read_text())
    del records[0]["frame_idx"]
    records[1]["annotation"][0] = {"3": {"segmentation": None}, "4": {"segmentation": None}}
    path = tmp_path / "q.json"
    path.write_text(json.dumps(records))
    items = read_benchmark("videorefer-q", path)
    full = plan_items(items, "videorefer-q", "full", files["media"])
    assert "frame_idx" in full[0].problem and full[2].problem == ""
    assert "null" in full[1].problem or "no region" in full[1].problem
    lite = plan_items(items, "videorefer-q", "lite", files["media"])
    assert lite[0].problem == "" and lite[1].problem == "object 1 has no non-empty mask"


def test_videorefer_d_and_hcstvg_both_shapes(files):
    d_items = read_benchmark("videorefer-d", files["d"])
    assert d_items[1].reference == {"video": "clip_b.mp4", "Answer": "A purple disc moves down."}
    assert [
        [sorted(m) for m in p.masks] for p in plan_items(d_items, "videorefer-d", "full", files["media"])
    ] == [
        [[5]],
        [[4]],
    ]
    assert [
        [sorted(m) for m in p.masks] for p in plan_items(d_items, "videorefer-d", "lite", files["media"])
    ] == [
        [[2, 5, 8]],
        [[4, 6]],
    ]
    full = read_benchmark("hcstvg", files["hcstvg"])
    assert [(i.frame_idx, i.reference["Answer"]) for i in full] == [
        (6, "The disc rolls down."),
        (2, "The triangle slides."),
    ]
    plans = plan_items(full, "hcstvg", "full", files["media"])
    assert np.array_equal(masks_of(plans[0])[0][6], data.clip_mask(1, 6))
    lite = read_benchmark("hcstvg", files["hcstvg-lite"])
    assert lite[0].reference == {"video": ["clip_b.mp4"], "Answer": "The disc rolls down."}
    assert [sorted(m) for m in plan_items(lite, "hcstvg", "lite", files["media"])[0].masks] == [[1, 3, 6]]
    refused = plan_items(lite, "hcstvg", "full", files["media"])[0].problem
    assert "frame_idx" in refused


def test_osprey_polygons_and_rle_on_coco_train_and_val(files):
    items = read_benchmark("lvis", files["lvis"])
    assert [(i.id, i.reference["Answer"], i.reference["region_num"]) for i in items] == [
        ("0", "cat", 2),
        ("1", "dog", 2),
        ("2", "bird", 0),
    ]
    plans = plan_items(items, "lvis", "full", files["media"])
    assert [p.media.path.parent.name for p in plans] == ["train2017", "train2017", "val2017"]
    polygon = masks_of(plans[0])[0][0]
    expected = coco_mask.decode(
        coco_mask.merge(coco_mask.frPyObjects([data.square(5, 5, 30)], *data.IMAGE_A))
    )
    assert np.array_equal(polygon, expected > 0) and 850 < polygon.sum() < 1000
    rle_mask = masks_of(plans[1])[0][0]
    assert rle_mask.sum() == 30 * 40 and rle_mask[10:40, 60:100].all()
    two_polygons = masks_of(plans[2])[0][0]
    assert two_polygons.shape == data.IMAGE_B
    assert two_polygons[2:12, 2:12].any() and two_polygons[40:60, 50:70].any() and not two_polygons[30, 30]


def test_dlc_order_ids_and_uncompressed_rle(files):
    items = read_benchmark("dlc", files["dlc"])
    # pycocotools' order: images as listed (2, then 1), each image's annotations in file order, and the
    # annotation of an unlisted category left out.
    assert [i.id for i in items] == ["201", "101", "102"]
    assert items[0].reference == {"id": "201", "image": "000000000002.png"}
    plans = plan_items(items, "dlc", "lite", files["media"] / "dlc")
    assert [p.problem for p in plans] == ["", "", ""]
    crowd = masks_of(plans[0])[0][0]
    assert crowd.sum() == 40 * 60 and crowd[20:60, 30:90].all()


def test_ferret_polygon_at_the_images_own_size(files):
    items = read_benchmark("ferret", files["ferret"])
    assert [i.id for i in items] == ["0", "3"]
    assert items[0].reference["question_id"] == 0 and items[0].reference["category"] == "reason"
    assert items[0].size is None  # the file gives none: the image's header does
    plans = plan_items(items, "ferret", "full", files["media"])
    assert masks_of(plans[1])[0][0].shape == data.IMAGE_B


def test_boxes_are_filled_rectangles_clamped_at_zero(files):
    vg_plans = plan_items(read_benchmark("vg", files["vg"]), "vg", "full", files["media"])
    box = masks_of(vg_plans[0])[0][0]
    expected = np.zeros(data.IMAGE_A, bool)
    expected[20:60, 10:40] = True
    assert np.array_equal(box, expected)
    corner = masks_of(vg_plans[1])[0][0]
    expected = np.zeros(data.IMAGE_A, bool)
    expected[0:10, 0:16] = True  # y -2 + 12, x -4 + 20; a numpy slice from -2 would wrap around
    assert np.array_equal(corner, expected)
    refl4 = read_benchmark("refl4", files["refl4"])
    assert [i.reference for i in refl4] == [
        {"image": "objects365/o1.png", "Answer": "a small box on the left"}
    ]
    float_box = masks_of(plan_items(refl4, "refl4", "full", files["media"])[0])[0][0]
    expected = np.zeros(data.IMAGE_B, bool)
    expected[4:24, 3:33] = True  # int() of 4.2 + int(20.5) rows, 3.7 + int(30.9) columns
    assert np.array_equal(float_box, expected)


def test_region_kinds_and_their_refusals():
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:5] = True
    assert np.array_equal(decode(to_rle(Region("segmentation", data.rle(mask)), 6, 5)), mask)
    assert np.array_equal(decode(to_rle(Region("segmentation", data.uncompressed_rle(mask)), 6, 5)), mask)
    assert to_rle(Region("segmentation", None), 6, 5) is None
    with pytest.raises(RegionError, match="5x6 but its frame is 6x6"):
        to_rle(Region("segmentation", data.rle(mask)), 6, 6)
    with pytest.raises(RegionError, match="add up"):
        to_rle(Region("segmentation", {"size": [6, 5], "counts": [3, 4]}), 6, 5)
    with pytest.raises(RegionError, match="polygon"):
        to_rle(Region("segmentation", [[1, 2, 3]]), 6, 5)
    with pytest.raises(RegionError, match="box"):
        to_rle(Region("box", [1, 2, 3]), 6, 5)


def test_problems_name_the_item_and_leave_the_others(files, tmp_path):
    records = json.loads(files["lvis"].read_text())
    records[0]["height"] = 95  # the annotation disagrees with the picture
    records[1]["file_name"] = "missing.png"
    records.append({"file_name": "x.png"})  # no regions at all
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(records))
    plans = plan_items(read_benchmark("lvis", path), "lvis", "full", files["media"])
    assert [p.item.id for p in plans] == ["0", "1", "2", "3"]
    assert "annotation says the image is 128x95" in plans[0].problem
    assert plans[
        2
    ].problem == "the image train2017/missing.png or val2017/missing.png or missing.png is not under " + str(
        files["media"]
    )
    assert "cannot be read" in plans[3].problem
