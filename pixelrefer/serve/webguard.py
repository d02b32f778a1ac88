"""Which HTTP requests reach the app's handlers: only the named API by name, UI events only as the page sends them.

Gradio serves every event by name (`/gradio_api/run/<fn name>`, `/call/<fn name>`) whatever its
`api_visibility`, and runs any `fn_index` sent to `/queue/join`; an unknown index answers HTTP 500. In a
public app that lets anyone call the page's own handlers (load a model, track, export) without the page.
`RouteGuard`, an ASGI middleware in front of Gradio's routes, refuses before any handler runs:

- `/run/<name>`, `/api/<name>`, `/call/<name>` (and `/call/v2/<name>`) for any name outside the public API,
  except the page's own unqueued events (Stop, Cancel), which the page posts to `/run/predict` with their
  `fn_index`;
- a `/queue/join` whose `fn_index` is missing or unknown (400, with the reason), or that names a UI event
  without the trigger the page sends with it (`trigger_id`, one of the components that fire the event);
- a model event (`concurrency_id` "model") while `model_queue` of them already wait: the model queue bound
  applies to answers only, so a visitor who opens media and marks objects is never told the queue is full
  because answers are queued (Gradio's own `max_size` counts every event; the app sets it much higher).

A UI event sent exactly as the page sends it cannot be told from the page; what such a caller reaches is
its own session's workspace, and handlers with wider effect (switching the model) check on their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["MODEL_QUEUE", "RouteGuard"]

MODEL_QUEUE = "model"
"""The `concurrency_id` of the events that run the model (answers, descriptions, model loads)."""

_MAX_BODY = 4 * 1024 * 1024
"""Event requests carry file references, not files (those go to /upload): 4 MiB is far more than any needs."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Refused(Exception):
    """A request the guard answers itself, with an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = message if detail is None else detail


class RouteGuard:
    """ASGI middleware for a Gradio app; the app (and its Blocks) is found in each request's scope."""

    def __init__(self, app: ASGIApp, *, model_queue: int, prefix: str = "/gradio_api") -> None:
        self.app = app
        self.model_queue = int(model_queue)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        route = self._route(scope.get("path", ""))
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
            self._check(scope, route, body)
        except Refused as refused:
            await _answer(send, refused)
            return
        await self.app(scope, _replay(body, receive), send)

    # ------------------------------------------------------------------ routing

    def _route(self, path: str) -> tuple[str, str] | None:
        """("join", "") for a queue join, ("name", api name) for a call by name, None for anything else."""
        if not path.startswith(self.prefix + "/"):
            return None
        parts = [part for part in path[len(self.prefix) :].split("/") if part]
        if parts == ["queue", "join"]:
            return "join", ""
        if len(parts) == 2 and parts[0] in {"run", "api", "call"}:
            return "name", parts[1]
        if len(parts) == 3 and parts[:2] == ["call", "v2"]:
            return "name", parts[2]
        return None

    def _check(self, scope: Scope, route: tuple[str, str], raw: bytes) -> None:
        kind, name = route
        body = _json(raw)
        blocks = scope["app"].get_blocks()
        public = sorted(
            f.api_name for f in blocks.fns.values() if f.api_visibility == "public" and f.api_name
        )
        listed = ", ".join(f"/{n}" for n in public)
        if kind == "name":
            if name in public:
                fn = next(f for f in blocks.fns.values() if f.api_name == name)
                if "data" in body:  # /call/v2 takes keyword arguments, which Gradio itself names
                    check_inputs(fn, body["data"])
                if fn.concurrency_id == MODEL_QUEUE:
                    self._check_model_queue(blocks)
                return
            fn = _fn_of(blocks, body.get("fn_index")) if name == "predict" else None
            if fn is not None and not fn.queue and _page_sent(blocks, fn, body):
                return  # the page's own unqueued events (Stop, Cancel tracking)
            raise Refused(404, f"/{name} is not an API endpoint of this app; the API is {listed}.")
        index = body.get("fn_index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise Refused(400, "The request names no event: fn_index must be an integer.")
        fn = _fn_of(blocks, index)
        if fn is None:
            raise Refused(400, f"There is no event with fn_index {index}.")
        if fn.api_visibility == "private" and not _page_sent(blocks, fn, body):
            raise Refused(
                403, f"Event {index} belongs to the page and cannot be called directly; the API is {listed}."
            )
        if fn.api_visibility == "public":
            check_inputs(fn, body.get("data"))
        if fn.concurrency_id == MODEL_QUEUE:
            self._check_model_queue(blocks)

    def _check_model_queue(self, blocks) -> None:
        queue = blocks._queue.event_queue_per_concurrency_id.get(MODEL_QUEUE)
        waiting = len(queue.queue) if queue is not None else 0
        if waiting >= self.model_queue:
            raise Refused(
                503,
                f"Queue is full: {waiting} answers are waiting for the model (at most {self.model_queue}). "
                "Please try again in a minute.",
            )


# ---------------------------------------------------------------------- the named API's inputs


def check_inputs(fn, data: object) -> None:
    """Refuse (422, in Gradio's validation format) a named API call whose values have the wrong type or range.

    Gradio would otherwise fail inside its own preprocessing with no message a client sees (`{"error":
    null}`), or pass the handler a number too large for the random generator. Each problem names the
    parameter, what it must be and what came.
    """
    if not isinstance(data, list):
        raise Refused(422, "The request's data must be a list of the endpoint's parameters.")
    slots = [(block, name) for block, name in zip(fn.inputs, _parameter_names(fn), strict=False)]
    if len(data) != len(slots):
        slots = [(block, name) for block, name in slots if not getattr(block, "skip_api", False)]
    if len(data) > len(slots):
        raise Refused(422, f"/{fn.api_name} takes {len(slots)} parameters; {len(data)} were sent.")
    problems = []
    for (block, name), value in zip(slots, data, strict=False):
        problem = _problem(block, name, value)
        if problem:
            problems.append(
                {"__type__": "validate", "is_valid": False, "parameter_name": name, "message": problem}
            )
    if problems:
        text = "; ".join(p["message"] for p in problems)
        raise Refused(422, text, detail=problems)


def _parameter_names(fn) -> list[str]:
    import inspect

    names = list(inspect.signature(fn.fn).parameters)
    return names + [f"parameter_{i}" for i in range(len(names), len(fn.inputs))]


def _problem(block, name: str, value: object) -> str:
    """What is wrong with `value` for the input `block` (parameter `name`), or "" when nothing is."""
    kind = type(block).__name__
    if value is None or kind == "State":
        return ""
    if kind == "Number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a number, got {_type_name(value)}"
        if value != value or value in (float("inf"), float("-inf")):
            return f"{name} must be a finite number, got {value}"
        if block.precision == 0 and value != int(value):
            return f"{name} must be a whole number, got {value}"
        low, high = block.minimum, block.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} must be between {low:,} and {high:,}, got {value:,}"
        return ""
    if kind == "Textbox":
        return "" if isinstance(value, str) else f"{name} must be text, got {_type_name(value)}"
    if kind == "File":
        return _file_problem(name, value)
    return ""


