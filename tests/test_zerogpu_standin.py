"""The ZeroGPU stand-in (`tests/zerogpu/spaces`) enforces the rules the real service imposes.

The app's ZeroGPU tests are only as strict as this stand-in, so each rule is checked here in its own process
(the stand-in's forward hook is process-wide), with a fresh worker per call and with reused workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "zerogpu"


def probe(reuse: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(STANDIN), "SPACES_STANDIN_REUSE": "1" if reuse else "0"}
    done = subprocess.run(
        [sys.executable, str(STANDIN / "probe.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=[False, True], ids=["fresh-fork", "reused-worker"])
def seen(request) -> dict:
    return probe(request.param) | {"reuse": request.param}


def test_calls_cross_by_pickle_and_mutations_stay_in_the_worker(seen):
    assert seen["zero_gpu"] is True
    assert seen["mutate_returns"] == 2
    assert seen["mutation_came_back"] is False
    assert seen["unpicklable_argument"].startswith("PicklingError")


def test_model_work_only_inside_a_call(seen):
    assert seen["forward_in_call"] == [1, 2]
    assert seen["forward_outside"].startswith("ZeroGPUViolation")
    assert seen["thread_forward_outside"][0].startswith("ZeroGPUViolation")
    assert seen["violations"] == ["Linear", "Linear"]


def test_results_must_be_plain_cpu_data(seen):
    assert seen["module_result"] == "Error: ModuleResult"
    assert seen["device_tensor_result"] == "Error: CUDATensorResult"
    # What is checked is what crosses: an object whose `__getstate__` leaves its module behind comes back.
    assert seen["getstate_result"] == {"value": 3}


def test_the_mode_reads_as_the_real_package_says_it(seen):
    assert seen["real_config_layout"] is True


def test_errors_map_as_zerogpu_maps_them(seen):
    assert seen["plain_error"] == "Error: KeyError"  # the inner message is not shown
    assert seen["visitor_error"] == "Error: shown to the visitor"


def test_streams_nesting_durations_and_async(seen):
    assert seen["stream"] == [0, 1, 4, 9]
    assert seen["nested"] == 42
    assert seen["bad_duration"].startswith("TypeError: duration must give an int or a timedelta")
    assert seen["timedelta_ok"] == 3
    assert seen["async"] == "refused"


def test_worker_globals_persist_only_when_reused(seen):
    assert seen["counter"] == ([1, 2, 3] if seen["reuse"] else [1, 1, 1])
