"""The memory budget for all visitors (`pixelrefer.serve.budget`): measured holdings, room made by dropping idle
visitors' caches first, refusals that say what to do, checks before media and tracking are allocated, and an
allocator's out-of-memory (injected `torch.cuda.OutOfMemoryError`) answered with the same message."""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelrefer.model.generation import GenerationSettings
from pixelrefer.runtime.errors import InputError
from pixelrefer.serve import budget as budget_module
from pixelrefer.serve.budget import (
    FULL_MESSAGE,
    MemoryBudget,
    ServerFull,
    default_limits,
    holdings,
    is_out_of_memory,
    kv_bytes_per_token,
)
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .app_media import write_scene_clip
from .conftest import fixtures_root

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The tiny full model of the fixtures with GrabCut masks, on the CPU; every test sets its own limits."""
    settings = replace(
        AppSettings(),
        model=str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"),
        sam2="grabcut",
        device="cpu",
        preview_dir=tmp_path_factory.mktemp("preview"),
    )
    started = Service(settings).start()
    yield started
    started.warmer.close()
    started.close()


@pytest.fixture
def visitors(service: Service) -> Iterator[list[Workspace]]:
    """Workspaces made by a test, closed after it; the budget unbounded again."""
    made: list[Workspace] = []
    yield made
    for ws in made:
        ws.close()
    service.budget.limits = {}
    service.warmer.wait(30)


def picture(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box(height: int = 120, width: int = 160) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[30:80, 40:110] = True
    return mask


def marked(service: Service, visitors: list[Workspace], seed: int = 0) -> Workspace:
    """A visitor with a picture and one object, warmed up (features, object tokens and KV prefix cached)."""
    ws = Workspace(service)
    visitors.append(ws)
    ws.open_image(picture(seed=seed))
    ws.add_mask(box(), 0)
    assert service.warmer.wait(30)
    return ws


def clip_with_object(
    service: Service, visitors: list[Workspace], tmp_path: Path
) -> tuple[Workspace, tuple[int, int]]:
    """A visitor with a 3-frame clip and one object marked on its first frame; the clip's (width, height)."""
    clip = write_scene_clip(tmp_path, seconds=3, fps=4)
    ws = Workspace(service)
    visitors.append(ws)
    ws.open_video(clip.path)
    width, height = clip.size
    mask = np.zeros((height, width), bool)
    mask[100:140, 40:100] = True
    ws.add_mask(mask, ws.clip.indices[0])
    return ws, (width, height)


def cpu(ws: Workspace, *kinds: str) -> int:
    held = holdings(ws).get("cpu", {})
    return sum(held.get(kind, 0) for kind in kinds) if kinds else sum(held.values())


CACHES = ("features", "kv", "display")


def test_holdings_count_each_buffer_once_from_the_objects_themselves(
    service: Service, visitors: list[Workspace]
) -> None:
    ws = marked(service, visitors)
    image = ws.image
    held = holdings(ws, detail=True)["cpu"]
    # The frame is referenced by the workspace and by its chat session: one buffer.
    assert held["media"] == image.nbytes == 120 * 160 * 3
    assert held["masks"] == 120 * 160  # one bool mask: a byte a pixel
    session = ws.session
    entries = list(session.feature_cache._items.values())
    tensors = sum(t.untyped_storage().nbytes() for t in entries)
    assert held["features"] + held["object tokens"] == tensors > 0
    assert held["object tokens"] > 0 and held["features"] > 0
    layers = session.prefix_cache.cache.layers
    kv = sum(t.untyped_storage().nbytes() for layer in layers for t in (layer.keys, layer.values))
    assert held["kv"] == kv + session.prefix_cache.rows.untyped_storage().nbytes()
    # The canvas's copy is new memory only when it is a copy (a small picture is shown as it is).
    ws.canvas()
    assert holdings(ws)["cpu"].get("display", 0) == 0
    big = Workspace(service)
    visitors.append(big)
    big.open_image(picture(900, 1600))
    big.canvas()
    assert holdings(big)["cpu"]["display"] == 576 * 1024 * 3


def test_kv_bytes_per_token_follow_the_config() -> None:
    from pixelrefer.model.synthetic import RELEASE_2B, RELEASE_7B, config_for

    assert kv_bytes_per_token(config_for("full", RELEASE_2B), torch.bfloat16) == 2 * 28 * 2 * 128 * 2
    assert kv_bytes_per_token(config_for("lite", RELEASE_7B), torch.bfloat16) == 2 * 28 * 4 * 128 * 2


