"""The server's C allocator (`pixelrefer.runtime.allocator`): large buffers a visitor frees go back to the
system, measured by RSS in a fresh process (glibc's defaults keep them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, psutil
    from pixelrefer.runtime.allocator import tune_for_server

    applied = tune_for_server() if sys.argv[1] == "tuned" else {}
    rss = lambda: psutil.Process().memory_info().rss
    first = np.ones(6 << 20, np.uint8)  # a frame, freed: glibc then carves frames of this size from its heap
    del first
    base = rss()
    frames, pins = [], []
    for _ in range(64):
        frames.append(np.ones(6 << 20, np.uint8))  # a 1080p frame
        pins.append(bytearray(64 << 10))  # smaller things allocated between frames, still alive
    held = rss() - base
    del frames
    print(json.dumps({"applied": applied, "held": held >> 20, "kept": (rss() - base) >> 20}))
    """
)


def probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_frames_go_back_to_the_system() -> None:
    default, tuned = probe("default"), probe("tuned")
    assert default["held"] >= 350 and tuned["held"] >= 350, "64 frames of 6 MB were held"
    assert default["kept"] > 300, f"glibc's defaults keep freed frames: the probe shows it ({default})"
    assert tuned["applied"] == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert tuned["kept"] < 32, f"with the server's settings they are returned ({tuned})"


def test_the_operators_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelrefer.runtime.allocator import tune_for_server

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_for_server() == {}
