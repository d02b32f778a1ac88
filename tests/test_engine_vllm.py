"""The vLLM engine against the transformers engine, on one vLLM server for the whole module (CPU, float32).

The two variants' random checkpoints share one LLM (same seed and shape, head size 32 since vLLM's CPU
attention refuses 16, and a repetition penalty of 1.1 in generation_config.json), so one exported folder
serves both; each model checks that the server serves its own LLM. Without vLLM's venv (`bash .ci/vllm`)
the module fails in CI (CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pixelrefer import ChatSession, GenerationSettings, PixelRefer
from pixelrefer.engines import DecodeEngine, build_engine
from pixelrefer.engines.vllm_engine import VllmEngine
from pixelrefer.engines.vllm_server import find_vllm_python
from pixelrefer.media.video import Clip
from pixelrefer.model.synthetic import ModelShape, build_checkpoint

from .scenes import disc_mask, textured

ENGINE_SHAPE = ModelShape(64, 128, 2, 2, 1, 32, 64, 2, 2)
"""TINY's sizes with 2 attention heads of 32 (1 key-value head): the smallest vLLM's CPU attention takes."""
GREEDY = GenerationSettings(max_new_tokens=16)
QUESTION = "What is the relationship between <object1> and <object2>?"

if find_vllm_python() is None:
    message = "vLLM's venv is missing: run `bash .ci/vllm` (or set PIXELREFER_VLLM_PYTHON)"
    if os.environ.get("CI"):
        raise RuntimeError(message)  # CI must run these tests, never skip them
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PixelRefer]:
    root = tmp_path_factory.mktemp("engine-checkpoints")
    loaded = {}
    for variant in ("full", "lite"):
        folder = build_checkpoint(
            root / variant,
            variant=variant,
            shape=ENGINE_SHAPE,
            seed=0,
            generation_config={"repetition_penalty": 1.1},
        )
        loaded[variant] = PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
    return loaded


@pytest.fixture(scope="module")
def engines(models: dict[str, PixelRefer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One vLLM server (started by the full model's engine); the Lite model connects to it by URL."""
    cache = tmp_path_factory.mktemp("engine-cache")
    full = build_engine("vllm", models["full"], max_concurrency=8, cache_dir=cache)
    try:
        lite = build_engine("vllm", models["lite"], url=full.url, max_concurrency=8, cache_dir=cache)
        yield {"full": full, "lite": lite, "cache": cache}
    finally:
        full.close()


@contextmanager
def using(model: PixelRefer, engine: DecodeEngine) -> Iterator[PixelRefer]:
    previous, model.engine = model.engine, engine
    try:
        yield model
    finally:
        model.engine = previous


def image_session(model: PixelRefer, seed: int = 0) -> ChatSession:
    image = textured(96, 128, seed)
    session = ChatSession(model, image=image)
    session.add_object(disc_mask(96, 128, (40, 40), 18 + seed))
    session.add_object(disc_mask(96, 128, (60, 90), 14))
    return session


def clip_session(model: PixelRefer) -> ChatSession:
    frames = tuple(textured(64, 80, seed) for seed in range(4))
    clip = Clip(frames, (0, 3, 6, 9), (0.0, 1.0, 2.0, 3.0), 3.0, "file")
    session = ChatSession(model, clip=clip)
    session.add_object(
        {0: disc_mask(64, 80, (20, 20), 10), 6: disc_mask(64, 80, (24, 28), 10)}, marked_frames=[0]
    )
    session.add_object({3: disc_mask(64, 80, (40, 55), 12)})
    return session


def conversation(session: ChatSession, settings: GenerationSettings = GREEDY) -> list[list[int]]:
    """The ids of a question and a follow-up."""
    out = []
    for question in (QUESTION, "Which of them is larger, <object2>?"):
        replies = list(session.ask(question, settings))
        out.append(replies[-1].exchange.answer_ids)
    return out


