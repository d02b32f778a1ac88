"""Mask formats, cleaning, colours, and PNG / COCO RLE export that reads back exactly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from pixelrefer.media.masks import (
    PALETTE,
    EmptyMaskError,
    clean_mask,
    default_min_area,
    export_png_zip,
    export_rle_json,
    import_png_zip,
    import_rle_json,
    load_mask_png,
    mask_bbox,
    mask_from_png,
    mask_from_rle,
    mask_to_png,
    mask_to_rle,
    object_color,
    require_mask,
    save_mask_png,
    to_bool_mask,
)


def random_mask(seed: int, shape: tuple[int, int] = (37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.6


def square(shape=(40, 50), box=(10, 8, 30, 28)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


class TestToBoolMask:
    def test_bool_is_copied(self) -> None:
        mask = random_mask(0)
        result = to_bool_mask(mask)
        assert result.dtype == bool and np.array_equal(result, mask)
        result[0, 0] = not result[0, 0]
        assert result[0, 0] != mask[0, 0]

    def test_zero_one_integers(self) -> None:
        mask = random_mask(1)
        assert np.array_equal(to_bool_mask(mask.astype(np.int64)), mask)
        assert np.array_equal(to_bool_mask(mask.astype(np.uint8)), mask)

    def test_zero_to_255_counts_from_128(self) -> None:
        image = np.array([[0, 1, 127], [128, 200, 255]], np.uint8)
        assert to_bool_mask(image).tolist() == [[False, False, False], [True, True, True]]

    def test_floats(self) -> None:
        assert to_bool_mask(np.array([[0.0, 0.49, 0.5, 1.0]])).tolist() == [[False, False, True, True]]
        assert to_bool_mask(np.array([[0.0, 127.0, 128.0, 255.0]], np.float32)).tolist() == [
            [False, False, True, True]
        ]

    def test_channels(self) -> None:
        mask = random_mask(2)
        assert np.array_equal(to_bool_mask(mask[..., None].astype(np.uint8) * 255), mask)
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[..., :3] = 255  # colour everywhere: only the alpha says where the brush went
        rgba[..., 3] = mask * 255
        assert np.array_equal(to_bool_mask(rgba), mask)
        rgb = np.zeros((*mask.shape, 3), np.uint8)
        rgb[mask, 1] = 90
        assert np.array_equal(to_bool_mask(rgb), mask)

    @pytest.mark.parametrize(
        "bad", [np.zeros((2, 3, 4, 5)), np.zeros(7), np.zeros((3, 3, 2)), np.array([[np.nan]])]
    )
    def test_refuses_what_is_not_a_mask(self, bad) -> None:
        with pytest.raises(ValueError):
            to_bool_mask(bad)


def whole_image_clean(mask: np.ndarray, min_area: int | None) -> np.ndarray:
    """`clean_mask`'s rule over the whole image: islands under `min_area` go (not the largest), holes under it
    (background not touching the image's edge) are filled."""
    limit = default_min_area(mask.shape) if min_area is None else min_area
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    result = mask.copy()
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if count > 1 else 0
    for label in range(1, count):
        if label != largest and stats[label, cv2.CC_STAT_AREA] < limit:
            result[labels == label] = False
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~result).astype(np.uint8), connectivity=4)
    edge = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    for label in range(1, count):
        if label not in edge and stats[label, cv2.CC_STAT_AREA] < limit:
            result |= labels == label
    return result


