"""Exercises the ZeroGPU stand-in's rules in its own process; prints one JSON object of what happened."""

from __future__ import annotations

import datetime
import json
import pickle
import threading

import spaces
import torch

results: dict[str, object] = {"zero_gpu": spaces.config.zero_gpu}
layer = torch.nn.Linear(4, 2)


@spaces.GPU(duration=5)
def mutate(box: dict) -> int:
    box["changed"] = True
    return len(box)


@spaces.GPU(duration=lambda x: 7)
def forward(x: torch.Tensor) -> torch.Tensor:
    return layer(x).detach()


@spaces.GPU
def give_module() -> torch.nn.Module:
    return layer


class Holder:
    """Holds a module but pickles without it, as a chat session does."""

    def __init__(self) -> None:
        self.layer, self.value = layer, 3

    def __getstate__(self) -> dict:
        return {"value": self.value}


@spaces.GPU
def give_holder() -> Holder:
    return Holder()


@spaces.GPU
def give_device_tensor() -> torch.Tensor:
    return torch.empty(2, device="meta")  # stands in for a CUDA tensor: not on the CPU


@spaces.GPU
def fail() -> None:
    raise KeyError("inner detail")


@spaces.GPU
def fail_for_visitor() -> None:
    import gradio as gr

    raise gr.Error("shown to the visitor")


@spaces.GPU
def stream(n: int):
    for i in range(n):
        yield i * i


@spaces.GPU
def outer() -> int:
    return inner() + 1


@spaces.GPU
def inner() -> int:
    return 41


@spaces.GPU(duration=lambda: "long")
def bad_duration() -> int:
    return 1


@spaces.GPU
def counter() -> int:
    global calls
    calls = globals().get("calls", 0) + 1
    return calls


def outcome(fn, *args) -> str:
    try:
        return repr(fn(*args))
    except Exception as exc:  # noqa: BLE001 - the probe records what each rule raised
        return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"


box = {"a": 1}
results["mutate_returns"] = mutate(box)
results["mutation_came_back"] = "changed" in box
results["forward_in_call"] = list(forward(torch.ones(1, 4)).shape)
results["module_result"] = outcome(give_module)
results["device_tensor_result"] = outcome(give_device_tensor)
results["getstate_result"] = vars(give_holder())
results["real_config_layout"] = spaces.config.Config.zero_gpu
results["plain_error"] = outcome(fail)
results["visitor_error"] = outcome(fail_for_visitor)
results["stream"] = list(stream(4))
results["nested"] = outer()
results["bad_duration"] = outcome(bad_duration)
results["unpicklable_argument"] = outcome(mutate, {"lock": threading.Lock()})
results["forward_outside"] = outcome(layer, torch.ones(1, 4))
results["thread_forward_outside"] = []
worker = threading.Thread(
    target=lambda: results["thread_forward_outside"].append(outcome(layer, torch.ones(1, 4)))
)
worker.start()
worker.join()
results["violations"] = spaces.violations()
results["counter"] = [counter(), counter(), counter()]
try:

    @spaces.GPU
    async def not_allowed() -> None:
        return None

    results["async"] = "accepted"
except NotImplementedError:
    results["async"] = "refused"
results["timedelta_ok"] = spaces.GPU(duration=datetime.timedelta(seconds=3))(lambda: 3)()
results["pickled_types"] = type(pickle.loads(pickle.dumps(box))).__name__
print(json.dumps(results))
