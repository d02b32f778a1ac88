"""The one loading door, `PixelRefer.from_pretrained`: strict weights, every layout, sources, dtypes, quantization.

The fixture checkpoints (official layout, written by the official classes) must load with exactly the
tensors the official model has; corrupted copies must fail naming the bad tensor. Synthetic checkpoints
cover the layouts the fixtures do not (sharded, `.bin`, nested vision config, hub cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelrefer import GenerationSettings, PixelRefer, WeightsUnavailable, load_image
from pixelrefer.model.loading import read_config
from pixelrefer.model.modeling import PixelReferForCausalLM
from pixelrefer.model.synthetic import VISION_FOLDER, build_checkpoint
from pixelrefer.runtime.devices import PlacementError

from .conftest import fixtures_root

VARIANTS = ["pixelrefer-tiny", "pixelrefer-lite-tiny"]
UNUSED_ON_DISK = {"model.region_encoder.mask_embedding.weight", "model.region_encoder.mask_embedding.bias"}


def checkpoint(variant: str) -> Path:
    return fixtures_root() / variant / "checkpoint"


@pytest.fixture(scope="module")
def fp32_models() -> dict[str, PixelRefer]:
    return {
        v: PixelRefer.from_pretrained(str(checkpoint(v)), device="cpu", dtype="float32") for v in VARIANTS
    }


def image_call(variant: str) -> dict:
    """The fixtures' one-region image case of `variant`, as public-API arguments."""
    case_dir = fixtures_root() / variant / "cases" / "image_1region"
    case = json.loads((case_dir / "case.json").read_text())
    masks = [load_image(case_dir / name)[..., 0] != 0 for name in case["mask_files"]]
    return {"image": case_dir / case["image_file"], "regions": masks, "instruction": case["question"]}


def small_call() -> dict:
    """A synthetic image and one rectangular object, for synthetic checkpoints."""
    image = np.zeros((60, 80, 3), np.uint8)
    image[..., 0] = np.arange(80, dtype=np.uint8)[None, :] * 3
    image[10:40, 20:50] = (200, 40, 90)
    mask = np.zeros((60, 80), bool)
    mask[15:35, 25:45] = True
    return {"image": image, "regions": [mask], "instruction": "Describe <region> please."}


def greedy_ids(model: PixelRefer, call: dict, n: int = 6) -> list[int]:
    return model.generate(**call, settings=GenerationSettings(max_new_tokens=n)).token_ids


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_checkpoint_loads_with_no_missing_or_unexpected_tensor(variant: str) -> None:
    folder = checkpoint(variant)
    _, info = PixelReferForCausalLM.from_pretrained(
        folder, config=read_config(folder), output_loading_info=True
    )
    assert set(info["missing_keys"]) == set()
    assert set(info["unexpected_keys"]) == set()  # Lite's mask_embedding is declared ignorable
    assert set(info["mismatched_keys"]) == set()


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_model_has_exactly_the_official_tensor_names_and_shapes(
    variant: str, fp32_models: dict[str, PixelRefer]
) -> None:
    listed = json.loads((fixtures_root() / variant / "state_dict_keys.json").read_text())
    official = {t["name"]: tuple(t["shape"]) for t in listed["tensors"]}
    ours = {name: tuple(t.shape) for name, t in fp32_models[variant].model.state_dict().items()}
    # Lite's mask_embedding is the one tensor pair the official model has but never uses.
    expected = {k: v for k, v in official.items() if k not in UNUSED_ON_DISK}
    assert ours == expected
    if variant == "pixelrefer-lite-tiny":
        assert set(official) >= UNUSED_ON_DISK


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_weights_are_loaded_bit_for_bit(variant: str, fp32_models: dict[str, PixelRefer]) -> None:
    on_disk = load_file(checkpoint(variant) / "model.safetensors")
    ours = fp32_models[variant].model.state_dict()
    for name, tensor in on_disk.items():
        if name in UNUSED_ON_DISK:
            assert name not in ours
            continue
        assert torch.equal(ours[name], tensor), name


