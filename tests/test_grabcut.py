"""The classical segmenter recovers simple shapes over a busy background, on images and through clips."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from pixelrefer.segment import grabcut as grabcut_module
from pixelrefer.segment.base import Prompt, TrackingCancelled
from pixelrefer.segment.grabcut import GrabCutSegmenter

from .scenes import disc_mask, disc_scene, flat_disc_frames, iou, moving_scene, paint, polygon_scene, textured


@pytest.fixture(scope="module")
def grabcut() -> GrabCutSegmenter:
    return GrabCutSegmenter()


def box_of(mask: np.ndarray, margin: int = 4) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return cols.min() - margin, rows.min() - margin, cols.max() + 1 + margin, rows.max() + 1 + margin


def middle_of(mask: np.ndarray) -> tuple[float, float]:
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(col), float(row)


SCENES = {"disc": disc_scene, "polygon": polygon_scene}


@pytest.mark.parametrize("scene", sorted(SCENES))
@pytest.mark.parametrize("mark", ["click", "box", "scribble"])
def test_recovers_shapes(grabcut, scene: str, mark: str) -> None:
    image, truth = SCENES[scene]()
    if mark == "click":
        prompt = Prompt(points=[middle_of(truth)])
    elif mark == "box":
        prompt = Prompt(box=box_of(truth))
    else:
        stroke = np.zeros(truth.shape, np.uint8)
        x, y = middle_of(truth)
        cv2.line(stroke, (int(x) - 15, int(y)), (int(x) + 15, int(y) + 5), 1, thickness=5)
        prompt = Prompt(scribble=stroke)
    result = grabcut.segment_image(image, prompt)
    assert result.mask.shape == truth.shape and result.mask.dtype == bool
    assert iou(result.mask, truth) >= 0.9
    assert result.segmenter == "GrabCut (classical)" and result.is_classical
    assert result.score is None and result.alternatives == () and not result.empty


def test_a_click_fills_a_flat_object_much_larger_than_the_click(grabcut) -> None:
    """A click seeds a disc a quarter of this object's size; the object's own colour carries it to the edge,
    through the blurred edges of a compressed frame."""
    frames, truths = flat_disc_frames(1)
    result = grabcut.segment_image(frames[0], Prompt(points=[middle_of(truths[0])]))
    assert iou(result.mask, truths[0]) >= 0.95


def test_only_the_clicked_object_of_two_alike(grabcut) -> None:
    left, right = disc_mask(160, 200, (50, 80), 25), disc_mask(160, 200, (150, 80), 25)
    image = paint(textured(160, 200, seed=7), left | right, (220, 40, 40))
    result = grabcut.segment_image(image, Prompt(points=[(50, 80)]))
    assert iou(result.mask, left) >= 0.9
    assert not (result.mask & right).any()


def test_background_click_is_kept_out(grabcut) -> None:
    image, truth = disc_scene()
    box = box_of(truth, margin=30)
    loose = grabcut.segment_image(image, Prompt(box=box)).mask
    strict = grabcut.segment_image(
        image, Prompt(points=[(box[0] + 5, box[1] + 5)], positive=[False], box=box)
    ).mask
    assert not strict[box[1] + 3 : box[1] + 8, box[0] + 3 : box[0] + 8].any()
    assert iou(strict, truth) >= 0.9 and loose.shape == strict.shape


def test_large_image_is_segmented_at_working_size(grabcut) -> None:
    image, truth = disc_scene()
    big_image = cv2.resize(image, (1000, 800), interpolation=cv2.INTER_NEAREST)
    big_truth = cv2.resize(truth.astype(np.uint8), (1000, 800), interpolation=cv2.INTER_NEAREST) > 0
    result = grabcut.segment_image(big_image, Prompt(points=[(450, 400)]))
    assert result.mask.shape == (800, 1000)
    assert iou(result.mask, big_truth) >= 0.9


def test_a_small_boxed_object_in_a_large_picture_keeps_its_detail(grabcut, monkeypatch) -> None:
    """GrabCut labels at most _CLICK_PIXELS, on the box and its margin: a 60 px disc in a 1600x1200 picture
    is segmented near full resolution, not at a fifth of it, and nothing outside the window is touched."""
    sizes = []
    original = cv2.grabCut
    monkeypatch.setattr(
        cv2, "grabCut", lambda image, *rest: sizes.append(image.shape[:2]) or original(image, *rest)
    )
    truth = disc_mask(1200, 1600, (1210, 340), 30)
    image = paint(textured(1200, 1600, seed=3), truth, (40, 90, 220))
    result = grabcut.segment_image(image, Prompt(box=box_of(truth, margin=6)))
    assert result.mask.shape == (1200, 1600)
    assert iou(result.mask, truth) >= 0.85  # 0.90 measured; the whole picture at 640 px gave 0.0
    ((rows, cols),) = sizes
    assert rows * cols <= grabcut_module._CLICK_PIXELS and min(rows, cols) >= 60


def test_tracks_two_objects_both_ways(grabcut) -> None:
    frames, truths = moving_scene(10)
    prompts = {
        "disc": {3: Prompt(points=[middle_of(truths[3]["disc"])])},
        "polygon": {7: Prompt(box=box_of(truths[7]["polygon"]))},
    }
    calls = []
    tracks = grabcut.track(frames, prompts, progress=lambda done, total: calls.append((done, total)))
    for name in prompts:
        assert sorted(tracks[name]) == list(range(10))
        scores = [iou(tracks[name][k], truths[k][name]) for k in range(10)]
        assert min(scores) >= 0.85, (name, scores)
    assert calls[-1] == (20, 20) and [done for done, _ in calls] == list(range(1, 21))


def test_tracks_a_flat_object_that_moves_far_between_sampled_frames(grabcut) -> None:
    frames, truths = flat_disc_frames(5)
    tracks = grabcut.track(frames, {1: {2: Prompt(points=[middle_of(truths[2])])}})
    scores = [iou(tracks[1][k], truths[k]) for k in range(5)]
    assert min(scores) >= 0.95, scores


def test_a_given_mask_anchors_the_track(grabcut) -> None:
    frames, truths = moving_scene(5)
    tracks = grabcut.track(frames, {1: {2: Prompt(mask=truths[2]["disc"])}})
    assert np.array_equal(tracks[1][2], truths[2]["disc"])
    assert all(iou(tracks[1][k], truths[k]["disc"]) >= 0.85 for k in range(5))


def test_cancel(grabcut) -> None:
    frames, truths = moving_scene(8)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 3:
            cancel.set()

    with pytest.raises(TrackingCancelled, match="3 of 8"):
        grabcut.track(frames, {1: {0: Prompt(mask=truths[0]["disc"])}}, progress=progress, cancel=cancel)
