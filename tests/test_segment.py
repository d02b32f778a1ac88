"""The segmentation interface, SAM 2.1 through transformers on a tiny random checkpoint, and the fallback."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants
from transformers import (
    Sam2ImageProcessor,
    Sam2Model,
    Sam2VideoModel,
    Sam2VideoProcessor,
    Sam2VideoVideoProcessor,
)

from pixelrefer.media.masks import EmptyMaskError
from pixelrefer.runtime.devices import PlacementError, visible_gpus
from pixelrefer.segment.base import (
    Prompt,
    PromptError,
    TrackingCancelled,
    rank_candidates,
    scribble_mask,
    scribble_points,
)
from pixelrefer.segment.build import load_segmenter
from pixelrefer.segment.grabcut import GrabCutSegmenter
from pixelrefer.segment.sam import FrameStore, Sam2Segmenter, sam21_config, sam_placement, sam_processor

from .scenes import disc_scene, moving_scene


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's operations are too small to share out: with two threads on a busy two-core machine
    each step waits on the other thread (measured: 10 ms per tracking step on one thread, up to 2.7 s on two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextmanager
def counted(model: Sam2Model) -> Iterator[Counter]:
    """Runs of SAM's image encoder, prompt encoder and mask decoder while the block runs (forward hooks)."""
    runs: Counter = Counter()
    names = ("vision_encoder", "prompt_encoder", "mask_decoder")
    hooks = [
        getattr(model, name).register_forward_hook(lambda *_, name=name: runs.update([name]))
        for name in names
    ]
    try:
        yield runs
    finally:
        for hook in hooks:
            hook.remove()