class TestCleaning:
    def test_specks_go_the_object_stays(self) -> None:
        mask = square()
        mask[2, 2] = True
        mask[35:37, 40:42] = True
        cleaned = clean_mask(mask, min_area=10)
        assert np.array_equal(cleaned, square())

    def test_small_holes_filled_large_kept(self) -> None:
        mask = square((60, 60), (5, 5, 55, 55))
        mask[10:12, 10:12] = False  # 4 px hole
        mask[25:40, 25:40] = False  # 225 px hole
        cleaned = clean_mask(mask, min_area=50)
        assert cleaned[10:12, 10:12].all()
        assert not cleaned[25:40, 25:40].any()

    def test_background_touching_the_border_is_not_a_hole(self) -> None:
        mask = np.ones((20, 20), bool)
        mask[0:3, 0:3] = False
        assert np.array_equal(clean_mask(mask, min_area=50), mask)

    def test_a_small_object_is_still_an_object(self) -> None:
        mask = np.zeros((100, 100), bool)
        mask[50:52, 50:52] = True
        assert np.array_equal(clean_mask(mask), mask)

    def test_a_gap_at_the_box_edge_is_not_a_hole(self) -> None:
        """Cleaning looks only inside the mask's bounding box: background reaching the box's edge is open to
        the image's edge, even where the box does not touch the image's edge."""
        mask = square((60, 60), (10, 10, 40, 40))
        mask[10:14, 20:24] = False  # a notch in the top edge, 16 px
        mask[25:28, 25:28] = False  # a hole inside, 9 px
        cleaned = clean_mask(mask, min_area=50)
        assert not cleaned[10:14, 20:24].any() and cleaned[25:28, 25:28].all()

    @pytest.mark.parametrize("seed", range(6))
    def test_the_box_gives_what_the_whole_image_gives(self, seed: int) -> None:
        """Against the rule applied to the whole image: noisy masks, objects with specks, notches and holes."""
        rng = np.random.default_rng(seed)
        for _ in range(40):
            height, width = (int(v) for v in rng.integers(6, 90, 2))
            mask = np.zeros((height, width), bool)
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            mask[top : top + int(rng.integers(1, height)), left : left + int(rng.integers(1, width))] = True
            mask &= rng.random((height, width)) < rng.choice([0.5, 0.97])
            mask[rng.integers(0, height, 4), rng.integers(0, width, 4)] = True
            for min_area in (None, 3, 30):
                assert np.array_equal(clean_mask(mask, min_area=min_area), whole_image_clean(mask, min_area))

    def test_empty_stays_empty_and_is_refused(self) -> None:
        empty = np.zeros((10, 12), bool)
        assert not clean_mask(empty).any()
        with pytest.raises(EmptyMaskError, match="empty"):
            require_mask(empty, "The drawn region")
        assert np.array_equal(require_mask(square()), square())

    def test_default_threshold_scales_with_the_image(self) -> None:
        assert default_min_area((10, 10)) == 8
        assert default_min_area((480, 640)) == 154


def test_bbox() -> None:
    assert mask_bbox(square()) == (10, 8, 30, 28)
    assert mask_bbox(np.zeros((4, 4), bool)) is None


class TestColours:
    def test_stable_and_distinct(self) -> None:
        first = [object_color(i) for i in range(12)]
        assert first == [object_color(i) for i in range(12)] and first == list(PALETTE)
        rgb = np.array(first, float)
        distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
        assert distances[~np.eye(12, dtype=bool)].min() > 60

    def test_later_indices_are_generated_stably(self) -> None:
        later = [object_color(i) for i in range(12, 40)]
        assert later == [object_color(i) for i in range(12, 40)]
        assert len(set(later)) == len(later)
        assert all(all(0 <= c <= 255 for c in color) for color in later)

    def test_negative_index_refused(self) -> None:
        with pytest.raises(ValueError):
            object_color(-1)


class TestPng:
    def test_bytes_round_trip(self) -> None:
        mask = random_mask(3)
        data = mask_to_png(mask)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(mask_from_png(data), mask)

    def test_file_round_trip(self, tmp_path) -> None:
        mask = random_mask(4)
        path = save_mask_png(mask, tmp_path / "m.png")
        assert np.array_equal(load_mask_png(path), mask)


class TestRle:
    @pytest.mark.parametrize("shape", [(1, 1), (37, 53), (64, 48)])
    def test_round_trip(self, shape) -> None:
        mask = random_mask(5, shape)
        rle = mask_to_rle(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        json.dumps(rle)
        assert np.array_equal(mask_from_rle(rle), mask)
        assert coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}) == mask.sum()

    def test_uncompressed_counts(self) -> None:
        # Column-major runs: 3 background, 2 object, then background; a 3x2 image.
        mask = mask_from_rle({"size": [3, 2], "counts": [3, 2, 1]})
        assert mask.tolist() == [[False, True], [False, True], [False, False]]


def masks_per_object() -> dict:
    return {
        1: {0: random_mask(6), 4: random_mask(7)},
        "dog": {2: random_mask(8), 3: np.zeros((37, 53), bool)},
    }


def assert_same(loaded: dict, original: dict) -> None:
    assert set(loaded) == set(original)
    for object_id, frames in original.items():
        assert set(loaded[object_id]) == set(frames)
        for position, mask in frames.items():
            assert np.array_equal(loaded[object_id][position], mask)


def test_rle_json_round_trip(tmp_path) -> None:
    masks = masks_per_object()
    path = export_rle_json(masks, tmp_path / "masks.json", source_frames=[0, 30, 60, 90, 120])
    data = json.loads(path.read_text())
    by_key = {(a["object_id"], a["frame"]): a for a in data["annotations"]}
    assert by_key[(1, 4)]["source_frame"] == 120
    assert by_key[(1, 4)]["area"] == int(masks[1][4].sum())
    assert by_key[("dog", 3)]["bbox"] == [0, 0, 0, 0]
    assert_same(import_rle_json(path), masks)


def test_png_zip_round_trip(tmp_path) -> None:
    masks = masks_per_object()
    path = export_png_zip(masks, tmp_path / "masks.zip")
    assert_same(import_png_zip(path), masks)
