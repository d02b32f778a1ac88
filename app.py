"""PixelRefer region chat: mark objects in an image or a clip, then talk about them.

The page and its wiring only. What each event does is in `pixelrefer.serve.handlers` (one `Workspace` per
visitor, one `Service` shared), what it shows in `pixelrefer.serve.views` and `pixelrefer.serve.render`,
the error rule in `pixelrefer.serve.policy`, the named API in `pixelrefer.serve.named_api`.

    python app.py [--model SOURCE] [--quantization none|8bit|4bit] [--dtype ...] [--device ...]
                  [--sam2 tiny|small|base-plus|large|FOLDER] [--host H] [--port N]

Each flag can also be set as PIXELREFER_<FLAG> (e.g. PIXELREFER_MODEL) for a Space. Importing this module
builds nothing: `main()` reads the flags, starts the `Service` and passes it to `build`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402

from pixelrefer.serve import render  # noqa: E402
from pixelrefer.serve.brush import painter  # noqa: E402
from pixelrefer.serve.examples import Example, load_examples, thumbnail  # noqa: E402
from pixelrefer.serve.handlers import EXPORTS, TOOLS, PageEvents  # noqa: E402
from pixelrefer.serve.named_api import add_named_api  # noqa: E402
from pixelrefer.serve.policy import Policy  # noqa: E402
from pixelrefer.serve.servedfiles import cache_schedule  # noqa: E402
from pixelrefer.serve.service import AppSettings, Service  # noqa: E402
from pixelrefer.serve.views import Views  # noqa: E402
from pixelrefer.serve.visits import Visitors  # noqa: E402
from pixelrefer.serve.webguard import MODEL_QUEUE, guard_middleware, watch_headers  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
ASSETS = HERE / "assets"
CREDITS = (
    "Model: **PixelRefer** (Yuan et al., *PixelRefer: A Unified Framework for Spatio-Temporal Object "
    "Referring with Arbitrary Granularity*, [arXiv 2510.23603](https://arxiv.org/abs/2510.23603)); official "
    "code [alibaba-damo-academy/PixelRefer](https://github.com/alibaba-damo-academy/PixelRefer) (Apache-2.0). "
    "Masks: SAM 2.1 (Meta) through transformers."
)
SCROLL_TO_CANVAS = "() => document.querySelector('#canvas-col').scrollIntoView({block: 'start'})"
PAGE_ONLY = {"api_visibility": "private"}
"""Every page event: only the named API may be called by name (`RouteGuard` refuses the rest)."""


@dataclass(frozen=True)
class Page:
    """A built page: the Blocks to launch, its components by name, its handlers and its examples."""

    demo: gr.Blocks
    ui: SimpleNamespace
    events: PageEvents
    examples: tuple[Example, ...]


# ---------------------------------------------------------------------- panels


def header(service: Service, ui: SimpleNamespace) -> None:
    """The title, and the banner (the offline preview, a model that could not load) as a one-line notice."""
    gr.Markdown(
        "# PixelRefer region chat <small>· mark objects in a photo or a short clip, then ask about them</small>",
        elem_id="title",
    )
    title, shown = render.banner_title(service.banner), bool(service.banner)
    with gr.Accordion(title, open=False, visible=shown, elem_id="banner") as ui.banner_box:
        ui.banner = gr.Markdown(service.banner, elem_id="banner-text")


def canvas_panel(settings: AppSettings, examples: Sequence[Example], ui: SimpleNamespace) -> None:
    """The one picture: uploaded onto, clicked and boxed on, painted on in the same place. The picture is
    sent back after every click, as JPEG: a 1600x1200 one encodes in ~10 ms, against ~250 ms as WebP."""
    ui.canvas = gr.Image(
        label="Picture: drop an image here, then click on objects", type="numpy", image_mode="RGB",
        sources=["upload", "clipboard"], interactive=True, height=440, elem_id="canvas", format="jpeg",
        placeholder="Drop an image here or click to upload. Or open a clip, or pick an example.",
    )  # fmt: skip
    # The picture is sent back as JPEG, as the canvas is (WebP costs 0.15-0.3 s per brush action); the strokes
    # the browser sends are PNG layers with their alpha whatever this says.
    ui.painter = painter(
        settings.media, label="Paint over the object", type="numpy", visible=False, sources=[], layers=False,
        height=440, transforms=[], brush=gr.Brush(colors=["#ff00ff"], default_size=12, color_mode="fixed"),
        elem_id="painter", format="jpeg",
    )  # fmt: skip
    marking_tools(ui)
    clip_timeline(ui)
    examples_strip(examples, ui)
    clip_opener(settings, ui)


def marking_tools(ui: SimpleNamespace) -> None:
    """The tools under the picture, the brush's own row, and the status line."""
    with gr.Row(elem_id="tools"):
        ui.tool = gr.Radio(list(TOOLS), value="Object (click)", label="Mark with", scale=4, elem_id="tool")
        with gr.Column(scale=1, min_width=130, elem_id="tool-buttons"):
            ui.keep = gr.Button("Keep object", variant="primary", size="sm")
            ui.clear_marks = gr.Button("Clear marks", size="sm")
    with gr.Row(visible=False) as ui.brush_row:
        ui.as_mask = gr.Checkbox(label="Use my strokes as the mask (no model)")
        ui.apply_brush = gr.Button("Segment from strokes", size="sm")
    ui.mark_info = gr.Markdown(elem_id="mark-info")


