"""The app's whole flow on ZeroGPU, as the `spaces` stand-in enforces it, gives the answers of the normal mode.

`tests/zerogpu/flow.py` drives the page's real handlers (open, mark by click and box, keep, ask, follow-up,
describe, regenerate, stop; a clip: mark, keep, track, ask, describe) and prints what the visitor got. It runs
three times, at once: normally, and with the stand-in on its path (every `@spaces.GPU` call in a forked worker
with pickled arguments and results) with a fresh fork per call and with reused workers. A result that did not
come back from a worker, a model forward outside a call (the warm-up, SAM, an answer), a tensor or module in a
result, or a different token anywhere fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .app_process import REPO

STANDIN = REPO / "tests" / "zerogpu"
MODES = {"normal": None, "fresh-fork": "0", "reused-worker": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    started = {}
    for mode, reuse in MODES.items():
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("SPACES_ZERO_GPU", None)
        env.pop("PIXELREFER_ZERO_GPU", None)
        if reuse is not None:
            env |= {"PYTHONPATH": str(STANDIN), "SPACES_STANDIN_REUSE": reuse}
        folder = tmp_path_factory.mktemp(mode)
        started[mode] = subprocess.Popen(
            [sys.executable, str(STANDIN / "flow.py"), str(folder)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    seen = {}
    for mode, process in started.items():
        out, err = process.communicate(timeout=400)
        assert process.returncode == 0, f"{mode}:\n{err[-3000:]}"
        seen[mode] = json.loads(out.strip().splitlines()[-1])
    return seen


VISITOR = [
    "marked", "ask", "follow_up", "describe", "regenerate", "image_chat", "stopped", "tracked", "clip_ask",
    "clip_describe", "clip_chat", "toasts",
]  # fmt: skip
"""What the visitor sees and keeps, step by step."""


def test_the_normal_flow_works(runs: dict[str, dict]) -> None:
    normal = runs["normal"]
    assert normal["zero_gpu"] is False and normal["toasts"] == []
    assert len(normal["marked"]["objects"]) == 2
    assert [len(e["ids"]) for e in normal["image_chat"]["history"]] == [12] * 4  # ask, follow-up, describe x2
    assert normal["stopped"] == {
        "finish": "stopped",
        "kept": "Tell me everything about <object1>.",
        "tokens_below": True,
    }
    assert normal["tracked"]["tracked"] and normal["tracked"]["steps"][-1] == [4, 4]
    assert [e["question"] for e in normal["clip_chat"]["history"]] == [
        "Where does <object1> go?",
        "Describe <object1> in detail.",
    ]
    assert normal["warm_ups"] >= 1  # the background warm-up runs in the normal mode


@pytest.mark.parametrize("mode", ["fresh-fork", "reused-worker"])
def test_zerogpu_gives_the_normal_answers_and_masks(runs: dict[str, dict], mode: str) -> None:
    zero = runs[mode]
    assert zero["zero_gpu"] is True
    for step in VISITOR:
        assert zero[step] == runs["normal"][step], step


@pytest.mark.parametrize("mode", ["fresh-fork", "reused-worker"])
def test_zerogpu_runs_no_model_work_outside_a_call(runs: dict[str, dict], mode: str) -> None:
    """The stand-in saw no forward outside a call over the whole flow, the warm-up never ran, and each
    model path called directly in the main process is refused (so the empty list means something)."""
    zero = runs[mode]
    assert zero["violations"] == []
    assert zero["warm_ups"] == 0
    assert zero["direct"] == {"warm_up": "refused", "answer": "refused", "sam": "refused"}
