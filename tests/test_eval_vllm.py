"""`eval run --engine vllm` gives the transformers engine's predictions (CPU, float32, greedy).

The fixture checkpoints' attention heads (16) are below what vLLM's CPU attention takes, so this uses a
random checkpoint with heads of 32 (as `test_engine_vllm.py` does). Without vLLM's venv (`bash .ci/vllm`)
the module fails in CI (CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pixelrefer.cli import main
from pixelrefer.engines.vllm_server import find_vllm_python
from pixelrefer.eval.rows import read_rows
from pixelrefer.model.synthetic import ModelShape, build_checkpoint

from . import eval_data as data

ENGINE_SHAPE = ModelShape(64, 128, 2, 2, 1, 32, 64, 2, 2)
VLLM_PYTHON = find_vllm_python()

if VLLM_PYTHON is None:
    message = "vLLM's venv is missing: run `bash .ci/vllm` (or set PIXELREFER_VLLM_PYTHON)"
    if os.environ.get("CI"):
        raise RuntimeError(message)  # CI must run these tests, never skip them
    pytest.skip(message, allow_module_level=True)


def test_vllm_predictions_equal_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELREFER_VLLM_PYTHON", str(VLLM_PYTHON))
    monkeypatch.setenv("PIXELREFER_CACHE", str(tmp_path / "cache"))  # the export goes here, not to ~/.cache
    checkpoint = build_checkpoint(
        tmp_path / "ckpt",
        variant="full",
        shape=ENGINE_SHAPE,
        seed=0,
        generation_config={"repetition_penalty": 1.1},
    )
    media = data.media_root(tmp_path / "media")
    annotations = data.videorefer_q(tmp_path / "q.json")
    predictions = {}
    for engine in ("transformers", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        argv = ["eval", "run", "videorefer-q", "--annotations", str(annotations), "--media-root", str(media)]
        argv += ["--model", str(checkpoint), "--out", str(out), "--device", "cpu", "--dtype", "float32"]
        argv += ["--max-new-tokens", "12", "--engine", engine]
        assert main(argv) == 0
        rows = list(read_rows(out))
        assert [r["provenance"]["engine"] for r in rows] == [engine] * 3
        predictions[engine] = [(r["id"], r["prediction"], r["finish_reason"]) for r in rows]
    assert all(len(text) > 3 for _, text, _ in predictions["transformers"])
    assert sorted(predictions["vllm"]) == sorted(predictions["transformers"])
