"""`python -m pixelrefer serve`: region chat over the OpenAI chat-completions protocol (Starlette + uvicorn).

Routes: `GET /v1/models`, `POST /v1/chat/completions` (plain and streamed as server-sent events), `GET
/health`; `/models` and `/chat/completions` answer too, for clients written against Describe Anything's
`dam_server.py`, whose base URL has no `/v1`. Request bodies are read in `openai_request`, masks in
`openai_regions`, sessions built and kept in `openai_conversations`; this module is the HTTP side: who may
ask (an optional API key), how much (body size before parsing, waiting requests per client and in all, a
stall timeout on streams), and OpenAI's error object on every refusal: 4xx with a message that names the
problem, 5xx only for a bug, with a generic message (the traceback goes to the log).

Answers run on worker threads (the model blocks), at most as many at once as the engine decodes
(`Service.model_concurrency`); their text reaches the event loop through a queue, so a client that stops
reading holds no worker: the stream is cut after `stall_timeout_s` and the answer stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..chat.session import ChatSession, Exchange, Reply
from ..model.inference import PixelRefer
from ..runtime.errors import InputError
from .budget import FULL_MESSAGE, is_out_of_memory
from .clients import client_of
from .openai_conversations import ConversationStore, MediaAccess, open_session
from .openai_request import ChatRequest, RequestRefused, parse_request
from .service import AppSettings

__all__ = ["ApiOptions", "OpenAIServer", "main"]

_log = logging.getLogger(__name__)

_FINISH = {"eos": "stop", "length": "length", "timeout": "length", "stopped": "stop"}
"""The library's finish reasons in OpenAI's words; `pixelrefer.finish` keeps the exact one ("timeout")."""

_BUG_MESSAGE = "The server failed while answering; this is a bug on the server (it has been logged)."


@dataclass(frozen=True)
class ApiOptions:
    """The server-wide bounds and switches of the API (the per-request limits come from `AppSettings`).

    `api_keys`: empty means no key is asked for. `max_body_mb`: None means the media upload limit in base64
    plus 8 MB for regions. `max_waiting_per_client`: requests one client may have waiting or running.
    `stall_timeout_s`: how long a stream (or a request body) may stall before it is cut. `max_conversations`,
    `conversation_memory_mb` and `conversation_ttl_s` bound the conversations kept for follow-ups.
    `trusted_proxies`: proxies in front of the server that append to X-Forwarded-For (`clients.client_of`).
    `allow_origins`: web pages (origins) whose scripts may call the API from a browser (CORS); none by default.
    """

    api_keys: tuple[str, ...] = ()
    allow_remote_media: bool = False
    max_body_mb: float | None = None
    max_waiting_per_client: int = 4
    stall_timeout_s: float = 30.0
    max_conversations: int = 64
    conversation_memory_mb: float = 4096.0
    conversation_ttl_s: float = 1800.0
    served_model_name: str = ""
    trusted_proxies: int = 0
    allow_origins: tuple[str, ...] = ()


def _error(
    status: int, message: str, *, type: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """OpenAI's error object."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _refusal(exc: InputError) -> JSONResponse:
    if isinstance(exc, RequestRefused):
        return _error(exc.status, str(exc), type=exc.type, param=exc.param, code=exc.code)
    return _error(400, str(exc), type="invalid_request_error")


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


@dataclass
class _Outcome:
    """A finished answer, with what the response reports about it."""

    exchange: Exchange
    prompt_tokens: int
    continued: bool
    notes: tuple[str, ...]
    prompt_ids: list[int]

    @property
    def completion_tokens(self) -> int:
        """Generated tokens, the end-of-turn token included when the answer ended on it (as vLLM counts)."""
        return len(self.exchange.answer_ids) + (self.exchange.finish_reason == "eos")

    def usage(self) -> dict[str, Any]:
        cached = int(self.exchange.timings.get("reused_prefix_rows", 0))
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def extension(self) -> dict[str, Any]:
        """What the protocol has no field for: whether a kept conversation was continued, the library's exact
        finish reason, and what was cut from a clip."""
        return {
            "conversation": "continued" if self.continued else "new",
            "finish": self.exchange.finish_reason,
            "notes": list(self.notes),
        }


