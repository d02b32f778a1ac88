"""The device and dtype policy as pure functions over made-up GPU inventories.

No machine here has several GPUs (or any), so every decision `from_pretrained` makes about placement is
checked on invented inventories: the function under test never asks torch what is installed.
"""

from __future__ import annotations

import pytest
import torch

from pixelrefer.runtime.devices import (
    GIB,
    GpuInfo,
    PlacementError,
    plan_loading,
    plan_placement,
    resolve_dtype,
)

HEADROOM = 0.15


def gpu(
    index: int, free_gib: float, capability: tuple[int, int] = (8, 0), total_gib: float = 80.0
) -> GpuInfo:
    """A made-up GPU with `free_gib` GiB free."""
    return GpuInfo(index, f"Fake GPU {index}", int(total_gib * GIB), int(free_gib * GIB), capability)


def usable(free_gib: float) -> int:
    """Bytes the policy lets weights take on a GPU with `free_gib` free (the rest is for activations)."""
    return int(int(free_gib * GIB) * (1 - HEADROOM))


# ---------------------------------------------------------------------------------------------- placement


def test_cpu_only_machine_places_everything_on_the_cpu() -> None:
    for device in ("auto", "cpu", "AUTO", " cpu "):
        placement = plan_placement(device, [], 20 * GIB)
        assert placement.devices == ("cpu",)
        assert placement.device_map == {"": "cpu"}
        assert placement.max_memory is None
        assert placement.primary == torch.device("cpu")


def test_explicit_cpu_ignores_the_gpus() -> None:
    placement = plan_placement("cpu", [gpu(0, 80)], 1 * GIB)
    assert placement.devices == ("cpu",)


def test_one_big_gpu_takes_the_whole_model() -> None:
    placement = plan_placement("auto", [gpu(0, 80)], 16 * GIB)
    assert placement.devices == ("cuda:0",)
    assert placement.device_map == {"": "cuda:0"}
    assert placement.max_memory is None
    assert placement.primary == torch.device("cuda:0")


def test_several_gpus_use_the_first_one_that_fits() -> None:
    # GPU 0 is nearly full, GPU 1 fits the model, GPU 2 would fit too but comes later.
    gpus = [gpu(0, 4), gpu(1, 40), gpu(2, 80)]
    placement = plan_placement("auto", gpus, 20 * GIB)
    assert placement.devices == ("cuda:1",)
    assert placement.device_map == {"": "cuda:1"}


def test_inventory_order_does_not_matter_only_the_index() -> None:
    gpus = [gpu(2, 80), gpu(1, 40), gpu(0, 40)]
    assert plan_placement("auto", gpus, 20 * GIB).devices == ("cuda:0",)


def test_a_model_too_big_for_one_gpu_is_split_over_two() -> None:
    gpus = [gpu(0, 24), gpu(1, 24), gpu(2, 24)]
    need = usable(24) + GIB  # one GPU's budget plus a little
    placement = plan_placement("auto", gpus, need)
    assert placement.device_map == "auto"
    assert placement.devices == ("cuda:0", "cuda:1")
    # max_memory names only the GPUs in use, each with its budget, so accelerate never spills to GPU 2.
    assert placement.max_memory == {0: usable(24), 1: usable(24)}
    assert placement.primary == torch.device("cuda:0")


def test_a_model_that_needs_three_gpus_uses_three() -> None:
    gpus = [gpu(0, 24), gpu(1, 24), gpu(2, 24), gpu(3, 24)]
    need = 2 * usable(24) + GIB
    placement = plan_placement("auto", gpus, need)
    assert placement.devices == ("cuda:0", "cuda:1", "cuda:2")
    assert set(placement.max_memory) == {0, 1, 2}
    assert sum(placement.max_memory.values()) >= need


def test_too_big_for_all_gpus_fails_before_loading_with_the_numbers_and_a_way_out() -> None:
    gpus = [gpu(0, 10), gpu(1, 10)]
    with pytest.raises(PlacementError) as caught:
        plan_placement("auto", gpus, 40 * GIB)
    message = str(caught.value)
    assert "40.0 GiB" in message  # what the model needs
    assert "2 visible GPU" in message
    assert "quantization" in message and "cpu" in message  # what would work instead


def test_explicit_gpu_index_is_honoured_even_when_another_fits_first() -> None:
    gpus = [gpu(0, 80), gpu(1, 80)]
    placement = plan_placement("cuda:1", gpus, 10 * GIB)
    assert placement.devices == ("cuda:1",)
    assert placement.device_map == {"": "cuda:1"}
    assert plan_placement("cuda", gpus, 10 * GIB).devices == ("cuda:0",)


