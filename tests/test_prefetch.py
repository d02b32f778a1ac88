"""SAM's image embedding computed in the background when a picture or frame is shown (`pixelrefer.serve.prefetch`):
the first click then runs only the decoder; moving on cancels; a model event pauses it; the memory budget bounds
it; a click during the computation waits for it (one encoder run); masks are the same with and without it.
The tiny random SAM 2.1 of `tests/sam_builders.py`; encoder and decoder runs counted with forward hooks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelrefer.segment.sam import Sam2Segmenter
from pixelrefer.serve.budget import drop_sam
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .conftest import fixtures_root


@pytest.fixture(scope="module")
def service(tiny_sam2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The tiny PixelRefer of the fixtures and the tiny SAM 2.1, on the CPU; no chat warm-up (it would only
    share the two cores with what is measured here)."""
    torch.set_flush_denormal(True)  # random weights make denormal floats, which slow CPU kernels down
    settings = replace(
        AppSettings(),
        model=str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"),
        sam2=str(tiny_sam2_dir),
        device="cpu",
        preview_dir=tmp_path_factory.mktemp("preview"),
    )
    started = Service(settings).start()
    started.warmer.close()
    assert isinstance(started.segmenter, Sam2Segmenter)
    yield started
    started.prefetcher.close()
    started.close()


class Counts:
    """Forward calls of SAM's image encoder (the tower) and of its mask decoder, from hooks."""

    def __init__(self, segmenter: Sam2Segmenter) -> None:
        self.tower = 0
        self.decoder = 0
        model = segmenter.image_model
        self._hooks = [
            model.vision_encoder.register_forward_hook(lambda *_: self._count("tower")),
            model.mask_decoder.register_forward_hook(lambda *_: self._count("decoder")),
        ]

    def _count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.fixture
def fresh(service: Service) -> Iterator[tuple[Workspace, Counts]]:
    """A visitor, SAM's cache emptied, the hooks counting, the prefetch on and the budget unbounded."""
    drop_sam(service.segmenter)
    service.prefetcher.enabled = True
    service.budget.limits = {}
    counts = Counts(service.segmenter)
    ws = Workspace(service)
    yield ws, counts
    ws.close()
    assert service.prefetcher.wait(30)
    counts.remove()
    service.prefetcher.enabled = True
    service.budget.limits = {}


