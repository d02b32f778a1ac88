"""Real-size PixelRefer models (2B and 7B shapes, both variants) built on the `meta` device.

No real weights exist here, so the released shapes are checked structurally: the module tree must have
the tensor names the official code saves (the fixtures' `state_dict_keys.json`, layer indices aside), and
the parameter count must equal a count worked out from the shapes alone. That formula is first checked
against the fixtures' own `num_params`, which the official classes reported.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from pixelrefer.model.config import PixelReferConfig, PixelReferLiteConfig
from pixelrefer.model.modeling import PixelReferForCausalLM
from pixelrefer.model.synthetic import RELEASE_2B, RELEASE_7B, RELEASES, TINY, ModelShape, model_config

from .conftest import fixtures_root

FIXTURE_OF = {"full": "pixelrefer-tiny", "lite": "pixelrefer-lite-tiny"}
UNUSED_ON_DISK = {"model.region_encoder.mask_embedding.weight", "model.region_encoder.mask_embedding.bias"}


def official_tensors(variant: str) -> dict:
    return json.loads((fixtures_root() / FIXTURE_OF[variant] / "state_dict_keys.json").read_text())


def meta_model(variant: str, shape: ModelShape, vocab_size: int) -> PixelReferForCausalLM:
    """The model of `shape`, with no memory behind it; the vision config attached as the loader does."""
    values = model_config(variant, shape, vocab_size)
    values.pop("architectures")
    config = (PixelReferConfig if variant == "full" else PixelReferLiteConfig)(**values)
    config.vision_config = {
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_intermediate_size,
        "num_hidden_layers": shape.vision_layers,
        "num_attention_heads": shape.vision_heads,
        "num_channels": 3,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    }
    with torch.device("meta"):
        return PixelReferForCausalLM(config)


def expected_parameters(variant: str, shape: ModelShape, vocab: int) -> int:
    """Parameters of the official module tree, from the shapes in spec §1 and §4.2 (tied lm_head counted once)."""
    d, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_key_value_heads * (d // shape.num_attention_heads)
    layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * i + 2 * d  # q, k, v (biased), o, MLP, 2 norms
    llm = vocab * d + shape.num_hidden_layers * layer + d + (0 if shape.tie_word_embeddings else vocab * d)
    c, ci = shape.vision_hidden_size, shape.vision_intermediate_size
    vision_layer = 4 * (c * c + c) + 2 * 2 * c + (c * ci + ci) + (ci * c + c)
    vision = (c * 3 * 14 * 14 + c) + shape.vision_layers * vision_layer + 2 * c
    mlp2x = (c * d + d) + (d * d + d)  # mm_projector.readout and region_encoder.feat_linear alike
    region = mlp2x + (2 * c + c)
    if variant == "lite":
        attention = (3 * c * c + 3 * c) + (c * c + c)
        region += 2 * attention + 2 * 2 * c
    return llm + vision + mlp2x + region


def normalised(names) -> set[str]:
    """Names with every layer index replaced, so 2-layer fixtures compare with 28-layer models."""
    return {re.sub(r"\.layers\.\d+\.", ".layers.N.", name) for name in names}


def unique_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_the_count_formula_reproduces_the_fixtures_num_params(variant: str) -> None:
    listed = official_tensors(variant)
    vocab = next(t["shape"][0] for t in listed["tensors"] if t["name"] == "model.embed_tokens.weight")
    shape = TINY if variant == "full" else ModelShape(**{**TINY.__dict__, "tie_word_embeddings": False})
    # The official Lite model also counts the unused mask_embedding (a 1x1 conv from 1 channel).
    unused = 2 * shape.vision_hidden_size if variant == "lite" else 0
    assert expected_parameters(variant, shape, vocab) + unused == listed["num_params"]


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_the_tiny_shape_on_meta_has_exactly_the_fixture_tensors(variant: str) -> None:
    listed = official_tensors(variant)
    vocab = next(t["shape"][0] for t in listed["tensors"] if t["name"] == "model.embed_tokens.weight")
    shape = ModelShape(**{**TINY.__dict__, "tie_word_embeddings": listed["tie_word_embeddings"]})
    model = meta_model(variant, shape, vocab)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    official = {t["name"]: tuple(t["shape"]) for t in listed["tensors"] if t["name"] not in UNUSED_ON_DISK}
    assert ours == official


RELEASE_CASES = [
    pytest.param(variant, shape, id=f"{variant}-{name}")
    for name, shape in (("2B", RELEASE_2B), ("7B", RELEASE_7B))
    for variant in ("full", "lite")
]


@pytest.mark.parametrize(("variant", "shape"), RELEASE_CASES)
def test_release_shapes_build_on_meta_with_the_official_names(variant: str, shape: ModelShape) -> None:
    model = meta_model(variant, shape, shape.vocab_size)
    state = model.state_dict()
    assert all(t.is_meta for t in state.values())
    official = {t["name"] for t in official_tensors(variant)["tensors"]} - UNUSED_ON_DISK
    assert normalised(state) == normalised(official)
    llm_layers = {int(m) for m in re.findall(r"^model\.layers\.(\d+)\.", "\n".join(state), re.M)}
    vision_layers = {int(m) for m in re.findall(r"encoder\.layers\.(\d+)\.", "\n".join(state))}
    assert llm_layers == set(range(28))
    assert vision_layers == set(range(27))
    # Shapes spec §4.2 states for the released tower and heads.
    d = shape.hidden_size
    patch = state["model.vision_encoder.vision_encoder.embeddings.patch_embedding.weight"]
    assert patch.shape == (1152, 3, 14, 14)
    assert state["model.region_encoder.pos_linear.weight"].shape == (1152, 2)
    assert state["model.mm_projector.readout.0.weight"].shape == (d, 1152)
    assert state["model.region_encoder.feat_linear.2.weight"].shape == (d, d)
    assert state["model.embed_tokens.weight"].shape == (shape.vocab_size, d)
    assert state["lm_head.weight"].shape == (shape.vocab_size, d)
    if variant == "lite":
        assert state["model.region_encoder.fusion_attention_local.in_proj_weight"].shape == (3456, 1152)


@pytest.mark.parametrize(("variant", "shape"), RELEASE_CASES)
def test_release_parameter_counts(variant: str, shape: ModelShape) -> None:
    model = meta_model(variant, shape, shape.vocab_size)
    count = unique_parameters(model)
    assert count == expected_parameters(variant, shape, shape.vocab_size)
    if shape is RELEASE_2B:
        assert 1.9e9 < count < 2.1e9  # Qwen2.5-1.5B (1.54B, tied) + SigLIP-so400m tower (0.41B) + heads
    else:
        assert 8.0e9 < count < 8.2e9  # Qwen2.5-7B (7.62B, untied) + the same tower + heads


@pytest.mark.parametrize(("variant", "shape"), RELEASE_CASES)
def test_release_lm_head_tying(variant: str, shape: ModelShape) -> None:
    model = meta_model(variant, shape, shape.vocab_size)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == (shape is RELEASE_2B)


def test_the_release_table_pairs_each_hub_id_with_its_variant_and_shape() -> None:
    assert RELEASES == {
        "Alibaba-DAMO-Academy/PixelRefer-2B": ("full", RELEASE_2B),
        "Alibaba-DAMO-Academy/PixelRefer-7B": ("full", RELEASE_7B),
        "Alibaba-DAMO-Academy/PixelRefer-Lite-2B": ("lite", RELEASE_2B),
        "Alibaba-DAMO-Academy/PixelRefer-Lite-7B": ("lite", RELEASE_7B),
    }
    # Qwen2.5-1.5B / 7B and SigLIP-so400m sizes (spec §1): hidden, intermediate, layers, heads, KV heads, and
    # the vocabulary the training script's resize_token_embeddings(len(tokenizer)) leaves: 151643 + 22 + 4.
    llm = {RELEASE_2B: (1536, 8960, 28, 12, 2, 151669), RELEASE_7B: (3584, 18944, 28, 28, 4, 151669)}
    for shape, sizes in llm.items():
        fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        fields += ("num_key_value_heads", "vocab_size")
        assert tuple(getattr(shape, name) for name in fields) == sizes
        vision = (
            shape.vision_hidden_size,
            shape.vision_intermediate_size,
            shape.vision_layers,
            shape.vision_heads,
        )
        assert vision == (1152, 4304, 27, 16)
