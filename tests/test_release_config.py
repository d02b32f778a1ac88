"""Release-shaped checkpoints: config.json as the releases write it, and synthetic checkpoints in their layout.

The released configs are not reachable here, so `release_config` writes one the way the official training
scripts and the VideoLLaMA 3 configs do (every key the loader might trip over, at the real 2B / 7B sizes),
independently of `pixelrefer.model.synthetic`; the loader's config path and a meta-device build are checked on
it, offline, with the VL3-SigLIP-NaViT repo neither reachable nor cached.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from pixelrefer import PixelRefer
from pixelrefer.model.loading import estimate_weight_bytes, read_config
from pixelrefer.model.modeling import PixelReferForCausalLM
from pixelrefer.model.synthetic import (
    BENCH,
    RELEASE_2B,
    RELEASE_7B,
    TINY,
    VISION_FOLDER,
    ModelShape,
    build_checkpoint,
    build_tokenizer,
    model_config,
)
from pixelrefer.runtime.hub import WeightsUnavailable

VISION_REPO = "DAMO-NLP-SG/VL3-SigLIP-NaViT"
LLM_SIZES = {
    "2B": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
           "intermediate_size": 8960, "max_window_layers": 21, "tie_word_embeddings": True},
    "7B": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "intermediate_size": 18944, "max_window_layers": 28, "tie_word_embeddings": False},
}  # fmt: skip
SIGLIP_NAVIT = {
    "architectures": ["DAMOVLVisionModel"],
    "model_type": "damovl",
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "spatial_merge_size": 1,
    "torch_dtype": "bfloat16",
}


def release_config(variant: str, size: str) -> dict:
    """config.json of PixelRefer(-Lite)-2B/7B as training writes it (Qwen2.5 base + PixelRefer's fields)."""
    name = "PixelreferQwen2" if variant == "full" else "PixelreferliteQwen2"
    return {
        "architectures": [f"{name}ForCausalLM"],
        "auto_map": {"AutoConfig": f"configuration.{name}Config", "AutoModelForCausalLM": f"modeling.{name}ForCausalLM"},
        "model_type": "pixelrefer_qwen2" if variant == "full" else "pixelreferlite_qwen2",
        **LLM_SIZES[size],
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True, "vocab_size": 151669,
        "image_aspect_ratio": "qwen2vl", "image_size": 28, "image_token_length": 1, "is_alignment": False,
        "image_token_index": 151665, "region_token_index": 151668,
        "llm_lr": 1e-05, "mm_projector_lr": 1e-05, "region_encoder_lr": 1e-05, "vision_encoder_lr": 0,
        "mask_num": 32, "max_frames": 180, "mm_hidden_size": 1152, "mm_max_length": 10240,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_encoder": VISION_REPO, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "spatial_merge_size": 2, "tokenizer_model_max_length": 16384,
        "tokenizer_padding_side": "right", "use_mm_proj": True, "use_token_compression": True,
        "vision_encoder": None, "vision_encoder_config": dict(SIGLIP_NAVIT),
    }  # fmt: skip


CASES = [pytest.param(v, s, id=f"{v}-{s}") for s in ("2B", "7B") for v in ("full", "lite")]


@pytest.fixture
def offline_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No hub and an empty cache: the VL3-SigLIP-NaViT repo cannot be had."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def write_release(folder: Path, variant: str, size: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(release_config(variant, size), indent=2))
    return folder


@pytest.mark.parametrize(("variant", "size"), CASES)
def test_a_release_config_reads_offline_from_its_nested_tower_config(
    tmp_path: Path, offline_empty_cache: Path, variant: str, size: str
) -> None:
    config = read_config(write_release(tmp_path / "ck", variant, size))
    assert config.variant == variant
    sizes = LLM_SIZES[size]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert getattr(config, key) == sizes[key]
    assert config.intermediate_size == sizes["intermediate_size"]
    assert config.tie_word_embeddings is sizes["tie_word_embeddings"]
    assert config.vocab_size == 151669
    assert config.dtype == torch.bfloat16
    assert config.rope_parameters["rope_theta"] == 1e6 and config.rope_parameters["rope_type"] == "default"
    # use_sliding_window false: every layer attends over the whole sequence, whatever max_window_layers says.
    assert config.layer_types == ["full_attention"] * 28
    assert (config.mm_hidden_size, config.mask_num, config.spatial_merge_size) == (1152, 32, 2)
    assert config.max_pixels == 10240 * 4 * 196
    vision = config.vision_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) == (1152, 4304, 27)
    assert (vision.num_attention_heads, vision.patch_size, vision.hidden_act) == (16, 14, "gelu_pytorch_tanh")
    assert vision.layer_norm_eps == 1e-6
    assert config.preprocessor == {}  # the processor's defaults: mean/std 0.5, 3136 min pixels, bicubic


@pytest.mark.parametrize(("variant", "size"), CASES)
def test_a_release_config_builds_on_meta_at_its_size(
    tmp_path: Path, offline_empty_cache: Path, variant, size
) -> None:
    config = read_config(write_release(tmp_path / "ck", variant, size))
    with torch.device("meta"):
        model = PixelReferForCausalLM(config)
    state = model.state_dict()
    d = LLM_SIZES[size]["hidden_size"]
    assert state["model.embed_tokens.weight"].shape == (151669, d)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is LLM_SIZES[size]["tie_word_embeddings"]
    assert state["model.vision_encoder.vision_encoder.embeddings.patch_embedding.weight"].shape == (
        1152,
        3,
        14,
        14,
    )
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (
        LLM_SIZES[size]["num_key_value_heads"] * 128,
        d,
    )
    gib = estimate_weight_bytes(config, torch.bfloat16, None) / 1024**3
    assert (3.4 < gib < 4.0) if size == "2B" else (14.5 < gib < 15.5)


