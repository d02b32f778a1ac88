"""Which HTTP requests reach Gradio, and with what: deny by default, then each open route's own limits.

`RouteGuard` is an ASGI middleware in front of every route Gradio mounts. A request whose method and path
are not an open entry of `pixelrefer.serve.routes.ROUTES` is answered 404 before Gradio sees it (screen
recording through ffmpeg, component functions the page does not use, the proxy, OAuth, ...). For the open
ones, before any handler runs:

- every client (`pixelrefer.serve.clients`) has at most `--requests-per-client` requests open;
- a JSON body is at most 4 MiB, arrives within `--body-stall-s`, is an object, nests at most 64 deep;
- only the named API may be called by name (`/run`, `/api`, `/call`), except the page's own unqueued events
  (Stop, Cancel), which the page posts to `/run/predict` with their `fn_index`; a `/queue/join` must name a
  known `fn_index`, and a page event the trigger the page sends with it;
- values are checked against their components: the named API's types and ranges (422, Gradio's validation
  format), the page events' types (a click's coordinates, a tool, a gallery index), text without lone
  surrogates, an image editor's value (layers, total pixels from the files' headers), files per request;
- sessions are admitted (`clients.Ledger`): a new session holding a workspace beyond the client's share, or
  when every place holds an active visitor, is told so; waiting events are capped per visitor and client;
- model events (`concurrency_id` "model") are refused while `model_queue` of them wait: the bound applies
  to answers only (Gradio's own `max_size` counts every event; the app sets it much higher);
- uploads carry at most `--upload-files` files; streams not read for `--stream-stall-s` are cut.

A UI event sent exactly as the page sends it cannot be told from the page; what such a caller reaches is
its own session's workspace, and handlers with wider effect (switching the model) check on their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware

from ..media.images import ImageError, check_image_file
from .clients import Full, HttpLimits, Ledger, client_of, own_forwarded_for, workspace_states
from .routes import Route, open_route
from .streams import BodyStalled, HeaderWatch, Orphans, StreamStalled, stalling_receive, stalling_send

__all__ = ["MODEL_QUEUE", "RouteGuard", "check_inputs", "guard_middleware", "watch_headers"]

_log = logging.getLogger(__name__)

MODEL_QUEUE = "model"
"""The `concurrency_id` of the events that run the model (answers, descriptions, model loads)."""

_MAX_BODY = 4 * 1024 * 1024
"""Event requests carry file references, not files (those go to /upload): 4 MiB is far more than any needs."""
_MAX_DEPTH = 64
"""How deep a JSON body may nest; the page's deepest value (an editor's file data) is 4 levels."""
_BLOB_TTL_S = 300.0
"""How long an editor blob sent to `accept_blobs` is kept for the event that uses it."""
_BLOB_IDS_PER_SESSION = 2

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


def guard_middleware(settings) -> list[Middleware]:
    """The guard as `demo.launch(app_kwargs={"middleware": ...})` takes it, from the app's settings.

    Also switches uvicorn's own X-Forwarded-For handling off (`clients.own_forwarded_for`)."""
    own_forwarded_for()
    return [
        Middleware(
            RouteGuard,
            model_queue=settings.queue_size,
            limits=getattr(settings, "http", HttpLimits()),
            max_sessions=settings.max_sessions,
            session_ttl_s=settings.session_ttl_s,
            max_upload_mb=settings.media.max_upload_mb,
            monitoring=settings.monitoring,
        )
    ]