def test_both_variants_share_one_exported_llm(engines: dict, models: dict[str, PixelRefer]) -> None:
    assert engines["full"].model_name == engines["lite"].model_name
    folders = list((engines["cache"] / "llm").iterdir())
    assert len(folders) == 2  # one export per checkpoint, same content, same served name
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "qwen2" and config["hidden_size"] == ENGINE_SHAPE.hidden_size


@pytest.mark.parametrize("variant", ["full", "lite"])
@pytest.mark.parametrize("media", ["image", "clip"])
def test_greedy_ids_equal_between_engines(variant: str, media: str, models: dict, engines: dict) -> None:
    model = models[variant]
    make = image_session if media == "image" else clip_session
    reference = conversation(make(model))
    assert all(len(ids) > 3 for ids in reference)
    with using(model, engines[variant]):
        assert conversation(make(model)) == reference
        assert (
            conversation(make(model)) == reference
        )  # a second time: the server's prefix cache answers the same


def test_streaming_and_eos_handling(models: dict, engines: dict) -> None:
    model = models["full"]
    settings = GenerationSettings(max_new_tokens=48)
    reference = list(image_session(model).ask(QUESTION, settings))[-1].exchange
    with using(model, engines["full"]):
        replies = list(image_session(model).ask(QUESTION, settings))
    exchange = replies[-1].exchange
    assert len(replies) > 3  # text arrived in increments, not at the end
    assert "".join(r.delta for r in replies) == exchange.answer == reference.answer
    assert exchange.finish_reason == reference.finish_reason
    assert exchange.answer_ids == reference.answer_ids


def test_sampling_with_a_seed_repeats(models: dict, engines: dict) -> None:
    model = models["lite"]
    sampling = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, seed=7)
    with using(model, engines["lite"]):
        one = conversation(image_session(model), sampling)
        two = conversation(image_session(model), sampling)
        other = conversation(
            image_session(model),
            GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, seed=8),
        )
    assert one == two
    assert other != one


def test_stop_aborts_the_request_and_the_engine_keeps_serving(models: dict, engines: dict) -> None:
    model = models["full"]
    long = GenerationSettings(max_new_tokens=400)
    with using(model, engines["full"]):
        session = image_session(model)
        replies = []
        for reply in session.ask(QUESTION, long):
            replies.append(reply)
            if len(replies) == 2:
                session.stop()
        exchange = replies[-1].exchange
        assert exchange.finish_reason == "stopped"
        assert len(exchange.answer_ids) < 50
        after = conversation(image_session(model))
    assert after == conversation(image_session(model))


def test_concurrent_visitors_get_their_own_answers(models: dict, engines: dict) -> None:
    model = models["full"]
    sessions = [image_session(model, seed) for seed in range(4)]
    expected = [conversation(image_session(model, seed)) for seed in range(4)]
    results: dict[int, list] = {}
    with using(model, engines["full"]):
        threads = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, conversation(sessions[k])))
            for k in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert [results.get(k) for k in range(4)] == expected
    assert len({json.dumps(r) for r in expected}) > 1  # different objects, different answers


def test_a_server_for_another_llm_is_refused(models: dict, engines: dict) -> None:
    with pytest.raises(RuntimeError, match="not this checkpoint's LLM"):
        VllmEngine(engines["full"].url, "pixelrefer-llm-0000000000000000", models["full"].generation_config)


def test_the_app_service_serves_through_the_engine(models: dict, engines: dict, tmp_path) -> None:
    from pixelrefer.serve.service import AppSettings, Service

    settings = AppSettings(
        model=str(models["full"].folder),
        engine="vllm",
        engine_url=engines["full"].url,
        dtype="float32",
        device="cpu",
    )
    service = Service(settings)
    model = service.load(settings.model)
    try:
        assert not service.preview and not service.engine_notice
        assert model.engine.name == "vllm" and service.status()["engine"] == "vllm"
        assert service.model_concurrency == 16  # model events no longer serialize
        assert conversation(image_session(model)) == conversation(image_session(models["full"]))
    finally:
        service.close()  # a server given by URL is left running
    assert engines["full"]._server.process.poll() is None


