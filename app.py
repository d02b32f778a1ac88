"""PixelRefer region chat: mark objects in an image or a clip, then talk about them.

Wiring only: every event calls `pixelrefer.workspace.Workspace` (one per visitor) or
`pixelrefer.service.Service` (shared) and shows what comes back.

    python app.py [--model SOURCE] [--quantization none|8bit|4bit] [--dtype ...] [--device ...]
                  [--sam2 tiny|small|base-plus|large|FOLDER] [--host H] [--port N]

Each flag can also be set as PIXELREFER_<FLAG> (e.g. PIXELREFER_MODEL) for a Space.
"""

from __future__ import annotations

import functools
import html
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from pixelrefer.cancellation import on_cancel as stop_on_cancel  # noqa: E402
from pixelrefer.cancellation import stops_on_cancel  # noqa: E402
from pixelrefer.examples import Example, load_examples  # noqa: E402
from pixelrefer.generation import GenerationSettings  # noqa: E402
from pixelrefer.images import ImageError, check_image_file, load_image  # noqa: E402
from pixelrefer.limits import MediaRejected  # noqa: E402
from pixelrefer.masks import EmptyMaskError, to_bool_mask  # noqa: E402
from pixelrefer.redact import scrub  # noqa: E402
from pixelrefer.segment import PromptError, TrackingCancelled  # noqa: E402
from pixelrefer.servedfiles import cache_schedule, record_copy  # noqa: E402
from pixelrefer.service import AppSettings, Service  # noqa: E402
from pixelrefer.webguard import MODEL_QUEUE, RouteGuard  # noqa: E402
from pixelrefer.workspace import Workspace  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
ASSETS = HERE / "assets"
MAX_SEED = 2**63 - 1
"""The largest seed the random generators take."""
MAX_FRAME_INDEX = 10**7
"""Far beyond any clip's frame count; a larger index cannot name a frame, so it is refused as a number."""
EXPECTED = (ValueError, PromptError, MediaRejected, ImageError, EmptyMaskError, TrackingCancelled)
TOOLS = {
    "Object (click)": "positive",
    "Background (click)": "negative",
    "Box (2 clicks)": "box",
    "Brush": "brush",
}
CREDITS = (
    "Model: **PixelRefer** (Yuan et al., *PixelRefer: A Unified Framework for Spatio-Temporal Object "
    "Referring with Arbitrary Granularity*, [arXiv 2510.23603](https://arxiv.org/abs/2510.23603)); official "
    "code [alibaba-damo-academy/PixelRefer](https://github.com/alibaba-damo-academy/PixelRefer) (Apache-2.0). "
    "Masks: SAM 2.1 (Meta) through transformers."
)

try:  # A Gradio-SDK Space with ZeroGPU lends a GPU per call; elsewhere this is a no-op.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None


def gpu(duration: Callable[..., int]) -> Callable:
    """`spaces.GPU` with a duration computed from the request, when the `spaces` package is present."""

    def wrap(fn: Callable) -> Callable:
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn

    return wrap


def _frames(ws) -> int:
    return len(ws.clip) if isinstance(ws, Workspace) and ws.clip is not None else 1


def answer_duration(ws, question, max_new_tokens, *args) -> int:
    """GPU seconds for an answer; called with the event's arguments (`api_describe` passes image, mask)."""
    return int(min(300, 20 + 0.08 * int(max_new_tokens or 512) + 2 * _frames(ws)))


def regenerate_duration(ws, max_new_tokens, *args) -> int:
    return answer_duration(ws, None, max_new_tokens)


def track_duration(ws, *args) -> int:
    return int(min(300, 20 + 3 * _frames(ws)))


# ---------------------------------------------------------------------- rendering