def clip_timeline(ui: SimpleNamespace) -> None:
    """The clip timeline (frame, Track, Cancel) under the tools, shown for clips only (the tracked preview
    is beside the canvas, `objects_panel`)."""
    with gr.Group(visible=False, elem_id="clip-bar") as ui.clip_bar:
        ui.frame = gr.Slider(label="Frame (sampled)", minimum=0, maximum=1, step=1, value=0, elem_id="frame")
        with gr.Row():
            ui.track = gr.Button("Track objects through the clip", variant="primary", size="sm")
            ui.cancel = gr.Button("Cancel tracking", size="sm")


def clip_opener(settings: AppSettings, ui: SimpleNamespace) -> None:
    """A small "Open a clip" button with the clip limits beside it."""
    with gr.Row(equal_height=True, elem_id="clip-open"):
        ui.open_clip = gr.UploadButton(
            "Open a clip", file_types=["video"], type="filepath", size="sm", scale=0, min_width=110,
            elem_id="open-clip",
        )  # fmt: skip
        gr.Markdown(f"Clips: {settings.media.describe()}", elem_id="clip-limits")


def examples_strip(examples: Sequence[Example], ui: SimpleNamespace) -> None:
    """The examples as one row of small pictures right under the canvas, reachable from the first screen on
    a phone too; clips are marked as clips, and the names are shown whole."""
    shown = bool(examples)
    gr.Markdown(
        "**Examples**: tap one to load its picture or clip, its objects and a question.",
        elem_id="examples-title", visible=shown,
    )  # fmt: skip
    ui.examples = gr.Gallery(
        [(thumbnail(e), ("▶ clip: " if e.kind == "video" else "") + e.name) for e in examples],
        show_label=False, label="Examples", columns=len(examples) or 1, rows=1, height=118,
        object_fit="cover", allow_preview=False, interactive=False, elem_id="examples", visible=shown,
    )  # fmt: skip


def objects_panel(ui: SimpleNamespace) -> None:
    """The tracked preview of a clip (beside the canvas on a desktop, above the fold), the objects (colour,
    tag, name) and their actions."""
    ui.overlay = gr.Video(
        label="Tracked preview (the sampled frames)", interactive=False, height=220, visible=False,
        elem_id="overlay",
    )  # fmt: skip
    ui.chips = gr.HTML(render.chips(None), elem_id="objects")
    ui.picked = gr.Radio(
        render.object_choices(None), value=render.NEW_OBJECT, label="Object", elem_id="object-picker",
        info="Pick one to re-mark it (new marks, then Keep), rename, delete or describe it.",
    )  # fmt: skip
    ui.name = gr.Textbox(label="Name (optional)", placeholder="e.g. red cup", max_lines=1, elem_id="name")
    with gr.Row():
        ui.rename = gr.Button("Rename", size="sm", min_width=60)
        ui.insert = gr.Button("Insert tag", size="sm", min_width=60)
        ui.delete = gr.Button("Delete", size="sm", min_width=60)