def test_full_tiny_ties_lm_head_to_the_embeddings(fp32_models: dict[str, PixelRefer]) -> None:
    model = fp32_models["pixelrefer-tiny"].model
    assert "lm_head.weight" not in load_file(checkpoint("pixelrefer-tiny") / "model.safetensors")
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_lite_tiny_keeps_its_own_lm_head(fp32_models: dict[str, PixelRefer]) -> None:
    model = fp32_models["pixelrefer-lite-tiny"].model
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    on_disk = load_file(checkpoint("pixelrefer-lite-tiny") / "model.safetensors")
    assert torch.equal(model.lm_head.weight, on_disk["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------------------- corruption


def corrupted_copy(tmp_path: Path, variant: str, edit) -> Path:
    """A copy of a fixture checkpoint whose model.safetensors was rewritten by `edit(state)`."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint(variant), folder)
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    ("variant", "old", "new"),
    [
        ("pixelrefer-tiny", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.upproj.weight"),
        ("pixelrefer-tiny", "model.mm_projector.readout.0.bias", "model.mm_projector.readout.1.bias"),
        (
            "pixelrefer-lite-tiny",
            "model.region_encoder.fusion_attention_local.in_proj_weight",
            "model.region_encoder.fusion_attention_locale.in_proj_weight",
        ),
        (
            "pixelrefer-lite-tiny",
            "model.region_encoder.mask_embedding.weight",
            "model.region_encoder.mask_embeddings.weight",
        ),
    ],
)
def test_a_renamed_tensor_fails_naming_it(tmp_path: Path, variant: str, old: str, new: str) -> None:
    def rename(state: dict) -> None:
        state[new] = state.pop(old)

    folder = corrupted_copy(tmp_path, variant, rename)
    with pytest.raises(ValueError) as caught:
        PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    assert new in str(caught.value)
    if old not in UNUSED_ON_DISK:
        assert old in str(caught.value)  # the tensor the model now lacks


@pytest.mark.parametrize(
    "removed",
    [
        "model.norm.weight",
        "model.vision_encoder.vision_encoder.post_layernorm.bias",
        "model.region_encoder.pos_linear.weight",
    ],
)
def test_a_removed_tensor_fails_naming_it(tmp_path: Path, removed: str) -> None:
    folder = corrupted_copy(tmp_path, "pixelrefer-tiny", lambda state: state.pop(removed))
    with pytest.raises(ValueError, match=re.escape(removed)):
        PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")


def test_an_extra_tensor_fails_naming_it(tmp_path: Path) -> None:
    def add(state: dict) -> None:
        state["model.region_encoder.extra.weight"] = torch.zeros(3)

    folder = corrupted_copy(tmp_path, "pixelrefer-tiny", add)
    with pytest.raises(ValueError, match=re.escape("model.region_encoder.extra.weight")):
        PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")


def test_a_tensor_of_the_wrong_shape_fails_naming_it_and_both_shapes(tmp_path: Path) -> None:
    def reshape(state: dict) -> None:
        state["model.mm_projector.readout.0.bias"] = torch.zeros(65)

    folder = corrupted_copy(tmp_path, "pixelrefer-tiny", reshape)
    with pytest.raises(ValueError) as caught:
        PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    message = str(caught.value)
    assert "model.mm_projector.readout.0.bias" in message
    assert "65" in message and "64" in message


def test_the_known_unused_lite_tensors_are_not_required(tmp_path: Path) -> None:
    folder = corrupted_copy(
        tmp_path, "pixelrefer-lite-tiny", lambda state: [state.pop(k) for k in UNUSED_ON_DISK]
    )
    model = PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    assert not any("mask_embedding" in name for name in model.model.state_dict())


# ---------------------------------------------------------------------------------------------- layouts


LAYOUTS = {
    "safetensors": {},
    "safetensors-sharded": {"shards": 2},
    "bin": {"weights": "bin"},
    "bin-sharded": {"weights": "bin", "shards": 2},
    "nested-vision-config": {"nested_vision_config": True},
}
LAYOUT_FILES = {
    "safetensors": {"model.safetensors"},
    "safetensors-sharded": {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    },
    "bin": {"pytorch_model.bin"},
    "bin-sharded": {
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    },
    "nested-vision-config": {"model.safetensors"},
}


@pytest.fixture(scope="module")
def reference_ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    """Greedy ids of the plain single-safetensors synthetic checkpoint, per variant."""
    out = {}
    for variant in ("full", "lite"):
        folder = build_checkpoint(tmp_path_factory.mktemp(f"reference-{variant}"), variant=variant, seed=3)
        out[variant] = greedy_ids(PixelRefer.from_pretrained(str(folder), device="cpu"), small_call())
    return out


@pytest.mark.parametrize("variant", ["full", "lite"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_weight_layout_loads_and_generates_the_same_tokens(
    tmp_path: Path, layout: str, variant: str, reference_ids: dict[str, list[int]]
) -> None:
    folder = build_checkpoint(tmp_path / "ck", variant=variant, seed=3, **LAYOUTS[layout])
    weight_files = {p.name for p in folder.iterdir() if p.name.startswith(("model", "pytorch_model"))}
    assert weight_files == LAYOUT_FILES[layout]
    vision_config = json.loads((folder / VISION_FOLDER / "config.json").read_text())
    assert ("vision_config" in vision_config) == (layout == "nested-vision-config")
    model = PixelRefer.from_pretrained(str(folder), device="cpu")
    assert model.config.vision_config.hidden_size == 32
    assert greedy_ids(model, small_call()) == reference_ids[variant]


def test_the_vision_folder_is_resolved_against_the_checkpoint_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = build_checkpoint(tmp_path / "ck")
    assert json.loads((folder / "config.json").read_text())["mm_vision_encoder"] == VISION_FOLDER
    elsewhere = tmp_path / "elsewhere"
    # A decoy of the same name in the working directory, with a vision width the weights do not have.
    decoy = elsewhere / VISION_FOLDER
    decoy.mkdir(parents=True)
    shutil.copy(folder / VISION_FOLDER / "preprocessor_config.json", decoy)
    config = json.loads((folder / VISION_FOLDER / "config.json").read_text())
    (decoy / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    monkeypatch.chdir(elsewhere)
    model = PixelRefer.from_pretrained(str(folder), device="cpu")
    assert model.config.vision_config.hidden_size == 32
    # Without the decoy, the folder is still found (it never depended on the working directory).
    shutil.rmtree(decoy)
    assert PixelRefer.from_pretrained(str(folder), device="cpu").config.vision_config.hidden_size == 32
    # And a checkpoint that lacks its vision folder does not pick up a same-named one from the working
    # directory, even a valid one: the error names the folder.
    shutil.copytree(folder / VISION_FOLDER, decoy)
    shutil.rmtree(folder / VISION_FOLDER)
    with pytest.raises(WeightsUnavailable, match=VISION_FOLDER):
        PixelRefer.from_pretrained(str(folder), device="cpu")


def test_a_relative_checkpoint_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_checkpoint(tmp_path / "ck")
    monkeypatch.chdir(tmp_path)
    assert PixelRefer.from_pretrained("ck", device="cpu").variant == "full"


# ---------------------------------------------------------------------------------------------- safety


class _RunsCode:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_bin_with_a_pickled_object_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "ck", weights="bin")
    marker = tmp_path / "code-was-executed"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["model.norm.weight"] = _RunsCode(marker)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="objects other than tensors"):
        PixelRefer.from_pretrained(str(folder), device="cpu")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- sources


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline; huggingface_hub read its constants at import, so patch them."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a hub cache (the layout huggingface_hub writes)."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    return snapshot


def test_an_uncached_hub_id_offline_names_the_id_and_what_to_do(empty_hf_cache: Path) -> None:
    with pytest.raises(WeightsUnavailable) as caught:
        PixelRefer.from_pretrained("Alibaba-DAMO-Academy/PixelRefer-2B", device="cpu")
    message = str(caught.value)
    assert "Alibaba-DAMO-Academy/PixelRefer-2B" in message
    assert "HF_HUB_OFFLINE" in message and "cache" in message
    assert "download" in message or "local folder" in message
    assert caught.value.source == "Alibaba-DAMO-Academy/PixelRefer-2B"


def test_a_cached_hub_id_loads_offline(empty_hf_cache: Path) -> None:
    snapshot = cache_snapshot(empty_hf_cache, "Alibaba-DAMO-Academy/PixelRefer-Lite-2B")
    build_checkpoint(snapshot, variant="lite")
    model = PixelRefer.from_pretrained("Alibaba-DAMO-Academy/PixelRefer-Lite-2B", device="cpu")
    assert model.variant == "lite"
    assert len(greedy_ids(model, small_call(), n=2)) == 2


def test_a_hub_vision_encoder_is_read_from_the_cache_and_named_when_missing(empty_hf_cache: Path) -> None:
    snapshot = cache_snapshot(empty_hf_cache, "Alibaba-DAMO-Academy/PixelRefer-2B")
    build_checkpoint(snapshot)
    # As in the releases: the tower is a hub id whose repo holds only the two config files we read.
    vision_id = "DAMO-NLP-SG/VL3-SigLIP-NaViT"
    config = json.loads((snapshot / "config.json").read_text())
    # Without the nested copy of the tower's config there is nothing to fall back on (see
    # test_release_config.py for the fallback).
    del config["vision_encoder_config"]
    (snapshot / "config.json").write_text(json.dumps({**config, "mm_vision_encoder": vision_id}))
    local_tower = snapshot / VISION_FOLDER
    with pytest.raises(WeightsUnavailable, match=re.escape(vision_id)):
        PixelRefer.from_pretrained("Alibaba-DAMO-Academy/PixelRefer-2B", device="cpu")
    tower = cache_snapshot(empty_hf_cache, vision_id)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(local_tower / name, tower / name)
    shutil.rmtree(local_tower)
    model = PixelRefer.from_pretrained("Alibaba-DAMO-Academy/PixelRefer-2B", device="cpu")
    assert model.config.vision_config.hidden_size == 32


def test_a_missing_local_path_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(WeightsUnavailable) as caught:
        PixelRefer.from_pretrained(str(missing), device="cpu")
    assert str(missing) in str(caught.value)
    assert "no such folder" in str(caught.value)


def test_a_file_instead_of_a_folder_is_refused(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "ck")
    with pytest.raises(WeightsUnavailable, match="not a folder"):
        PixelRefer.from_pretrained(str(folder / "config.json"), device="cpu")


def test_a_qwen2_folder_is_not_a_pixelrefer_checkpoint(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "ck")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    with pytest.raises(ValueError) as caught:
        PixelRefer.from_pretrained(str(folder), device="cpu")
    message = str(caught.value)
    assert "not a PixelRefer checkpoint" in message and "qwen2" in message
    assert "pixelrefer_qwen2" in message


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "ck")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsUnavailable, match="no weights"):
        PixelRefer.from_pretrained(str(folder), device="cpu")


# ---------------------------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_cpu_dtypes_load_in_that_dtype_and_generate(name: str, dtype: torch.dtype) -> None:
    model = PixelRefer.from_pretrained(str(checkpoint("pixelrefer-tiny")), device="cpu", dtype=name)
    assert model.dtype == dtype
    assert {p.dtype for p in model.model.parameters()} == {dtype}
    ids = greedy_ids(model, image_call("pixelrefer-tiny"), n=3)
    assert len(ids) == 3


@pytest.mark.parametrize(("features", "dtype"), [((), torch.float32), (("amx_bf16",), torch.bfloat16)])
def test_auto_dtype_on_the_cpu_follows_its_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, features: tuple[str, ...], dtype: torch.dtype
) -> None:
    monkeypatch.setattr("pixelrefer.runtime.devices.cpu_bf16_features", lambda: features)
    model = PixelRefer.from_pretrained(str(checkpoint("pixelrefer-lite-tiny")), device="cpu", dtype="auto")
    assert model.dtype == dtype
    assert {p.dtype for p in model.model.parameters()} == {dtype}
    assert model.placement.devices == ("cpu",)
    assert model.placement.dtype_note.startswith(str(dtype).removeprefix("torch."))


def test_float16_on_the_cpu_is_refused_before_loading() -> None:
    with pytest.raises(PlacementError, match="float16 is not supported on the CPU"):
        PixelRefer.from_pretrained(str(checkpoint("pixelrefer-tiny")), device="cpu", dtype="float16")


def test_unknown_quantization_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown quantization"):
        PixelRefer.from_pretrained(str(checkpoint("pixelrefer-tiny")), device="cpu", quantization="3bit")


# ---------------------------------------------------------------------------------------------- quantization

LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_quantized_load_on_the_cpu_quantizes_only_the_llm_and_generates(
    variant: str, mode: str, fp32_models: dict[str, PixelRefer]
) -> None:
    import bitsandbytes as bnb

    model = PixelRefer.from_pretrained(
        str(checkpoint(variant)), device="cpu", dtype="float32", quantization=mode
    )
    assert model.quantization == mode
    quantized_type = bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit
    quantized = {n for n, m in model.model.named_modules() if isinstance(m, quantized_type)}
    expected = {
        f"model.layers.{i}.{part}.{name}"
        for i in range(model.config.num_hidden_layers)
        for part, names in (("self_attn", LLM_LINEARS[:4]), ("mlp", LLM_LINEARS[4:]))
        for name in names
    }
    assert quantized == expected
    if mode == "4bit":
        weight = model.model.model.layers[0].mlp.up_proj.weight
        assert weight.quant_type == "nf4"
        assert weight.quant_state.nested  # double quantization
    else:
        assert model.model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8
    # The vision tower, projector, object tokenizer and lm_head stay plain float32 layers.
    for name, module in model.model.named_modules():
        if name.startswith(("model.vision_encoder", "model.mm_projector", "model.region_encoder", "lm_head")):
            assert not isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)), name
    assert model.model.lm_head.weight.dtype == torch.float32
    assert model.model.model.vision_encoder.vision_encoder.post_layernorm.weight.dtype == torch.float32
    reference = fp32_models[variant].model.state_dict()
    for name, tensor in model.model.state_dict().items():
        if name.startswith(("model.vision_encoder", "model.region_encoder", "model.mm_projector")):
            assert torch.equal(tensor, reference[name]), name

    settings = GenerationSettings(max_new_tokens=8)
    call = image_call(variant)
    result = model.generate(**call, settings=settings, return_logits=True)
    full = fp32_models[variant].generate(**call, settings=settings, return_logits=True)
    assert len(result.token_ids) == 8
    assert all(0 <= i < model.config.vocab_size for i in result.token_ids)
    # Random tiny weights make quantization error visible; the first-step logits still point the same way.
    cosine = torch.nn.functional.cosine_similarity(result.first_logits.float(), full.first_logits, dim=0)
    assert cosine > (0.99 if mode == "8bit" else 0.9)
    if mode == "8bit":
        assert result.token_ids[0] == full.token_ids[0]
