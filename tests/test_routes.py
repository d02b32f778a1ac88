"""Which HTTP routes reach the app's handlers, called by raw HTTP as an outsider would (no page, no client library).

Only the named API (/describe_region, /open, /add_object, /ask) may be called by name; every UI-only handler
is refused on `/run/<name>`, `/api/<name>`, `/call/<name>` and on a queue join without the page's trigger;
an unknown `fn_index` is a 4xx with the reason; what the page itself sends still runs. The API's values are
checked (type and range) before any handler runs, the model queue bound applies to model events only, and
Gradio's monitoring is off.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError

from pixelrefer.serve.webguard import MODEL_QUEUE, RouteGuard

from .app_media import write_mask_png, write_scene_image
from .conftest import PreviewApp

PUBLIC = {"describe_region", "open", "add_object", "ask"}


def ui_handlers(preview_app: PreviewApp) -> dict[str, int]:
    """Every event of the page that is not part of the API: its name and `fn_index`."""
    return {
        fn.api_name: index
        for index, fn in preview_app.demo.fns.items()
        if fn.api_name and fn.api_name not in PUBLIC and fn.fn is not None
    }


def page_trigger(preview_app: PreviewApp, name: str) -> tuple[int, int]:
    """(fn_index, trigger_id) of a UI event as the page sends it: the component that fires it."""
    index = ui_handlers(preview_app)[name]
    (component, _event), *_ = preview_app.demo.fns[index].targets
    return index, component


@pytest.fixture(scope="module")
def http(preview_app: PreviewApp):
    with httpx.Client(base_url=f"{preview_app.url}gradio_api/", timeout=30) as client:
        yield client


def test_the_page_has_the_ui_handlers_the_issue_names(preview_app: PreviewApp) -> None:
    names = set(ui_handlers(preview_app))
    assert {"on_load_model", "on_track", "on_export", "picker_update"} <= names
    assert "on_example" in names, "the example loader"
    assert len(names) >= 20


@pytest.mark.parametrize("route", ["run/{}", "api/{}", "call/{}", "call/v2/{}"])
def test_no_ui_handler_is_callable_by_name(preview_app: PreviewApp, http: httpx.Client, route: str) -> None:
    """Each UI-only handler, called by name with data it would accept, is refused before it runs."""
    for name in ui_handlers(preview_app):
        body = {} if route.startswith("call/v2") else {"data": [None, "Masks (PNG zip)"]}
        response = http.post(route.format(name), json=body)
        assert response.status_code == 404, (name, response.status_code, response.text)
        message = response.json()["detail"]
        assert f"/{name} is not an API endpoint" in message and "/describe_region" in message


def test_no_ui_handler_is_joinable_by_fn_index_without_the_page(
    preview_app: PreviewApp, http: httpx.Client
) -> None:
    for name, index in ui_handlers(preview_app).items():
        fn = preview_app.demo.fns[index]
        root = fn
        while root.trigger_after is not None:
            root = preview_app.demo.fns[root.trigger_after]
        if any(event == "load" for _, event in root.targets):
            continue  # fired by the page as it loads (or right after), with no trigger
        body = {"data": [None] * len(fn.inputs), "fn_index": index, "session_hash": "outsider"}
        response = http.post("queue/join", json=body)
        assert response.status_code == 403, (name, response.text)
        assert "belongs to the page" in response.json()["detail"]
        # A trigger that is not the event's own is no better.
        response = http.post("queue/join", json={**body, "trigger_id": 10**6})
        assert response.status_code == 403, (name, response.text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": [], "session_hash": "x"}, "fn_index must be an integer"),
        ({"data": [], "fn_index": "3", "session_hash": "x"}, "fn_index must be an integer"),
        ({"data": [], "fn_index": 99999, "session_hash": "x"}, "no event with fn_index 99999"),
        ({"data": [], "fn_index": -1, "session_hash": "x"}, "no event with fn_index -1"),
    ],
)
def test_a_bad_fn_index_is_a_4xx_with_the_reason(http: httpx.Client, body: dict, message: str) -> None:
    response = http.post("queue/join", json=body)
    assert response.status_code == 400 and message in response.json()["detail"]


def test_a_body_that_is_not_json_is_refused_with_a_message(http: httpx.Client) -> None:
    response = http.post("queue/join", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["detail"]


def stream_events(http: httpx.Client, session_hash: str) -> list[dict]:
    events = http.get("queue/data", params={"session_hash": session_hash}).text
    return [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]


def completed_events(http: httpx.Client, session_hash: str) -> list[dict]:
    return [event for event in stream_events(http, session_hash) if event["msg"] == "process_completed"]


def test_what_the_page_sends_still_runs(preview_app: PreviewApp, http: httpx.Client) -> None:
    """A UI event with its own trigger is accepted and runs; the page's unqueued Stop goes through
    `/run/predict` with its fn_index, which is no way around the guard for a queued UI event."""
    client = Client(preview_app.url, verbose=False, download_files=False)
    session = client.session_hash
    try:
        index, trigger = page_trigger(preview_app, "on_relate")
        body = {"data": [""], "fn_index": index, "trigger_id": trigger, "session_hash": session}
        joined = http.post("queue/join", json=body)
        assert joined.status_code == 200, joined.text
        events = stream_events(http, session)
        (completed,) = [event for event in events if event["msg"] == "process_completed"]
        # It ran: with no objects marked, the page's handler answers with its toast and changes nothing.
        assert completed["success"] and completed["output"]["data"] == [{"__type__": "update"}]
        assert any(event.get("log") == "Mark two objects first." for event in events if event["msg"] == "log")
        stop, stop_trigger = page_trigger(preview_app, "on_stop")
        body = {"data": [None], "fn_index": stop, "trigger_id": stop_trigger, "session_hash": session}
        stopped = http.post("run/predict", json=body)
        assert stopped.status_code == 200, stopped.text
        refused = http.post("run/predict", json={"data": [""], "fn_index": index, "trigger_id": trigger})
        assert refused.status_code == 404
    finally:
        client.close()


def test_a_visitor_cannot_switch_the_model(preview_app: PreviewApp) -> None:
    served, generation = preview_app.service.model, preview_app.service.generation
    with pytest.raises(Exception, match="Switching the model is disabled on this server"):
        preview_app.page.events.on_load_model(next(iter(preview_app.service.choices())).source)
    assert preview_app.service.model is served and preview_app.service.generation == generation


def test_monitoring_is_off(preview_app: PreviewApp) -> None:
    for path in ("monitoring", "monitoring/summary", "monitoring/abc"):
        response = httpx.get(f"{preview_app.url}{path}")
        assert response.status_code in (403, 404), path
        assert "cached_event_analytics" not in response.text and "process_time" not in response.text


# ---------------------------------------------------------------------- the API's values


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("routes-media")
    image = write_scene_image(folder)
    return image, write_mask_png(image.disc, folder / "disc.png")


@pytest.mark.parametrize(
    ("tokens", "seed", "message"),
    [
        (4, 2**64, "seed must be between 0 and 9,223,372,036,854,775,807, got 18,446,744,073,709,551,616"),
        (4, -1, "seed must be between 0 and"),
        (4, 1.5, "seed must be a whole number, got 1.5"),
        ("many", 1, "max_new_tokens must be a number, got text"),
        (0, 1, "max_new_tokens must be between 1 and"),
        (10**9, 1, "max_new_tokens must be between 1 and 4,096, got 1,000,000,000"),
    ],
)
def test_numbers_are_checked_with_their_ranges(
    preview_app: PreviewApp, scene, tokens: object, seed: object, message: str
) -> None:
    image, mask = scene
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
            client.predict(
                handle_file(image.path), handle_file(mask), tokens, seed, api_name="/describe_region"
            )
    finally:
        client.close()


def test_wrong_types_are_named(http: httpx.Client) -> None:
    cases = [
        ("ask", [7, 4, 1], "question must be text, got int"),
        ("add_object", ["mask.png", 0], "mask must be a file"),
        ("open", [{"url": "http://example.com/a.png"}, None], "image must name an uploaded file"),
        (
            "open",
            [{"path": "https://example.com/a.png"}, None],
            "image must be a file uploaded to this server",
        ),
        ("add_object", [None, [1]], "frame must be a number, got a list"),
    ]
    for api, data, message in cases:
        response = http.post(f"call/{api}", json={"data": data})
        assert response.status_code == 422, (api, response.text)
        assert message in response.json()["error"], (api, response.text)


# ---------------------------------------------------------------------- the model queue bound


def fake_app(waiting: dict[str, int], fns: dict[int, SimpleNamespace]) -> SimpleNamespace:
    """A Gradio app as the guard reads it: its events, and `waiting` events per queue from other clients."""
    others = [
        SimpleNamespace(
            session_hash=f"other-{i}", request=SimpleNamespace(scope={"client": (f"10.0.0.{i}", 1)})
        )
        for i in range(max(waiting.values(), default=0))
    ]
    queues = {cid: SimpleNamespace(queue=others[:n]) for cid, n in waiting.items()}
    holder = SimpleNamespace(session_data={}, time_last_used={}, capacity=1024, lock=threading.Lock())
    blocks = SimpleNamespace(
        fns=fns,
        _id=0,
        blocks={},
        state_holder=holder,
        _queue=SimpleNamespace(event_queue_per_concurrency_id=queues, active_jobs=[]),
    )
    return SimpleNamespace(get_blocks=lambda: blocks)


def event(concurrency_id: str, name: str, visibility: str = "public") -> SimpleNamespace:
    def handler(image=None, video=None):
        return image, video

    return SimpleNamespace(
        fn=handler, api_name=name, api_visibility=visibility, concurrency_id=concurrency_id, queue=True,
        targets=[(5, "click")], trigger_after=None, inputs=[],
    )  # fmt: skip


def join(guard: RouteGuard, app: SimpleNamespace, body: dict) -> tuple[int, dict]:
    """One POST /gradio_api/queue/join through the guard: the status it answers and its JSON (or the app's)."""
    sent: list[dict] = []
    payload = json.dumps(body).encode()

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        sent.append(message)

    async def run():
        scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "app": app}
        await guard(scope, receive, send)

    asyncio.run(run())
    if not sent:
        return 200, {}
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_only_model_events_are_told_the_queue_is_full() -> None:
    passed = []

    async def downstream(scope, receive, send):
        passed.append((await receive())["body"])

    guard = RouteGuard(downstream, model_queue=3)
    fns = {0: event(MODEL_QUEUE, "ask"), 1: event("open-queue", "open")}
    busy = fake_app({MODEL_QUEUE: 3, "open-queue": 0}, fns)
    status, body = join(guard, busy, {"fn_index": 0, "data": [], "session_hash": "a"})
    assert status == 503 and "Queue is full: 3 answers are waiting" in body["detail"]
    # A visitor who opens media is let through however many answers wait, and gets its body intact.
    status, _ = join(guard, busy, {"fn_index": 1, "data": [], "session_hash": "b"})
    assert status == 200 and json.loads(passed[-1])["session_hash"] == "b"
    status, _ = join(guard, fake_app({MODEL_QUEUE: 2}, fns), {"fn_index": 0, "data": [], "session_hash": "c"})
    assert status == 200