def chat_panel(settings: AppSettings, ui: SimpleNamespace) -> None:
    """The conversation, its quick actions, generation settings and exports."""
    ui.chatbot = gr.Chatbot(label="Chat", height=380, elem_id="chat")
    ui.question = gr.Textbox(
        label="Question", placeholder="What is <object1> doing?", info=settings.chat.describe(), lines=1,
        max_lines=4, elem_id="question",
    )  # fmt: skip
    with gr.Row():
        ui.send = gr.Button("Send", variant="primary", size="sm", min_width=70)
        ui.stop = gr.Button("Stop", size="sm", min_width=70)
        ui.regenerate = gr.Button("Regenerate", size="sm", min_width=70)
        ui.clear_chat = gr.Button("Clear chat", size="sm", min_width=70)
    with gr.Row():
        ui.describe = gr.Button("Describe", size="sm", visible=False, elem_id="describe")
        ui.relate = gr.Button("Relate", size="sm", visible=False, elem_id="relate")
    generation_panel(settings, ui)
    with gr.Accordion("Export", open=False, elem_id="export-panel"):
        ui.export_what = gr.Radio(list(EXPORTS), value=EXPORTS[0], label="What")
        ui.export = gr.Button("Export", size="sm")
        ui.exported = gr.File(label="Download", elem_id="download")


def generation_panel(settings: AppSettings, ui: SimpleNamespace) -> None:
    """How answers are decoded (`pixelrefer.serve.flags.generation_settings` reads these). Open from the start:
    Gradio mounts a closed accordion's fields when it is first opened and then sets them once more to their
    first values, which undid a value typed in that moment."""
    with gr.Accordion("Generation settings", open=True, elem_id="generation-settings"):
        ui.max_tokens = gr.Slider(
            1,
            settings.max_new_tokens,
            value=min(256, settings.max_new_tokens),
            step=1,
            label="Max new tokens",
        )
        ui.sample = gr.Checkbox(label="Sample (otherwise greedy)")
        ui.temperature = gr.Slider(0.05, 2.0, value=0.2, label="Temperature", interactive=False)
        ui.top_p = gr.Slider(0.05, 1.0, value=0.9, label="Top-p", interactive=False)
        ui.seed = gr.Number(value=1234, precision=0, label="Seed")


def model_panel(service: Service, ui: SimpleNamespace) -> None:
    """What is served; the checkpoint picker only when the operator allows switching."""
    switchable = {"visible": service.settings.allow_model_switch}  # the operator's choice
    with gr.Accordion("Model", open=False, elem_id="model-panel"):
        ui.status = gr.Markdown(render.status_markdown(service), elem_id="model-status")
        ui.picker = gr.Dropdown(
            label="Checkpoint (only those that fit this machine)", choices=[], **switchable
        )
        ui.load_model = gr.Button("Load", **switchable)
        ui.model_seen = gr.State(service.generation)
        ui.model_tick = gr.Timer(10, active=service.settings.allow_model_switch)
    gr.Markdown(CREDITS)


def layout(service: Service, examples: Sequence[Example], visitors: Visitors) -> SimpleNamespace:
    """The whole page, its components by name: canvas | objects | chat, top to bottom on a phone."""
    settings = service.settings
    ui = SimpleNamespace()
    # The workspace is the token's (`pixelrefer.serve.visits`): a reload finds it again.
    ui.state = gr.State(None, delete_callback=visitors.release, time_to_live=settings.session_ttl_s)
    ui.token = gr.BrowserState("", storage_key="pixelrefer-visit")
    header(service, ui)
    with gr.Row(equal_height=False, elem_id="page"):
        with gr.Column(scale=5, min_width=340, elem_id="canvas-col"):
            canvas_panel(settings, examples, ui)
        with gr.Column(scale=2, min_width=250, elem_id="objects-col"):
            objects_panel(ui)
        with gr.Column(scale=4, min_width=340, elem_id="chat-col"):
            chat_panel(settings, ui)
            model_panel(service, ui)
    return ui


# ---------------------------------------------------------------------- wiring


def on(triggers: Sequence, fn: Callable, inputs: list | None, outputs: list | None, **options):
    """A page event (private, see `PAGE_ONLY`) fired by any of `triggers`."""
    return gr.on(triggers, fn, inputs, outputs, **PAGE_ONLY, **options)


# Progress never covers the picture being marked: Gradio's pending overlay is opaque and takes the clicks,
# so a click right after another (or right after the picture arrived) would be lost and the click point
# hidden. Marking shows its progress in the status line; only new media covers the canvas.
def status_line(ui: SimpleNamespace) -> dict:
    return {"show_progress_on": [ui.mark_info]}