class _Trimmed:
    """Streamed pieces that add up to the answer's text, which the library strips: leading whitespace is
    dropped and trailing whitespace held back until more text follows it. A streaming client's follow-up
    then sends back the very text a plain response holds, and continues the kept conversation."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, delta: str) -> str:
        if not self.started:
            delta = delta.lstrip()
            self.started = bool(delta)
        text = self.held + delta
        kept = text.rstrip()
        self.held = text[len(kept) :]
        return kept


class _Job:
    """One answer on a worker thread; its events reach the event loop through an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.session: ChatSession | None = None

    def emit(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def cancel(self) -> None:
        """The client is gone or stalled: stop the answer within one decoding step."""
        self.cancelled.set()
        session = self.session
        if session is not None:
            session.stop()

    async def next(self) -> tuple[str, Any]:
        return await self.queue.get()


class OpenAIServer:
    """The API over one loaded model; `app` is the ASGI application."""

    def __init__(
        self,
        model: PixelRefer,
        settings: AppSettings,
        options: ApiOptions | None = None,
        *,
        name: str = "",
        concurrency: int = 1,
    ) -> None:
        self.model = model
        self.settings = settings
        self.options = options or ApiOptions()
        self.name = self.options.served_model_name or name or os.path.basename(str(model.source))
        self.created = int(time.time())
        self.access = MediaAccess(settings.media, allow_remote=self.options.allow_remote_media)
        self.store = ConversationStore(
            max_entries=self.options.max_conversations,
            max_bytes=int(self.options.conversation_memory_mb * 1e6),
            ttl_s=self.options.conversation_ttl_s,
        )
        self.concurrency = max(1, int(concurrency))
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._waiting: Counter[str] = Counter()
        self.capacity = self.concurrency + max(1, settings.queue_size)
        """Requests admitted at once (running or waiting for the model), over all clients."""
        upload = settings.media.max_upload_mb * 1e6
        default_body = upload * 4 / 3 + 8e6
        self.max_body = int(
            default_body if self.options.max_body_mb is None else self.options.max_body_mb * 1e6
        )
        self.streams_cut = 0
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model_info, methods=["GET"]),
            Route("/v1/chat/completions", self.completions, methods=["POST"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/chat/completions", self.completions, methods=["POST"]),
        ]
        handlers = {404: self._not_found, 405: self._not_allowed, Exception: self._bug}
        cors = (
            [
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(self.options.allow_origins),
                    allow_methods=["GET", "POST"],
                    allow_headers=["authorization", "content-type"],
                )
            ]
            if self.options.allow_origins
            else []
        )
        self.app = Starlette(routes=routes, exception_handlers=handlers, middleware=cors)

    # ------------------------------------------------------------------ routes

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        client = self._client(request)
        if isinstance(client, Response):
            return client
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: Request) -> Response:
        client = self._client(request)
        if isinstance(client, Response):
            return client
        if request.path_params["model_id"] != self.name:
            return self._unknown_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def completions(self, request: Request) -> Response | _EventStream:
        client = self._client(request)
        if isinstance(client, Response):
            return client
        busy = self._admit(client)
        if busy is not None:
            return busy
        self._waiting[client] += 1
        streaming = False
        try:
            response = await self._complete(request, client)
            if isinstance(response, _EventStream):  # the client's place is held until the stream ends
                response.on_close = functools.partial(self._release, client)
                streaming = True
            return response
        except InputError as exc:
            return _refusal(exc)
        finally:
            if not streaming:
                self._release(client)

    # ------------------------------------------------------------------ admission

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "pixelrefer"}

    def _unknown_model(self, name: str) -> Response:
        return _error(
            404,
            f"The model {name!r} does not exist on this server; it serves {self.name!r} (GET /v1/models)",
            type="invalid_request_error",
            param="model",
            code="model_not_found",
        )

    def _client(self, request: Request) -> str | Response:
        """Who is asking: the API key when the server has keys (checked here), else the peer address."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if self.options.api_keys:
            known = any(hmac.compare_digest(token.encode(), key.encode()) for key in self.options.api_keys)
            if not known:
                reason = "No API key was given" if not token else "The API key is not valid for this server"
                return _error(
                    401,
                    f"{reason}: send it as 'Authorization: Bearer <key>' (the openai client's api_key)",
                    type="invalid_request_error",
                    code="invalid_api_key",
                )
            return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        return "peer:" + client_of(request.scope, self.options.trusted_proxies)

    def _admit(self, client: str) -> Response | None:
        """A 429 when this client has too many requests in, or the server as a whole is full."""
        if self._waiting[client] >= self.options.max_waiting_per_client:
            return _error(
                429,
                f"This client already has {self._waiting[client]} requests waiting or running; the limit is "
                f"{self.options.max_waiting_per_client}. Wait for an answer before sending more.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )
        if sum(self._waiting.values()) >= self.capacity:
            return _error(
                429,
                f"The server is busy: {self.capacity} requests are waiting or running. Try again shortly.",
                type="rate_limit_error",
                code="server_busy",
            )
        return None

    def _release(self, client: str) -> None:
        self._waiting[client] -= 1
        if self._waiting[client] <= 0:
            del self._waiting[client]

    async def _body(self, request: Request) -> bytes:
        """The body, refused over `max_body` from its Content-Length before a byte is read, and counted as
        it streams in (a chunked body has no length); a body that stalls is cut."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestRefused("Content-Length is not a number")
            if int(declared) > self.max_body:
                raise _TooLarge(int(declared), True)
        chunks, total = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self.options.stall_timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestRefused(
                    f"The request body stalled for {self.options.stall_timeout_s:g} s", status=408
                ) from None
            total += len(chunk)
            if total > self.max_body:
                raise _TooLarge(total, False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: int, declared: bool) -> Response:
        amount = (
            f"{size / 1e6:.1f} MB" if declared else f"over {self.max_body / 1e6:g} MB (it was still coming)"
        )
        return _error(
            413,
            f"The request body is {amount}; this server takes at most {self.max_body / 1e6:g} MB (the "
            f"media upload limit, {self.settings.media.max_upload_mb:g} MB, sent as base64, plus the regions)",
            type="invalid_request_error",
            code="request_too_large",
        )

    # ------------------------------------------------------------------ answering

    async def _complete(self, request: Request, client: str) -> Response | _EventStream:
        try:
            raw = await self._body(request)
        except _TooLarge as large:
            return self._too_large(*large.args)
        try:
            body = json.loads(raw)
        except RecursionError:
            raise RequestRefused("The request body is nested too deeply to be a chat request") from None
        except ValueError:
            raise RequestRefused("The request body is not valid JSON") from None
        if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"] != self.name:
            return self._unknown_model(body["model"])
        parsed = parse_request(body, max_new_tokens=self.settings.max_new_tokens)
        job = _Job(asyncio.get_running_loop())
        threading.Thread(
            target=self._work, args=(job, parsed, client), name="pixelrefer-api-answer", daemon=True
        ).start()
        watcher = asyncio.create_task(_watch_disconnect(request.receive, job))
        handed_over = False
        try:
            kind, value = await job.next()
            if kind == "refused":
                return _refusal(value)
            if kind == "cancelled":
                return _error(
                    400, "The client closed the request before it was answered", type="invalid_request_error"
                )
            if kind == "bug":
                return _error(500, _BUG_MESSAGE, type="server_error")
            if parsed.stream:
                handed_over = True
                return _EventStream(self, job, parsed, (kind, value), watcher)
            while kind == "delta":
                kind, value = await job.next()
            if kind == "refused":
                return _refusal(value)
            if kind != "done":
                return _error(500, _BUG_MESSAGE, type="server_error")
            return JSONResponse(self._completion(parsed, value))
        finally:
            if not handed_over:
                watcher.cancel()

    def _work(self, job: _Job, request: ChatRequest, client: str) -> None:
        """On a worker thread: take the kept conversation or build one, answer, keep it for the follow-up."""
        session = None
        try:
            with self._slots:
                if job.cancelled.is_set():  # the client left while waiting for the model
                    job.emit("cancelled")
                    return
                kept = self.store.take(request.key(client, request.answers)) if request.answers else None
                continued = kept is not None
                session, notes = (
                    kept
                    if kept is not None
                    else open_session(self.model, request, self.access, self.settings.chat)
                )
                job.session = session
                exchange = None
                trimmed = _Trimmed()
                for reply in _asked(session, request):
                    if job.cancelled.is_set():
                        session.stop()
                    delta = trimmed.push(reply.delta)
                    if delta:
                        job.emit("delta", delta)
                    exchange = reply.exchange or exchange
                assert exchange is not None and session.last_prompt is not None
                prompt = session.last_prompt
                outcome = _Outcome(exchange, prompt.lm_length, continued, notes, list(prompt.input_ids))
                job.session = None  # from here a late cancel must not stop whoever continues it next
                if not job.cancelled.is_set():
                    key = request.key(client, (*request.answers, exchange.answer))
                    self.store.put(key, session, client, notes)
                    session = None
                job.emit("done", outcome)
        except InputError as exc:
            job.emit("refused", exc)
        except Exception as exc:
            if not is_out_of_memory(exc):
                _log.exception("The API failed while answering")
                job.emit("bug")
                return
            if session is not None:
                session.close()
                session = None
            self._recover()
            job.emit(
                "refused",
                RequestRefused(FULL_MESSAGE, status=429, type="rate_limit_error", code="server_full"),
            )
        finally:
            if session is not None:
                session.close()

    def _recover(self) -> None:
        """An allocator ran out of memory: every kept conversation goes, and Python and CUDA give back what
        they hold; the client is told the server is full (`budget.FULL_MESSAGE`), never an error."""
        _log.warning("Out of memory while answering: %d kept conversations dropped", len(self.store))
        self.store.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _completion(self, request: ChatRequest, outcome: _Outcome) -> dict[str, Any]:
        exchange = outcome.exchange
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": exchange.answer},
            "finish_reason": _FINISH.get(exchange.finish_reason, "stop"),
            "logprobs": None,
        }
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [choice],
            "usage": outcome.usage(),
            "pixelrefer": outcome.extension(),
        }
        if request.return_token_ids:
            choice["token_ids"] = list(exchange.answer_ids)
            body["prompt_token_ids"] = outcome.prompt_ids
        return body

    # ------------------------------------------------------------------ errors

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(
            404,
            f"No route {request.url.path}: this server answers GET /v1/models and POST /v1/chat/completions",
            type="invalid_request_error",
            code="unknown_url",
        )

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(
            405, f"{request.method} is not allowed on {request.url.path}", type="invalid_request_error"
        )

    async def _bug(self, request: Request, exc: Exception) -> Response:
        _log.error("The API failed on %s", request.url.path, exc_info=exc)
        return _error(500, _BUG_MESSAGE, type="server_error")


