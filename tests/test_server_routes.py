"""The HTTP layer, in the test process: every mounted route is on the allow-list, the closed ones answer 404,
who a client is, and the small malformed requests (deep JSON, null or broken text, page events with wrong
types) get a 4xx that names the problem instead of reaching a handler. The measured, subprocess-server side
(memory, ffmpeg on PATH, floods, streams) is `test_server_limits.py`."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.middleware import Middleware

from pixelrefer.report import write_report
from pixelrefer.serve.clients import HttpLimits, client_of
from pixelrefer.serve.routes import ROUTES, mounted_routes, open_route
from pixelrefer.serve.service import AppSettings
from pixelrefer.serve.streams import HeaderWatch
from pixelrefer.serve.webguard import RouteGuard

from .conftest import PreviewApp, free_port


@pytest.fixture(scope="module")
def http(preview_app: PreviewApp):
    with httpx.Client(base_url=preview_app.url, timeout=30) as client:
        yield client


def listed(method: str, path: str) -> bool:
    return any(method in route.methods and path in route.paths for route in ROUTES)


# ---------------------------------------------------------------------- the allow-list


def test_every_mounted_route_is_on_the_list(preview_app: PreviewApp) -> None:
    """A Gradio upgrade that mounts a new route fails here until someone decides whether it is open."""
    mounted = sorted(set(mounted_routes(preview_app.demo.server_app)))
    assert len(mounted) > 60, mounted  # the walk reaches Gradio's included router
    missing = [(method, path) for method, path in mounted if not listed(method, path)]
    assert missing == [], f"routes mounted but not on pixelrefer.serve.routes.ROUTES: {missing}"
    assert all(route.why for route in ROUTES)
    assert all(route.limits for route in ROUTES if route.open and route.kind)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/gradio_api/process_recording"),
        ("POST", "/gradio_api/component_server"),
        ("POST", "/gradio_api/component_server/"),
        ("GET", "/gradio_api/proxy=https://example.com/x"),
        ("GET", "/openapi.json"),
        ("GET", "/gradio_api/openapi.json"),
        ("GET", "/gradio_api/token"),
        ("GET", "/gradio_api/queue/status"),
        ("POST", "/gradio_api/stream/abc"),
        ("POST", "/gradio_api/vibe-edit"),
        ("GET", "/gradio_api/file/app.py"),
        ("GET", "/monitoring"),
        ("GET", "/not-a-route"),
        ("DELETE", "/"),
    ],
)
def test_closed_routes_answer_404_before_gradio(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, files={"f": ("a.mpd", b"<MPD/>")} if method == "POST" else None)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert response.json() == {"detail": "Not Found", "error": "Not Found"}


def test_the_component_server_stays_closed_for_this_page_whatever_the_call(
    preview_app: PreviewApp, http: httpx.Client
) -> None:
    """The page's brush editor has no change listener, so the browser never calls accept_blobs."""
    (editor,) = [i for i, b in preview_app.demo.blocks.items() if isinstance(b, gr.ImageEditor)]
    fields = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "type": "layer"}
    response = http.post(
        "gradio_api/component_server",
        data={**fields, "index": "0", "id": "a"},
        files={"file": ("l.png", b"x")},
    )
    assert response.status_code == 404


def test_the_page_and_the_api_description_are_served(http: httpx.Client) -> None:
    for path in ("/", "/config", "/gradio_api/info", "/theme.css", "/robots.txt"):
        assert http.get(path).status_code == 200, path


def test_open_route_matching() -> None:
    assert open_route("POST", "/gradio_api/queue/join").kind == "json"
    assert open_route("GET", "/gradio_api/queue/data").kind == "stream"
    assert open_route("GET", "/gradio_api/file=/tmp/x.png") is not None
    assert open_route("POST", "/gradio_api/process_recording") is None
    assert open_route("GET", "/monitoring") is None
    assert open_route("GET", "/monitoring", frozenset({"monitoring"})) is not None
    assert open_route("GET", "/gradio_api/queue/join") is None  # open route, wrong method


def test_websockets_are_closed() -> None:
    sent = []

    async def run() -> None:
        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "websocket.connect"}

        await RouteGuard(None, model_queue=1)({"type": "websocket", "path": "/x"}, receive, send)

    asyncio.run(run())
    assert sent == [{"type": "websocket.close", "code": 1008}]


# ---------------------------------------------------------------------- who the client is