def wire_page_load(demo: gr.Blocks, ui: SimpleNamespace, views: Views, events: PageEvents) -> None:
    """A page load (a new tab or a reload) shows the work the browser's token names, then the brush if
    that is the tool."""
    on([demo.load], events.on_page_load, [ui.token], views.restored, show_progress="hidden").then(
        events.on_tool, [ui.state, ui.tool], views.painting, show_progress="hidden", **PAGE_ONLY
    )


def wire_media(ui: SimpleNamespace, views: Views, events: PageEvents) -> None:
    """New media (an upload, a clip, an example, a seek), each followed by the brush, which shows the picture."""
    loading = {"show_progress_on": [ui.canvas, ui.mark_info]}
    brush = ([ui.state, ui.tool], views.painting)
    # The upload skips Gradio's decoding so that the library checks the file (and names what is wrong).
    opened = [
        on(
            [ui.canvas.upload],
            events.on_upload,
            [ui.state, ui.canvas],
            views.media,
            preprocess=False,
            **loading,
        ),
        on([ui.open_clip.upload], events.on_open_clip, [ui.state, ui.open_clip], views.media, **loading),
        on([ui.frame.release], events.on_seek, [ui.state, ui.frame], views.marked, **status_line(ui)),
        on([ui.examples.select], events.on_example, [ui.state], [*views.media, ui.question], **loading),
    ]
    for event in opened:
        event.then(events.on_tool, *brush, show_progress="hidden", **PAGE_ONLY)
    # An example tapped at the foot of a phone's screen: the page moves to its picture.
    opened[-1].then(None, js=SCROLL_TO_CANVAS, **PAGE_ONLY)
    on([ui.canvas.clear], events.on_clear_canvas, [ui.state], views.media)


def wire_marking(ui: SimpleNamespace, views: Views, events: PageEvents) -> None:
    """Clicks, strokes, Keep, the object list's actions and tracking."""
    marked, shown = views.marked, status_line(ui)
    segmenting = {**shown, "concurrency_id": "segmenter"}
    on([ui.canvas.select], events.on_click, [ui.state, ui.tool], marked, **segmenting)
    on([ui.tool.change], events.on_tool, [ui.state, ui.tool], views.painting, show_progress="hidden")
    on(
        [ui.apply_brush.click],
        events.on_brush,
        [ui.state, ui.painter, ui.as_mask],
        [*marked, ui.painter],
        **segmenting,
    )
    on([ui.keep.click], events.on_keep, [ui.state, ui.name, ui.tool], [*marked, ui.name, ui.painter], **shown)
    on([ui.clear_marks.click], events.on_clear_marks, [ui.state, ui.tool], [*marked, ui.painter], **shown)
    on([ui.picked.input], events.on_select_object, [ui.state, ui.picked], marked, **shown)
    on([ui.delete.click], events.on_delete, [ui.state, ui.picked], [*marked, ui.chatbot], **shown)
    on([ui.rename.click], events.on_rename, [ui.state, ui.picked, ui.name], [*marked, ui.name], **shown)
    on([ui.insert.click], events.on_insert_tag, [ui.question, ui.picked], [ui.question])
    on([ui.track.click], events.on_track, [ui.state], [*marked, ui.overlay], **segmenting)
    on([ui.cancel.click], events.on_cancel, [ui.state], [ui.mark_info], queue=False)


def wire_chat(ui: SimpleNamespace, views: Views, events: PageEvents, model: dict) -> None:
    """Questions and quick actions (on the model queue), stop, clear, sampling and exports."""
    generation = [ui.max_tokens, ui.sample, ui.temperature, ui.top_p, ui.seed]
    # While an answer waits or streams only the chat shows it: the question box stays free for the next one.
    answering = {**model, "show_progress_on": [ui.chatbot]}
    on(
        [ui.send.click, ui.question.submit],
        events.on_send,
        [ui.state, ui.question, *generation],
        views.chat,
        **answering,
    )
    on([ui.describe.click], events.on_describe, [ui.state, ui.picked, *generation], views.chat, **answering)
    on([ui.regenerate.click], events.on_regenerate, [ui.state, *generation], views.chat, **answering)
    on([ui.relate.click], events.on_relate, [ui.state], [ui.question])
    on([ui.stop.click], events.on_stop, [ui.state], None, queue=False)
    on([ui.clear_chat.click, ui.chatbot.clear], events.on_clear_chat, [ui.state], [ui.state, ui.chatbot])
    on([ui.sample.change], events.on_sample, [ui.sample], [ui.temperature, ui.top_p])
    on([ui.export.click], events.on_export, [ui.state, ui.export_what], [ui.exported])