def test_the_openai_server_answers_through_the_engine(models: dict, engines: dict) -> None:
    """`python -m pixelrefer serve --engine vllm` (the rest of its tests: test_openai_api.py): on this module's
    vLLM server, the `openai` client gets the transformers engine's greedy ids, for a first question and for a
    follow-up continued from the kept conversation."""
    import base64
    import io
    import time

    import openai
    import uvicorn
    from PIL import Image

    from pixelrefer.media.masks import mask_to_rle
    from pixelrefer.serve.openai_api import OpenAIServer
    from pixelrefer.serve.service import AppSettings, Service

    from .conftest import free_port

    reference = conversation(image_session(models["full"]))
    settings = AppSettings(
        model=str(models["full"].folder),
        engine="vllm",
        engine_url=engines["full"].url,
        dtype="float32",
        device="cpu",
        max_new_tokens=GREEDY.max_new_tokens,
    )
    service = Service(settings)
    model = service.load(settings.model)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            OpenAIServer(model, settings, name="tiny", concurrency=service.model_concurrency).app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert not service.preview and model.engine.name == "vllm"
        while not server.started:
            time.sleep(0.01)
        picture = io.BytesIO()
        Image.fromarray(textured(96, 128, 0)).save(picture, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(picture.getvalue()).decode()
        regions = [
            mask_to_rle(disc_mask(96, 128, (40, 40), 18)),
            mask_to_rle(disc_mask(96, 128, (60, 90), 14)),
        ]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ]
        ids = []
        for follow_up in ("Which of them is larger, <object2>?", None):
            reply = client.chat.completions.create(
                model="tiny",
                messages=messages,
                max_tokens=GREEDY.max_new_tokens,
                extra_body={"regions": regions, "return_token_ids": True},
            )
            ids.append(reply.choices[0].token_ids)
            if follow_up:
                messages += [
                    {"role": "assistant", "content": reply.choices[0].message.content},
                    {"role": "user", "content": follow_up},
                ]
        assert ids == reference
        assert reply.pixelrefer["conversation"] == "continued"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


def test_eval_run_predictions_equal_between_engines(
    models: dict, engines: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval run --engine vllm --engine-url` (the rest of eval's tests: test_eval_*.py) on this module's vLLM
    server gives the transformers engine's predictions (float32, greedy) for every item; its own server would
    cost another ~110 s."""
    from pixelrefer.cli import main
    from pixelrefer.eval.rows import read_rows

    from . import eval_data as data

    monkeypatch.setenv("PIXELREFER_CACHE", str(tmp_path / "cache"))  # the export goes here, not to ~/.cache
    media = data.media_root(tmp_path / "media")
    annotations = data.videorefer_q(tmp_path / "q.json")
    predictions = {}
    for engine in ("transformers", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        argv = ["eval", "run", "videorefer-q", "--annotations", str(annotations), "--media-root", str(media)]
        argv += ["--model", str(models["full"].folder), "--out", str(out), "--device", "cpu"]
        argv += ["--dtype", "float32", "--max-new-tokens", "12", "--engine", engine]
        if engine == "vllm":
            argv += ["--engine-url", engines["full"].url]
        assert main(argv) == 0
        rows = list(read_rows(out))
        assert [r["provenance"]["engine"] for r in rows] == [engine] * 3
        predictions[engine] = [(r["id"], r["prediction"], r["finish_reason"]) for r in rows]
    assert all(len(text) > 3 for _, text, _ in predictions["transformers"])
    assert sorted(predictions["vllm"]) == sorted(predictions["transformers"])
    assert engines["full"]._server.process.poll() is None  # a server given by URL is left running
