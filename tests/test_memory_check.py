"""A CPU load is refused with a message, before any weight is read, when the weights would not fit in the
memory available now; otherwise the out-of-memory killer ends the process mid-load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pixelrefer.model import loading
from pixelrefer.model.loading import check_cpu_memory, estimate_weight_bytes, load_checkpoint
from pixelrefer.model.synthetic import RELEASES, config_for
from pixelrefer.runtime.devices import PlacementError

from .conftest import fixtures_root

GIB = 1024**3


def test_7b_in_float32_is_refused_on_a_24_gib_machine_and_bfloat16_fits_32() -> None:
    variant, shape = RELEASES["Alibaba-DAMO-Academy/PixelRefer-7B"]
    config = config_for(variant, shape)
    fp32 = estimate_weight_bytes(config, torch.float32, None)
    assert 28 * GIB < fp32 < 36 * GIB
    with pytest.raises(PlacementError) as refused:
        check_cpu_memory(fp32, torch.float32, available_bytes=24 * GIB)
    message = str(refused.value)
    assert message.startswith(f"The model needs about {fp32 / GIB:.1f} GiB of memory in float32")
    assert "this machine has 24.0 GiB available. Use a smaller model, --dtype bfloat16" in message
    check_cpu_memory(
        estimate_weight_bytes(config, torch.bfloat16, None), torch.bfloat16, available_bytes=24 * GIB
    )


def test_a_cpu_load_checks_the_available_memory_before_reading_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint = str(fixtures_root() / "pixelrefer-tiny" / "checkpoint")
    monkeypatch.setattr(loading.psutil, "virtual_memory", lambda: SimpleNamespace(available=1024))
    read = []

    def never(*args, **kwargs):
        read.append(args)
        raise AssertionError("weights were read")

    monkeypatch.setattr(loading.PixelReferForCausalLM, "from_pretrained", never)
    with pytest.raises(
        PlacementError, match=r"^The model needs about 0\.\d GiB of memory in float32 .* 0\.0 GiB available"
    ):
        load_checkpoint(checkpoint, device="cpu", dtype="float32")
    assert read == []
    monkeypatch.undo()
    monkeypatch.setattr(loading.psutil, "virtual_memory", lambda: SimpleNamespace(available=64 * GIB))
    assert load_checkpoint(checkpoint, device="cpu", dtype="float32").placement.devices == ("cpu",)