def wire_settings(ui: SimpleNamespace, events: PageEvents) -> None:
    """The marking tool and generation settings are kept with the work as they change (no model, nothing
    shown), so that a reload shows them again."""
    kept = [ui.tool, ui.max_tokens, ui.sample, ui.temperature, ui.top_p, ui.seed]
    on([c.change for c in kept], events.on_settings, [ui.state, *kept], None, show_progress="hidden")


def wire_model(demo: gr.Blocks, ui: SimpleNamespace, events: PageEvents, model: dict) -> None:
    """The model panel and the banner: switching (when allowed) and following another visitor's switch."""
    shown = [ui.status, ui.banner, ui.model_seen]
    on([ui.banner.change], events.on_banner, [ui.banner], [ui.banner_box])
    on([ui.load_model.click], events.on_load_model, [ui.picker], shown, **model)
    on([ui.model_tick.tick], events.on_model_tick, [ui.model_seen], shown)
    on([demo.load], events.picker_update, None, [ui.picker])


def build_page(service: Service) -> Page:
    """The page for a started `service`: components, handlers, wiring and the named API."""
    settings = service.settings
    examples = tuple(load_examples(EXAMPLES)) if (EXAMPLES / "examples.json").exists() else ()
    model = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": service.model_concurrency}
    policy = Policy(service)
    visitors = Visitors(settings.session_ttl_s)
    with gr.Blocks(title="PixelRefer region chat", fill_width=True) as demo:
        ui = layout(service, examples, visitors)
        views = Views(ui, visitors)
        events = PageEvents(service, policy, views, examples, visitors)
        wire_page_load(demo, ui, views, events)
        wire_media(ui, views, events)
        wire_marking(ui, views, events)
        wire_chat(ui, views, events, model)
        wire_settings(ui, events)
        wire_model(demo, ui, events, model)
        add_named_api(service, policy, ui.state)
    visitors.serve(demo, ui.state._id)
    demo.delete_cache = cache_schedule(settings.session_ttl_s)  # uploads and downloads of ended sessions
    # The model queue's bound (`queue_size`) is applied to model events only, by `RouteGuard`; Gradio's own
    # bound counts every event, so it is only the backstop against a flood of cheap ones.
    demo.queue(
        max_size=max(4 * settings.queue_size, 2 * settings.max_sessions),
        default_concurrency_limit=settings.concurrency,
    )
    return Page(demo, ui, events, examples)


def build(service: Service) -> gr.Blocks:
    """The page's Blocks, ready to launch with `launch_options`."""
    return build_page(service).demo


# ---------------------------------------------------------------------- start


def launch_options(settings: AppSettings) -> dict:
    """What `demo.launch` needs besides the host and port (the tests launch with the same): the route guard
    (only the named API by name, the model queue bound on model events), Gradio's dashboard only when the
    operator enables it, the page's styles and the script that draws a click on the canvas at once."""
    return {
        "allowed_paths": [str(EXAMPLES), str(ASSETS)],
        "max_file_size": f"{int(settings.media.max_upload_mb)}mb",
        # Gradio drops its oldest session beyond this, whatever it holds; the guard admits at most
        # `max_sessions` workspaces and prunes empty sessions first, so this is only the backstop.
        "state_session_capacity": 16 * settings.max_sessions,
        "css": (ASSETS / "app.css").read_text(encoding="utf-8"),
        "head": "".join(
            f"<script>{(ASSETS / name).read_text(encoding='utf-8')}</script>"
            for name in ("click_marker.js", "confirm_clear.js")
        ),
        "footer_links": ["api"],
        "enable_monitoring": settings.monitoring,
        "app_kwargs": {"middleware": guard_middleware(settings)},
    }


def main(argv: list[str] | None = None) -> None:
    """`python app.py [flags]`: the settings, the shared service, the page."""
    settings = AppSettings.parse(sys.argv[1:] if argv is None else argv)
    service = Service(settings).start()
    demo = build(service)
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        prevent_thread_lock=True,
        **launch_options(settings),
    )
    watch_headers(demo, settings)  # connections that never finish their headers are closed
    demo.block_thread()


if __name__ == "__main__":
    main()
