"""`python -m pixelrefer serve`: the OpenAI-compatible server, driven by the official `openai` client.

The server runs in this process under uvicorn on a free port, over tiny random checkpoints; answers are
compared token for token with the library's `ChatSession` on the same inputs (greedy decoding). The
`--engine vllm` test lives in `test_engine_vllm.py`, on that module's vLLM server (starting one costs about
a minute).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import uvicorn
from PIL import Image

from pixelrefer import ChatSession, GenerationSettings, PixelRefer
from pixelrefer.media.images import shrink_image
from pixelrefer.media.masks import fit_mask, mask_to_png, mask_to_rle
from pixelrefer.media.video import load_clip, read_frames
from pixelrefer.model.synthetic import TINY, build_checkpoint
from pixelrefer.serve.openai_api import ApiOptions, OpenAIServer
from pixelrefer.serve.openai_conversations import ConversationStore
from pixelrefer.serve.openai_regions import decode_rle
from pixelrefer.serve.openai_request import RequestRefused
from pixelrefer.serve.service import AppSettings

from .conftest import REPO, free_port
from .scenes import disc_mask, textured

NAME = "pixelrefer-tiny"
SETTINGS = AppSettings(model=NAME, max_new_tokens=64)
H, W = 96, 128
QUESTION = "What is the relationship between <object1> and <object2>?"
FOLLOW_UP = "Which of them is larger, <object2>?"


# ---------------------------------------------------------------------- servers and inputs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-checkpoints")
    return {v: build_checkpoint(root / v, variant=v, shape=TINY, seed=0) for v in ("full", "lite")}


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, PixelRefer]:
    return {
        v: PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
        for v, folder in checkpoints.items()
    }


class Running:
    """An `OpenAIServer` under uvicorn on a free port, in a thread of this process."""

    def __init__(self, server: OpenAIServer) -> None:
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(server.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def close(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
        self.server.store.clear()


@pytest.fixture(scope="module")
def serve(models: dict[str, PixelRefer]) -> Iterator:
    """`serve(variant="full", settings=SETTINGS, **options)`: a running server, closed with the module."""
    running: list[Running] = []

    def start(variant: str = "full", settings: AppSettings = SETTINGS, **options) -> Running:
        server = OpenAIServer(models[variant], settings, ApiOptions(**options), name=NAME)
        running.append(Running(server))
        return running[-1]

    yield start
    for server in running:
        server.close()


@pytest.fixture(scope="module")
def api(serve) -> Running:
    """The default server: the full model, no API key, the app's limits."""
    return serve()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


PICTURE = textured(H, W, 0)
MASKS = [disc_mask(H, W, (40, 40), 18), disc_mask(H, W, (90, 60), 14)]
RLES = [mask_to_rle(m) for m in MASKS]


def image_message(text: str, picture: np.ndarray = PICTURE) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(picture))}},
            {"type": "text", "text": text},
        ],
    }


def ask(client: openai.OpenAI, messages: list[dict], regions: list | None = RLES, **extra):
    body = {"return_token_ids": True, **({"regions": regions} if regions is not None else {})}
    extra.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=NAME, messages=messages, extra_body=body, **extra)


def library_ids(model: PixelRefer, questions: list[str], *, picture=PICTURE, masks=MASKS) -> list[list[int]]:
    """The answers' ids from `ChatSession` on the same picture and masks, asked in turn."""
    session = ChatSession(model, image=picture, limits=SETTINGS.chat)
    for mask in masks:
        session.add_object(mask)
    out = []
    for question in questions:
        replies = list(session.ask(question, GenerationSettings(max_new_tokens=12)))
        out.append(replies[-1].exchange.answer_ids)
    session.close()
    return out