def stroke(shape=(160, 200)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.line(mask, (60, 80), (130, 95), 1, thickness=7)
    return mask > 0


class TestPrompt:
    def test_flags_default_to_positive_and_must_match(self) -> None:
        assert Prompt(points=[(1, 2), (3, 4)]).positive == (True, True)
        with pytest.raises(PromptError, match="flags"):
            Prompt(points=[(1, 2)], positive=[True, False])

    def test_box_corners_in_order(self) -> None:
        with pytest.raises(PromptError, match="box"):
            Prompt(box=(50, 50, 10, 80))

    def test_refining_adds_a_click_and_keeps_the_rest(self) -> None:
        base = Prompt(points=[(90, 80)], box=(40, 30, 140, 130))
        refined = base.with_point(100, 90, positive=False)
        assert refined.model_points() == ([(90.0, 80.0), (100.0, 90.0)], [1, 0])
        assert refined.box == base.box and base.points == ((90.0, 80.0),)

    @pytest.mark.parametrize(
        ("prompt", "message"),
        [
            (Prompt(points=[(250, 10)]), "outside"),
            (Prompt(box=(300, 300, 400, 400)), "outside"),
            (Prompt(points=[(10, 10)], positive=[False]), "Mark the object"),
            (Prompt(), "Mark the object"),
            (Prompt(scribble=np.ones((10, 10), bool)), "scribble"),
            (Prompt(scribble=np.zeros((160, 200), bool)), "Mark the object"),
        ],
    )
    def test_unusable_marks_are_refused(self, prompt: Prompt, message: str) -> None:
        with pytest.raises(PromptError, match=message):
            prompt.check(160, 200)


class TestScribble:
    def test_points_are_deterministic_inside_and_spread(self) -> None:
        mask = stroke()
        points = scribble_points(mask)
        assert points == scribble_points(mask.copy().astype(np.uint8) * 255)
        assert len(points) == 8
        assert all(mask[int(y), int(x)] for x, y in points)
        xs = [x for x, _ in points]
        columns = np.nonzero(mask.any(axis=0))[0]
        assert max(xs) - min(xs) >= 0.75 * (columns[-1] - columns[0])
        depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        assert depth[int(points[0][1]), int(points[0][0])] == depth.max()

    def test_tiny_and_empty_scribbles(self) -> None:
        dot = np.zeros((20, 20), bool)
        dot[5, 6] = dot[5, 7] = True
        assert sorted(scribble_points(dot)) == [(6.0, 5.0), (7.0, 5.0)]
        assert scribble_points(np.zeros((20, 20), bool)) == []

    def test_scribble_as_the_mask_is_exact(self) -> None:
        mask = stroke()
        mask[3, 3] = True  # a speck that cleaning would remove: kept, because the visitor drew it
        mask[85:88, 90:93] = False  # a hole that cleaning would fill
        result = scribble_mask(mask.astype(np.uint8) * 255)
        assert np.array_equal(result.mask, mask)
        assert result.segmenter == "scribble (no model)" and result.is_classical and not result.empty

    def test_empty_scribble_is_reported_not_passed_on(self) -> None:
        result = scribble_mask(np.zeros((8, 8), np.uint8))
        assert result.empty and "empty" in result.message
        with pytest.raises(EmptyMaskError):
            result.require()


def test_empty_candidates_make_an_empty_result() -> None:
    result = rank_candidates([(np.zeros((6, 6)), 0.9)], segmenter="SAM 2.1 tiny", is_classical=False)
    assert result.empty and result.score is None and "no object" in result.message
    with pytest.raises(EmptyMaskError, match="no object"):
        result.require()


def test_candidates_are_cleaned_and_ranked() -> None:
    big = np.zeros((40, 40), bool)
    big[5:30, 5:30] = True
    speckled = big.copy()
    speckled[36, 36] = True
    result = rank_candidates(
        [(np.zeros((40, 40)), 0.99), (speckled, 0.8), (big[::-1].copy(), 0.7)],
        segmenter="x",
        is_classical=False,
    )
    assert np.array_equal(result.mask, big) and result.score == 0.8
    assert len(result.alternatives) == 1 and result.alternatives[0][1] == 0.7


class TestSam2Image:
    def test_click_gives_best_mask_and_alternatives(self, sam2: Sam2Segmenter) -> None:
        image, _ = disc_scene()
        result = sam2.segment_image(image, Prompt(points=[(90, 80)]))
        assert result.mask.shape == (160, 200) and result.mask.dtype == bool
        assert result.segmenter.startswith("SAM 2.1") and not result.is_classical
        assert isinstance(result.score, float) and 1 <= len(result.alternatives) <= 2
        scores = [result.score] + [score for _, score in result.alternatives]
        assert scores == sorted(scores, reverse=True)
        assert all(mask.shape == (160, 200) for mask, _ in result.alternatives)

    def test_negative_click_changes_the_prompt_and_the_mask(self, sam2: Sam2Segmenter) -> None:
        image, _ = disc_scene()
        base = Prompt(points=[(90, 80)])
        first = sam2.segment_image(image, base)
        refined = sam2.segment_image(image, base.with_point(100, 90, positive=False))
        assert not np.array_equal(first.mask, refined.mask)

    def test_further_clicks_run_only_the_prompt_decoder(self, sam2: Sam2Segmenter) -> None:
        image, _ = disc_scene()
        image = image.copy()
        image[0, 0] = 1  # a picture this test has to itself
        with counted(sam2.image_model) as runs:
            prompt = Prompt(points=[(90, 80)])
            first = sam2.segment_image(image, prompt)
            for x in (60, 120):
                prompt = prompt.with_point(x, 80, positive=x < 100)
                sam2.segment_image(image, prompt)
            again = sam2.segment_image(image, Prompt(points=[(90, 80)]))
        # One image encoding; every click ran the prompt encoder and the mask decoder (twice once a click
        # refines: SAM's three candidates and its single best mask).
        assert runs["vision_encoder"] == 1
        assert runs["prompt_encoder"] == runs["mask_decoder"] == 1 + 2 + 2 + 1
        assert np.array_equal(first.mask, again.mask) and first.score == again.score

    def test_image_features_are_kept_for_the_most_recent_pictures(self, tiny_sam2_dir) -> None:
        segmenter = Sam2Segmenter(
            tiny_sam2_dir, placement=sam_placement("cpu", "float32"), label="tiny", cached_images=2
        )
        scene, _ = disc_scene()
        pictures = []
        for k in range(3):
            picture = scene.copy()
            picture[0, 0] = k
            pictures.append(picture)
        a, b, c = pictures
        click = Prompt(points=[(90, 80)])
        with counted(segmenter.image_model) as runs:
            fresh = [segmenter.segment_image(picture, click).mask for picture in (a, b)]
            assert runs["vision_encoder"] == 2
            # Back to the first picture: its features are still there, and give the same mask.
            assert np.array_equal(segmenter.segment_image(a, click).mask, fresh[0])
            assert runs["vision_encoder"] == 2
            # A third picture pushes out the least recently used (b), not the one just clicked (a).
            segmenter.segment_image(c, click)
            segmenter.segment_image(a, click)
            assert runs["vision_encoder"] == 3
            assert np.array_equal(segmenter.segment_image(b, click).mask, fresh[1])
            assert runs["vision_encoder"] == 4
        # A picture is recognised by its pixels, not by the array holding them.
        with counted(segmenter.image_model) as runs:
            segmenter.segment_image(b.copy(), click)
        assert runs["vision_encoder"] == 0

    def test_all_marks_together(self, sam2: Sam2Segmenter) -> None:
        image, _ = disc_scene()
        prompt = Prompt(
            points=[(90, 80), (10, 10)], positive=[True, False], box=(40, 30, 140, 130), scribble=stroke()
        )
        result = sam2.segment_image(image, prompt)
        assert result.mask.shape == (160, 200) and len(result.alternatives) >= 1

    def test_a_given_mask_is_returned_as_is(self, sam2: Sam2Segmenter) -> None:
        image, truth = disc_scene()
        result = sam2.segment_image(image, Prompt(mask=truth))
        assert np.array_equal(result.mask, truth) and "mask as given" in result.segmenter

    def test_bfloat16(self, tiny_sam2_dir) -> None:
        segmenter = Sam2Segmenter.load(str(tiny_sam2_dir), placement=sam_placement("cpu", "bfloat16"))
        assert segmenter.image_model.dtype == torch.bfloat16
        image, _ = disc_scene()
        result = segmenter.segment_image(image, Prompt(points=[(90, 80)], box=(40, 30, 140, 130)))
        assert result.mask.shape == (160, 200)
        frames, truths = moving_scene(4)
        tracks = segmenter.track(
            frames, {1: {1: Prompt(points=[(50, 50)])}, 2: {2: Prompt(mask=truths[2]["disc"])}}
        )
        assert {k: sorted(v) for k, v in tracks.items()} == {1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}


class TestSam2Inputs:
    def test_processor_matches_the_official_one(self) -> None:
        # The official checkpoints ship transformers' default SAM 2 processor at 1024; ours is built from
        # the model's input size and must give the same model inputs.
        official = Sam2VideoProcessor(
            image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor()
        )
        ours = sam_processor(1024)
        image = (np.random.default_rng(0).random((90, 160, 3)) * 255).astype(np.uint8)
        marks = dict(
            input_points=[[[[50, 40], [100, 20]]]], input_labels=[[[1, 0]]], input_boxes=[[[10, 10, 120, 80]]]
        )
        a = official(images=image, return_tensors="pt", **marks)
        b = ours(images=image, return_tensors="pt", **marks)
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key

    def test_frames_prepared_one_by_one_equal_the_whole_video(self, sam2: Sam2Segmenter) -> None:
        frames, _ = moving_scene(3)
        whole = sam2.processor.video_processor(videos=[np.stack(frames)], return_tensors="pt")[
            "pixel_values_videos"
        ][0]
        for index, frame in enumerate(frames):
            assert torch.equal(sam2._prepare_frame(frame), whole[index])

    def test_frame_store_keeps_only_a_few(self) -> None:
        frames = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
        store = FrameStore(frames, lambda frame: torch.from_numpy(frame.copy()), capacity=2)
        for index in (0, 1, 0, 2, 3, 9):
            assert int(store[index][0, 0, 0]) == index
        assert len(store) == 10 and list(store) == list(range(10))
        assert store.peak_held == 2 and store.prepared == 5
        with pytest.raises(KeyError):
            store[10]


class TestSam2Track:
    def test_two_objects_marked_on_different_frames(self, sam2: Sam2Segmenter) -> None:
        frames, truths = moving_scene(10)
        prompts = {
            "disc": {3: Prompt(points=[(58, 54)])},
            "polygon": {6: Prompt(box=(105, 95, 160, 145)), 8: Prompt(mask=truths[8]["polygon"])},
        }
        calls = []
        tracks = sam2.track(frames, prompts, progress=lambda done, total: calls.append((done, total)))
        assert set(tracks) == {"disc", "polygon"}
        for masks in tracks.values():
            assert sorted(masks) == list(range(10))
            assert all(mask.shape == (160, 200) and mask.dtype == bool for mask in masks.values())
        # 3 marked frames, forward over frames 3..9, backward over frames 6..0.
        assert calls == [(done, 3 + 7 + 7) for done in range(1, 18)]
        assert sam2.last_track_stats.steps == 17

    def test_memory_stays_bounded_on_a_long_clip(self, sam2: Sam2Segmenter) -> None:
        frames = [frame[:64, :64].copy() for frame in moving_scene(6)[0]] * 8
        tracks = sam2.track(frames, {1: {20: Prompt(points=[(30, 30)])}})
        assert sorted(tracks[1]) == list(range(48))
        stats = sam2.last_track_stats
        window = max(
            sam2.video_model.config.num_maskmem, sam2.video_model.config.max_object_pointers_in_encoder
        )
        assert stats.peak_frames_held <= 2
        assert stats.peak_outputs_held <= window + 1 < len(frames)

    def test_cancel(self, sam2: Sam2Segmenter) -> None:
        frames, _ = moving_scene(8)
        cancel = threading.Event()

        def progress(done: int, total: int) -> None:
            if done == 2:
                cancel.set()

        with pytest.raises(TrackingCancelled, match="after 2 of"):
            sam2.track(frames, {1: {0: Prompt(points=[(40, 45)])}}, progress=progress, cancel=cancel)
        cancel.set()
        with pytest.raises(TrackingCancelled, match="after 0 of"):
            sam2.track(frames, {1: {0: Prompt(points=[(40, 45)])}}, cancel=cancel)

    def test_clicks_are_not_held_up_by_tracking(self, sam2: Sam2Segmenter) -> None:
        frames, _ = moving_scene(4)
        tracking, release = threading.Event(), threading.Event()

        def progress(done: int, total: int) -> None:
            tracking.set()
            release.wait(30)

        worker = threading.Thread(
            target=sam2.track,
            args=(frames, {1: {0: Prompt(points=[(40, 45)])}}),
            kwargs={"progress": progress},
        )
        worker.start()
        try:
            assert tracking.wait(30)
            results = []
            click = threading.Thread(
                target=lambda: results.append(sam2.segment_image(frames[0], Prompt(points=[(40, 45)])))
            )
            click.start()
            click.join(20)
            assert len(results) == 1, "a click waited for the tracking run to finish"
            assert results[0].mask.shape == (160, 200)
        finally:
            release.set()
            worker.join(30)

    def test_marks_must_fit_the_clip(self, sam2: Sam2Segmenter) -> None:
        frames, _ = moving_scene(3)
        with pytest.raises(PromptError, match="frame 5"):
            sam2.track(frames, {1: {5: Prompt(points=[(1, 1)])}})
        with pytest.raises(PromptError):
            sam2.track(frames, {})
        with pytest.raises(ValueError, match="same size"):
            sam2.track([frames[0], frames[1][:100]], {1: {0: Prompt(points=[(1, 1)])}})


class TestLoading:
    def test_tiny_checkpoint_loads_as_both_models(self, tiny_sam2_dir) -> None:
        config = json.loads((tiny_sam2_dir / "config.json").read_text())
        assert config["model_type"] == "sam2_video"
        _, video_info = Sam2VideoModel.from_pretrained(tiny_sam2_dir, output_loading_info=True)
        _, image_info = Sam2Model.from_pretrained(tiny_sam2_dir, output_loading_info=True)
        for info in (video_info, image_info):
            assert not info["missing_keys"] and not info["mismatched_keys"]
        assert not video_info["unexpected_keys"]

    @pytest.mark.parametrize(
        ("size", "millions"), [("tiny", 38.9), ("small", 46.0), ("base-plus", 80.8), ("large", 224.4)]
    )
    def test_official_shapes(self, size: str, millions: float) -> None:
        with torch.device("meta"):
            model = Sam2VideoModel(sam21_config(size))
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)

    def test_local_folder(self, tiny_sam2_dir) -> None:
        segmenter = load_segmenter(str(tiny_sam2_dir), device="cpu")
        assert isinstance(segmenter, Sam2Segmenter) and segmenter.notice == "" and not segmenter.is_classical

    def test_offline_without_weights_falls_back_with_a_notice(self, tmp_path, monkeypatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
        segmenter = load_segmenter("tiny")
        assert isinstance(segmenter, GrabCutSegmenter) and segmenter.is_classical
        assert "facebook/sam2.1-hiera-tiny" in segmenter.notice and "offline" in segmenter.notice
        assert "GrabCut" in segmenter.notice
        image, _ = disc_scene()
        assert segmenter.segment_image(image, Prompt(points=[(90, 80)])).segmenter == "GrabCut (classical)"

    def test_broken_checkpoint_falls_back_with_a_notice(self, tmp_path) -> None:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam2_video", "image_size": "huge"}))
        segmenter = load_segmenter(str(tmp_path))
        assert isinstance(segmenter, GrabCutSegmenter) and "could not be loaded" in segmenter.notice

    def test_missing_folder_falls_back(self, tmp_path) -> None:
        segmenter = load_segmenter(str(tmp_path / "nope"))
        assert isinstance(segmenter, GrabCutSegmenter) and "no such folder" in segmenter.notice

    def test_classical_on_request(self) -> None:
        segmenter = load_segmenter("grabcut")
        assert isinstance(segmenter, GrabCutSegmenter) and segmenter.notice == ""

    def test_placement(self) -> None:
        gpus = visible_gpus()
        auto = sam_placement()
        if gpus:
            assert auto.device == f"cuda:{gpus[0].index}"
        else:
            assert auto == sam_placement("cpu") and auto.dtype == torch.float32
        with pytest.raises(PlacementError):
            sam_placement("cuda:99")
        with pytest.raises(PlacementError):
            sam_placement("tpu")
        with pytest.raises(PlacementError):
            load_segmenter("tiny", device="cuda:99")