def _asked(session: ChatSession, request: ChatRequest) -> Iterator[Reply]:
    """The session's answer to the request's last question; a refusal of the question names its message."""
    try:
        yield from session.ask(request.questions[-1], request.settings)
    except InputError as exc:
        if isinstance(exc, RequestRefused):
            raise
        last = f"messages[{2 * (len(request.questions) - 1)}]"
        raise RequestRefused(f"{last}: {exc}", param=last) from None


async def _watch_disconnect(receive: Callable[[], Awaitable[dict]], job: _Job) -> None:
    """Stop the answer when the client disconnects (uvicorn's `send` stays silent about it)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


class _EventStream:
    """The answer as server-sent events: OpenAI's `chat.completion.chunk`s, then `data: [DONE]`.

    Every send waits at most `stall_timeout_s` for the client to take it (uvicorn waits while the socket's
    buffers are full); a client that stops reading is cut off and its answer stopped.
    """

    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

    def __init__(
        self,
        server: OpenAIServer,
        job: _Job,
        request: ChatRequest,
        first: tuple[str, Any],
        watcher: asyncio.Task,
    ) -> None:
        self.server, self.job, self.request, self.first, self.watcher = server, job, request, first, watcher
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.on_close: Callable[[], None] = lambda: None

    def _chunk(self, delta: dict, finish: str | None = None, **extra: Any) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.server.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return _event(payload)

    def _events(self, kind: str, value: Any) -> list[bytes]:
        if kind == "delta":
            return [self._chunk({"content": value})]
        if kind == "done":
            outcome: _Outcome = value
            extra: dict[str, Any] = {"pixelrefer": outcome.extension()}
            if self.request.return_token_ids:
                extra["prompt_token_ids"] = outcome.prompt_ids
            last = self._chunk({}, _FINISH.get(outcome.exchange.finish_reason, "stop"), **extra)
            if self.request.return_token_ids:
                payload = json.loads(last[6:])
                payload["choices"][0]["token_ids"] = list(outcome.exchange.answer_ids)
                last = _event(payload)
            events = [last]
            if self.request.include_usage:
                events.append(_event({**json.loads(last[6:]), "choices": [], "usage": outcome.usage()}))
            return [*events, b"data: [DONE]\n\n"]
        if kind == "refused":
            error = {"message": str(value), "type": "invalid_request_error", "param": None, "code": None}
        else:
            error = {"message": _BUG_MESSAGE, "type": "server_error", "param": None, "code": None}
        return [_event({"error": error}), b"data: [DONE]\n\n"]

    async def _send(self, send: Callable[[dict], Awaitable[None]], message: dict) -> None:
        try:
            await asyncio.wait_for(send(message), self.server.options.stall_timeout_s)
        except asyncio.TimeoutError:
            raise _Stalled from None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await self._send(send, {"type": "http.response.start", "status": 200, "headers": self.headers})
            await self._send(
                send,
                {
                    "type": "http.response.body",
                    "body": self._chunk({"role": "assistant", "content": ""}),
                    "more_body": True,
                },
            )
            kind, value = self.first
            while True:
                for data in self._events(kind, value):
                    await self._send(send, {"type": "http.response.body", "body": data, "more_body": True})
                if kind != "delta":
                    break
                kind, value = await self.job.next()
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except _Stalled:
            self.server.streams_cut += 1
            _log.warning(
                "A client stopped reading its stream for %g s: cut", self.server.options.stall_timeout_s
            )
        finally:
            self.job.cancel()  # a no-op once the answer is done (the job no longer holds its session)
            self.watcher.cancel()
            self.on_close()


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


# ---------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pixelrefer serve",
        description="Region chat over the OpenAI chat-completions protocol (docs/openai-api.md).",
        epilog="Also takes the app's model, engine and limit flags (--engine, --engine-url, --dtype, "
        "--device, --quantization, --max-objects, --max-new-tokens, --max-upload-mb, --queue-size, "
        "--max-sessions, --session-ttl-s, --trusted-proxies, ...; see `python app.py --help`), with the "
        "same PIXELREFER_* environment variables.",
    )
    env = os.environ
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--host", default=env.get("PIXELREFER_API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("PIXELREFER_API_PORT", "8000")))
    parser.add_argument(
        "--api-key",
        default=env.get("PIXELREFER_API_KEY", ""),
        help="require this key (comma-separate several); default $PIXELREFER_API_KEY, else no key",
    )
    parser.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="fetch http(s) image_url / video_url parts (requests made by the server; off by default)",
    )
    parser.add_argument(
        "--served-model-name", default="", help="the model id clients send (default: the model's name)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=None, help="default: the upload limit as base64 + 8 MB"
    )
    parser.add_argument("--max-waiting-per-client", type=int, default=4)
    parser.add_argument("--stall-timeout-s", type=float, default=30.0)
    parser.add_argument("--conversation-memory-mb", type=float, default=4096.0)
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        help="a web page origin (https://tools.example.com) whose scripts may call the API (CORS); repeat",
    )
    return parser


def _options(args: argparse.Namespace, settings: AppSettings) -> ApiOptions:
    for name in ("max_waiting_per_client", "stall_timeout_s", "conversation_memory_mb", "max_body_mb"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be positive, got {value}")
    return ApiOptions(
        api_keys=tuple(key.strip() for key in args.api_key.split(",") if key.strip()),
        allow_remote_media=args.allow_remote_media,
        max_body_mb=args.max_body_mb,
        max_waiting_per_client=args.max_waiting_per_client,
        stall_timeout_s=args.stall_timeout_s,
        max_conversations=settings.max_sessions,
        conversation_memory_mb=args.conversation_memory_mb,
        conversation_ttl_s=settings.session_ttl_s,
        served_model_name=args.served_model_name,
        trusted_proxies=settings.http.trusted_proxies,
        allow_origins=tuple(args.allow_origin),
    )


def main(argv: list[str] | None = None) -> int:
    """Load the model (refusing to serve the offline preview or a fallback engine), then serve until stopped."""
    import uvicorn

    from .service import Service

    args, rest = _parser().parse_known_args(argv)
    settings = AppSettings.parse([*rest, "--model", args.model])
    settings = replace(settings, host=args.host, port=args.port)
    options = _options(args, settings)
    service = Service(settings)
    model = service.load(settings.model)
    try:
        if service.preview:
            print(f"error: cannot serve {args.model}: {service.preview_reason}", flush=True)
            return 2
        if service.engine_notice:
            print(f"error: {service.engine_notice}", flush=True)
            return 2
        server = OpenAIServer(
            model, settings, options, name=service.display_name, concurrency=service.model_concurrency
        )
        key_note = "an API key is required" if options.api_keys else "no API key is asked for"
        print(
            f"Serving {server.name} ({model.engine.name} engine) at http://{args.host}:{args.port}/v1; {key_note}",
            flush=True,
        )
        uvicorn.run(  # X-Forwarded-For is read by `client_of` alone, with --trusted-proxies
            server.app,
            host=args.host,
            port=args.port,
            log_level="info",
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        return 0
    finally:
        service.close()
