"""Parity with the official PixelRefer code on tiny random checkpoints (see the fixtures' README).

Every `<root>/<variant>/cases/<case>/case.json` under $PIXELREFER_FIXTURES (default ../shared/fixtures)
is one test. The call is rebuilt from the case's inputs only, through the public API; everything else in
the case is an expected output.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelrefer import GenerationSettings, PixelRefer, Video, load_image, sample_frames

from .conftest import fixtures_root


def discover() -> list[Path]:
    return sorted(fixtures_root().glob("*/cases/*/case.json"))


CASES = discover()


@cache
def load_model(checkpoint: Path) -> PixelRefer:
    return PixelRefer.from_pretrained(str(checkpoint), device="cpu", dtype="float32")


def read_mask(path: Path) -> torch.Tensor:
    return torch.from_numpy(load_image(path)[..., 0] != 0)


def build_call(case_dir: Path, case: dict, variant: str) -> dict:
    """The public-API arguments of a case, from its inputs and the fixtures README's reading rules."""
    masks = [read_mask(case_dir / name) for name in case["mask_files"]]
    if case["modal"] == "image":
        return {"image": case_dir / case["image_file"], "regions": masks}
    names = sorted(os.listdir(case_dir / case["frames_dir"]))
    frames = [load_image(case_dir / case["frames_dir"] / name) for name in names]
    frame_ids = case["frame_ids"]
    mask_frames = [frame_ids[i] for i in case["mask_ids"]]
    if variant == "lite":
        groups = case["mask_ids_raw"]
        regions, position = [], 0
        for group in groups:
            regions.append({mask_frames[position + j]: masks[position + j] for j in range(len(group))})
            position += len(group)
        sampled = ([], [])
    else:
        regions = [{frame: mask} for frame, mask in zip(mask_frames, masks, strict=True)]
        sample = sample_frames(len(frames), source="folder")
        sampled = ([frames[i] for i in sample.indices], list(sample.timestamps))
        assert list(sample.indices) == case["sampled_frame_indices"]
        assert sample.timestamps == pytest.approx(case["timestamps"])
    video = Video(
        frames=sampled[0], timestamps=sampled[1], annotated={f: frames[f] for f in frame_ids}, fps=3
    )
    return {"video": video, "regions": regions}


def test_fixtures_are_found() -> None:
    assert CASES, f"no case.json under {fixtures_root()}: set PIXELREFER_FIXTURES"


@pytest.mark.parametrize("case_path", CASES, ids=lambda p: f"{p.parents[2].name}/{p.parent.name}")
def test_case_matches_official(case_path: Path) -> None:
    case_dir = case_path.parent
    case = json.loads(case_path.read_text())
    expected = load_file(case_dir / case.get("tensors_file", "tensors.safetensors"))
    model = load_model(case_path.parents[2] / "checkpoint")
    seed = case.get("seed_before_generate_and_forward", 1234)
    call = build_call(case_dir, case, model.variant)

    prepared = model.prepare(instruction=case["question"], seed=seed, **call)
    assert prepared.input_ids == case["input_ids"]
    assert prepared.lm_length == case.get("llm_input_len_after_compression", len(case["input_ids"]))

    embedded = model.embed(prepared)
    torch.testing.assert_close(
        embedded.region_rows.float(), expected["region_encoder_out"], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        embedded.inputs_embeds[0].float(), expected["inputs_embeds"], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(model.logits(embedded), expected["last_logits"], atol=1e-3, rtol=0)

    settings = GenerationSettings(
        max_new_tokens=case["max_new_tokens"], do_sample=case["do_sample"], seed=seed
    )
    result = model.generate(prepared=prepared, settings=settings, return_logits=True)
    assert result.token_ids == case["generated_ids"]
    torch.testing.assert_close(result.first_logits, expected["last_logits"], atol=1e-3, rtol=0)