def test_an_action_over_the_budget_drops_idle_visitors_caches_first(
    service: Service, visitors: list[Workspace]
) -> None:
    older = marked(service, visitors, seed=1)
    newer = marked(service, visitors, seed=2)
    assert cpu(older, "features", "kv") > 0 and cpu(newer, "features", "kv") > 0
    kept = {id(ws): cpu(ws, "media", "masks") for ws in (older, newer)}
    # Room for one more picture only once the least recently active visitor's caches are gone.
    newcomer = Workspace(service)
    visitors.append(newcomer)
    need = 120 * 160 * 3
    service.budget.limits = {"cpu": service.budget.usage()["cpu"] + need - 1}
    newcomer.open_image(picture(seed=3))
    assert cpu(older, "features", "kv") == 0, "the idle visitor's caches make room first"
    assert cpu(newer, "features", "kv") > 0, "the more recently active visitor keeps its caches"
    assert {id(ws): cpu(ws, "media", "masks") for ws in (older, newer)} == kept, "work is never dropped"
    assert newcomer.image is not None
    # The dropped caches are recomputed when needed: the older visitor still gets an answer.
    service.budget.limits = {}
    final = [r for r in older.ask("What is <object1>?", SHORT)][-1]
    assert final.exchange is not None and final.exchange.answer_ids


