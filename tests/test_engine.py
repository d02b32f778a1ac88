"""The engine seam without vLLM: the default engine, the builder, the export, the request mapping, the app's settings."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from pixelrefer import GenerationSettings, PixelRefer
from pixelrefer.engines import DecodeRequest, EngineUnavailable, build_engine
from pixelrefer.engines.export import NOT_LLM, export_llm
from pixelrefer.engines.vllm_engine import VllmEngine
from pixelrefer.engines.vllm_server import find_vllm_python
from pixelrefer.model.cache import PrefixCache
from pixelrefer.model.synthetic import TINY, build_checkpoint
from pixelrefer.serve.service import AppSettings, Service

from .conftest import fixtures_root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELREFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_default_engine_is_transformers_one_at_a_time() -> None:
    model = PixelRefer.from_pretrained(
        str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"), device="cpu", dtype="float32"
    )
    assert model.engine.name == "transformers" and model.engine.max_concurrency == 1
    assert build_engine("transformers", model).name == "transformers"
    with pytest.raises(ValueError, match="Unknown engine"):
        build_engine("tgi", model)  # type: ignore[arg-type]


def test_export_holds_the_llm_only_in_the_official_values(tmp_path, cache) -> None:
    full = build_checkpoint(tmp_path / "full", variant="full", shape=TINY, seed=3)
    lite = build_checkpoint(tmp_path / "lite", variant="lite", shape=TINY, seed=3)
    other = build_checkpoint(tmp_path / "other", variant="full", shape=TINY, seed=4)
    export = export_llm(full, torch.float32)
    tensors = load_file(export.folder / "model.safetensors")
    source = load_file(full / "model.safetensors")
    assert tensors and not any(key.startswith(NOT_LLM) for key in tensors)
    assert "lm_head.weight" not in tensors  # tied, as in the checkpoint
    for key, value in tensors.items():
        assert torch.equal(value, source[key]), key
    assert export.head_dim == TINY.hidden_size // TINY.num_attention_heads
    assert (export.folder / "tokenizer.json").is_file() and (
        export.folder / "generation_config.json"
    ).is_file()
    written = (export.folder / "model.safetensors").stat().st_mtime_ns
    assert export_llm(full, torch.float32) == export  # cached: the folder is not written again
    assert (export.folder / "model.safetensors").stat().st_mtime_ns == written
    assert export_llm(lite, torch.float32).name == export.name  # the same LLM, one server
    assert export_llm(other, torch.float32).name != export.name
    assert export_llm(full, torch.bfloat16).name != export.name


def test_vllm_on_a_head_size_it_cannot_serve_is_refused_before_starting(tmp_path) -> None:
    folder = build_checkpoint(tmp_path / "tiny", variant="full", shape=TINY, seed=0)
    model = PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailable, match="head size of at least 32"):
            build_engine("vllm", model)
    with pytest.raises(EngineUnavailable, match="No vLLM server answers"):
        build_engine("vllm", model, url="http://127.0.0.1:9")


def engine(config: GenerationConfig) -> VllmEngine:
    return VllmEngine("http://127.0.0.1:9", "pixelrefer-llm-test", config, verify=False)


def request(settings: GenerationSettings, prefix: PrefixCache | None = None) -> DecodeRequest:
    return DecodeRequest(torch.zeros(1, 3, 8), settings, {5, 7}, prefix=prefix, stop=threading.Event())


def test_requests_carry_the_transformers_settings() -> None:
    plain = engine(GenerationConfig())
    greedy = plain.payload(request(GenerationSettings(max_new_tokens=9, seed=3)))
    assert greedy["temperature"] == 0.0 and greedy["max_tokens"] == 9 and greedy["seed"] == 3
    assert greedy["stop_token_ids"] == [5, 7] and greedy["return_token_ids"] and greedy["stream"]
    assert greedy["repetition_penalty"] == 1.0 and "vllm_xargs" not in greedy
    sampled = plain.payload(request(GenerationSettings(do_sample=True)))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (
        0.2,
        0.9,
        50,
    )  # the official defaults
    chosen = engine(GenerationConfig(top_k=20, repetition_penalty=1.05)).payload(
        request(GenerationSettings(do_sample=True, temperature=0.7, top_p=0.5))
    )
    assert (chosen["temperature"], chosen["top_p"], chosen["top_k"]) == (0.7, 0.5, 20)
    assert chosen["vllm_xargs"] == {"generated_repetition_penalty": 1.05}
    with pytest.raises(ValueError, match="transformers engine"):
        next(
            plain.decode(
                DecodeRequest(torch.zeros(1, 3, 8), GenerationSettings(), {5}, keep_first_logits=True)
            )
        )


def test_each_conversation_has_its_own_cache_salt() -> None:
    plain = engine(GenerationConfig())
    one, two = PrefixCache(), PrefixCache()
    salt = plain.payload(request(GenerationSettings(), one))["cache_salt"]
    assert plain.payload(request(GenerationSettings(), one))["cache_salt"] == salt
    assert plain.payload(request(GenerationSettings(), two))["cache_salt"] != salt
    assert "cache_salt" not in plain.payload(request(GenerationSettings()))


def test_app_settings_choose_the_engine() -> None:
    settings = AppSettings.parse(["--engine", "vllm", "--engine-url", "http://gpu-box:8000"], env={})
    assert (settings.engine, settings.engine_url) == ("vllm", "http://gpu-box:8000")
    assert AppSettings.parse([], env={"PIXELREFER_ENGINE": "vllm"}).engine == "vllm"
    assert AppSettings.parse([], env={}).engine == "transformers"


def test_the_app_keeps_serving_in_process_when_vllm_cannot(tmp_path) -> None:
    settings = AppSettings(model=str(tmp_path / "missing"), engine="vllm", engine_url="http://127.0.0.1:9",
                           preview_dir=tmp_path / "preview", concurrency=2)  # fmt: skip
    service = Service(settings)
    model = service.load(settings.model)
    assert service.preview and model.engine.name == "transformers"
    assert "vLLM engine is not available" in service.banner and "in-process" in service.banner
    assert service.model_concurrency == 2 and service.status()["engine"] == "transformers"
    service.close()


def test_find_vllm_python_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PIXELREFER_VLLM_PYTHON", str(tmp_path / "no-python"))
    assert find_vllm_python() is None
    fake = tmp_path / "python"
    fake.write_text("")
    monkeypatch.setenv("PIXELREFER_VLLM_PYTHON", str(fake))
    assert find_vllm_python() == fake