class RouteGuard:
    """ASGI middleware for a Gradio app; the app (and its Blocks) is found in each request's scope."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        model_queue: int,
        limits: HttpLimits | None = None,
        max_sessions: int = 64,
        session_ttl_s: float = 1800.0,
        max_upload_mb: float = 50.0,
        monitoring: bool = False,
        prefix: str = "/gradio_api",
    ) -> None:
        self.app = app
        self.model_queue = int(model_queue)
        self.limits = limits or HttpLimits()
        self.ledger = Ledger(self.limits, max_sessions=max_sessions, session_ttl_s=session_ttl_s)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.options = frozenset({"monitoring"} if monitoring else set())
        self.prefix = prefix
        self.blobs: dict[tuple[str, str], tuple[int, float, int]] = {}
        self.orphans = Orphans(self.limits.stream_stall_s)
        self._sweeper: asyncio.Task | None = None
        """Editor blobs accepted, by (session, id): (bytes, time, component id)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket route is open
            await send({"type": "websocket.close", "code": 1008})
            return
        route = open_route(scope.get("method", ""), scope.get("path", ""), self.options)
        if route is None:
            await _answer(send, Refused(404, "Not Found"))
            return
        client = client_of(scope, self.limits.trusted_proxies)
        try:
            self.ledger.enter(client)
        except Full as full:
            await _answer(send, Refused(full.status, full.message))
            return
        try:
            app = scope.get("app")
            if self._sweeper is None and hasattr(app, "get_blocks"):
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_orphans(app))
            await self._serve(route, client, scope, receive, send)
        finally:
            self.ledger.leave(client)

    async def _sweep_orphans(self, app) -> None:
        """Once a second, for as long as the server runs: end the events nobody comes for (`Orphans`)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.orphans.sweep(app.get_blocks()._queue)
            except Exception:  # the sweeper never stops on a bad round
                _log.exception("sweeping orphaned events failed")

    async def _serve(self, route: Route, client: str, scope: Scope, receive: Receive, send: Send) -> None:
        receive = stalling_receive(receive, self.limits.body_stall_s)
        try:
            if route.kind == "stream":
                session = _stream_session(scope)
                if session:
                    self.orphans.opened(session)
                try:
                    await self.app(scope, receive, stalling_send(send, self.limits.stream_stall_s))
                except StreamStalled as stalled:
                    _log.info("Cut a stream of %s: %s", client, stalled)
                finally:
                    if session:
                        self.orphans.closed(session)
                return
            if route.kind == "upload":
                await self._upload(scope, receive, send)
                return
            if route.kind == "component" and not _blob_editors(scope["app"].get_blocks()):
                raise Refused(404, "Not Found")  # before reading a byte of the body
            if route.kind in ("json", "component"):
                body = await _read_body(receive, self._body_limit(route))
                joined = self._check(scope, route, body, client)
                if joined is None:
                    await self.app(scope, _replay(body, receive), send)
                    return
                self.ledger.joining[joined] += 1
                try:
                    await self.app(scope, _replay(body, receive), send)
                finally:
                    self.ledger.joining[joined] -= 1
                    if self.ledger.joining[joined] <= 0:
                        del self.ledger.joining[joined]
                    self.orphans.joined(joined[1].split(":", 1)[1])
                return
            await self.app(scope, receive, send)
        except Refused as refused:
            await _answer(send, refused)
        except Full as full:
            await _answer(send, Refused(full.status, full.message))
        except BodyStalled as stalled:
            await _answer(send, Refused(408, f"The request was refused: {stalled}."))

    def _body_limit(self, route: Route) -> int:
        if route.kind == "component":
            return self.max_upload_bytes + 64 * 1024
        return _MAX_BODY

    # ------------------------------------------------------------------ uploads

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an upload on while counting its parts; more than `upload_files` ends it with a 413."""
        boundary = _boundary(scope)
        most = self.limits.upload_files
        length = _content_length(scope)
        if length is not None and length > most * (self.max_upload_bytes + 64 * 1024):
            raise Refused(413, f"The upload is larger than {most} files of the size limit.")
        if boundary is None:
            raise Refused(400, "An upload must be multipart/form-data.")
        marker, tail, parts, over = b"--" + boundary, b"", 0, False

        async def counting() -> Message:
            nonlocal tail, parts, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            chunk = message.get("body", b"")
            window = tail + chunk
            parts += window.count(marker) - tail.count(marker)
            tail = window[-len(marker) - 2 :]
            if parts > most + 1:  # the closing delimiter is one more marker
                over = True
                return {"type": "http.disconnect"}
            return message

        held: list[Message] = []

        async def hold_if_over(message: Message) -> None:
            if over:
                held.append(message)
                return
            await send(message)

        try:
            await self.app(scope, counting, hold_if_over)
        except Exception:
            if not over:
                raise
        if over:
            raise Refused(413, f"An upload may carry at most {most} files per request.")

    # ------------------------------------------------------------------ routing and checks

    def _check(self, scope: Scope, route: Route, raw: bytes, client: str) -> tuple[str, str] | None:
        """Refuse what must not run; for an event that will wait in a queue, its (client, session) key."""
        blocks = scope["app"].get_blocks()
        if route.kind == "component":
            self._check_component_call(scope, blocks, raw)
            return None
        body = _json(raw)
        parts = [part for part in scope.get("path", "")[len(self.prefix) :].split("/") if part]
        if parts[:1] in (["cancel"], ["reset"]):
            return None
        public = sorted(
            f.api_name for f in blocks.fns.values() if f.api_visibility == "public" and f.api_name
        )
        listed = ", ".join(f"/{n}" for n in public)
        session = body.get("session_hash")
        if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 64):
            raise Refused(400, "session_hash must be text of 1 to 64 characters.")
        if parts != ["queue", "join"]:
            name = parts[-1] if parts[-2:-1] in (["run"], ["api"], ["call"], ["v2"]) else ""
            if name in public:
                fn = next(f for f in blocks.fns.values() if f.api_name == name)
                if "data" in body:  # /call/v2 takes keyword arguments, which Gradio itself names
                    check_inputs(fn, body["data"])
                return self._admit(blocks, fn, body, client, by_name=True)
            fn = _fn_of(blocks, body.get("fn_index")) if name == "predict" else None
            if fn is not None and not fn.queue and _page_sent(blocks, fn, body):
                _check_page_event(blocks, fn, body)
                return None  # the page's own unqueued events (Stop, Cancel tracking)
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
        else:
            _check_page_event(blocks, fn, body)
        self._check_files(blocks, fn, body.get("data"))
        return self._admit(blocks, fn, body, client, by_name=False)

    def _admit(self, blocks, fn, body: dict, client: str, *, by_name: bool) -> tuple[str, str] | None:
        """Sessions and waiting caps; the key under which the event counts as waiting until it is queued."""
        session = body.get("session_hash")
        keeps = bool(workspace_states(blocks) & {getattr(b, "_id", None) for b in fn.inputs})
        if by_name and keeps and not session:
            raise Refused(
                400,
                f"/{fn.api_name} keeps a chat between calls, which plain HTTP calls cannot: use gradio_client "
                "(or /gradio_api/queue/join with a session_hash).",
            )
        if session:
            self.ledger.admit_session(blocks, session, client, creates_workspace=keeps)
        self.ledger.check_waiting(blocks, fn, session or "", client, MODEL_QUEUE)
        if fn.concurrency_id == MODEL_QUEUE:
            self._check_model_queue(blocks)
            return client, "model:" + (session or "")
        return client, "any:" + (session or "")

    def _check_model_queue(self, blocks) -> None:
        queue = blocks._queue.event_queue_per_concurrency_id.get(MODEL_QUEUE)
        waiting = len(queue.queue) if queue is not None else 0
        waiting += sum(n for (_, key), n in self.ledger.joining.items() if key.startswith("model:"))
        if waiting >= self.model_queue:
            raise Refused(
                503,
                f"Queue is full: {waiting} answers are waiting for the model (at most {self.model_queue}). "
                "Please try again in a minute.",
            )

    # ------------------------------------------------------------------ files and editor values

    def _check_files(self, blocks, fn, data: object) -> None:
        """At most so many file references per event, and image editor values bounded from their headers."""
        if not isinstance(data, list):
            return
        for block, value in zip(fn.inputs, data, strict=False):
            if type(block).__name__ == "ImageEditor" and value is not None:
                self._check_editor_value(value)
        most = max(self.limits.upload_files, self.limits.editor_layers + 2)
        files = sum(_count_files(value) for value in data)
        if files > most:
            raise Refused(413, f"An event may name at most {most} files; this one names {files}.")

    def _check_editor_value(self, value: object) -> None:
        limits = self.limits
        if not isinstance(value, dict):
            raise Refused(422, "The brush value must be an object with background, layers and composite.")
        layers = value.get("layers") or []
        if not isinstance(layers, list):
            raise Refused(422, "The brush value's layers must be a list.")
        if len(layers) > limits.editor_layers:
            raise Refused(
                413, f"The brush sends at most {limits.editor_layers} layers; this value has {len(layers)}."
            )
        images = [value.get("background"), value.get("composite"), *layers]
        total = 0
        for image in images:
            if image is None:
                continue
            path = image.get("path") if isinstance(image, dict) else None
            if not isinstance(path, str) or not _in_upload_folder(path):
                raise Refused(422, "The brush's images must be files uploaded to this server.")
            try:
                width, height = check_image_file(path, max_pixels=limits.editor_pixels)
            except (ImageError, OSError) as exc:
                raise Refused(422, f"The brush's images cannot be used: {exc}") from None
            total += width * height
        if total > limits.editor_pixels:
            raise Refused(
                413,
                f"The brush's images hold {total:,} pixels together; the limit is {limits.editor_pixels:,}.",
            )

    # ------------------------------------------------------------------ component functions

    def _check_component_call(self, scope: Scope, blocks, raw: bytes) -> None:
        """Only `accept_blobs` of an image editor whose changes the page listens to, bounded; else 404."""
        allowed = _blob_editors(blocks)
        if not allowed:
            raise Refused(404, "Not Found")
        fields, files = _multipart_fields(scope, raw)
        limits = self.limits
        try:
            component = int(fields.get("component_id", ""))
        except ValueError:
            component = -1
        if fields.get("fn_name") != "accept_blobs" or component not in allowed:
            raise Refused(404, "Not Found")
        session, blob_id, kind = fields.get("session_hash", ""), fields.get("id", ""), fields.get("type")
        if not (0 < len(session) <= 64 and 0 < len(blob_id) <= 64 and blob_id.isalnum()):
            raise Refused(
                422, "accept_blobs needs a session_hash and an alphanumeric id (at most 64 characters)."
            )
        if kind not in {"background", "layer", "composite"}:
            raise Refused(422, "accept_blobs' type must be background, layer or composite.")
        index = fields.get("index")
        if kind == "layer":
            if not (index or "").isdigit() or int(index) >= limits.editor_layers:
                raise Refused(422, f"A layer's index must be a whole number below {limits.editor_layers}.")
        elif index not in (None, "", "null"):
            raise Refused(422, f"A {kind} has no index.")
        if len(files) != 1:
            raise Refused(422, "accept_blobs takes exactly one file.")
        try:
            width, height = check_image_file(files[0], max_pixels=limits.editor_pixels)
        except (ImageError, OSError) as exc:
            raise Refused(422, f"The brush's image cannot be used: {exc}") from None
        self._expire_blobs(blocks)
        mine = {key: entry for key, entry in self.blobs.items() if key[0] == session}
        if (session, blob_id) not in mine and len(mine) >= _BLOB_IDS_PER_SESSION:
            raise Refused(429, f"At most {_BLOB_IDS_PER_SESSION} brush values may wait per session.")
        pixels = sum(entry[0] for entry in mine.values()) + width * height
        if pixels > _BLOB_IDS_PER_SESSION * limits.editor_pixels:
            raise Refused(413, "The brush values waiting for this session are too large.")
        before = self.blobs.get((session, blob_id), (0, 0.0, component))[0]
        self.blobs[(session, blob_id)] = (before + width * height, time.monotonic(), component)

    def _expire_blobs(self, blocks) -> None:
        """Drop editor blobs older than their time to live from the editors that keep them."""
        now = time.monotonic()
        for (session, blob_id), (_, since, component) in list(self.blobs.items()):
            if now - since <= _BLOB_TTL_S:
                continue
            del self.blobs[(session, blob_id)]
            for block in _editor_instances(blocks, session, component):
                block.blob_storage.pop(blob_id, None)


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
    _refuse_problems(
        (_problem(block, name, value, public=True), name)
        for (block, name), value in zip(slots, data, strict=False)
    )