def test_the_visitors_own_caches_go_before_its_action_is_refused(
    service: Service, visitors: list[Workspace]
) -> None:
    ws = marked(service, visitors)
    own = cpu(ws, "features", "kv")
    assert own > 0
    need = budget_module.need_answer(ws, "What is <object1>?", SHORT)["cpu"]
    service.budget.limits = {"cpu": service.budget.usage()["cpu"] + need - own // 2}
    final = [r for r in ws.ask("What is <object1>?", SHORT)][-1]
    assert final.exchange is not None and final.exchange.answer_ids
    assert service.budget.usage()["cpu"] <= service.budget.limits["cpu"], "settled after the answer"


def test_an_action_that_cannot_fit_is_refused_with_what_to_do(
    service: Service, visitors: list[Workspace]
) -> None:
    ws = marked(service, visitors)
    before = ws.image
    refusals = service.budget.refusals
    service.budget.limits = {"cpu": service.budget.usage()["cpu"]}
    with pytest.raises(ServerFull) as refused:
        ws.open_image(picture(600, 800, seed=5))
    assert isinstance(refused.value, InputError), "shown to the visitor, never a traceback"
    assert FULL_MESSAGE in str(refused.value) and "This picture needs 1 MB" in str(refused.value)
    assert ws.image is before and len(ws.session.objects) == 1, "the refused action changed nothing"
    assert service.budget.refusals == refusals + 1


def test_a_clip_is_measured_from_its_metadata_and_refused_before_it_is_decoded(
    service: Service, visitors: list[Workspace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = write_scene_clip(tmp_path, seconds=3, fps=4)
    limits = service.settings.media
    width, height = clip.size
    frames = 3  # sampled at 1 fps
    assert budget_module.clip_bytes(clip.path, limits, 1024) >= width * height * 3 * frames
    ws = Workspace(service)
    visitors.append(ws)
    decoded: list[object] = []
    monkeypatch.setattr("pixelrefer.serve.workspace.load_clip", lambda *a, **k: decoded.append(a))
    service.budget.limits = {"cpu": service.budget.usage().get("cpu", 0) + width * height * 3}
    with pytest.raises(ServerFull, match="This clip needs"):
        ws.open_video(clip.path)
    assert decoded == [], "nothing was decoded"


def test_tracking_is_checked_before_it_runs(
    service: Service, visitors: list[Workspace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, (width, height) = clip_with_object(service, visitors, tmp_path)
    service.warmer.wait(30)
    tracked: list[object] = []
    monkeypatch.setattr(service.segmenter, "track", lambda *a, **k: tracked.append(a))
    need = budget_module.need_tracking(ws)["cpu"]
    assert need == len(ws.clip) * width * height
    service.budget.limits = {"cpu": service.budget.usage()["cpu"] + need - 1 - cpu(ws, "features", "kv")}
    with pytest.raises(ServerFull, match="Tracking needs"):
        ws.track()
    assert tracked == [] and not ws.tracked


def test_cuda_out_of_memory_during_an_answer_frees_and_says_the_server_is_full(
    service: Service, visitors: list[Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    idle = marked(service, visitors, seed=1)
    ws = marked(service, visitors, seed=2)
    assert cpu(idle, "features", "kv") > 0
    model = ws.session.model

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, as the real stream is

    monkeypatch.setattr(model, "stream", exhausted)
    with pytest.raises(ServerFull) as refused:
        list(ws.ask("What is <object1>?", SHORT))
    assert str(refused.value) == FULL_MESSAGE
    assert "CUDA" not in str(refused.value)
    assert cpu(idle, "features", "kv") == 0, "idle visitors' caches were freed"
    assert ws.session is not None and len(ws.session.objects) == 1, "the visitor's work is kept"
    monkeypatch.undo()
    final = [r for r in ws.ask("What is <object1>?", SHORT)][-1]
    assert final.exchange is not None, "the next answer works"


def test_out_of_memory_while_marking_says_the_server_is_full(
    service: Service, visitors: list[Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = marked(service, visitors)

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(service.segmenter, "segment_image", exhausted)
    with pytest.raises(ServerFull, match="The server is full right now"):
        ws.click(50, 50, "positive")
    assert len(ws.session.objects) == 1


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_a_warm_up_that_overflows_the_budget_keeps_it(service: Service, visitors: list[Workspace]) -> None:
    ws = Workspace(service)
    visitors.append(ws)
    ws.open_image(picture())
    service.budget.limits = {"cpu": service.budget.usage()["cpu"] + 120 * 160 + 1000}
    ws.add_mask(box(), 0)  # its warm-up computes features and a KV prefix far larger than the room left
    assert service.warmer.wait(30)
    assert service.budget.usage()["cpu"] <= service.budget.limits["cpu"]
    assert cpu(ws, "masks") == 120 * 160


def test_a_visitor_dropped_without_closing_stops_counting(service: Service) -> None:
    budget = MemoryBudget()
    ws = Workspace(service)
    budget.register(ws)
    ws.open_image(picture())
    assert len(budget.visitors()) == 1
    ws.close()
    del ws
    assert budget.visitors() == []


def test_budget_flags_environment_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AppSettings.parse([], env={}).ram_budget_gb is None
    settings = AppSettings.parse(["--ram-budget-gb", "6.5"], env={"PIXELREFER_GPU_BUDGET_GB": "20"})
    assert (settings.ram_budget_gb, settings.gpu_budget_gb) == (6.5, 20.0)
    assert AppSettings.parse(["--gpu-budget-gb", "auto"], env={}).gpu_budget_gb is None
    for bad in ("lots", "0", "-1"):
        with pytest.raises(SystemExit):
            AppSettings.parse(["--ram-budget-gb", bad], env={})

    class Memory:
        total = 32 * 2**30
        available = 20 * 2**30

    monkeypatch.setattr(budget_module.psutil, "virtual_memory", lambda: Memory)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_limits() == {"cpu": 20 * 2**30 - int(0.15 * 32 * 2**30)}
    assert default_limits(ram_bytes=123) == {"cpu": 123}


def test_an_answer_needs_room_for_its_prompt_unless_the_prompt_is_cached(
    service: Service, visitors: list[Workspace]
) -> None:
    ws = marked(service, visitors)
    assert ws.session.prefix_cache.rows is not None
    per_row = budget_module.need_answer(ws, "What is <object1>?", SHORT)["cpu"] // SHORT.max_new_tokens
    model = ws.session.model
    size = torch.tensor([], dtype=model.dtype).element_size()
    assert per_row == kv_bytes_per_token(model.config, model.dtype) + model.config.hidden_size * size
    ws.drop_caches()
    rows = SHORT.max_new_tokens + service.settings.chat.max_prompt_tokens
    assert budget_module.need_answer(ws, "What is <object1>?", SHORT) == {"cpu": rows * per_row}


def _reachable_buffers(ws: Workspace, shared: tuple[object, ...]) -> dict[str, int]:
    """Bytes of every array and tensor reachable from `ws` by references, each buffer once, by device: what
    the visitor really keeps alive. The walk stops at what all visitors share (the service, the model, the
    segmenter, the budget, the gate), and at modules, classes and functions."""
    stop = {id(obj) for obj in shared}
    tally = budget_module._Tally()
    seen: set[int] = set()
    todo: list[object] = [ws]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray | torch.Tensor):
            tally.add("held", obj)
            continue
        if isinstance(obj, type | types.ModuleType | types.FunctionType | types.MethodType | torch.nn.Module):
            continue
        todo.extend(gc.get_referents(obj))
    return {device: kinds["held"] for device, kinds in tally.bytes.items()}


def test_everything_a_visitor_keeps_alive_is_counted(
    service: Service, visitors: list[Workspace], tmp_path: Path
) -> None:
    """The budget bounds memory only if `holdings` sees all of it: a clip with a tracked object, after two
    answers, keeps alive no array or tensor the budget does not count (a session once kept the last prompt's
    pixels, 68 MB for 16 frames at 1080p, which nobody counted)."""
    ws, (width, height) = clip_with_object(service, visitors, tmp_path)
    ws.track()
    for question in ("What is <object1>?", "And where does it go?"):
        assert [r for r in ws.ask(question, SHORT)][-1].exchange is not None
    service.warmer.wait(30)
    ws.canvas()
    shared = (service, ws.session.model, service.segmenter, service.budget, ws.session.gate, service.warmer)
    reachable = _reachable_buffers(ws, shared)
    counted = {device: sum(kinds.values()) for device, kinds in holdings(ws).items()}
    assert reachable["cpu"] > width * height * 3 * len(ws.clip), "the walk reaches the frames"
    for device, size in reachable.items():
        assert size - counted.get(device, 0) < 64 * 1024, (device, size, counted, holdings(ws))