def test_without_a_nested_tower_config_an_unreachable_tower_repo_is_named(
    tmp_path: Path, offline_empty_cache: Path
) -> None:
    folder = write_release(tmp_path / "ck", "full", "2B")
    raw = json.loads((folder / "config.json").read_text())
    del raw["vision_encoder_config"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsUnavailable, match=VISION_REPO):
        read_config(folder)


def test_a_reachable_tower_repo_still_wins_over_the_nested_copy(
    tmp_path: Path, offline_empty_cache: Path
) -> None:
    folder = write_release(tmp_path / "ck", "lite", "2B")
    entry = offline_empty_cache / f"models--{VISION_REPO.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0" * 40)
    snapshot = entry / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**SIGLIP_NAVIT, "num_hidden_layers": 26}))
    (snapshot / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 6272}))
    config = read_config(folder)
    assert config.vision_config.num_hidden_layers == 26
    assert config.preprocessor == {"min_pixels": 6272}


@pytest.mark.parametrize(
    ("variant", "shape", "size"), [("full", RELEASE_2B, "2B"), ("lite", RELEASE_7B, "7B")]
)
def test_synthetic_configs_have_the_release_keys(variant: str, shape: ModelShape, size: str) -> None:
    ours = model_config(variant, shape, 151669)
    release = release_config(variant, size)
    assert set(ours) == set(release)
    same = ("architectures", "model_type", "vocab_size", "sliding_window", "use_sliding_window", "rope_scaling",
            "rope_theta", "torch_dtype", "mm_projector_type", "use_token_compression", "mask_num", "vision_encoder",
            "vision_encoder_lr", *LLM_SIZES[size])  # fmt: skip
    assert {k: ours[k] for k in same} == {k: release[k] for k in same}
    assert ours["vision_encoder_config"] == SIGLIP_NAVIT
    assert type(ours["vision_encoder_lr"]) is int


# ---------------------------------------------------------------------- synthetic checkpoints' layout


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        v: build_checkpoint(tmp_path_factory.mktemp(f"synthetic-{v}"), variant=v, seed=5)
        for v in ("full", "lite")
    }


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_the_slow_tokenizer_files_encode_as_tokenizer_json(synthetic, tmp_path: Path, variant: str) -> None:
    folder = synthetic[variant]
    slow = tmp_path / "slow"
    slow.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, slow / name)
    assert json.loads((slow / "tokenizer_config.json").read_text())["padding_side"] == "right"
    fast, from_vocab = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(slow)
    assert len(fast) == len(from_vocab)
    assert (slow / "merges.txt").read_text().startswith("#version: 0.2\n")
    text = "<|im_start|>user\n[<REGION><REGION>] Größe 東京 😀 at 12.5s?<|im_end|>\n<|im_start|>assistant\n"
    assert fast(text)["input_ids"] == from_vocab(text)["input_ids"]
    for token in ("<|endoftext|>", "<|im_end|>", "<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>"):
        assert fast.convert_tokens_to_ids(token) == from_vocab.convert_tokens_to_ids(token)


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_the_tower_folder_holds_the_towers_own_weights(synthetic, variant: str) -> None:
    folder = synthetic[variant]
    tower = load_file(folder / VISION_FOLDER / "model.safetensors")
    whole = load_file(folder / "model.safetensors")
    prefix = "model.vision_encoder.vision_encoder."
    expected = {k.removeprefix(prefix): v for k, v in whole.items() if k.startswith(prefix)}
    assert set(tower) == set(expected) and "post_layernorm.weight" in tower
    assert all(torch.equal(tower[k], expected[k]) for k in tower)
    nested = json.loads((folder / "config.json").read_text())["vision_encoder_config"]
    assert nested == json.loads((folder / VISION_FOLDER / "config.json").read_text())


def test_the_bench_tokenizer_has_the_vocabulary_asked_for() -> None:
    tokenizer = build_tokenizer(BENCH.tokenizer_merges)
    # 256 bytes + 4000 merges + 22 Qwen2.5 added tokens + PixelRefer's 4.
    assert len(tokenizer) == 256 + 4000 + 26
    ids = tokenizer(" the object near the camera is moving left", add_special_tokens=False)["input_ids"]
    assert len(ids) == 8  # common words are single tokens


def test_a_head_dim_can_be_asked_for(tmp_path: Path) -> None:
    shape = ModelShape(**{**TINY.__dict__, "head_dim": 32})
    folder = build_checkpoint(tmp_path / "ck", shape=shape)
    assert json.loads((folder / "config.json").read_text())["head_dim"] == 32
    model = PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    attention = model.model.model.layers[0].self_attn
    assert attention.head_dim == 32
    assert attention.q_proj.weight.shape == (TINY.num_attention_heads * 32, TINY.hidden_size)
    assert "head_dim" not in model_config("full", TINY, 100)  # Qwen2.5 configs do not write it