def scope(peer: str, *forwarded: str) -> dict:
    return {"client": (peer, 5000), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


@pytest.mark.parametrize(
    ("proxies", "request_scope", "client"),
    [
        (0, scope("10.0.0.5", "1.2.3.4"), "10.0.0.5"),  # no proxy declared: the header is the client's own
        (1, scope("10.0.0.1", "203.0.113.7"), "203.0.113.7"),
        (1, scope("10.0.0.1", "6.6.6.6, 203.0.113.7"), "203.0.113.7"),  # a forged front entry changes nothing
        (1, scope("10.0.0.1", "6.6.6.6", "203.0.113.7"), "203.0.113.7"),  # headers sent twice are one list
        (2, scope("10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.2"), "203.0.113.7"),
        (2, scope("10.0.0.1", "203.0.113.7"), "10.0.0.1"),  # fewer entries than proxies: the peer
        (1, scope("10.0.0.1", "not-an-address"), "10.0.0.1"),
        (1, scope("10.0.0.1", "[2001:db8::1]"), "2001:db8::1"),
    ],
)
def test_the_client_is_the_peer_or_what_the_last_trusted_proxy_recorded(
    proxies: int, request_scope: dict, client: str
) -> None:
    assert client_of(request_scope, proxies) == client


def test_http_limits_have_flags_and_environment_variables() -> None:
    settings = AppSettings.parse(
        ["--trusted-proxies", "1", "--waiting-per-client", "3"], env={"PIXELREFER_STREAM_STALL_S": "5"}
    )
    assert settings.http == HttpLimits(trusted_proxies=1, waiting_per_client=3, stream_stall_s=5.0)
    with pytest.raises(SystemExit):
        AppSettings.parse(["--sessions-per-client", "0"], env={})


# ---------------------------------------------------------------------- malformed requests


def test_a_deeply_nested_body_is_a_400_not_a_500(http: httpx.Client) -> None:
    deep = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b', "fn_index": 0}'
    for path in ("gradio_api/queue/join", "gradio_api/call/ask", "gradio_api/run/predict"):
        response = http.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text[:200])
        assert "nests deeper than 64 levels" in response.json()["detail"]
    shallow_but_deep = {"data": [json.loads("[" * 70 + "]" * 70)], "fn_index": 0}
    assert http.post("gradio_api/queue/join", json=shallow_but_deep).status_code == 400


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (None, "question must be text, got null"),
        ("What is \ud800 <object1>?", "question contains a lone surrogate"),
    ],
)
def test_ask_with_null_or_broken_text_names_the_problem(http: httpx.Client, question, message: str) -> None:
    body = json.dumps({"data": [question, 4, 1]}, ensure_ascii=True)
    response = http.post("gradio_api/call/ask", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
    assert "Something went wrong" not in response.text


def page_event(preview_app: PreviewApp, name: str) -> tuple[int, object, int]:
    """(fn_index, fn, trigger id) of a page event as the page sends it."""
    (index,) = [i for i, fn in preview_app.demo.fns.items() if fn.api_name == name]
    fn = preview_app.demo.fns[index]
    return index, fn, fn.targets[0][0]


def test_page_events_with_wrong_types_name_the_problem(preview_app: PreviewApp, http: httpx.Client) -> None:
    index, fn, trigger = page_event(preview_app, "on_click")
    tool = next(i for i, b in enumerate(fn.inputs) if isinstance(b, gr.Radio))
    good = ["Object (click)" if i == tool else None for i in range(len(fn.inputs))]
    base = {"fn_index": index, "trigger_id": trigger, "session_hash": "typed"}
    cases = [
        ({"data": good, "event_data": {"index": ["10", "20"], "value": None}}, "A click must name its point"),
        ({"data": good, "event_data": {"index": [10], "value": None}}, "two whole numbers [x, y]"),
        ({"data": good, "event_data": None}, "must come with its event data"),
        (
            {"data": [None] * len(fn.inputs), "event_data": {"index": [1, 2]}},
            "tool (Mark with) must be one of the choices (Object (click)",
        ),
        ({"data": "everything"}, "must be a list"),
    ]
    for extra, message in cases:
        response = http.post("gradio_api/queue/join", json={**base, **extra})
        assert response.status_code == 422, (extra, response.text)
        assert message in response.json()["error"], response.text
    index, fn, trigger = page_event(preview_app, "on_example")
    response = http.post(
        "gradio_api/queue/join",
        json={"fn_index": index, "trigger_id": trigger, "session_hash": "typed", "data": [None],
              "event_data": {"index": 10**6}},
    )  # fmt: skip
    assert response.status_code == 422 and "example index must be a whole number" in response.json()["error"]


# ---------------------------------------------------------------------- a bounded component server


def test_accept_blobs_is_bounded_when_a_page_needs_it(tmp_path: Path) -> None:
    """A page that listens to its editor's changes gets accept_blobs: only for its editor, layer indices below
    the limit, one header-checked image, two waiting values per session; every other call is 404."""
    with gr.Blocks() as demo:
        editor = gr.ImageEditor()
        out = gr.Textbox()
        editor.change(lambda value: "ok", editor, out)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        app_kwargs={"middleware": [Middleware(RouteGuard, model_queue=4)]},
    )
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(small)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/gradio_api/", timeout=30) as http:

            def call(png: Path = small, **fields: str) -> httpx.Response:
                form = {"component_id": str(editor._id), "session_hash": "s1", "fn_name": "accept_blobs",
                        "type": "layer", "index": "0", "id": "a1", **fields}  # fmt: skip
                return http.post("component_server", data=form, files={"file": ("b.png", png.read_bytes())})

            assert call().status_code == 200
            assert call(type="background", index="null").status_code == 200
            refused = {
                "index": call(index="100000000"),
                "fn": call(fn_name="preprocess"),
                "component": call(component_id=str(out._id)),
                "type": call(type="everything"),
                "id": call(id="../x"),
                "bomb": call(png=bomb),
            }
            assert {k: r.status_code for k, r in refused.items()} == {
                "index": 422, "fn": 404, "component": 404, "type": 422, "id": 422, "bomb": 422,
            }  # fmt: skip
            assert "index must be a whole number below 2" in refused["index"].json()["error"]
            assert "pixels" in refused["bomb"].json()["error"]
            assert call(id="a2").status_code == 200
            third = call(id="a3")
            assert third.status_code == 429 and "At most 2 brush values" in third.json()["error"]
            assert call(id="b1", session_hash="s2").status_code == 200
    finally:
        demo.close()