def colour_tags(ws: Workspace | None, text: str) -> str:
    """Escape the text and show each `<objectK>` in its object's colour."""
    safe = html.escape(text)
    if ws is None or ws.session is None:
        return safe
    colours = {obj.id: ws.color_of(obj) for obj in ws.objects()}

    def paint(match: re.Match) -> str:
        colour = colours.get(int(match.group(1)))
        if colour is None:
            return match.group(0)
        return f'<span style="color:{colour};font-weight:700">&lt;object{match.group(1)}&gt;</span>'

    return re.sub(r"&lt;object(\d+)&gt;", paint, safe)


def chips(ws: Workspace | None) -> str:
    """The objects as coloured chips."""
    objects = ws.objects() if ws else []
    if not objects:
        return '<div class="chips">No objects yet: click on something in the picture, then <b>Keep object</b>.</div>'
    parts = []
    for obj in objects:
        name = f" {html.escape(obj.name)}" if obj.name else ""
        frames = "" if ws.kind == "image" else f" · {len(obj.masks)} frame(s)"
        parts.append(
            f'<span class="chip" style="border-color:{ws.color_of(obj)};color:{ws.color_of(obj)}">'
            f"&lt;object{obj.id}&gt;{name}{frames}</span>"
        )
    return '<div class="chips">' + " ".join(parts) + "</div>"


def history(ws: Workspace | None) -> list[dict]:
    """The chat as the Chatbot shows it."""
    if ws is None or ws.session is None:
        return []
    messages = []
    for exchange in ws.session.history:
        messages.append({"role": "user", "content": colour_tags(ws, exchange.question)})
        note = {"stopped": " *(stopped)*", "timeout": " *(stopped: time budget reached)*"}.get(
            exchange.finish_reason, ""
        )
        messages.append({"role": "assistant", "content": colour_tags(ws, exchange.answer) + note})
    return messages


def object_choices(ws: Workspace | None) -> list[tuple[str, int]]:
    return [(f"<object{o.id}>{' ' + o.name if o.name else ''}", o.id) for o in (ws.objects() if ws else [])]


def view(ws: Workspace | None, message: str = "") -> tuple:
    """Canvas, chips, object picker and the marking message: what most events refresh."""
    canvas = ws.canvas() if ws is not None and ws.kind != "none" else None
    choices = object_choices(ws)
    selected = ws.target if ws is not None and ws.target is not None else None
    # The message is Markdown: tags such as <object1> must show as text, not vanish as unknown HTML.
    message = message.replace("<", "&lt;").replace(">", "&gt;")
    return canvas, chips(ws), gr.update(choices=choices, value=selected), message


def settings_of(max_new_tokens, sample, temperature, top_p, seed) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(sample),
        temperature=float(temperature) if sample else None,
        top_p=float(top_p) if sample else None,
        seed=int(seed),
    )


# ---------------------------------------------------------------------- errors


