"""One device and dtype policy for everything that runs a network (PixelRefer, SAM 2.1).

The decisions are pure functions of a GPU inventory, so they can be tested with made-up machines;
`visible_gpus()` is the only place that asks torch what is really there.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import InputError

__all__ = [
    "CPU_BF16_FEATURES",
    "QUANTIZER_MEMORY_FACTOR",
    "GpuInfo",
    "Placement",
    "PlacementError",
    "cpu_bf16_features",
    "cuda_diagnosis",
    "engine_dtype",
    "freest_gpu",
    "plan_loading",
    "plan_placement",
    "resolve_dtype",
    "visible_gpus",
]

GIB = 1024**3

_log = logging.getLogger(__name__)

QUANTIZER_MEMORY_FACTOR = 0.9
"""transformers' bitsandbytes quantizers multiply every `max_memory` entry by this (room for quantization
buffers); a plan for a quantized model divides by it, so the budget it meant is the one transformers uses."""

MIN_DRIVER_FOR_BUILD = {"13": "580", "12": "525", "11": "450"}
"""The oldest NVIDIA driver branch each CUDA major version of torch's build runs on."""

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class PlacementError(InputError):
    """The request cannot be served on this machine; the message says why and what would work."""


@dataclass(frozen=True)
class GpuInfo:
    """What placement needs to know about one visible GPU."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]


@dataclass(frozen=True)
class Placement:
    """Where the weights go: `device_map` is what transformers/accelerate take."""

    device_map: dict[str, str | int] | str
    devices: tuple[str, ...]
    max_memory: dict[int | str, int] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    dtype_note: str = ""
    """Why the weights run in the dtype they do (shown in the model status)."""

    @property
    def primary(self) -> torch.device:
        """The device that receives inputs (embeddings, vision tower)."""
        return torch.device(self.devices[0])


def visible_gpus(*, measure_free: bool = True) -> list[GpuInfo]:
    """The CUDA devices torch can use right now (empty on a CPU machine, said loudly when a GPU is there).

    `measure_free=False` reports each GPU's total as free: reading free memory creates a CUDA context
    (a few hundred MB on every GPU, for the life of the process), which a process that only starts a
    vLLM server must not hold, since vLLM sizes its cache from the memory free when it starts.
    """
    if not torch.cuda.is_available():
        _warn_unusable_gpu()
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        try:
            if not measure_free:
                raise RuntimeError("not measured")
            free, total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            free, total = props.total_memory, props.total_memory
        gpus.append(GpuInfo(index, props.name, int(total), int(free), (props.major, props.minor)))
    return gpus


def _gpu_present() -> bool:
    """An NVIDIA GPU on this machine, whatever torch thinks: its device node or the driver's tool."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def cuda_diagnosis(
    *,
    cuda_available: bool | None = None,
    gpu_present: bool | None = None,
    cuda_build: str | None = "",
) -> str:
    """Why a GPU that is there goes unused: empty when CUDA works or no GPU exists.

    torch's CUDA build needs a driver at least as new as its CUDA (13.x: R580); with an older driver
    `torch.cuda.is_available()` is simply False and everything would run, slowly, on the CPU.
    The arguments stand in for the machine's answers (tests); None/"" asks the machine.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if available:
        return ""
    present = _gpu_present() if gpu_present is None else gpu_present
    if not present:
        return ""
    build = torch.version.cuda if cuda_build == "" else cuda_build
    if build is None:
        return (
            "A GPU is present but this torch is a CPU-only build, so everything runs on the CPU: install "
            "the CUDA build of torch (see docs/gpu.md)."
        )
    driver = MIN_DRIVER_FOR_BUILD.get(build.split(".")[0], "")
    need = f" (driver R{driver} or newer)" if driver else ""
    return (
        f"A GPU is present but CUDA is unavailable to torch {torch.__version__} (built for CUDA {build}"
        f"{need}), so everything runs on the CPU: the NVIDIA driver is most likely older than CUDA "
        f"{build} needs. Check `nvidia-smi`, update the driver, or install a torch built for an older CUDA "
        "(see docs/gpu.md)."
    )


@functools.cache
def _warn_unusable_gpu() -> None:
    message = cuda_diagnosis(cuda_available=False)
    if message:
        _log.error(message)


def freest_gpu(gpus: list[GpuInfo]) -> GpuInfo | None:
    """The GPU with the most free memory (the lowest index among equals): where a small second network
    such as SAM goes, so it does not crowd the GPU the chat model filled."""
    return max(gpus, key=lambda g: (g.free_bytes, -g.index), default=None)


def engine_dtype(devices: tuple[str, ...], gpus: list[GpuInfo], model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a vLLM engine's weights: bfloat16 on GPUs of compute capability >= 8.0, float16 below
    (vLLM has no bfloat16 there, and float32 would double the weights and the KV cache for no gain on a
    GPU); on the CPU the model's own dtype."""
    used = [g for g in gpus if f"cuda:{g.index}" in devices]
    if not used:
        return model_dtype
    if model_dtype == torch.float16:
        return torch.float16
    return torch.bfloat16 if all(g.capability >= (8, 0) for g in used) else torch.float16


CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")
"""CPU features that compute bfloat16 matrix products natively; without them torch emulates bf16 slowly."""
_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """Which of `CPU_BF16_FEATURES` this CPU has (torch's own probe, else /proc/cpuinfo's flags)."""
    try:
        capabilities = torch.cpu.get_capabilities()
        return tuple(f for f in CPU_BF16_FEATURES if capabilities.get(f))
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = set(_CPUINFO.read_text().split())
    except OSError:
        return ()
    return tuple(f for f in CPU_BF16_FEATURES if f in flags)


def resolve_dtype(
    dtype: str | torch.dtype,
    devices: tuple[str, ...],
    gpus: list[GpuInfo],
    *,
    cpu_bf16: bool = False,
) -> torch.dtype:
    """`auto`: bfloat16 when every GPU used has compute capability >= 8.0, float16 on older GPUs; on the
    CPU bfloat16 when `cpu_bf16` (the CPU computes it natively), else float32."""
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    elif dtype == "auto":
        used = [g for g in gpus if f"cuda:{g.index}" in devices]
        if not used:
            return torch.bfloat16 if cpu_bf16 else torch.float32
        return torch.bfloat16 if all(g.capability >= (8, 0) for g in used) else torch.float16
    elif dtype in _DTYPES:
        chosen = _DTYPES[dtype]
    else:
        raise PlacementError(f"Unknown dtype '{dtype}': use auto, float32, float16 or bfloat16")
    if chosen not in (torch.float32, torch.float16, torch.bfloat16):
        raise PlacementError(f"Unsupported dtype {chosen}: use float32, float16 or bfloat16")
    if all(d == "cpu" for d in devices) and chosen == torch.float16:
        raise PlacementError("float16 is not supported on the CPU here: use float32 or bfloat16")
    return chosen


def _fits(gpu: GpuInfo, need_bytes: int, headroom: float) -> bool:
    return need_bytes <= gpu.free_bytes * (1.0 - headroom)


def plan_placement(
    device: str,
    gpus: list[GpuInfo],
    need_bytes: int,
    *,
    headroom: float = 0.15,
    quantized: bool = False,
) -> Placement:
    """Choose devices for a model needing `need_bytes` of weights (plus `headroom` of each GPU for activations).

    `device` is `auto` (every visible GPU, else the CPU), `cpu`, `cuda` (the first GPU) or `cuda:N`.
    A request that cannot be met raises `PlacementError` before anything is loaded. `quantized`
    (bitsandbytes): transformers shrinks a split's `max_memory` by `QUANTIZER_MEMORY_FACTOR`, so the plan
    hands it the budget divided by that factor; otherwise modules it thinks do not fit would go to "disk".
    """
    device = (device or "auto").strip().lower()
    if device == "cpu":
        return Placement({"": "cpu"}, ("cpu",))
    if device == "auto" and not gpus:
        return Placement({"": "cpu"}, ("cpu",), notes=("no GPU visible: running on the CPU",))
    if device.startswith("cuda"):
        # Only `cuda` and `cuda:N`: a typo such as `cuda1` must not silently mean GPU 0.
        match = re.fullmatch(r"cuda(?::(\d+))?", device)
        if match is None:
            raise PlacementError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N")
        if not gpus:
            raise PlacementError(
                f"device '{device}' was asked for but no CUDA GPU is visible; use --device cpu"
            )
        index = int(match.group(1) or 0)
        match = [g for g in gpus if g.index == index]
        if not match:
            raise PlacementError(f"GPU {index} is not visible (visible: {[g.index for g in gpus]})")
        gpu = match[0]
        if not _fits(gpu, need_bytes, headroom):
            raise PlacementError(
                f"The model needs about {need_bytes / GIB:.1f} GiB but GPU {index} ({gpu.name}) has "
                f"{gpu.free_bytes / GIB:.1f} GiB free; use --quantization 4bit/8bit or --device auto"
            )
        return Placement({"": f"cuda:{index}"}, (f"cuda:{index}",))
    if device != "auto":
        raise PlacementError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N")

    ordered = sorted(gpus, key=lambda g: g.index)
    for gpu in ordered:
        if _fits(gpu, need_bytes, headroom):
            return Placement({"": f"cuda:{gpu.index}"}, (f"cuda:{gpu.index}",))
    budget = {g.index: int(g.free_bytes * (1.0 - headroom)) for g in ordered}
    if sum(budget.values()) < need_bytes:
        total = sum(budget.values()) / GIB
        raise PlacementError(
            f"The model needs about {need_bytes / GIB:.1f} GiB; the {len(ordered)} visible GPU(s) offer "
            f"{total:.1f} GiB together; use --quantization 4bit/8bit, a smaller model, or --device cpu"
        )
    used = []
    remaining = need_bytes
    for gpu in ordered:
        used.append(gpu)
        remaining -= budget[gpu.index]
        if remaining <= 0:
            break
    factor = QUANTIZER_MEMORY_FACTOR if quantized else 1.0
    return Placement(
        "auto",
        tuple(f"cuda:{g.index}" for g in used),
        max_memory={g.index: int(budget[g.index] / factor) for g in used},
        notes=(f"split across {len(used)} GPUs",),
    )