def test_explicit_gpu_too_small_says_how_much_is_needed_and_free() -> None:
    with pytest.raises(PlacementError) as caught:
        plan_placement("cuda:1", [gpu(0, 80), gpu(1, 8)], 16 * GIB)
    message = str(caught.value)
    assert "16.0 GiB" in message and "8.0 GiB" in message and "GPU 1" in message


def test_explicit_gpu_that_is_not_visible_is_refused() -> None:
    with pytest.raises(PlacementError, match="GPU 3 is not visible"):
        plan_placement("cuda:3", [gpu(0, 80), gpu(1, 80)], GIB)


def test_cuda_without_any_gpu_is_refused() -> None:
    for device in ("cuda", "cuda:0"):
        with pytest.raises(PlacementError, match="no CUDA GPU is visible"):
            plan_placement(device, [], GIB)


@pytest.mark.parametrize("device", ["tpu", "mps", "gpu", "cuda:x", "cuda:", "cuda1", "cudaa", "cuda:0:1"])
def test_unknown_device_strings_are_refused(device: str) -> None:
    with pytest.raises(PlacementError, match="Unknown device"):
        plan_placement(device, [gpu(0, 80)], GIB)


# ---------------------------------------------------------------------------------------------- dtype


def test_auto_dtype_is_float32_on_the_cpu() -> None:
    assert resolve_dtype("auto", ("cpu",), []) == torch.float32
    # GPUs that are present but not used do not count.
    assert resolve_dtype("auto", ("cpu",), [gpu(0, 80)]) == torch.float32


def test_auto_dtype_is_bfloat16_from_compute_capability_8() -> None:
    assert resolve_dtype("auto", ("cuda:0",), [gpu(0, 80, (8, 0))]) == torch.bfloat16
    assert resolve_dtype("auto", ("cuda:0",), [gpu(0, 80, (9, 0))]) == torch.bfloat16


def test_auto_dtype_is_float16_on_older_gpus() -> None:
    assert resolve_dtype("auto", ("cuda:0",), [gpu(0, 16, (7, 5))]) == torch.float16
    assert resolve_dtype("auto", ("cuda:0",), [gpu(0, 16, (6, 1))]) == torch.float16


def test_auto_dtype_is_float16_when_any_used_gpu_is_older() -> None:
    gpus = [gpu(0, 80, (8, 6)), gpu(1, 16, (7, 0))]
    assert resolve_dtype("auto", ("cuda:0", "cuda:1"), gpus) == torch.float16
    # The old GPU does not matter when it is not used.
    assert resolve_dtype("auto", ("cuda:0",), gpus) == torch.bfloat16


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
    ],
)
def test_explicit_dtypes_on_the_cpu(name: str | torch.dtype, expected: torch.dtype) -> None:
    assert resolve_dtype(name, ("cpu",), []) == expected


@pytest.mark.parametrize("name", ["float16", "fp16", "half", torch.float16])
def test_float16_on_the_cpu_is_refused_with_what_works(name: str | torch.dtype) -> None:
    with pytest.raises(PlacementError, match="float32 or bfloat16"):
        resolve_dtype(name, ("cpu",), [])


def test_float16_on_a_gpu_is_allowed() -> None:
    assert resolve_dtype("float16", ("cuda:0",), [gpu(0, 80)]) == torch.float16


@pytest.mark.parametrize("name", ["float64", "int8", "fp8", torch.float64, torch.int8])
def test_unsupported_dtypes_are_refused(name: str | torch.dtype) -> None:
    with pytest.raises(PlacementError):
        resolve_dtype(name, ("cpu",), [])


# ---------------------------------------------------------------------------------------------- together