# ---------------------------------------------------------------------- half-sent headers


def test_the_header_watch_closes_connections_still_in_their_headers() -> None:
    """A connection that never finishes its headers is closed after the stall time; one between requests
    (keep-alive timer) or inside a request (a cycle) is left alone."""
    from types import SimpleNamespace

    aborted: list[str] = []

    def connection(name: str, cycle=None, keep_alive=None):
        transport = SimpleNamespace(abort=lambda: aborted.append(name))
        return SimpleNamespace(
            cycle=cycle, timeout_keep_alive_task=keep_alive, transport=transport, loop=None
        )

    slow = connection("slow")
    idle = connection("idle", cycle=SimpleNamespace(response_complete=True), keep_alive=object())
    busy = connection("busy", cycle=SimpleNamespace(response_complete=False))
    watch = HeaderWatch(SimpleNamespace(), stall_s=0.05)
    assert watch.sweep([slow, idle, busy]) == 0
    threading.Event().wait(0.1)
    assert watch.sweep([slow, idle, busy]) == 1
    assert aborted == ["slow"]


# ---------------------------------------------------------------------- report


def test_report_marks_a_bad_row_and_goes_on(tmp_path: Path) -> None:
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray((np.arange(24 * 32).reshape(24, 32) % 7 == 0).astype(np.uint8) * 255).save(
        tmp_path / "m.png"
    )
    items = tmp_path / "items.jsonl"
    rows = [
        {"id": k, "image": "photo.png", "objects": [{"mask": "m.png"}], "questions": ["What?"]}
        for k in "abcd"
    ]
    items.write_text("\n".join(json.dumps(r) for r in rows))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "a", "answers": [{"question": "What?", "answer": "a <b>cup</b>", "finish_reason": 5}]},
                {"id": "b", "answers": "not a list"},
                {"id": "c", "answers": ["not an object"]},
                {"id": "d", "answers": [{"question": "What?", "answer": "fine", "finish_reason": "length"}]},
            ]
        )
    )
    page = write_report(items, [answers], tmp_path / "report.html").read_text()
    assert "bad finish_reason: int 5" in page and "a &lt;b&gt;cup&lt;/b&gt;" in page
    assert (
        "bad row: dict {&#x27;id&#x27;: &#x27;b&#x27;, &#x27;answers&#x27;: &#x27;not a list&#x27;}" in page
    )
    assert "bad answer: str &#x27;not an object&#x27;" in page
    assert "fine" in page and "[length]" in page


# ---------------------------------------------------------------------- streams nobody reads


def test_a_stream_not_read_is_cut_and_its_producer_closed() -> None:
    """A socket that stops taking data (its `send` never returns) ends the stream after the stall time: the
    guard returns, and the app's generator is closed (its `finally` runs: Gradio drops the session's pending
    messages and ends its events there)."""
    produced, closed = [], []

    async def streaming_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for k in range(10**6):
                produced.append(k)
                await send({"type": "http.response.body", "body": b"data: token\n\n", "more_body": True})
        finally:
            closed.append(True)

    taken = []

    async def full_socket(message):
        if len(taken) >= 3:
            await asyncio.Event().wait()  # the client reads no more
        taken.append(message)

    async def receive():
        await asyncio.Event().wait()

    async def run() -> float:
        guard = RouteGuard(streaming_app, model_queue=1, limits=HttpLimits(stream_stall_s=0.2))
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/gradio_api/queue/data",
            "query_string": b"session_hash=s",
        }
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(guard(scope, receive, full_socket), 5)
        return asyncio.get_running_loop().time() - began

    elapsed = asyncio.run(run())
    assert closed == [True] and len(produced) == 3 and elapsed < 5