def _older_gpus(placement: Placement, gpus: list[GpuInfo]) -> list[GpuInfo]:
    return [g for g in gpus if f"cuda:{g.index}" in placement.devices and g.capability < (8, 0)]


_FLOAT16_NOTE = (
    "float16: a GPU used has no bfloat16 (compute capability < 8.0) and float32 does not fit; the model "
    "was trained in bfloat16, so float16 may overflow (--quantization 8bit keeps float32 for everything but "
    "its 8-bit matrix products, whose inputs bitsandbytes converts to float16)"
)


def _dtype_note(
    dtype: str | torch.dtype,
    chosen: torch.dtype,
    placement: Placement,
    cpu: tuple[str, ...],
    gpus: list[GpuInfo],
) -> str:
    name = str(chosen).removeprefix("torch.")
    if dtype != "auto":
        return f"{name}, as asked"
    if placement.devices == ("cpu",):
        if chosen == torch.bfloat16:
            return f"bfloat16: this CPU computes it natively ({', '.join(cpu)})"
        return "float32: this CPU has no native bfloat16 (AMX-BF16 or AVX512-BF16)"
    if _older_gpus(placement, gpus):
        return "float32: a GPU used has no bfloat16 (compute capability < 8.0), and float16 would overflow"
    return "bfloat16: every GPU used supports it (compute capability >= 8.0)"


def plan_loading(
    device: str,
    dtype: str | torch.dtype,
    gpus: list[GpuInfo],
    weight_bytes: Callable[[torch.dtype], int],
    *,
    cpu_bf16: tuple[str, ...] | None = None,
    quantized: bool = False,
) -> tuple[Placement, torch.dtype]:
    """Placement and dtype together for a model trained in bfloat16 (Qwen2.5), since each depends on the other.

    The dtype decides the size (`weight_bytes(dtype)`), and the size decides which GPUs are used. With
    `dtype="auto"`: bfloat16 on GPUs of compute capability >= 8.0; on the CPU bfloat16 when it has one of
    `CPU_BF16_FEATURES` (`cpu_bf16`, detected when None), else float32. GPUs without bfloat16 (< 8.0) get
    float32, not float16: Qwen2.5's activations exceed float16's range (65504) and overflow into inf/NaN,
    while bfloat16 weights convert to float32 exactly. Only when float32 does not fit is float16 used, and
    then `dtype_note` says so (an explicit dtype or quantization is the way to choose otherwise).
    """
    cpu = cpu_bf16_features() if cpu_bf16 is None else tuple(cpu_bf16)

    def policy(placement: Placement) -> torch.dtype:
        if dtype == "auto" and _older_gpus(placement, gpus):
            return torch.float32
        return resolve_dtype(dtype, placement.devices, gpus, cpu_bf16=bool(cpu))

    def place(chosen: torch.dtype, older: bool) -> Placement:
        try:
            return plan_placement(device, gpus, weight_bytes(chosen), quantized=quantized)
        except PlacementError:
            if not (dtype == "auto" and older):
                raise
            fallback = plan_placement(device, gpus, weight_bytes(torch.float16), quantized=quantized)
            return replace(fallback, dtype_note=_FLOAT16_NOTE)

    provisional = plan_placement(device, gpus, 0)
    chosen = policy(provisional)
    placement = place(chosen, bool(_older_gpus(provisional, gpus)))
    if not placement.dtype_note and policy(placement) != chosen:
        chosen = policy(placement)
        placement = place(chosen, bool(_older_gpus(placement, gpus)))
    if placement.dtype_note:
        return placement, torch.float16
    return replace(placement, dtype_note=_dtype_note(dtype, chosen, placement, cpu, gpus)), chosen