def picture(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_shown_picture_is_embedded_in_the_background_and_the_first_click_runs_only_the_decoder(
    service: Service, fresh
) -> None:
    ws, counts = fresh
    ws.open_image(picture(1))
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert report.stored, report.reason
    assert report.ready_s >= report.compute_s > 0
    assert counts.tower == 1 and counts.decoder == 0
    assert service.segmenter.has_embedding(ws.frame)

    result = ws.click(60, 40, "positive")
    assert result is not None and result.mask.shape == (96, 128)
    assert counts.tower == 1, "the first click ran the image encoder again"
    assert counts.decoder >= 1


def test_each_clip_frame_shown_is_embedded(service: Service, fresh, coded_clip) -> None:
    ws, counts = fresh
    ws.open_video(coded_clip(12, "6", 64, 48))
    assert service.prefetcher.wait(30)
    assert service.segmenter.has_embedding(ws.clip.frames[0])
    ws.seek(1)
    assert service.prefetcher.wait(30)
    assert service.segmenter.has_embedding(ws.clip.frames[1])
    assert counts.tower == 2
    ws.click(30, 20, "positive")
    assert counts.tower == 2


def test_a_model_event_pauses_it_until_the_gate_is_idle(service: Service, fresh) -> None:
    ws, counts = fresh
    with service.gate.event():  # an answer or a tracking run of another visitor
        ws.open_image(picture(2))
        assert not service.prefetcher.wait(0.5)
        assert counts.tower == 0 and not service.segmenter.has_embedding(ws.frame)
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert report.stored and report.paused_s > 0.3
    assert counts.tower == 1


def test_moving_on_cancels_the_previous_pictures_job(service: Service, fresh) -> None:
    ws, counts = fresh
    first = picture(3)
    with service.gate.event():  # the job for the first picture starts, then waits at its first operation
        ws.open_image(first)
        time.sleep(0.3)
        ws.open_image(picture(4))
    assert service.prefetcher.wait(30)
    assert not service.segmenter.has_embedding(first)
    assert service.segmenter.has_embedding(ws.frame)
    assert counts.tower == 1
    ws.close()  # closing cancels too: nothing is computed for a picture shown just before
    with service.gate.event():
        other = Workspace(service)
        other.open_image(picture(5))
        other.close()
    assert service.prefetcher.wait(30)
    assert not service.segmenter.has_embedding(picture(5))
    assert counts.tower == 1


def test_the_newest_picture_goes_first(service: Service, fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Visitors who just saw a picture are about to click it; one who left may not have told the server yet."""
    ws, counts = fresh
    segmenter = service.segmenter
    order = []
    real = segmenter.embed_in_background

    def recorded(image, pause):
        order.append(int(image[0, 0, 0]))
        return real(image, pause)

    monkeypatch.setattr(segmenter, "embed_in_background", recorded)
    others = [Workspace(service) for _ in range(2)]
    try:
        with service.gate.event():  # the first job starts and waits; the next two wait in line
            for visitor, seed in zip([ws, *others], (11, 12, 13), strict=True):
                image = picture(seed)
                image[0, 0, 0] = seed
                visitor.open_image(image)
                time.sleep(0.2)
        assert service.prefetcher.wait(30)
    finally:
        for visitor in others:
            visitor.close()
    assert order == [11, 13, 12]
    assert counts.tower == 3


def test_the_memory_budget_bounds_it(service: Service, fresh) -> None:
    ws, counts = fresh
    service.prefetcher.enabled = False
    ws.open_image(picture(6))
    held = service.budget.usage().get("cpu", 0)
    service.budget.limits = {"cpu": held + service.segmenter.embedding_bytes() - 1}
    service.prefetcher.enabled = True
    ws._prefetch()  # the picture shown again, with one byte too few for its embedding
    assert service.prefetcher.wait(30)
    report = service.prefetcher.report(ws)
    assert not report.stored and report.reason.startswith("skipped: the memory budget")
    assert counts.tower == 0
    service.budget.limits = {}
    ws.click(60, 40, "positive")  # the click computes it
    assert counts.tower == 1


def test_embedding_bytes_is_what_an_embedding_holds(service: Service) -> None:
    segmenter = service.segmenter
    drop_sam(segmenter)
    with torch.inference_mode():
        segmenter._embeddings(picture(7))
    held = sum(t.untyped_storage().nbytes() for t in next(iter(segmenter._embedded.values())))
    assert segmenter.embedding_bytes() == held


def test_a_click_during_the_computation_waits_for_it_and_the_encoder_runs_once(
    service: Service, fresh
) -> None:
    ws, counts = fresh
    segmenter = service.segmenter
    entered, release = threading.Event(), threading.Event()

    def hold(*_):  # the background encoder is held at its start until the click waits for it
        entered.set()
        assert release.wait(30)

    hook = segmenter.image_model.vision_encoder.register_forward_pre_hook(hold)
    results = []
    try:
        ws.open_image(picture(8))
        assert entered.wait(30)
        hook.remove()
        clicker = threading.Thread(target=lambda: results.append(ws.click(60, 40, "positive")))
        clicker.start()
        deadline = time.monotonic() + 30
        while not any(p.waiters for p in list(segmenter._pending.values())):
            assert time.monotonic() < deadline, "the click did not wait for the embedding under way"
            time.sleep(0.01)
        assert service.gate.busy  # the click's own model event: the computation goes on regardless
        release.set()
        clicker.join(30)
    finally:
        hook.remove()
        release.set()
    assert service.prefetcher.wait(30)
    assert results and results[0] is not None
    assert counts.tower == 1
    assert service.prefetcher.report(ws).stored


def test_masks_are_identical_with_and_without_the_prefetch(service: Service, fresh) -> None:
    ws, counts = fresh
    image = picture(9)
    ws.open_image(image)
    assert service.prefetcher.wait(30) and service.prefetcher.report(ws).stored
    with_prefetch = ws.click(50, 30, "positive")
    ws.click(90, 70, "negative")
    refined_with = ws.draft.result

    drop_sam(service.segmenter)
    service.prefetcher.enabled = False
    ws.open_image(image)
    assert service.prefetcher.wait(30) and not service.segmenter.has_embedding(image)
    without = ws.click(50, 30, "positive")
    ws.click(90, 70, "negative")
    refined_without = ws.draft.result
    assert counts.tower == 2
    for a, b in ((with_prefetch, without), (refined_with, refined_without)):
        assert np.array_equal(a.mask, b.mask) and a.score == b.score
        assert len(a.alternatives) == len(b.alternatives)


def test_it_is_off_with_the_flag_and_on_zero_gpu(tmp_path: Path) -> None:
    assert AppSettings.parse([], env={}).sam_prefetch
    assert not AppSettings.parse(["--no-sam-prefetch"], env={}).sam_prefetch
    assert not AppSettings.parse([], env={"PIXELREFER_SAM_PREFETCH": "0"}).sam_prefetch
    zero = Service(replace(AppSettings(), zero_gpu=True, preview_dir=tmp_path))
    assert not zero.prefetcher.enabled
    zero.prefetcher.show("visitor", picture(10))
    assert zero.prefetcher.wait(1) and zero.prefetcher.report("visitor") is None