def _bytes_per_element(parameters: int):
    return lambda dtype: parameters * (torch.finfo(dtype).bits // 8)


def test_plan_loading_on_a_cpu_without_native_bfloat16_is_float32() -> None:
    placement, dtype = plan_loading("auto", "auto", [], _bytes_per_element(10**9), cpu_bf16=())
    assert placement.devices == ("cpu",)
    assert dtype == torch.float32
    assert "no native bfloat16" in placement.dtype_note


@pytest.mark.parametrize("features", [("amx_bf16",), ("avx512_bf16",), ("amx_bf16", "avx512_bf16")])
def test_plan_loading_on_a_cpu_with_native_bfloat16_is_bfloat16(features: tuple[str, ...]) -> None:
    placement, dtype = plan_loading("cpu", "auto", [gpu(0, 80)], _bytes_per_element(10**9), cpu_bf16=features)
    assert placement.devices == ("cpu",)
    assert dtype == torch.bfloat16
    assert placement.dtype_note == f"bfloat16: this CPU computes it natively ({', '.join(features)})"


def test_explicit_float32_stays_float32_on_a_cpu_with_native_bfloat16() -> None:
    placement, dtype = plan_loading("cpu", "float32", [], _bytes_per_element(10**9), cpu_bf16=("amx_bf16",))
    assert dtype == torch.float32
    assert placement.dtype_note == "float32, as asked"


def test_cpu_bfloat16_detection_reads_torch_or_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pixelrefer.runtime import devices

    def detect() -> tuple[str, ...]:
        devices.cpu_bf16_features.cache_clear()
        try:
            return devices.cpu_bf16_features()
        finally:
            devices.cpu_bf16_features.cache_clear()

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False, "avx512_bf16": True})
    assert detect() == ("avx512_bf16",)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_f": True})
    assert detect() == ()

    def unavailable() -> dict:
        raise AttributeError("no probe in this torch")

    monkeypatch.setattr(torch.cpu, "get_capabilities", unavailable)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(devices, "_CPUINFO", cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f amx_tile amx_bf16\n")
    assert detect() == ("amx_bf16",)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert detect() == ()
    cpuinfo.unlink()
    assert detect() == ()


def test_plan_loading_on_an_older_gpu_is_float32_not_float16_when_it_fits() -> None:
    # A T4 (7.5) with 16 GiB: 1.5e9 parameters take 6 GB in float32, which fits.
    placement, dtype = plan_loading("auto", "auto", [gpu(0, 16, (7, 5))], _bytes_per_element(15 * 10**8))
    assert (placement.devices, dtype) == (("cuda:0",), torch.float32)
    assert (
        "compute capability < 8.0" in placement.dtype_note
        and "float16 would overflow" in placement.dtype_note
    )


def test_plan_loading_on_an_older_gpu_says_so_when_only_float16_fits() -> None:
    # 7e9 parameters: 28 GB in float32 does not fit a 16 GiB T4, 14 GB in float16 does.
    placement, dtype = plan_loading("auto", "auto", [gpu(0, 16, (7, 5))], _bytes_per_element(7 * 10**9))
    assert (placement.devices, dtype) == (("cuda:0",), torch.float16)
    assert placement.dtype_note.startswith("float16:") and "may overflow" in placement.dtype_note


def test_plan_loading_explicit_float16_on_an_older_gpu_is_honoured() -> None:
    placement, dtype = plan_loading("auto", "float16", [gpu(0, 16, (7, 5))], _bytes_per_element(10**9))
    assert dtype == torch.float16
    assert placement.dtype_note == "float16, as asked"


def test_plan_loading_on_a_new_gpu_is_bfloat16_whatever_the_cpu() -> None:
    placement, dtype = plan_loading("auto", "auto", [gpu(0, 80)], _bytes_per_element(10**9), cpu_bf16=())
    assert dtype == torch.bfloat16
    assert "compute capability >= 8.0" in placement.dtype_note


def test_plan_loading_sizes_the_model_in_the_chosen_dtype() -> None:
    # 7e9 parameters: 14 GB in bfloat16 fits a 24 GiB GPU; 28 GB in float32 does not.
    gpus = [gpu(0, 24), gpu(1, 24)]
    placement, dtype = plan_loading("auto", "auto", gpus, _bytes_per_element(7 * 10**9))
    assert (placement.devices, dtype) == (("cuda:0",), torch.bfloat16)
    placement, dtype = plan_loading("auto", "float32", gpus, _bytes_per_element(7 * 10**9))
    assert (placement.devices, dtype) == (("cuda:0", "cuda:1"), torch.float32)


def test_plan_loading_split_onto_an_older_gpu_runs_in_float16() -> None:
    # GPU 0 (Ampere) alone is too small, so the model also goes onto GPU 1 (Turing, no bfloat16).
    gpus = [gpu(0, 12, (8, 0)), gpu(1, 12, (7, 5))]
    placement, dtype = plan_loading("auto", "auto", gpus, _bytes_per_element(7 * 10**9))
    assert placement.devices == ("cuda:0", "cuda:1")
    # float32 (28 GB) would not fit the two GPUs' 20 GiB, so float16 it is, and the status says why.
    assert dtype == torch.float16
    assert "may overflow" in placement.dtype_note


def test_plan_loading_split_onto_an_older_gpu_runs_in_float32_when_it_fits() -> None:
    # bfloat16 (13 GiB) would fit GPU 1 (Volta) alone, which has no bfloat16; float32 (26 GiB) takes both.
    gpus = [gpu(0, 12, (8, 0)), gpu(1, 24, (7, 0))]
    placement, dtype = plan_loading("auto", "auto", gpus, _bytes_per_element(7 * 10**9))
    assert placement.devices == ("cuda:0", "cuda:1")
    assert dtype == torch.float32


def test_plan_loading_fails_before_loading_when_nothing_can_serve() -> None:
    with pytest.raises(PlacementError):
        plan_loading("auto", "auto", [gpu(0, 4)], _bytes_per_element(7 * 10**9))
    with pytest.raises(PlacementError):
        plan_loading("cpu", "float16", [], _bytes_per_element(10**6))