def friendly(fn: Callable) -> Callable:
    """Expected problems become a message for the visitor; anything else a short apology. Nothing crashes."""

    def explain(exc: BaseException) -> gr.Error:
        if isinstance(exc, EXPECTED):
            return gr.Error(scrub(str(exc)), print_exception=False)
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            SERVICE.release_memory()
            return gr.Error(
                "The server ran out of memory for this request; try a smaller clip or fewer tokens."
            )
        return gr.Error(f"Something went wrong ({type(exc).__name__}); please try again.")

    if not inspect.isgeneratorfunction(inspect.unwrap(fn)):

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise explain(exc) from exc

        return plain

    @functools.wraps(fn)
    def streaming(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise explain(exc) from exc

    return streaming


def workspace(ws: Workspace | None) -> Workspace:
    """This visitor's workspace, created on first use and kept in sync with the served model."""
    if ws is None:
        ws = Workspace(SERVICE)
        ws.on_file = record_copy  # its downloads are deleted with the session
    if ws.sync_model():
        gr.Info(
            f"The model was switched to {SERVICE.display_name}: your objects are kept, the chat restarted."
        )
    return ws


def close_workspace(ws: Workspace | None) -> None:
    if ws is not None:
        ws.close()


# ---------------------------------------------------------------------- events: media


@friendly
def on_image(ws, image):
    if image is None:
        return (ws, *view(ws, ""))
    ws = workspace(ws)
    ws.open_image(image)
    return (ws, *view(ws, "Click on an object to mark it."))


@friendly
def on_video(ws, path):
    if not path:
        return (ws, *view(ws), gr.update(visible=False, maximum=1, value=0), None)
    ws = workspace(ws)
    notes = ws.open_video(path)
    message = " ".join(notes) or f"{len(ws.clip)} frames sampled. Pick a frame, mark objects, then Track."
    slider = gr.update(visible=True, minimum=0, maximum=max(1, len(ws.clip) - 1), value=0, step=1)
    return (ws, *view(ws, message), slider, None)


@friendly
def on_seek(ws, position):
    if ws is None or ws.clip is None:
        return (ws, *view(ws))
    ws.seek(int(position))
    return (ws, *view(ws, f"Frame {ws.frame_index} (t = {ws.clip.timestamps[ws.position]:.1f} s)."))


@friendly
def on_example(ws, name):
    example = EXAMPLE_BY_NAME[name]
    ws = workspace(ws)
    question = ws.open_example(example)
    slider = gr.update(visible=False)
    if ws.clip is not None:
        slider = gr.update(visible=True, minimum=0, maximum=max(1, len(ws.clip) - 1), value=0, step=1)
    overlay = str(ws.overlay_video()) if ws.clip is not None else None
    return (
        ws,
        *view(ws, f"Example “{example.name}” loaded with its objects."),
        question,
        slider,
        overlay,
        history(ws),
        None,  # the upload boxes: what they showed is no longer what is being marked
        None,
    )


# ---------------------------------------------------------------------- events: marking


@friendly
def on_click(ws, tool, evt: gr.SelectData):
    ws = workspace(ws)
    mode = TOOLS[tool]
    if mode == "brush":
        return (ws, *view(ws, "The brush works in the painting panel below; switch tool to click."))
    x, y = evt.index[0], evt.index[1]
    result = ws.click(x, y, mode)
    if result is None:
        message = (
            "Now click the opposite corner."
            if mode == "box"
            else "Background noted; add a click on the object."
        )
    elif result.empty:
        message = result.message
    else:
        message = f"Mask by {result.segmenter}. Add clicks to refine, then **Keep object**."
    return (ws, *view(ws, message))


class Painter(gr.ImageEditor):
    """The brush panel. An ImageEditor decodes every image the browser sends (each layer, the background,
    the composite) before any handler runs, so each is held to the upload limits from its header first:
    a small PNG declaring 13000x13000 pixels is refused unread."""

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        if file is not None:
            try:
                check_image_file(file.path if hasattr(file, "path") else bytes(file), SERVICE.settings.media)
            except ImageError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
        return super().convert_and_format_image(file, flatten_on_white)


def brush_layer(editor) -> np.ndarray | None:
    """The painted strokes of a `Painter` value as one bool mask (its layers were checked on arrival)."""
    if not editor or not editor.get("layers"):
        return None
    layers = [np.asarray(layer) for layer in editor["layers"] if layer is not None]
    if not layers:
        return None
    alpha = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        alpha |= to_bool_mask(layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer)
    return alpha


@friendly
def on_brush(ws, editor, as_mask):
    ws = workspace(ws)
    layer = brush_layer(editor)
    if layer is None or not layer.any():
        raise gr.Error("Paint over the object first.", print_exception=False)
    frame = ws.frame
    if layer.shape != frame.shape[:2]:
        import cv2

        layer = (
            cv2.resize(
                layer.astype(np.uint8), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST
            )
            > 0
        )
    result = ws.scribble(layer, as_mask=bool(as_mask))
    message = result.message if result.empty else f"Mask by {result.segmenter}. **Keep object** to add it."
    return (ws, *view(ws, message))


def on_tool(ws, tool):
    if TOOLS[tool] != "brush" or ws is None or ws.kind == "none":
        return gr.update(visible=False), gr.update(visible=False)
    return gr.update(
        visible=True, value={"background": ws.frame, "layers": [], "composite": ws.frame}
    ), gr.update(visible=True)


@friendly
def on_keep(ws, name):
    ws = workspace(ws)
    obj = ws.keep(name or "")
    note = " Track again to follow it through the clip." if ws.clip is not None else ""
    return (ws, *view(ws, f"Kept as {obj.tag}.{note}"), "")


@friendly
def on_clear_marks(ws):
    if ws is not None and ws.kind != "none":
        ws.clear_marks()
    return (ws, *view(ws, "Marks cleared."))


@friendly
def on_select_object(ws, object_id):
    if ws is None or ws.kind == "none":
        return (ws, *view(ws))
    ws.select(int(object_id) if object_id is not None else None)
    if object_id is None:
        return (ws, *view(ws, "New marks make a new object."))
    return (ws, *view(ws, f"New marks refine <object{object_id}> on this frame; **Keep object** to apply."))


@friendly
def on_delete(ws, object_id):
    if ws is None or object_id is None:
        raise gr.Error("Choose an object first.", print_exception=False)
    ws.delete(int(object_id))
    return (ws, *view(ws, f"<object{object_id}> deleted; the chat restarted."), history(ws))


@friendly
def on_rename(ws, object_id, name):
    if ws is None or object_id is None:
        raise gr.Error("Choose an object first.", print_exception=False)
    ws.rename(int(object_id), name or "")
    return (ws, *view(ws, "Renamed."))


def on_insert_tag(question, object_id):
    if object_id is None:
        return question
    spacer = "" if not question or question.endswith(" ") else " "
    return f"{question or ''}{spacer}<object{int(object_id)}>"


# ---------------------------------------------------------------------- events: clips


@stops_on_cancel
@friendly
@gpu(track_duration)
def on_track(ws, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
    if ws is None or ws.clip is None:
        raise gr.Error("Upload a clip first.", print_exception=False)
    stop_on_cancel(ws.cancel.set)
    ws.track(progress=lambda done, total: progress((done, total), desc="Tracking", unit="steps"))
    return (ws, *view(ws, "Tracked through every sampled frame."), str(ws.overlay_video()))


def on_cancel(ws):
    if ws is not None:
        ws.cancel.set()


# ---------------------------------------------------------------------- events: chat


def _stream(ws: Workspace, replies: Iterator, question: str) -> Iterator:
    messages = history(ws) + [
        {"role": "user", "content": colour_tags(ws, question)},
        {"role": "assistant", "content": ""},
    ]
    text = ""
    for reply in replies:
        text += reply.delta
        messages[-1]["content"] = colour_tags(ws, text)
        if reply.done:
            messages = history(ws)
        yield ws, messages, ""


@friendly
@gpu(answer_duration)
def on_send(ws, question, max_new_tokens, sample, temperature, top_p, seed):
    ws = workspace(ws)
    question = (question or "").strip()
    replies = ws.ask(question, settings_of(max_new_tokens, sample, temperature, top_p, seed))
    yield from _stream(ws, replies, question)


@friendly
@gpu(answer_duration)
def on_describe(ws, object_id, max_new_tokens, sample, temperature, top_p, seed):
    ws = workspace(ws)
    objects = ws.objects()
    if not objects:
        raise gr.Error("Mark an object first.", print_exception=False)
    target = int(object_id) if object_id is not None else objects[0].id
    replies = ws.describe(target, settings_of(max_new_tokens, sample, temperature, top_p, seed))
    yield from _stream(ws, replies, f"Describe <object{target}> in detail.")


def on_relate(question):
    return "How do <object1> and <object2> relate to each other?"


@friendly
@gpu(regenerate_duration)
def on_regenerate(ws, max_new_tokens, sample, temperature, top_p, seed):
    ws = workspace(ws)
    if not ws.session or not ws.session.history:
        raise gr.Error("There is no answer to regenerate yet.", print_exception=False)
    last = ws.session.history[-1]
    # Greedy decoding would repeat the same answer, and a fixed seed the same sample: always sample, with
    # the next seed after the one the last answer used.
    settings = settings_of(max_new_tokens, True, temperature, top_p, last.settings.seed + 1)
    yield from _stream(ws, ws.regenerate(settings), last.question)


def on_stop(ws):
    if ws is not None:
        ws.stop()


@friendly
def on_clear_chat(ws):
    if ws is not None and ws.session is not None:
        ws.session.clear()
    return ws, []


# ---------------------------------------------------------------------- events: export & model


@friendly
def on_export(ws, what):
    if ws is None or ws.session is None:
        raise gr.Error("Nothing to export yet.", print_exception=False)
    paths = {
        "Masks (PNG zip)": ws.export_masks_zip,
        "Masks (COCO RLE JSON)": ws.export_masks_json,
        "Transcript (Markdown)": lambda: ws.export_transcript("md"),
        "Transcript (JSON)": lambda: ws.export_transcript("json"),
        "Overlay clip (mp4)": ws.overlay_video,
    }
    return str(paths[what]())


def status_markdown() -> str:
    """What is served and what would fit; with switching off, that it is the operator who chooses."""
    status = dict(SERVICE.status())
    status["fits this machine"] = ", ".join(c.label for c in SERVICE.choices() if c.fits) or "none"
    if not SERVICE.settings.allow_model_switch:
        status["switching"] = "off: the model is chosen by whoever runs the app"
    rows = "\n".join(f"| {k} | {html.escape(v)} |" for k, v in status.items())
    return f"| | |\n|---|---|\n{rows}"


def picker_update():
    choices = [(c.label, c.source) for c in SERVICE.choices() if c.fits]
    return gr.update(
        choices=choices, value=SERVICE.requested if any(s == SERVICE.requested for _, s in choices) else None
    )


@friendly
def on_load_model(source):
    if not source:
        raise gr.Error("Choose a checkpoint.", print_exception=False)
    SERVICE.switch(source)
    return status_markdown(), SERVICE.banner, SERVICE.generation


def on_model_tick(seen):
    """Every page: the panel and banner again once another visitor (or the operator) switched the model."""
    if seen == SERVICE.generation:
        return gr.update(), gr.update(), seen
    return status_markdown(), SERVICE.banner, SERVICE.generation


# ---------------------------------------------------------------------- API (gradio_client)


@stops_on_cancel
@friendly
@gpu(answer_duration)
def api_describe(image, mask, max_new_tokens=256, seed=1234):
    """Describe the masked region of an image (stateless)."""
    ws = Workspace(SERVICE)
    stop_on_cancel(ws.stop)
    try:
        ws.open_image(image)
        obj = ws.session.add_object(ws.fit_mask(load_image(mask, limits=SERVICE.settings.media)))
        final = None
        for reply in ws.describe(
            obj.id, GenerationSettings(max_new_tokens=int(max_new_tokens), seed=int(seed))
        ):
            final = reply.exchange or final
        return final.answer
    finally:
        ws.close()


@friendly
def api_open(ws, image=None, video=None):
    """Start a chat about an image or a clip; returns a summary."""
    ws = workspace(ws)
    if image:
        ws.open_image(image)
    elif video:
        ws.open_video(video)
    else:
        raise ValueError("Give an image or a video")
    frames = [int(i) for i in ws.clip.indices] if ws.clip is not None else [0]
    return ws, json.dumps({"kind": ws.kind, "frames": frames, "notes": list(ws.notes)})


@friendly
def api_add_object(ws, mask, frame):
    """Add an object from a mask image on a frame (0 for an image); returns its tag."""
    if ws is None or ws.session is None:
        raise ValueError("Call /open first")
    frame_index = int(frame or 0)
    binary = ws.fit_mask(load_image(mask, limits=SERVICE.settings.media))
    obj = ws.session.add_object({frame_index: binary}, marked_frames=[frame_index])
    return ws, obj.tag


@stops_on_cancel
@friendly
@gpu(answer_duration)
def api_ask(ws, question, max_new_tokens=256, seed=1234):
    """Ask about the objects (multi-turn within one client session); returns the answer."""
    if ws is None or ws.session is None:
        raise ValueError("Call /open first")
    ws = workspace(ws)
    stop_on_cancel(ws.stop)
    final = None
    for reply in ws.ask(question, GenerationSettings(max_new_tokens=int(max_new_tokens), seed=int(seed))):
        final = reply.exchange or final
    return ws, final.answer


# ---------------------------------------------------------------------- layout


CSS = """
.chips {display:flex; flex-wrap:wrap; gap:6px; margin:4px 0;}
.chip {border:2px solid; border-radius:14px; padding:1px 9px; font-weight:700; font-family:monospace;}
"""


def build(service: Service) -> gr.Blocks:
    """The page."""
    settings = service.settings
    private = {"api_visibility": "private"}
    model_events = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": settings.concurrency}
    with gr.Blocks(title="PixelRefer region chat") as demo:
        state = gr.State(None, delete_callback=close_workspace, time_to_live=settings.session_ttl_s)
        gr.Markdown("# PixelRefer region chat\nMark objects in a photo or a short clip, then ask about them.")
        banner = gr.Markdown(service.banner, visible=True, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=6):
                with gr.Tabs():
                    with gr.Tab("Image"):
                        image_in = gr.Image(
                            label="Upload an image",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                            height=220,
                            elem_id="image-in",
                        )
                    with gr.Tab("Video"):
                        gr.Markdown(f"Clips: {settings.media.describe()}")
                        video_in = gr.Video(
                            label="Upload a clip", sources=["upload"], height=220, elem_id="video-in"
                        )
                        frame = gr.Slider(
                            label="Frame (sampled)",
                            minimum=0,
                            maximum=1,
                            step=1,
                            value=0,
                            visible=False,
                            elem_id="frame",
                        )
                        with gr.Row():
                            track = gr.Button("Track objects through the clip", variant="primary")
                            cancel = gr.Button("Cancel tracking")
                        overlay = gr.Video(
                            label="Tracked objects", interactive=False, height=240, elem_id="overlay"
                        )
                canvas = gr.Image(
                    label="Click to mark objects", type="numpy", interactive=False, elem_id="canvas"
                )
                tool = gr.Radio(list(TOOLS), value="Object (click)", label="Mark with")
                painter = Painter(
                    label="Paint over the object", type="numpy", visible=False, sources=[], layers=False,
                    transforms=[], brush=gr.Brush(colors=["#ff00ff"], default_size=12, color_mode="fixed"),
                )  # fmt: skip
                with gr.Row(visible=False) as brush_row:
                    as_mask = gr.Checkbox(label="Use my strokes as the mask (no model)")
                    apply_brush = gr.Button("Segment from strokes")
                mark_info = gr.Markdown(elem_id="mark-info")
                with gr.Row():
                    name = gr.Textbox(label="Name (optional)", scale=2)
                    keep = gr.Button("Keep object", variant="primary", scale=1)
                    clear_marks = gr.Button("Clear marks", scale=1)
                object_chips = gr.HTML(chips(None), elem_id="objects")
                with gr.Row():
                    picked = gr.Dropdown(
                        label="Object", choices=[], value=None, allow_custom_value=False, scale=2
                    )
                    insert = gr.Button("Insert tag", scale=1)
                    rename = gr.Button("Rename", scale=1)
                    delete = gr.Button("Delete", variant="stop", scale=1)
                if EXAMPLE_LIST:
                    gr.Markdown("**Examples**")
                    with gr.Row():
                        example_buttons = [gr.Button(e.name, size="sm") for e in EXAMPLE_LIST]
                else:
                    example_buttons = []
            with gr.Column(scale=5):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chat")
                question = gr.Textbox(
                    label="Question",
                    placeholder="What is <object1> doing?",
                    info=settings.chat.describe(),
                    elem_id="question",
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    stop = gr.Button("Stop")
                    regenerate = gr.Button("Regenerate")
                    clear_chat = gr.Button("Clear chat")
                with gr.Row():
                    describe = gr.Button("Describe the object in detail")
                    relate = gr.Button("How do <object1> and <object2> relate?")
                with gr.Accordion("Generation settings", open=False, elem_id="generation-settings"):
                    max_tokens = gr.Slider(
                        1,
                        settings.max_new_tokens,
                        value=min(256, settings.max_new_tokens),
                        step=1,
                        label="Max new tokens",
                    )
                    sample = gr.Checkbox(label="Sample (otherwise greedy)")
                    temperature = gr.Slider(0.05, 2.0, value=0.2, label="Temperature")
                    top_p = gr.Slider(0.05, 1.0, value=0.9, label="Top-p")
                    seed = gr.Number(value=1234, precision=0, label="Seed")
                with gr.Accordion("Export", open=False, elem_id="export-panel"):
                    export_what = gr.Radio(
                        ["Masks (PNG zip)", "Masks (COCO RLE JSON)", "Transcript (Markdown)", "Transcript (JSON)", "Overlay clip (mp4)"],
                        value="Masks (PNG zip)", label="What",
                    )  # fmt: skip
                    export = gr.Button("Export")
                    exported = gr.File(label="Download", elem_id="download")
                with gr.Accordion("Model", open=False, elem_id="model-panel"):
                    status = gr.Markdown(status_markdown(), elem_id="model-status")
                    switchable = {"visible": settings.allow_model_switch}  # the operator's choice
                    picker = gr.Dropdown(
                        label="Checkpoint (only those that fit this machine)", choices=[], **switchable
                    )
                    load_model = gr.Button("Load", **switchable)
                    model_seen = gr.State(service.generation)
                    model_tick = gr.Timer(10, active=settings.allow_model_switch)
                gr.Markdown(CREDITS)

        # Hidden inputs and outputs of the API endpoints.
        with gr.Row(visible=False):
            # Files, not Image/Video components: those decode or convert uploads before the handler
            # runs, so a broken file would get Gradio's generic error instead of the library's message,
            # and a decompression bomb would be decoded before any limit is checked.
            api_image = gr.File(type="filepath")
            api_mask = gr.File(type="filepath")
            api_video = gr.File(type="filepath")
            # Ranges are checked before any handler runs (`pixelrefer.webguard.check_inputs`).
            api_frame = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_FRAME_INDEX)
            api_question = gr.Textbox()
            api_tokens = gr.Number(value=256, precision=0, minimum=1, maximum=settings.max_new_tokens)
            api_seed = gr.Number(value=1234, precision=0, minimum=0, maximum=MAX_SEED)
            api_out = gr.Textbox()
            api_buttons = [gr.Button() for _ in range(4)]

        marked = [state, canvas, object_chips, picked, mark_info]
        gen = [max_tokens, sample, temperature, top_p, seed]
        painting = ([state, tool], [painter, brush_row])  # the brush panel follows the picture shown
        image_in.upload(on_image, [state, image_in], marked, **private).then(on_tool, *painting, **private)
        video_in.upload(on_video, [state, video_in], [*marked, frame, overlay], **private).then(
            on_tool, *painting, **private
        )
        frame.release(on_seek, [state, frame], marked, **private).then(on_tool, *painting, **private)
        canvas.select(on_click, [state, tool], marked, concurrency_id="segmenter", **private)
        tool.change(on_tool, [state, tool], [painter, brush_row], **private)
        apply_brush.click(on_brush, [state, painter, as_mask], marked, concurrency_id="segmenter", **private)
        keep.click(on_keep, [state, name], [*marked, name], **private)
        clear_marks.click(on_clear_marks, [state], marked, **private)
        picked.input(on_select_object, [state, picked], marked, **private)
        delete.click(on_delete, [state, picked], [*marked, chatbot], **private)
        rename.click(on_rename, [state, picked, name], marked, **private)
        insert.click(on_insert_tag, [question, picked], [question], **private)
        track_event = track.click(
            on_track, [state], [*marked, overlay], concurrency_id="segmenter", **private
        )
        cancel.click(on_cancel, [state], None, cancels=[track_event], queue=False, **private)
        for button, example in zip(example_buttons, EXAMPLE_LIST, strict=True):
            button.click(
                functools.partial(on_example, name=example.name), [state],
                [*marked, question, frame, overlay, chatbot, image_in, video_in], **private,
            ).then(on_tool, *painting, **private)  # fmt: skip
        chat_out = [state, chatbot, question]
        send_event = send.click(on_send, [state, question, *gen], chat_out, **model_events, **private)
        submit_event = question.submit(on_send, [state, question, *gen], chat_out, **model_events, **private)
        describe_event = describe.click(
            on_describe, [state, picked, *gen], chat_out, **model_events, **private
        )
        regen_event = regenerate.click(on_regenerate, [state, *gen], chat_out, **model_events, **private)
        relate.click(on_relate, [question], [question], **private)
        stop.click(on_stop, [state], None, queue=False, **private)
        clear_chat.click(on_clear_chat, [state], [state, chatbot], **private)
        chatbot.clear(on_clear_chat, [state], [state, chatbot], **private)
        del send_event, submit_event, describe_event, regen_event
        export.click(on_export, [state, export_what], [exported], **private)
        load_model.click(on_load_model, [picker], [status, banner, model_seen], **model_events, **private)
        model_tick.tick(on_model_tick, [model_seen], [status, banner, model_seen], **private)
        demo.load(picker_update, None, [picker], **private)

        api_buttons[0].click(
            api_describe,
            [api_image, api_mask, api_tokens, api_seed],
            [api_out],
            api_name="describe_region",
            **model_events,
        )
        api_buttons[1].click(api_open, [state, api_image, api_video], [state, api_out], api_name="open")
        api_buttons[2].click(
            api_add_object, [state, api_mask, api_frame], [state, api_out], api_name="add_object"
        )
        api_buttons[3].click(
            api_ask,
            [state, api_question, api_tokens, api_seed],
            [state, api_out],
            api_name="ask",
            **model_events,
        )
    demo.delete_cache = cache_schedule(settings.session_ttl_s)  # uploads and downloads of ended sessions
    # The model queue's bound (`queue_size`) is applied to model events only, by `RouteGuard`; Gradio's own
    # bound counts every event, so it is only the backstop against a flood of cheap ones.
    demo.queue(
        max_size=max(4 * settings.queue_size, 2 * settings.max_sessions),
        default_concurrency_limit=settings.concurrency,
    )
    return demo


# ---------------------------------------------------------------------- start


SETTINGS = AppSettings.parse(sys.argv[1:] if __name__ == "__main__" else [])
SERVICE = Service(SETTINGS)
EXAMPLE_LIST: list[Example] = load_examples(EXAMPLES) if (EXAMPLES / "examples.json").exists() else []
EXAMPLE_BY_NAME = {e.name: e for e in EXAMPLE_LIST}


def launch_options(settings: AppSettings) -> dict:
    """What `demo.launch` needs besides the host and port (the tests launch with the same): the route guard
    (only the named API by name, the model queue bound on model events), Gradio's dashboard only when the
    operator enables it."""
    return {
        "allowed_paths": [str(EXAMPLES), str(ASSETS)],
        "max_file_size": f"{int(settings.media.max_upload_mb)}mb",
        "state_session_capacity": settings.max_sessions,
        "css": CSS,
        "footer_links": ["api"],
        "enable_monitoring": settings.monitoring,
        "app_kwargs": {"middleware": [Middleware(RouteGuard, model_queue=settings.queue_size)]},
    }


def main() -> None:
    SERVICE.start()
    demo = build(SERVICE)
    demo.launch(server_name=SETTINGS.host, server_port=SETTINGS.port, **launch_options(SETTINGS))


if __name__ == "__main__":
    main()