def test_events_nobody_comes_for_are_ended_after_the_stall_time() -> None:
    """Pending messages of a session with no open stream are dropped and its events ended once the stall
    time has passed; a session whose stream is open is left alone."""
    from types import SimpleNamespace

    from pixelrefer.serve.streams import Orphans

    cleaned = []

    async def clean_events(*, session_hash=None, event_id=None):
        cleaned.append(session_hash)

    queue = SimpleNamespace(
        pending_messages_per_session={"gone": [1, 2], "reading": [3]}, clean_events=clean_events
    )
    orphans = Orphans(stall_s=0.05)
    orphans.opened("reading")

    async def run() -> list[int]:
        first = await orphans.sweep(queue)
        await asyncio.sleep(0.1)
        orphans._next = 0.0  # the sweep runs at most once a second; the test does not wait for that
        return [first, await orphans.sweep(queue)]

    assert asyncio.run(run()) == [0, 1]
    assert cleaned == ["gone"] and list(queue.pending_messages_per_session) == ["reading"]


def test_an_upload_carries_at_most_the_files_per_request(http: httpx.Client) -> None:
    one = http.post("gradio_api/upload", files=[("files", ("a.txt", b"a"))])
    assert one.status_code == 200 and len(one.json()) == 1
    many = http.post("gradio_api/upload", files=[("files", (f"{k}.txt", b"x" * 10)) for k in range(5)])
    assert many.status_code == 413 and "at most 4 files per request" in many.json()["error"]
    assert (
        http.post("gradio_api/upload", content=b"x", headers={"content-type": "text/plain"}).status_code
        == 400
    )


def test_no_ffmpeg_runs_on_an_upload_without_its_demuxer_forced(preview_app: PreviewApp) -> None:
    """Gradio runs ffmpeg/ffprobe when it preprocesses Video and Audio inputs (and on the closed recording
    route); no event of this page takes one. The app's own reader is the only code that starts ffmpeg on an
    upload, and every command it builds opens the file through `_input` (forced demuxer, `file` protocol
    only, no MOV references); the overlay writer reads raw frames from a pipe."""
    import re

    from .conftest import REPO

    inputs = {type(block).__name__ for fn in preview_app.demo.fns.values() for block in fn.inputs}
    assert not inputs & {"Video", "Audio", "Model3D"}, inputs
    runs_ffmpeg = [
        path.relative_to(REPO).as_posix()
        for path in [*REPO.joinpath("pixelrefer").rglob("*.py"), REPO / "app.py"]
        if re.search(r"FFMPEG_BINARY|get_ffmpeg_exe|[\"']ffmpeg[\"']|FFmpeg\(", path.read_text())
    ]
    assert runs_ffmpeg == ["pixelrefer/media/video.py"]
    source = REPO.joinpath("pixelrefer/media/video.py").read_text()
    commands = re.findall(r"command = \[FFMPEG_BINARY[^\n]*", source)
    assert len(commands) == 3 and all("*_input(" in command for command in commands), commands
    assert (
        '["-protocol_whitelist", "file", "-f", demuxer, *options, "-i", f"file:{path.resolve()}"]' in source
    )


def test_waiting_caps_count_per_visitor_and_per_client() -> None:
    """Plain-HTTP calls (no session yet) share no visitor cap with each other; a session and a client each
    have their own."""
    from types import SimpleNamespace

    from pixelrefer.serve.clients import Full, Ledger

    ledger = Ledger(HttpLimits(), max_sessions=4, session_ttl_s=60)
    blocks = SimpleNamespace(_queue=SimpleNamespace(event_queue_per_concurrency_id={}))
    model = SimpleNamespace(concurrency_id="model")
    ledger.joining[("10.0.0.1", "model:")] = 2
    ledger.check_waiting(blocks, model, "", "10.0.0.2", "model")  # another client's call: admitted
    ledger.joining[("10.0.0.2", "model:s")] = 2
    with pytest.raises(Full, match="You already have 2 requests waiting for the model"):
        ledger.check_waiting(blocks, model, "s", "10.0.0.2", "model")
    ledger.check_waiting(blocks, model, "t", "10.0.0.2", "model")  # its other session: admitted
    ledger.joining[("10.0.0.1", "model:")] = 4
    with pytest.raises(Full, match="Your address already has 4 requests waiting for the model"):
        ledger.check_waiting(blocks, model, "", "10.0.0.1", "model")
