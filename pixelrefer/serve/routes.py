"""Every HTTP route the server mounts, open or closed, with why: the allow-list `RouteGuard` enforces.

Gradio mounts some ninety routes (its page, its API, and features this app never uses: screen recording
through ffmpeg, component functions by name, a proxy, OAuth, run history, the vibe editor...). A request
whose method and path match no open entry here is answered 404 before Gradio sees it, so a route that a
Gradio upgrade adds is closed until someone opens it here; `tests/test_server_routes.py` enumerates the
mounted routes of the built app and fails on any that this table does not name.

`limits` says how an open route is bounded (the checks themselves are in `webguard`, `clients`, `streams`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ROUTES", "Route", "mounted_routes", "open_route"]


@dataclass(frozen=True)
class Route:
    """One mounted route (a Starlette path pattern and its methods): whether it is open, why, and its limits."""

    methods: tuple[str, ...]
    paths: tuple[str, ...]
    open: bool
    why: str
    limits: str = ""
    kind: str = ""
    """How `RouteGuard` treats it: "json" (a small JSON body it reads and checks), "upload", "stream"
    (a response the client must keep reading), "component" (component functions), "" (plain)."""
    option: str = ""
    """An operator setting that opens it (e.g. "monitoring"), or "" when `open` alone decides."""


G = "/gradio_api"
_STREAM = "stream: cut when not read for --stream-stall-s; counts against --requests-per-client"
_JSON = "JSON body <= 4 MiB, read within --body-stall-s; nesting checked without recursion"

ROUTES: tuple[Route, ...] = (
    # ---------------------------------------------------------------- the page
    Route(("GET", "HEAD"), ("/",), True, "the page itself"),
    Route(("GET",), ("/config", "/config/"), True, "the page's layout; gradio_client reads it too"),
    Route(
        ("GET",), ("/assets/{path:path}",), True, "the page's scripts and styles (Gradio's built front end)"
    ),
    Route(("GET",), ("/static/{path:path}",), True, "Gradio's static files (fonts, icons)"),
    Route(("GET",), ("/favicon.ico",), True, "the tab icon"),
    Route(("GET",), ("/theme.css", G + "/theme.css"), True, "the page's theme"),
    Route(("GET",), ("/robots.txt",), True, "crawlers are told what not to index"),
    Route(("GET",), (G + "/info", G + "/info/"), True, "the API page ('Use via API') and gradio_client"),
    Route(("GET",), (G + "/app_id", G + "/app_id/"), True, "the page's client asks for the app's id"),
    Route(
        ("GET",),
        (G + "/heartbeat/{session_hash}",),
        True,
        "keeps a session alive; its end closes the session (its workspace and files are deleted later)",
        _STREAM,
        "stream",
    ),
    # ---------------------------------------------------------------- events and the named API
    Route(
        ("POST",),
        (G + "/queue/join",),
        True,
        "every queued event of the page and of gradio_client",
        _JSON + "; fn_index known; page events only with their trigger; values type-checked; editor values "
        "bounded from headers; per-visitor and per-client waiting caps; sessions admitted (demo full)",
        "json",
    ),
    Route(
        ("GET",), (G + "/queue/data",), True, "the events' results (server-sent events)", _STREAM, "stream"
    ),
    Route(
        ("POST",),
        (G + "/run/{api_name}", G + "/run/{api_name}/", G + "/api/{api_name}", G + "/api/{api_name}/"),
        True,
        "the named API called synchronously; the page's unqueued Stop and Cancel (run/predict by fn_index)",
        _JSON + "; only the public API names, or the page's unqueued events with their trigger",
        "json",
    ),
    Route(
        ("POST",),
        (
            G + "/call/{api_name}",
            G + "/call/{api_name}/",
            G + "/call/v2/{api_name}",
            G + "/call/v2/{api_name}/",
        ),
        True,
        "the named API over plain HTTP (the API page's curl examples)",
        _JSON + "; only the public API names; values type-checked; per-client waiting caps",
        "json",
    ),
    Route(
        ("GET",),
        (G + "/call/{api_name}/{event_id}", G + "/call/v2/{api_name}/{event_id}"),
        True,
        "the result stream of a plain-HTTP API call",
        _STREAM,
        "stream",
    ),
    Route(("POST",), (G + "/cancel",), True, "a client cancels its own event (Stop)", _JSON, "json"),
    Route(
        ("POST",), (G + "/reset", G + "/reset/"), True, "a client ends its own streaming event", _JSON, "json"
    ),
    Route(
        ("POST",),
        (G + "/upload",),
        True,
        "files, before the event that names them (the canvas, clips, the brush layers, API files)",
        "each file <= --max-upload-mb (Gradio); at most --upload-files parts per request, counted while the "
        "body streams; body read within --body-stall-s",
        "upload",
    ),
    Route(("GET",), (G + "/upload_progress",), True, "the progress bar of an upload", _STREAM, "stream"),
    Route(
        ("GET", "HEAD"),
        (G + "/file={path_or_url:path}",),
        True,
        "served files: examples, assets, uploads and a session's own outputs",
        "Gradio serves only allowed_paths, its cache and uploads; a session's files are deleted with it",
    ),
    Route(
        ("POST",),
        (G + "/component_server", G + "/component_server/"),
        True,
        "component functions called by the browser; only the brush editor's accept_blobs, and only when "
        "the page listens to the editor's changes (this page does not: then every call is 404)",
        "component ids of this page; index < --editor-layers; one file per call, header-checked; "
        "ids and bytes per session bounded; blobs expire",
        "component",
    ),
    Route(
        ("GET",),
        ("/monitoring", "/monitoring/summary", "/monitoring/{key}"),
        False,
        "Gradio's traffic dashboard: closed unless the operator passes --monitoring",
        option="monitoring",
    ),
    # ---------------------------------------------------------------- closed: nothing on this page uses them
    Route(
        ("GET", "HEAD"),
        ("/openapi.json", G + "/openapi.json"),
        False,
        "FastAPI's schema; /info describes the API",
    ),
    Route(("POST",), ("/login", "/login/"), False, "no login on this app"),
    Route(("GET",), ("/logout",), False, "no login on this app"),
    Route(("GET",), (G + "/user", G + "/user/", G + "/login_check", G + "/login_check/"), False, "no login"),
    Route(("GET",), (G + "/token", G + "/token/"), False, "OAuth tokens: no login on this app"),
    Route(("GET",), ("/svelte/{path:path}",), False, "server-side rendering bundle, not used"),
    Route(("GET",), (G + "/deep_link",), False, "deep links are not used"),
    Route(("GET",), ("/pwa_icon", "/pwa_icon/{size}", "/manifest.json"), False, "the app is not a PWA"),
    Route(("GET",), (G + "/dev/reload",), False, "development reload"),
    Route(
        ("GET", "POST"),
        (
            G + "/runs",
            G + "/runs/",
            G + "/run-history/connect",
            G + "/run-history/buckets",
            G + "/run-history/records",
            G + "/run-history/records/{endpoint}/{record_id}/assets/{asset_id}",
        ),
        False,
        "Gradio's run history is not used",
    ),
    Route(
        ("GET",),
        (G + "/custom_component/{id}/{environment}/{type}/{file_name}",),
        False,
        "no custom components",
    ),
    Route(
        ("GET", "HEAD"), (G + "/proxy={url_path:path}",), False, "proxies other Spaces (gr.load): not used"
    ),
    Route(
        ("GET", "POST"),
        (
            G + "/stream/{event_id}",
            G + "/stream/{event_id}/close",
            G + "/stream/{session_hash}/{run}/{component_id}/playlist.m3u8",
            G + "/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}",
            G + "/stream/{session_hash}/{run}/{component_id}/playlist-file",
        ),
        False,
        "streamed media (webcam, streaming audio/video): not used",
    ),
    Route(("GET",), (G + "/file/{path:path}",), False, "the old form of /file=, not used by this Gradio"),
    Route(("GET",), (G + "/queue/status",), False, "queue estimates: the page does not ask"),
    Route(
        ("GET",),
        (G + "/startup-events",),
        True,
        "Gradio's launch calls it once to start the queue; any later call does nothing",
    ),
    Route(
        ("POST",),
        (G + "/process_recording",),
        False,
        "screen recording: runs ffmpeg on the upload with no forced format (it read server files through a "
        "DASH manifest); the app records nothing",
    ),
    Route(
        ("GET", "POST"),
        (
            G + "/vibe-edit",
            G + "/vibe-edit/",
            G + "/undo-vibe-edit",
            G + "/undo-vibe-edit/",
            G + "/vibe-code",
            G + "/vibe-code/",
            G + "/vibe-starter-queries",
            G + "/vibe-starter-queries/",
        ),
        False,
        "Gradio's vibe editor rewrites the app's code: never on a served app",
    ),
    Route(
        ("GET", "POST"),
        (G + "/profiling/traces", G + "/profiling/summary", G + "/profiling/clear"),
        False,
        "Gradio's profiler (only mounted with GRADIO_PROFILING): not on a served app",
    ),
)


def _pattern(path: str) -> re.Pattern[str]:
    """A Starlette path pattern as a regular expression ({name} is one segment, {name:path} the rest)."""
    out, position = "^", 0
    for match in re.finditer(r"{(\w+)(?::(\w+))?}", path):
        out += re.escape(path[position : match.start()])
        out += ".*" if match.group(2) == "path" else "[^/]+"
        position = match.end()
    return re.compile(out + re.escape(path[position:]) + "$")


_COMPILED = [(route, [_pattern(p) for p in route.paths]) for route in ROUTES]


def open_route(method: str, path: str, options: frozenset[str] = frozenset()) -> Route | None:
    """The open entry a request matches (exact paths win over patterns), or None: the request is refused."""
    candidates = [
        route
        for route, patterns in _COMPILED
        if (route.open or route.option in options and route.option)
        and any(pattern.match(path) for pattern in patterns)
    ]
    closed = any(
        not (route.open or route.option in options and route.option) and path in route.paths
        for route, _ in _COMPILED
    )
    if closed:  # a closed literal path (e.g. /gradio_api/process_recording) beats an open pattern
        return None
    for route in candidates:
        if method in route.methods:
            return route
    return None


def mounted_routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path pattern) of every route an ASGI app (Gradio's FastAPI app) mounts, included routers
    and mounted sub-apps walked through; websocket routes come as method "WEBSOCKET"."""
    yield from _walk(getattr(app, "routes", []), "")


def _walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
            continue
        path = prefix + getattr(route, "path", "")
        if "WebSocket" in type(route).__name__:
            yield "WEBSOCKET", path
            continue
        sub = getattr(route, "app", None)
        if type(route).__name__ == "Mount" and hasattr(sub, "routes"):
            yield from _walk(sub.routes, path)
            continue
        methods = getattr(route, "methods", None) or {"*"}
        for method in sorted(methods):
            yield method, path