def _refuse_problems(found) -> None:
    problems = [
        {"__type__": "validate", "is_valid": False, "parameter_name": name, "message": problem}
        for problem, name in found
        if problem
    ]
    if problems:
        text = "; ".join(p["message"] for p in problems)
        raise Refused(422, text, detail=problems)


def _check_page_event(blocks, fn, body: dict) -> None:
    """A page event's values and event data must have the types the page sends (a click's coordinates are
    whole numbers, a tool is one of the tools, a gallery index names a picture)."""
    data = body.get("data")
    if data is not None and not isinstance(data, list):
        raise Refused(422, "The request's data must be a list of the event's values.")
    names = _parameter_names(fn)
    _refuse_problems(
        (_problem(block, name, value, public=False), name)
        for block, name, value in zip(fn.inputs, names, data or [], strict=False)
    )
    event = {name for _, name in fn.targets}
    trigger = body.get("trigger_id")
    if "select" in event and trigger is not None:
        block = blocks.blocks.get(trigger)
        problem = _select_problem(block, body.get("event_data"))
        if problem:
            raise Refused(422, problem)


def _select_problem(block, event_data: object) -> str:
    """What is wrong with a select event's data for the component that fired it, or ""."""
    kind = type(block).__name__
    if not isinstance(event_data, dict):
        return "A selection must come with its event data (an object with an index)."
    index = event_data.get("index")
    if kind in ("Image", "ImageEditor"):
        if (
            not isinstance(index, list)
            or len(index) != 2
            or not all(_whole(v) and 0 <= v <= 10**6 for v in index)
        ):
            return f"A click must name its point as two whole numbers [x, y], got {_shown(index)}."
    elif kind == "Gallery":
        count = len(getattr(block, "value", None) or [])
        if not _whole(index) or not 0 <= index < max(count, 1):
            return f"The example index must be a whole number from 0 to {max(count - 1, 0)}, got {_shown(index)}."
    elif index is not None and not (_whole(index) or isinstance(index, list | str)):
        return f"A selection's index must be a number, got {_shown(index)}."
    return ""


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:39] + "…"