def _file_problem(name: str, value: object) -> str:
    """A file parameter must be a file uploaded to this server (`POST /gradio_api/upload` first)."""
    from gradio.processing_utils import get_upload_folder

    how = 'upload it with POST /gradio_api/upload and pass {"path": <returned path>, "meta": {"_type": "gradio.FileData"}}'
    if not isinstance(value, dict):
        return f"{name} must be a file ({how}), got {_type_name(value)}"
    path = value.get("path")
    if not isinstance(path, str) or not path:
        return f"{name} must name an uploaded file ({how})"
    if path.startswith(("http://", "https://")):
        return f"{name} must be a file uploaded to this server, not a URL ({how})"
    folder = Path(get_upload_folder()).resolve()
    if not Path(os.path.abspath(path)).resolve().is_relative_to(folder):
        return f"{name} is not a file uploaded to this server ({how})"
    return ""


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------- helpers


def _fn_of(blocks, index: object):
    if not isinstance(index, int) or isinstance(index, bool):
        return None
    return blocks.fns.get(index)


def _page_sent(blocks, fn, body: dict) -> bool:
    """Whether `body` names a trigger that fires `fn` on the page: a component of its event (of the first event
    of its `.then` chain), or none at all for an event the page fires when it loads."""
    root, seen = fn, set()
    while root.trigger_after is not None and root.trigger_after not in seen:
        seen.add(root.trigger_after)
        parent = blocks.fns.get(root.trigger_after)
        if parent is None:
            break
        root = parent
    triggers = {block_id for block_id, event in root.targets if block_id is not None and event != "load"}
    fired_on_load = any(event == "load" for _, event in root.targets)
    trigger = body.get("trigger_id")
    if trigger is None:
        return fired_on_load
    return trigger in triggers or (fired_on_load and trigger == blocks._id)


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"The request body is not JSON ({exc.__class__.__name__}).") from exc
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.")
    return body


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "The client went away.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise Refused(413, f"The request body is larger than {_MAX_BODY // (1024 * 1024)} MiB.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, refused: Refused) -> None:
    payload = json.dumps({"detail": refused.detail, "error": refused.message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refused.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
