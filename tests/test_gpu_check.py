"""`bench/gpu_check.py --dry-run`: the GPU check's whole path at tiny shapes on the CPU, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_measures_everything_and_a_missing_piece_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    check = _load(REPO / "bench" / "gpu_check.py", "gpu_check_under_test")

    def no_clip(run):
        raise ImportError("a package the clip path needs is missing")

    monkeypatch.setattr(check, "video_call", no_clip)
    out = tmp_path / "gpu_check.json"
    assert check.main(["--dry-run", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["environment"]["dry_run"] and results["bandwidth_gb_s"] > 0
    assert [r["name"] for r in results["releases"]] == ["PixelRefer-2B (tiny)", "PixelRefer-Lite-2B (tiny)"]
    for release in results["releases"]:
        assert release["load_s"] > 0 and release["first_token_image_ms"] > 0
        assert release["decode_tokens_s"] > 0 and release["bound_share"] > 0
        assert release["visitor"]["kv_prefix_mib"] > 0
        assert set(release["tokens_s_concurrent"]) >= {"1", "2", "ratio_last_to_1"}
        assert "first_token_clip_ms" not in release
        assert "missing" in release["skipped"]["first_token_clip_ms"]
    assert results["sam"]["image_embedding_ms"] > 0 and results["sam"]["prompt_decoder_ms"] > 0
    printed = capsys.readouterr().out
    assert "PixelRefer-Lite-2B (tiny)" in printed and "skipped:" in printed and "not judged" in printed


def test_the_cv2_stand_in_resizes_like_opencv() -> None:
    import cv2

    standin = _load(REPO / "bench" / "standins" / "cv2.py", "cv2_standin_under_test")
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for size, mode in (((128, 96), cv2.INTER_LINEAR), ((32, 24), cv2.INTER_AREA)):
        ours = standin.resize(picture, size, interpolation=mode).astype(int)
        theirs = cv2.resize(picture, size, interpolation=mode).astype(int)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 2
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1
    assert standin.resize(mask, (20, 20), interpolation=cv2.INTER_LINEAR).shape == (20, 20)
    with pytest.raises(NotImplementedError, match="stand-in"):
        standin.distanceTransform(mask, 2, 5)