def _parameter_names(fn) -> list[str]:
    import inspect

    target = getattr(fn.fn, "__wrapped__", fn.fn) if fn.fn is not None else None
    try:
        names = list(inspect.signature(target).parameters) if target is not None else []
    except (TypeError, ValueError):
        names = []
    names = [n for n in names if n != "self"]
    return names + [f"parameter_{i}" for i in range(len(names), len(fn.inputs))]


def _problem(block, name: str, value: object, *, public: bool) -> str:
    """What is wrong with `value` for the input `block` (parameter `name`), or "" when nothing is."""
    kind = type(block).__name__
    if kind == "State":
        return ""
    label = getattr(block, "label", None) if not public else None
    what = name if public or not label else f"{name} ({label})"
    if isinstance(value, str) and _has_surrogate(value):
        return f"{what} contains a lone surrogate (U+D800 to U+DFFF), which is not a character; send valid Unicode"
    if value is None:
        if kind == "Textbox" and public:
            return f"{what} must be text, got null"
        if kind == "Radio" and getattr(block, "value", None) is not None:
            return f"{what} must be one of {_choices(block)}, got null"
        return ""
    if kind in ("Number", "Slider"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{what} must be a number, got {_type_name(value)}"
        if value != value or value in (float("inf"), float("-inf")):
            return f"{what} must be a finite number, got {value}"
        if kind == "Slider":
            return ""  # its range changes per session (a clip's frame count); the handler checks it
        if block.precision == 0 and value != int(value):
            return f"{what} must be a whole number, got {value}"
        low, high = block.minimum, block.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{what} must be between {low:,} and {high:,}, got {value:,}"
        return ""
    if kind == "Textbox":
        return "" if isinstance(value, str) else f"{what} must be text, got {_type_name(value)}"
    if kind == "Checkbox":
        return "" if isinstance(value, bool) else f"{what} must be true or false, got {_type_name(value)}"
    if kind in ("Radio", "Dropdown"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"{what} must be one of {_choices(block)}, got {_type_name(value)}"
        return ""
    if kind == "File" and public:
        return _file_problem(name, value)
    return ""


def _choices(block) -> str:
    values = [c[1] if isinstance(c, tuple | list) else c for c in getattr(block, "choices", None) or []]
    shown = ", ".join(str(v) for v in values[:8])
    return f"the choices ({shown})" if shown else "its choices"


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _file_problem(name: str, value: object) -> str:
    """A file parameter must be a file uploaded to this server (`POST /gradio_api/upload` first)."""
    how = 'upload it with POST /gradio_api/upload and pass {"path": <returned path>, "meta": {"_type": "gradio.FileData"}}'
    if not isinstance(value, dict):
        return f"{name} must be a file ({how}), got {_type_name(value)}"
    path = value.get("path")
    if not isinstance(path, str) or not path:
        return f"{name} must name an uploaded file ({how})"
    if path.startswith(("http://", "https://")):
        return f"{name} must be a file uploaded to this server, not a URL ({how})"
    if not _in_upload_folder(path):
        return f"{name} is not a file uploaded to this server ({how})"
    return ""


def _in_upload_folder(path: str) -> bool:
    from gradio.processing_utils import get_upload_folder

    folder = Path(get_upload_folder()).resolve()
    return Path(os.path.abspath(path)).resolve().is_relative_to(folder)


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _count_files(value: object) -> int:
    """File references (objects with a "path") in a value, without recursion (depth is bounded already)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += "path" in item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


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


def _blob_editors(blocks) -> set[int]:
    """Image editors whose `accept_blobs` the browser calls: those with a change or input listener."""
    listened = {
        block_id
        for fn in blocks.fns.values()
        for block_id, event in fn.targets
        if event in ("change", "input")
    }
    return {
        i for i, block in blocks.blocks.items() if type(block).__name__ == "ImageEditor" and i in listened
    }


def _editor_instances(blocks, session: str, component: int) -> list:
    found = []
    state = blocks.state_holder.session_data.get(session)
    if state is not None:
        block = state.blocks_config.blocks.get(component)
        if block is not None:
            found.append(block)
    if component in blocks.blocks:
        found.append(blocks.blocks[component])
    return [b for b in found if hasattr(b, "blob_storage")]


def _multipart_fields(scope: Scope, raw: bytes) -> tuple[dict[str, str], list[bytes]]:
    """A small multipart body's text fields and files, parsed from the bytes already read."""
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    content_type = _header(scope, b"content-type")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise Refused(404, "Not Found")
    fields: dict[str, str] = {}
    files: list[bytes] = []
    current: dict[str, Any] = {}

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=bytearray(), name=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["headers"][bytes(current["name"]).lower()] = data[start:end]
        current["name"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_part_end() -> None:
        disposition = current["headers"].get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("latin-1")
        if b"filename" in params:
            files.append(bytes(current["data"]))
        elif len(fields) < 16:
            fields[name] = bytes(current["data"]).decode("utf-8", "replace")

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(raw)
        parser.finalize()
    except Exception as exc:
        raise Refused(400, f"The multipart body cannot be read ({type(exc).__name__}).") from None
    if len(files) > 1:
        raise Refused(422, "accept_blobs takes exactly one file.")
    return fields, files


def _stream_session(scope: Scope) -> str:
    """The session whose results a stream carries: /queue/data?session_hash=..., or a /call result's event
    id (a plain-HTTP call's session is its event)."""
    from urllib.parse import parse_qs

    path = scope.get("path", "")
    if path.endswith("/queue/data"):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return (query.get("session_hash") or [""])[0][:64]
    if "/call/" in path:
        return path.rstrip("/").rsplit("/", 1)[-1][:64]
    return ""


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return b""


def _boundary(scope: Scope) -> bytes | None:
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(_header(scope, b"content-type"))
    if kind != b"multipart/form-data":
        return None
    return options.get(b"boundary") or None


def _content_length(scope: Scope) -> int | None:
    text = _header(scope, b"content-length")
    return int(text) if text.isdigit() else None


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise Refused(400, f"The request body nests deeper than {_MAX_DEPTH} levels.") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"The request body is not JSON ({exc.__class__.__name__}).") from exc
    if not isinstance(body, dict):
        raise Refused(400, "The request body must be a JSON object.")
    if _depth(body) > _MAX_DEPTH:
        raise Refused(400, f"The request body nests deeper than {_MAX_DEPTH} levels.")
    return body


def _depth(value: object) -> int:
    """How deep a parsed JSON value nests, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > _MAX_DEPTH:
            return depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "The client went away.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"The request body is larger than {math.ceil(limit / 2**20)} MiB.")
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
    _log.info("refused (%s): %s", refused.status, refused.message)
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


def watch_headers(demo, settings) -> HeaderWatch | None:
    """Start closing connections that do not finish their request headers within `--body-stall-s`, on a
    launched (`prevent_thread_lock=True`) Gradio app; None when no uvicorn server is running."""
    server = getattr(demo, "server", None)
    if server is None:
        return None
    limits = getattr(settings, "http", HttpLimits())
    return HeaderWatch(server, limits.body_stall_s).start()
