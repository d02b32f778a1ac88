"""The object tokenizer's work is bounded before it runs: a mask whose crop plan would be huge (a few specks
far apart) is refused from its box and area alone, in seconds and without the memory; masks given to the
library are checked, not altered; the app's marks are cleaned so ordinary marking never meets the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pixelrefer.media.limits import LimitExceeded
from pixelrefer.model.config import PixelReferConfig
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.model.objects import OBJECT_BUDGET, check_crop, crop_plan, plan_crop
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .conftest import REPO, fixtures_root

PHOTO = (3024, 4032)  # 12 MP, height x width
RELEASE_BUDGET = OBJECT_BUDGET * PixelReferConfig().max_pixels


def specks(shape: tuple[int, int], side: int = 4) -> np.ndarray:
    """Two side x side specks at opposite corners: what a stray brush dot or a SAM sprinkle leaves."""
    mask = np.zeros(shape, bool)
    mask[:side, :side] = True
    mask[-side:, -side:] = True
    return mask


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_the_plan_is_the_crop_that_would_be_made(variant: str) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    for top, left, height, width in [(10, 20, 30, 40), (0, 0, 5, 5), (100, 150, 49, 49), (70, 90, 1, 1)]:
        mask = np.zeros(frame.shape[:2], bool)
        mask[top : top + height, left : left + width] = True
        plan = crop_plan(mask, variant, 32)
        crop = plan_crop(frame, mask, variant, 32)
        assert crop.crop.shape[:2] == (plan.out_h, plan.out_w)
        assert crop.grid_mask.shape == (plan.out_h // 14, plan.out_w // 14)


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_two_specks_make_a_huge_plan_and_compact_marks_do_not(variant: str) -> None:
    plan = crop_plan(specks(PHOTO), variant, 32)
    assert plan.pixels > 2_000_000_000  # 14x the photo on each side: what ran the machine out of memory
    with pytest.raises(LimitExceeded) as refused:
        check_crop(plan, RELEASE_BUDGET, "Object 1")
    assert str(refused.value).startswith(
        "Object 1 is too spread out to encode: its 32 marked pixels span a 4032x3024 box"
    )
    assert str(refused.value).endswith(
        "Mark it as one connected region (stray specks far from the object cause this)."
    )
    one_pixel = np.zeros(PHOTO, bool)
    one_pixel[1500, 2000] = True
    square = np.zeros(PHOTO, bool)
    square[1000:1040, 2000:2040] = True
    for compact in (one_pixel, square, np.ones(PHOTO, bool)):
        check_crop(crop_plan(compact, variant, 32), RELEASE_BUDGET)


PROBE = r"""
import json, resource, sys, time
import numpy as np
from pixelrefer import PixelRefer
from pixelrefer.media.limits import LimitExceeded

model = PixelRefer.from_pretrained(sys.argv[1], device="cpu", dtype="float32")
image = np.random.default_rng(0).integers(0, 256, (3024, 4032, 3), dtype=np.uint8)
mask = np.zeros((3024, 4032), bool)
mask[:4, :4] = True
mask[-4:, -4:] = True
instruction = "<image>\nWhat is <region>?" if model.variant == "full" else "What is <region>?"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
try:
    model.prepare(regions=[mask], instruction=instruction, image=image)
    message = None
except LimitExceeded as exc:
    message = str(exc)
seconds = time.perf_counter() - began
growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
square = np.zeros((3024, 4032), bool)
square[1000:1040, 2000:2040] = True
prepared = model.prepare(regions=[square], instruction=instruction, image=image)
print(json.dumps({"message": message, "seconds": seconds, "growth_kib": growth_kib, "regions": len(prepared.prompt.region_positions)}))
"""


@pytest.mark.parametrize("variant", ["pixelrefer-tiny", "pixelrefer-lite-tiny"])
def test_two_specks_on_a_12_megapixel_photo_are_refused_in_seconds_without_the_memory(variant: str) -> None:
    """In its own process, so the peak resident memory (`ru_maxrss`) measures this call alone."""
    checkpoint = fixtures_root() / variant / "checkpoint"
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkpoint)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["message"] and result["message"].startswith("Object 1 is too spread out to encode")
    assert "Mark it as one connected region" in result["message"]
    assert result["seconds"] < 10
    assert result["growth_kib"] < 1 << 20  # under 1 GiB of peak resident memory growth
    assert result["regions"] > 0  # the same photo with a compact mark is prepared


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    settings = replace(
        AppSettings(), preview_dir=tmp_path_factory.mktemp("preview"), sam2="grabcut", device="cpu"
    )
    return Service(settings).start()


def test_the_library_checks_masks_and_never_alters_them(service: Service) -> None:
    image = np.zeros((*PHOTO, 3), np.uint8)
    with pytest.raises(LimitExceeded, match=r"^Object 2 is too spread out to encode"):
        square = np.zeros(PHOTO, bool)
        square[10:50, 10:50] = True
        service.model.prepare(
            regions=[square, specks(PHOTO)], instruction="<image>\n<region> <region>", image=image
        )


def test_strokes_used_as_the_mask_lose_their_stray_specks_so_the_object_can_be_asked_about(
    service: Service,
) -> None:
    visitor = Workspace(service)
    try:
        visitor.open_image(np.random.default_rng(1).integers(0, 256, (*PHOTO, 3), dtype=np.uint8))
        height, width = visitor.frame.shape[:2]
        layer = specks((height, width), side=3)
        layer[600:700, 900:1000] = True
        layer[640:650, 940:950] = False  # a small hole in the stroke
        result = visitor.scribble(layer, as_mask=True)
        expected = np.zeros((height, width), bool)
        expected[600:700, 900:1000] = True
        assert np.array_equal(result.mask, expected)
        visitor.keep()
        replies = list(visitor.ask("What is <object1>?", GenerationSettings(max_new_tokens=2)))
        assert replies[-1].exchange is not None and replies[-1].exchange.answer is not None
        only_specks = visitor.scribble(specks((height, width), side=3), as_mask=True).mask
        assert only_specks.sum() == 9  # one speck stays (the largest island always does), not two far apart
    finally:
        visitor.close()


def test_a_chat_refuses_a_spread_out_mask_when_it_is_added(service: Service) -> None:
    """The named API's /add_object goes through ChatSession.add_object: the visitor is told at once, not
    at the first question, and the chat keeps no half-added object."""
    from pixelrefer.chat.session import ChatSession

    session = ChatSession(service.model, image=np.zeros((*PHOTO, 3), np.uint8))
    with pytest.raises(LimitExceeded, match=r"^This object is too spread out to encode"):
        session.add_object(specks(PHOTO))
    assert session.objects == []
    square = np.zeros(PHOTO, bool)
    square[10:50, 10:50] = True
    assert session.add_object(square).tag == "<object1>"