def refusal(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value.body
    assert set(error) >= {"message", "type", "param", "code"}, error  # OpenAI's error object
    return caught.value


# ---------------------------------------------------------------------- answers


def test_models_lists_the_served_model(api: Running) -> None:
    assert [m.id for m in api.client().models.list()] == [NAME]
    assert httpx.get(f"{api.url}/health").json() == {"status": "ok"}
    page = {"origin": "https://tools.example.com", "access-control-request-method": "POST"}
    assert (
        "access-control-allow-origin"
        not in httpx.options(f"{api.url}/v1/chat/completions", headers=page).headers
    )


def test_browser_pages_only_from_allowed_origins(serve) -> None:
    running = serve(allow_origins=("https://tools.example.com",))
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    allowed = httpx.options(
        f"{running.url}/v1/chat/completions", headers={"origin": "https://tools.example.com", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://tools.example.com"
    other = httpx.options(
        f"{running.url}/v1/chat/completions", headers={"origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_answer_equals_the_library(variant: str, serve, models: dict[str, PixelRefer]) -> None:
    running = serve(variant)
    reply = ask(running.client(), [image_message(QUESTION)])
    (expected,) = library_ids(models[variant], [QUESTION])
    choice = reply.choices[0]
    assert choice.token_ids == expected and len(expected) > 3
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens == len(reply.prompt_token_ids) > 0
    assert usage.completion_tokens == len(expected) + (choice.finish_reason == "stop")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.pixelrefer["conversation"] == "new"


def test_streaming_gives_the_same_answer_in_pieces(api: Running) -> None:
    plain = ask(api.client(), [image_message(QUESTION)])
    chunks = list(
        ask(api.client(), [image_message(QUESTION)], stream=True, stream_options={"include_usage": True})
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 2  # text arrived in increments
    assert "".join(deltas) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    finished = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished.choices[0].token_ids == plain.choices[0].token_ids


def test_sampling_repeats_with_a_seed_and_the_time_limit_ends_an_answer(serve, api: Running) -> None:
    def sampled(seed: int) -> list[int]:
        reply = ask(api.client(), [image_message(QUESTION)], temperature=1.0, seed=seed)
        return reply.choices[0].token_ids

    assert sampled(7) == sampled(7) != sampled(8)
    hurried = serve(
        settings=replace(SETTINGS, max_new_tokens=4000, chat=replace(SETTINGS.chat, generation_timeout_s=0.2))
    )
    reply = ask(hurried.client(), [image_message(QUESTION)], max_tokens=4000)
    assert reply.choices[0].finish_reason == "length" and reply.pixelrefer["finish"] == "timeout"
    assert 0 < reply.usage.completion_tokens < 4000


def test_follow_up_continues_the_kept_conversation(api: Running, models: dict[str, PixelRefer]) -> None:
    client = api.client()
    first = ask(client, [image_message(QUESTION)])
    history = [
        image_message(QUESTION),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": FOLLOW_UP},
    ]
    second = ask(client, history)
    assert second.pixelrefer["conversation"] == "continued"
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens // 2
    assert [first.choices[0].token_ids, second.choices[0].token_ids] == library_ids(
        models["full"], [QUESTION, FOLLOW_UP]
    )
    # an edited history is another conversation: rebuilt from the request, not served from the cache
    edited = [*history[:1], {"role": "assistant", "content": "Both <object2> and <object1>."}, history[2]]
    rebuilt = ask(client, edited)
    assert rebuilt.pixelrefer["conversation"] == "new"
    answer = models["full"].encode_text("Both <region1> and <region0>.")  # read back in the model's labels
    prompt = rebuilt.prompt_token_ids
    assert any(prompt[i : i + len(answer)] == answer for i in range(len(prompt)))


def test_one_clients_conversation_never_serves_another(serve) -> None:
    running = serve(api_keys=("key-a", "key-b"))
    first = ask(running.client("key-a"), [image_message(QUESTION)])
    history = [
        image_message(QUESTION),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": FOLLOW_UP},
    ]
    assert ask(running.client("key-b"), history).pixelrefer["conversation"] == "new"
    assert ask(running.client("key-a"), history).pixelrefer["conversation"] == "continued"
    # without keys a client is its address; behind a declared proxy, the address the proxy recorded
    proxied = serve(trusted_proxies=1)

    def client(address: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{proxied.url}/v1",
            api_key="x",
            max_retries=0,
            default_headers={"X-Forwarded-For": address},
        )

    history[1] = {
        "role": "assistant",
        "content": ask(client("10.0.0.1"), history[:1]).choices[0].message.content,
    }
    assert ask(client("10.0.0.2"), history).pixelrefer["conversation"] == "new"
    assert ask(client("10.0.0.1"), history).pixelrefer["conversation"] == "continued"


def test_png_and_alpha_channel_regions_equal_rle(api: Running) -> None:
    by_rle = ask(api.client(), [image_message(QUESTION)]).choices[0].token_ids
    pngs = [data_url(mask_to_png(m)) for m in MASKS]
    assert ask(api.client(), [image_message(QUESTION)], regions=pngs).choices[0].token_ids == by_rle
    # Describe Anything's form: no regions, the picture's alpha channel is <object1>
    one = ask(api.client(), [image_message("Describe <object1>.")], regions=RLES[:1]).choices[0].token_ids
    rgba = np.dstack([PICTURE, MASKS[0].astype(np.uint8) * 255])
    by_alpha = ask(api.client(), [image_message("Describe <object1>.", rgba)], regions=None)
    assert by_alpha.choices[0].token_ids == one


def test_a_large_picture_is_shrunk_with_its_masks(serve, models: dict[str, PixelRefer]) -> None:
    small = replace(SETTINGS, media=replace(SETTINGS.media, max_side=64))
    reply = ask(serve(settings=small).client(), [image_message(QUESTION)])
    held = shrink_image(PICTURE, 64)
    assert held.shape[:2] == (48, 64)
    masks = [fit_mask(m, held.shape[:2], source_shape=(H, W)) for m in MASKS]
    (expected,) = library_ids(models["full"], [QUESTION], picture=held, masks=masks)
    assert reply.choices[0].token_ids == expected


def test_clients_asking_at_once_get_their_own_answers(serve, models: dict[str, PixelRefer]) -> None:
    running = serve(api_keys=("a", "b", "c"))
    pictures = {key: textured(H, W, seed) for seed, key in enumerate("abc", start=5)}
    answers: dict[str, list[int]] = {}

    def one(key: str) -> None:
        reply = ask(running.client(key), [image_message(QUESTION, pictures[key])])
        answers[key] = reply.choices[0].token_ids

    threads = [threading.Thread(target=one, args=(key,)) for key in pictures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    expected = {key: library_ids(models["full"], [QUESTION], picture=p)[0] for key, p in pictures.items()}
    assert answers == expected and len({tuple(ids) for ids in expected.values()}) > 1


def test_a_clip_with_masks_on_the_files_frames(
    api: Running, coded_clip, models: dict[str, PixelRefer]
) -> None:
    path = coded_clip(10, "5", 64, 48)  # 2 s at 5 fps: the app samples frames 4 and 9
    masks = {2: disc_mask(48, 64, (20, 20), 10), 9: disc_mask(48, 64, (40, 24), 12)}
    regions = [{"2": mask_to_rle(masks[2])}, {"9": mask_to_rle(masks[9])}]
    message = {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": data_url(path.read_bytes(), "video/mp4")}},
            {"type": "text", "text": QUESTION},
        ],
    }
    reply = ask(api.client(), [message], regions=regions)
    clip = load_clip(path, SETTINGS.media)
    assert 2 not in clip.indices and 9 in clip.indices
    (frame,) = read_frames(path, [2], size=clip.size)
    session = ChatSession(models["full"], clip=clip, extra_frames={2: frame}, limits=SETTINGS.chat)
    session.add_object({2: masks[2]})
    session.add_object({9: masks[9]})
    expected = list(session.ask(QUESTION, GenerationSettings(max_new_tokens=12)))[-1].exchange.answer_ids
    assert reply.choices[0].token_ids == expected
    late = [{"20": mask_to_rle(masks[2])}, regions[1]]
    error = refusal(lambda: ask(api.client(), [message], regions=late))
    assert error.status_code == 400 and "frame 20" in error.body["message"] and "0-9" in error.body["message"]


def test_remote_media_only_when_the_operator_allows_it(serve, tmp_path: Path) -> None:
    (tmp_path / "picture.png").write_bytes(png_bytes(PICTURE))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    remote = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{files.server_port}/picture.png"}},
            {"type": "text", "text": QUESTION},
        ],
    }
    try:
        error = refusal(lambda: ask(serve().client(), [remote]))
        assert error.status_code == 400 and "--allow-remote-media" in error.body["message"]
        assert error.body["param"] == "messages[0].content[0].image_url"
        allowed = serve(allow_remote_media=True)
        by_data_url = ask(allowed.client(), [image_message(QUESTION)]).choices[0].token_ids
        assert ask(allowed.client(), [remote]).choices[0].token_ids == by_data_url
    finally:
        files.shutdown()


# ---------------------------------------------------------------------- refusals


def _bad_rle() -> dict:
    rle = dict(RLES[0])
    rle["counts"] = [5, 5, 5]  # covers 15 pixels of 96x128
    return rle


REFUSALS = {
    "bad data URL": (
        lambda: [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        RLES,
        400,
        "not valid base64",
    ),
    "bad RLE": (lambda: [image_message(QUESTION)], [_bad_rle(), RLES[1]], 400, "covers 15 pixels"),
    "RLE of another size": (
        lambda: [image_message(QUESTION)],
        [mask_to_rle(np.ones((H, W + 1), bool)), RLES[1]],
        400,
        "is 129x96 but its frame is 128x96",
    ),
    "PNG mask of another size": (
        lambda: [image_message(QUESTION)],
        [data_url(mask_to_png(np.ones((H + 2, W), bool))), RLES[1]],
        400,
        "is 128x98 but its frame is 128x96",
    ),
    "object3 with 2 regions": (
        lambda: [image_message("What about <object3>?")],
        RLES,
        400,
        "<object3> is not a marked object",
    ),
    "no media": (lambda: [{"role": "user", "content": QUESTION}], RLES, 400, "no picture or clip"),
    "no regions and no alpha": (lambda: [image_message(QUESTION)], None, 400, "No objects"),
    "system message": (
        lambda: [{"role": "system", "content": "Be brief."}, image_message(QUESTION)],
        RLES,
        400,
        "system message",
    ),
    "a still image as the clip": (
        lambda: [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": data_url(png_bytes(PICTURE))}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        [{"0": RLES[0]}],
        400,
        "still image",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_requests_are_refused_with_openai_errors(case: str, api: Running) -> None:
    messages, regions, status, words = REFUSALS[case]
    error = refusal(lambda: ask(api.client(), messages(), regions=regions))
    assert error.status_code == status
    assert error.body["type"] == "invalid_request_error"
    assert words in error.body["message"], error.body


def test_too_many_objects_unknown_model_and_options_refused(serve, api: Running) -> None:
    few = serve(settings=replace(SETTINGS, chat=replace(SETTINGS.chat, max_objects=2)))
    error = refusal(lambda: ask(few.client(), [image_message(QUESTION)], regions=[*RLES, RLES[0]]))
    assert error.status_code == 400 and "3 objects; the limit is 2" in error.body["message"]
    error = refusal(
        lambda: api.client().chat.completions.create(model="gpt-4o", messages=[image_message(QUESTION)])
    )
    assert error.status_code == 404 and error.body["code"] == "model_not_found"
    for option, value in (("n", 2), ("stop", ["."]), ("logprobs", True), ("max_tokens", 10_000)):
        error = refusal(lambda o=option, v=value: ask(api.client(), [image_message(QUESTION)], **{o: v}))
        assert error.status_code == 400 and error.body["param"] == option


def test_api_key(serve) -> None:
    locked = serve(api_keys=("s3cret",))
    assert [m.id for m in locked.client("s3cret").models.list()] == [NAME]
    error = refusal(lambda: locked.client("wrong").models.list())
    assert error.status_code == 401 and error.body["code"] == "invalid_api_key"
    missing = httpx.get(f"{locked.url}/v1/models")  # no Authorization header at all
    assert missing.status_code == 401 and "No API key" in missing.json()["error"]["message"]
    error = refusal(lambda: ask(locked.client("wrong"), [image_message(QUESTION)]))
    assert error.status_code == 401


def test_body_size_is_checked_before_parsing(serve) -> None:
    small = serve(max_body_mb=0.05)
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    error = refusal(
        lambda: ask(small.client(), [image_message(QUESTION, np.asarray(Image.open(io.BytesIO(big))))])
    )
    assert error.status_code == 413 and "0.05 MB" in error.body["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"model": "' + NAME.encode() + b'", "messages": ['
        for _ in range(100):
            yield b" " * 1000

    answer = httpx.post(f"{small.url}/v1/chat/completions", content=chunked())
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_malformed_bodies_and_routes(api: Running) -> None:
    url = f"{api.url}/v1/chat/completions"
    for body, words in (
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b"[]", "JSON object"),
    ):
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400 and words in answer.json()["error"]["message"]
    lone = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "\ud800"}]})
    answer = httpx.post(url, content=lone)
    assert answer.status_code == 400 and "not valid Unicode" in answer.json()["error"]["message"]
    assert httpx.get(f"{api.url}/v1/embeddings").status_code == 404
    assert httpx.get(url).json()["error"]["type"] == "invalid_request_error"  # 405 in OpenAI's shape


# ---------------------------------------------------------------------- bounds


def test_waiting_requests_per_client(serve) -> None:
    one = serve(settings=replace(SETTINGS, max_new_tokens=4000), max_waiting_per_client=1)
    client = one.client()
    stream = ask(client, [image_message(QUESTION)], stream=True, max_tokens=4000)
    next(iter(stream))  # the first answer is running
    error = refusal(lambda: ask(client, [image_message(QUESTION)]))
    assert error.status_code == 429 and "limit is 1" in error.body["message"]
    stream.close()
    full = serve(settings=replace(SETTINGS, max_new_tokens=4000, queue_size=1), api_keys=("a", "b", "c"))
    running = ask(full.client("a"), [image_message(QUESTION)], stream=True, max_tokens=4000)
    next(iter(running))  # answering
    waiting = threading.Thread(target=ask, args=(full.client("b"), [image_message(QUESTION)]))
    waiting.start()  # waits for the model: the server holds one running and one waiting request
    while len(full.server._waiting) < 2:
        time.sleep(0.01)
    error = refusal(lambda: ask(full.client("c"), [image_message(QUESTION)]))
    assert error.status_code == 429 and error.body["code"] == "server_busy"
    running.close()
    waiting.join(timeout=60)
    # a client that gives up while waiting for the model leaves nothing behind
    running = ask(full.client("a"), [image_message(QUESTION)], stream=True, max_tokens=4000)
    next(iter(running))
    body = {"model": NAME, "messages": [image_message(QUESTION)], "regions": RLES, "max_tokens": 12}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{full.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer b"}, timeout=1
        )
    running.close()
    deadline = time.monotonic() + 20
    while full.server._waiting:
        assert time.monotonic() < deadline, f"requests still counted: {dict(full.server._waiting)}"
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while one.server._waiting and time.monotonic() < deadline:  # the cut answer frees its place
        time.sleep(0.05)
    assert ask(client, [image_message(QUESTION)]).choices[0].message.content


def test_a_stream_nobody_reads_is_cut(models: dict[str, PixelRefer]) -> None:
    server = OpenAIServer(
        models["full"], replace(SETTINGS, max_new_tokens=4000), ApiOptions(stall_timeout_s=0.3), name=NAME
    )
    body = json.dumps(
        {
            "model": NAME,
            "messages": [image_message(QUESTION)],
            "regions": RLES,
            "stream": True,
            "max_tokens": 4000,
        }
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "root_path": "",
    }
    sent = []

    async def run() -> None:
        delivered = asyncio.Event()

        async def receive() -> dict:
            if not delivered.is_set():
                delivered.set()
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # connected, silent
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if len(sent) > 3:
                await asyncio.Event().wait()  # the client's buffers are full: it stopped reading

        await asyncio.wait_for(server.app(scope, receive, send), timeout=30)

    started = time.monotonic()
    asyncio.run(run())
    assert server.streams_cut == 1 and time.monotonic() - started < 30
    deadline = time.monotonic() + 20
    while not server._slots.acquire(blocking=False):  # the answer was stopped, its worker is free
        assert time.monotonic() < deadline, "the answer kept running after the stream was cut"
        time.sleep(0.05)
    assert len(server.store) == 0  # nobody saw that answer: nothing kept


def test_kept_conversations_are_bounded(models: dict[str, PixelRefer]) -> None:
    def session() -> ChatSession:
        made = ChatSession(models["full"], image=PICTURE)
        made.add_object(MASKS[0])
        return made

    store = ConversationStore(max_entries=3, max_bytes=10**9, ttl_s=60, per_client=2)
    kept = {f"a{k}": session() for k in range(3)}
    for key, made in kept.items():
        store.put(key, made, "client-a")
    assert len(store) == 2 and store.take("a0") is None  # a client keeps at most 2
    assert kept["a0"].objects == []  # evicted sessions are closed (their memory freed)
    store.put("b0", session(), "client-b")
    store.put("b1", session(), "client-b")
    assert len(store) == 3 and store.take("a1") is None  # over the count: least recently used out
    tight = ConversationStore(max_entries=10, max_bytes=1, ttl_s=60)
    tight.put("x", session(), "c")
    assert len(tight) == 0  # larger than the whole memory bound: not kept


def test_out_of_memory_is_a_full_server_not_an_error(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    running = serve()
    client = running.client()
    ask(client, [image_message(QUESTION)])
    assert len(running.server.store) == 1

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ChatSession, "ask", exhausted)
    error = refusal(lambda: ask(client, [image_message(QUESTION)]))
    assert error.status_code == 429 and error.body["code"] == "server_full"
    assert "The server is full right now" in error.body["message"]
    assert len(running.server.store) == 0  # kept conversations were dropped to give memory back


# ---------------------------------------------------------------------- pieces


def test_rle_decoding_equals_pycocotools_and_refuses_bad_counts() -> None:
    rng = np.random.default_rng(1)
    for shape in ((1, 1), (5, 7), (H, W)):
        for density in (0.0, 0.02, 0.5, 1.0):
            mask = rng.random(shape) < density
            assert np.array_equal(decode_rle(mask_to_rle(mask), shape, "r"), mask)
    for counts in ("", "!!", "0" * 3 + "\x7f", RLES[0]["counts"][:-1] + "z"):
        with pytest.raises(RequestRefused):
            decode_rle({"size": [H, W], "counts": counts}, (H, W), "r")
    with pytest.raises(RequestRefused, match="outside"):
        decode_rle({"size": [2, 2], "counts": [-1, 5]}, (2, 2), "r")


@pytest.mark.slow
def test_the_serve_command(checkpoints: dict[str, Path]) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIXELREFER_API_KEY": "k1"}
    command = [sys.executable, "-m", "pixelrefer", "serve", "--model", str(checkpoints["lite"])]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--dtype", "float32", "--device", "cpu", "--max-objects", "3"]
        + ["--engine", "transformers", "--trusted-proxies", "1"],  # the app's own flags, parsed once
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        (card,) = client.models.list()
        assert card.id == "lite"  # the folder's name
        error = refusal(
            lambda: client.chat.completions.create(
                model="lite", messages=[image_message(QUESTION)], extra_body={"regions": [*RLES, *RLES]}
            )
        )
        assert "the limit is 3" in error.body["message"]  # the app's limit flags apply
    finally:
        process.terminate()
        process.wait(timeout=20)
