"""PixelRefer region chat: mark objects in an image or a clip, then talk about them.

Wiring only: every event calls `pixelrefer.serve.workspace.Workspace` (one per visitor) or
`pixelrefer.serve.service.Service` (shared) and shows what comes back.

    python app.py [--model SOURCE] [--quantization none|8bit|4bit] [--dtype ...] [--device ...]
                  [--sam2 tiny|small|base-plus|large|FOLDER] [--host H] [--port N]

Each flag can also be set as PIXELREFER_<FLAG> (e.g. PIXELREFER_MODEL) for a Space.
"""

from __future__ import annotations

import functools
import html
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from pixelrefer.media.images import ImageError, check_image_file, load_image  # noqa: E402
from pixelrefer.media.limits import MediaRejected  # noqa: E402
from pixelrefer.media.masks import EmptyMaskError, to_bool_mask  # noqa: E402
from pixelrefer.model.generation import GenerationSettings  # noqa: E402
from pixelrefer.segment.base import PromptError, TrackingCancelled  # noqa: E402
from pixelrefer.serve.cancellation import on_cancel as stop_on_cancel  # noqa: E402
from pixelrefer.serve.cancellation import stops_on_cancel  # noqa: E402
from pixelrefer.serve.examples import Example, load_examples, thumbnail  # noqa: E402
from pixelrefer.serve.redact import scrub  # noqa: E402
from pixelrefer.serve.servedfiles import cache_schedule, record_copy  # noqa: E402
from pixelrefer.serve.service import AppSettings, Service  # noqa: E402
from pixelrefer.serve.webguard import MODEL_QUEUE, RouteGuard  # noqa: E402
from pixelrefer.serve.workspace import Workspace  # noqa: E402

_log = logging.getLogger("pixelrefer.app")
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
    """The objects as chips in their colours (the colour of their masks and of their tags in the chat)."""
    objects = ws.objects() if ws else []
    if not objects:
        return '<div class="chips">No objects yet: click on something in the picture, then Keep object.</div>'
    parts = []
    for obj in objects:
        colour = ws.color_of(obj)
        name = f" {html.escape(obj.name)}" if obj.name else ""
        frames = "" if ws.kind == "image" else f" · {len(obj.masks)} frame(s)"
        parts.append(
            f'<span class="chip" style="border-color:{colour};color:{colour}">'
            f'<i class="swatch" style="background:{colour}"></i>&lt;object{obj.id}&gt;{name}{frames}</span>'
        )
    return '<div class="chips">' + " ".join(parts) + "</div>"


def answer_html(ws: Workspace, text: str, finished: bool = False) -> str:
    """An answer as the chat shows it: tags in colour, marked as the preview's when the preview answers, and a
    note in place of an answer that ended before its first word."""
    tag = '<span class="preview-tag">preview</span> ' if ws.service.preview else ""
    if finished and not text.strip():
        return tag + "*(no text: the model ended its answer at once; try Regenerate)*"
    return tag + colour_tags(ws, text)


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
        messages.append({"role": "assistant", "content": answer_html(ws, exchange.answer, True) + note})
    return messages


NEW_OBJECT = 0
"""The object picker's first choice: new marks make a new object."""


def object_choices(ws: Workspace | None) -> list[tuple[str, int]]:
    objects = ws.objects() if ws else []
    return [("new object", NEW_OBJECT)] + [
        (f"<object{o.id}>{' ' + o.name if o.name else ''}", o.id) for o in objects
    ]


def quick_actions(ws: Workspace | None) -> tuple:
    """Describe and relate, following the objects that exist and the one picked."""
    objects = ws.objects() if ws else []
    if not objects:
        return gr.update(visible=False), gr.update(visible=False)
    picked = ws.target if ws.target is not None else objects[0].id if len(objects) == 1 else None
    label = f"Describe <object{picked}>" if picked is not None else f"Describe each object ({len(objects)})"
    describe = gr.update(visible=True, value=label)
    if len(objects) < 2:
        return describe, gr.update(visible=False)
    first, second = _pair(ws)
    return describe, gr.update(visible=True, value=f"How do {first.tag} and {second.tag} relate?")


def _pair(ws: Workspace):
    """The picked object (or the first) and the next other one: what the relate action asks about."""
    objects = ws.objects()
    first = next((o for o in objects if o.id == ws.target), objects[0])
    second = next(o for o in objects if o.id != first.id)
    return first, second


def view(ws: Workspace | None, message: str = "") -> tuple:
    """Canvas, chips, object picker, the marking message and the quick actions: what most events refresh."""
    canvas = ws.canvas() if ws is not None and ws.kind != "none" else None
    selected = ws.target if ws is not None and ws.target is not None else NEW_OBJECT
    # The message is Markdown: tags such as <object1> must show as text, not vanish as unknown HTML.
    message = message.replace("<", "&lt;").replace(">", "&gt;")
    picker = gr.update(choices=object_choices(ws), value=selected)
    return (canvas, chips(ws), picker, message, *quick_actions(ws))


def settings_of(max_new_tokens, sample, temperature, top_p, seed) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(sample),
        temperature=float(temperature) if sample else None,
        top_p=float(top_p) if sample else None,
        seed=int(seed),
    )


# ---------------------------------------------------------------------- errors


def explain(exc: BaseException) -> gr.Error:
    """What the visitor is told about a problem: the library's own message, or a short apology."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, EXPECTED):
        return gr.Error(scrub(str(exc)), print_exception=False)
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        SERVICE.release_memory()
        return gr.Error("The server ran out of memory for this request; try a smaller clip or fewer tokens.")
    _log.error("Unexpected error in an event", exc_info=exc)
    return gr.Error(f"Something went wrong ({type(exc).__name__}); please try again.")


def friendly(fn: Callable) -> Callable:
    """For the named API: expected problems become a `gr.Error` with the message; anything else a short
    apology. Nothing crashes."""

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


def gentle(restore: Callable[..., tuple] | None = None) -> Callable[[Callable], Callable]:
    """For the page's own events: a problem becomes a toast (its tags escaped, so `<object9>` shows) and every
    output keeps its last good value, so no component is left in Gradio's error state. An event whose input
    the browser already changed (an upload) gives `restore(*args, message=...)` instead of no change."""

    def settle(exc: BaseException, args: tuple):
        message = explain(exc).message
        gr.Warning(html.escape(message))
        return gr.skip() if restore is None else restore(*args, message=message)

    def wrap(fn: Callable) -> Callable:
        if not inspect.isgeneratorfunction(inspect.unwrap(fn)):

            @functools.wraps(fn)
            def plain(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    return settle(exc, args)

            return plain

        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                yield settle(exc, args)

        return streaming

    return wrap


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


def media_view(ws: Workspace | None, message: str) -> tuple:
    """After new media: `view`, the clip timeline (shown for clips only), the tracked preview and the chat."""
    if ws is None or ws.clip is None:
        clip_bar, slider, overlay = gr.update(visible=False), gr.update(value=0), gr.update(visible=False)
    else:
        clip_bar = gr.update(visible=True)
        slider = gr.update(minimum=0, maximum=max(1, len(ws.clip) - 1), value=ws.position, step=1)
        overlay = gr.update(visible=ws.tracked, value=str(ws.overlay_video()) if ws.tracked else None)
    return (ws, *view(ws, message), clip_bar, slider, overlay, history(ws))


def restore_media(ws, *args, message: str) -> tuple:
    """After a refused upload: the picture (or the empty canvas) as it was, the message beside it."""
    return media_view(ws, message)


@gentle(restore_media)
def on_upload(ws, upload):
    """An image dropped on the canvas. Its event skips Gradio's decoding (`preprocess=False`), so the file
    reaches the library's checks and a file that is not an image gets the library's message."""
    path = (upload or {}).get("path")
    if not path:
        return media_view(ws, "")
    ws = workspace(ws)
    ws.open_image(path)
    return media_view(ws, "Click on an object to mark it.")


@gentle(restore_media)
def on_open_clip(ws, path):
    if not path:
        return media_view(ws, "")
    ws = workspace(ws)
    notes = ws.open_video(path)
    return media_view(ws, " ".join(notes) or f"{len(ws.clip)} frames sampled. Mark objects, then Track.")


@gentle()
def on_clear_canvas(ws):
    """The canvas's own clear button: start over."""
    close_workspace(ws)
    return media_view(None, "Drop an image on the canvas, open a clip, or pick an example.")


@gentle()
def on_seek(ws, position):
    if ws is None or ws.clip is None:
        return gr.skip()
    ws.seek(int(position))
    return (ws, *view(ws, f"Frame {ws.frame_index} (t = {ws.clip.timestamps[ws.position]:.1f} s)."))


@gentle()
def on_example(ws, evt: gr.SelectData):
    example = EXAMPLE_LIST[evt.index]
    ws = workspace(ws)
    question = ws.open_example(example)
    return (*media_view(ws, f"Example “{example.name}” loaded with its objects."), question)


# ---------------------------------------------------------------------- events: marking


@gentle()
def on_click(ws, tool, evt: gr.SelectData):
    ws = workspace(ws)
    mode = TOOLS[tool]
    if mode == "brush":
        return (ws, *view(ws, "The brush paints on the picture; switch tool to click."))
    x, y = ws.from_display(evt.index[0], evt.index[1])
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


def painter(**kwargs) -> gr.ImageEditor:
    """The brush panel. An ImageEditor decodes every image the browser sends (each layer, the background,
    the composite) before any handler runs, so each is held to the upload limits from its header first:
    a small PNG declaring 13000x13000 pixels is refused unread. The check is bound on the instance, since
    a subclass of a Gradio component makes Gradio write an `app.pyi` stub beside this file."""
    editor = gr.ImageEditor(**kwargs)
    decode = editor.convert_and_format_image

    def checked(file, flatten_on_white: bool = False):
        if file is not None:
            try:
                check_image_file(file.path if hasattr(file, "path") else bytes(file), SERVICE.settings.media)
            except ImageError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
        return decode(file, flatten_on_white)

    editor.convert_and_format_image = checked
    return editor


def brush_layer(editor) -> np.ndarray | None:
    """The painted strokes of a `painter` value as one bool mask (its layers were checked on arrival)."""
    if not editor or not editor.get("layers"):
        return None
    layers = [np.asarray(layer) for layer in editor["layers"] if layer is not None]
    if not layers:
        return None
    alpha = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        alpha |= to_bool_mask(layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else layer)
    return alpha


@gentle()
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
    return (ws, *view(ws, message), fresh_painter(ws))


def fresh_painter(ws: Workspace) -> dict:
    """The brush's picture with no strokes: the canvas as it is now (objects, draft mask, marks)."""
    picture = ws.canvas()
    return gr.update(value={"background": picture, "layers": [], "composite": picture})


@gentle()
def on_tool(ws, tool):
    """The brush paints in the canvas's place, on the same picture; the click tools mark the canvas itself."""
    if TOOLS[tool] != "brush" or ws is None or ws.kind == "none":
        return gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)
    return gr.update(visible=False), {**fresh_painter(ws), "visible": True}, gr.update(visible=True)


@gentle()
def on_keep(ws, name, tool):
    ws = workspace(ws)
    obj = ws.keep(name or "")
    note = " Track again to follow it through the clip." if ws.clip is not None else ""
    # The strokes belonged to the kept object: the next object starts from a clean brush.
    painter = fresh_painter(ws) if TOOLS[tool] == "brush" else gr.skip()
    return (ws, *view(ws, f"Kept as {obj.tag}.{note}"), "", painter)


@gentle()
def on_clear_marks(ws, tool):
    if ws is None or ws.kind == "none":
        return gr.skip()
    ws.clear_marks()
    painter = fresh_painter(ws) if TOOLS[tool] == "brush" else gr.skip()
    return (ws, *view(ws, "Marks cleared."), painter)


def picked_id(object_id) -> int | None:
    """The object picker's value as an object id (None for the "new object" choice)."""
    return None if object_id in (None, NEW_OBJECT) else int(object_id)


@gentle()
def on_select_object(ws, object_id):
    if ws is None or ws.kind == "none":
        return gr.skip()
    object_id = picked_id(object_id)
    ws.select(object_id)
    if object_id is None:
        return (ws, *view(ws, "New marks make a new object."))
    return (ws, *view(ws, f"Marks now re-mark <object{object_id}> on this frame; **Keep object** to apply."))


@gentle()
def on_delete(ws, object_id):
    object_id = picked_id(object_id)
    if ws is None or object_id is None:
        raise gr.Error("Pick an object in the list first.", print_exception=False)
    ws.delete(object_id)
    return (ws, *view(ws, f"<object{object_id}> deleted; the chat restarted."), history(ws))


@gentle()
def on_rename(ws, object_id, name):
    object_id = picked_id(object_id)
    if ws is None or object_id is None:
        raise gr.Error("Pick an object in the list first.", print_exception=False)
    ws.rename(object_id, name or "")
    return (ws, *view(ws, f"<object{object_id}> renamed."), "")


def on_insert_tag(question, object_id):
    if picked_id(object_id) is None:
        return question
    spacer = "" if not question or question.endswith(" ") else " "
    return f"{question or ''}{spacer}<object{int(object_id)}>"


# ---------------------------------------------------------------------- events: clips


@stops_on_cancel
@gentle()
@gpu(track_duration)
def on_track(ws, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
    if ws is None or ws.clip is None:
        raise gr.Error("Open a clip first.", print_exception=False)
    stop_on_cancel(ws.cancel.set)
    try:
        ws.track(progress=lambda done, total: progress((done, total), desc="Tracking", unit="steps"))
    except TrackingCancelled as exc:
        gr.Info("Tracking cancelled.")
        return (ws, *view(ws, f"{exc}; the objects keep the masks they had."), gr.skip())
    overlay = gr.update(visible=True, value=str(ws.overlay_video()))
    return (ws, *view(ws, f"Tracked through every sampled frame ({len(ws.clip)})."), overlay)


def on_cancel(ws):
    """Tracking checks this flag at every step and ends with a message (the event itself is not killed, so
    the canvas keeps its picture)."""
    if ws is None or ws.clip is None:
        return gr.skip()
    ws.cancel.set()
    return "Cancelling the tracking…"


# ---------------------------------------------------------------------- events: chat


def _stream(ws: Workspace, replies: Iterator, question: str) -> Iterator:
    messages = history(ws) + [
        {"role": "user", "content": colour_tags(ws, question)},
        {"role": "assistant", "content": ""},
    ]
    text = ""
    for reply in replies:
        text += reply.delta
        messages[-1]["content"] = answer_html(ws, text)
        if reply.done:
            messages = history(ws)
        yield ws, messages, ""


def restore_chat(ws, *args, message: str) -> tuple:
    """After a refused or failed answer: the conversation as it stands, the question kept for editing."""
    return gr.skip(), history(ws) if isinstance(ws, Workspace) else gr.skip(), gr.skip()


@gentle(restore_chat)
@gpu(answer_duration)
def on_send(ws, question, max_new_tokens, sample, temperature, top_p, seed):
    ws = workspace(ws)
    question = (question or "").strip()
    replies = ws.ask(question, settings_of(max_new_tokens, sample, temperature, top_p, seed))
    yield from _stream(ws, replies, question)


@gentle(restore_chat)
@gpu(answer_duration)
def on_describe(ws, object_id, max_new_tokens, sample, temperature, top_p, seed):
    """The picked object, or each object in turn: one answer per object, each under its own question."""
    ws = workspace(ws)
    objects = ws.objects()
    if not objects:
        raise gr.Error("Mark an object first.", print_exception=False)
    picked = picked_id(object_id)
    targets = [picked] if picked is not None else [obj.id for obj in objects]
    settings = settings_of(max_new_tokens, sample, temperature, top_p, seed)
    for target in targets:
        yield from _stream(ws, ws.describe(target, settings), f"Describe <object{target}> in detail.")
        if ws.session.history[-1].finish_reason in ("stopped", "timeout"):
            return


@gentle()
def on_relate(ws):
    if ws is None or len(ws.objects()) < 2:
        raise gr.Error("Mark two objects first.", print_exception=False)
    first, second = _pair(ws)
    return f"How do {first.tag} and {second.tag} relate to each other?"


@gentle(restore_chat)
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


@gentle()
def on_clear_chat(ws):
    if ws is not None and ws.session is not None:
        ws.session.clear()
    return ws, []


# ---------------------------------------------------------------------- events: export & model


EXPORTS = (
    "Masks (PNG zip)",
    "Masks (COCO RLE JSON)",
    "Transcript (Markdown)",
    "Transcript (JSON)",
    "Overlay (PNG of an image; MP4 of a clip's sampled frames)",
)


@gentle()
def on_export(ws, what):
    if ws is None or ws.session is None:
        raise gr.Error("Nothing to export yet.", print_exception=False)
    paths = dict(
        zip(
            EXPORTS,
            (
                ws.export_masks_zip,
                ws.export_masks_json,
                lambda: ws.export_transcript("md"),
                lambda: ws.export_transcript("json"),
                ws.overlay_png if ws.kind == "image" else ws.overlay_video,
            ),
            strict=True,
        )
    )
    return str(paths[what]())


def status_markdown() -> str:
    """What is served and what would fit; with switching off, that it is the operator who chooses."""
    status = dict(SERVICE.status())
    status["fits this machine"] = ", ".join(c.label for c in SERVICE.choices() if c.fits) or "none"
    if not SERVICE.settings.allow_model_switch:
        status["switching"] = "off: the model is chosen by whoever runs the app"
    rows = "\n".join(f"| {k} | {html.escape(v)} |" for k, v in status.items())
    return f"| Setting | Value |\n|---|---|\n{rows}"


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
.click-marker {position:absolute; width:12px; height:12px; margin:-6px 0 0 -6px; border-radius:50%;
  border:2px solid #fff; box-shadow:0 0 0 1px rgba(0,0,0,.6); pointer-events:none; z-index:10;}
.chips {display:flex; flex-wrap:wrap; gap:6px; margin:4px 0;}
.chip {border:2px solid; border-radius:14px; padding:1px 9px; font-weight:700; font-family:monospace;}
.swatch {display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:5px;}
.preview-tag {font-size:0.75em; padding:0 6px; border-radius:8px; background:#e8e8e8; color:#555;}
#title h1 {margin:0; font-size:1.35em;}
#title p {margin:0;}
#model-status table {table-layout:auto;}
#model-status td, #model-status th {hyphens:none; word-break:normal; overflow-wrap:anywhere;}
#model-status td:first-child {white-space:nowrap;}
@media (max-width: 720px) {
  #canvas, #painter {max-height:300px;}
  #chat-col {order:2;}
  #objects-col {order:3;}
}
"""


def banner_title(banner: str) -> str:
    """The banner's one-line notice (the whole text opens below it)."""
    if "Offline preview" in banner:
        return "Offline preview: a tiny random model answers (meaningless text). details"
    first = re.sub(r"[*_`]", "", banner.strip().splitlines()[0]) if banner.strip() else ""
    return first if len(first) <= 100 else first[:99] + "…"


def on_banner(banner: str):
    return gr.update(label=banner_title(banner), visible=bool(banner.strip()))


def canvas_panel(settings: AppSettings) -> SimpleNamespace:
    """The one picture: uploaded onto, clicked and boxed on, painted on in the same place; the tools under
    it, and the clip timeline (frame, Track, Cancel, tracked preview) shown for clips only. The picture is
    sent back after every click, as JPEG: a 1600x1200 one encodes in ~10 ms, against ~250 ms as WebP."""
    p = SimpleNamespace()
    p.canvas = gr.Image(
        label="Picture: drop an image here, then click on objects", type="numpy", image_mode="RGB",
        sources=["upload", "clipboard"], interactive=True, height=440, elem_id="canvas", format="jpeg",
        placeholder="Drop an image here or click to upload. Or open a clip, or pick an example.",
    )  # fmt: skip
    # The picture is sent back as JPEG, as the canvas is (WebP costs 0.15-0.3 s per brush action); the strokes
    # the browser sends are PNG layers with their alpha whatever this says.
    p.painter = painter(
        label="Paint over the object", type="numpy", visible=False, sources=[], layers=False, height=440,
        transforms=[], brush=gr.Brush(colors=["#ff00ff"], default_size=12, color_mode="fixed"),
        elem_id="painter", format="jpeg",
    )  # fmt: skip
    with gr.Row(elem_id="tools"):
        p.tool = gr.Radio(list(TOOLS), value="Object (click)", label="Mark with", scale=4, elem_id="tool")
        with gr.Column(scale=1, min_width=130):
            p.keep = gr.Button("Keep object", variant="primary", size="sm")
            p.clear_marks = gr.Button("Clear marks", size="sm")
    with gr.Row(visible=False) as p.brush_row:
        p.as_mask = gr.Checkbox(label="Use my strokes as the mask (no model)")
        p.apply_brush = gr.Button("Segment from strokes", size="sm")
    p.mark_info = gr.Markdown(elem_id="mark-info")
    with gr.Group(visible=False, elem_id="clip-bar") as p.clip_bar:
        p.frame = gr.Slider(label="Frame (sampled)", minimum=0, maximum=1, step=1, value=0, elem_id="frame")
        with gr.Row():
            p.track = gr.Button("Track objects through the clip", variant="primary", size="sm")
            p.cancel = gr.Button("Cancel tracking", size="sm")
        p.overlay = gr.Video(
            label="Tracked preview (the sampled frames)", interactive=False, height=220, visible=False,
            elem_id="overlay",
        )  # fmt: skip
    with gr.Row(equal_height=True):
        p.open_clip = gr.UploadButton(
            "Open a clip", file_types=["video"], type="filepath", size="sm", scale=0, elem_id="open-clip"
        )
        gr.Markdown(f"Clips: {settings.media.describe()}", elem_id="clip-limits")
    return p


def objects_panel() -> SimpleNamespace:
    """The objects (colour, tag, name) with their actions, and the examples as pictures."""
    p = SimpleNamespace()
    p.chips = gr.HTML(chips(None), elem_id="objects")
    p.picked = gr.Radio(
        object_choices(None), value=NEW_OBJECT, label="Object", elem_id="object-picker",
        info="Pick one to re-mark it (new marks, then Keep), rename, delete or describe it.",
    )  # fmt: skip
    p.name = gr.Textbox(label="Name (optional)", placeholder="e.g. red cup", max_lines=1, elem_id="name")
    with gr.Row():
        p.rename = gr.Button("Rename", size="sm", min_width=60)
        p.insert = gr.Button("Insert tag", size="sm", min_width=60)
        p.delete = gr.Button("Delete", size="sm", min_width=60)
    p.examples = gr.Gallery(
        [(thumbnail(e), e.name) for e in EXAMPLE_LIST], label="Examples (objects marked, question ready)",
        columns=2, height=330, object_fit="contain", allow_preview=False, interactive=False, elem_id="examples",
        visible=bool(EXAMPLE_LIST),
    )  # fmt: skip
    return p


def chat_panel(settings: AppSettings) -> SimpleNamespace:
    """The conversation, its quick actions, generation settings and exports."""
    p = SimpleNamespace()
    p.chatbot = gr.Chatbot(label="Chat", height=380, elem_id="chat")
    p.question = gr.Textbox(
        label="Question", placeholder="What is <object1> doing?", info=settings.chat.describe(), lines=1,
        max_lines=4, elem_id="question",
    )  # fmt: skip
    with gr.Row():
        p.send = gr.Button("Send", variant="primary", size="sm", min_width=70)
        p.stop = gr.Button("Stop", size="sm", min_width=70)
        p.regenerate = gr.Button("Regenerate", size="sm", min_width=70)
        p.clear_chat = gr.Button("Clear chat", size="sm", min_width=70)
    with gr.Row():
        p.describe = gr.Button("Describe", size="sm", visible=False, elem_id="describe")
        p.relate = gr.Button("Relate", size="sm", visible=False, elem_id="relate")
    with gr.Accordion("Generation settings", open=False, elem_id="generation-settings"):
        p.max_tokens = gr.Slider(
            1, settings.max_new_tokens, value=min(256, settings.max_new_tokens), step=1,
            label="Max new tokens",
        )  # fmt: skip
        p.sample = gr.Checkbox(label="Sample (otherwise greedy)")
        p.temperature = gr.Slider(0.05, 2.0, value=0.2, label="Temperature", interactive=False)
        p.top_p = gr.Slider(0.05, 1.0, value=0.9, label="Top-p", interactive=False)
        p.seed = gr.Number(value=1234, precision=0, label="Seed")
    with gr.Accordion("Export", open=False, elem_id="export-panel"):
        p.export_what = gr.Radio(list(EXPORTS), value=EXPORTS[0], label="What")
        p.export = gr.Button("Export", size="sm")
        p.exported = gr.File(label="Download", elem_id="download")
    return p


def on_sample(sample: bool):
    """Temperature and top-p only matter when sampling."""
    return gr.update(interactive=bool(sample)), gr.update(interactive=bool(sample))


def build(service: Service) -> gr.Blocks:
    """The page."""
    settings = service.settings
    private = {"api_visibility": "private"}
    model_events = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": service.model_concurrency}
    with gr.Blocks(title="PixelRefer region chat", fill_width=True) as demo:
        state = gr.State(None, delete_callback=close_workspace, time_to_live=settings.session_ttl_s)
        gr.Markdown(
            "# PixelRefer region chat <small>· mark objects in a photo or a short clip, then ask about them</small>",
            elem_id="title",
        )
        with gr.Accordion(
            banner_title(service.banner), open=False, visible=bool(service.banner), elem_id="banner"
        ) as banner_box:
            banner = gr.Markdown(service.banner, elem_id="banner-text")
        with gr.Row(equal_height=False, elem_id="page"):
            with gr.Column(scale=5, min_width=340, elem_id="canvas-col"):
                c = canvas_panel(settings)
            with gr.Column(scale=2, min_width=250, elem_id="objects-col"):
                o = objects_panel()
            with gr.Column(scale=4, min_width=340, elem_id="chat-col"):
                t = chat_panel(settings)
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
            # Ranges are checked before any handler runs (`pixelrefer.serve.webguard.check_inputs`).
            api_frame = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_FRAME_INDEX)
            api_question = gr.Textbox()
            api_tokens = gr.Number(value=256, precision=0, minimum=1, maximum=settings.max_new_tokens)
            api_seed = gr.Number(value=1234, precision=0, minimum=0, maximum=MAX_SEED)
            api_out = gr.Textbox()
            api_buttons = [gr.Button() for _ in range(4)]

        marked = [state, c.canvas, o.chips, o.picked, c.mark_info, t.describe, t.relate]
        media = [*marked, c.clip_bar, c.frame, c.overlay, t.chatbot]
        gen = [t.max_tokens, t.sample, t.temperature, t.top_p, t.seed]
        painting = ([state, c.tool], [c.canvas, c.painter, c.brush_row])  # the brush follows the picture
        # Progress never covers the picture being marked: Gradio's pending overlay is opaque and takes the
        # clicks, so a click right after another (or right after the picture arrived) would be lost and the
        # click point hidden. Marking shows its progress in the status line; only new media covers the canvas.
        status_line = {"show_progress_on": [c.mark_info]}
        segmenting = {**status_line, "concurrency_id": "segmenter"}
        loading = {"show_progress_on": [c.canvas, c.mark_info]}
        quiet = {"show_progress": "hidden"}
        # The upload skips Gradio's decoding so that the library checks the file (and names what is wrong).
        c.canvas.upload(on_upload, [state, c.canvas], media, preprocess=False, **loading, **private).then(
            on_tool, *painting, **quiet, **private
        )
        c.canvas.clear(on_clear_canvas, [state], media, **private)
        c.open_clip.upload(on_open_clip, [state, c.open_clip], media, **loading, **private).then(
            on_tool, *painting, **quiet, **private
        )
        c.frame.release(on_seek, [state, c.frame], marked, **status_line, **private).then(
            on_tool, *painting, **quiet, **private
        )
        c.canvas.select(on_click, [state, c.tool], marked, **segmenting, **private)
        c.tool.change(on_tool, *painting, **quiet, **private)
        c.apply_brush.click(
            on_brush, [state, c.painter, c.as_mask], [*marked, c.painter], **segmenting, **private
        )
        c.keep.click(on_keep, [state, o.name, c.tool], [*marked, o.name, c.painter], **status_line, **private)
        c.clear_marks.click(on_clear_marks, [state, c.tool], [*marked, c.painter], **status_line, **private)
        c.track.click(on_track, [state], [*marked, c.overlay], **segmenting, **private)
        c.cancel.click(on_cancel, [state], [c.mark_info], queue=False, **private)
        o.picked.input(on_select_object, [state, o.picked], marked, **status_line, **private)
        o.delete.click(on_delete, [state, o.picked], [*marked, t.chatbot], **status_line, **private)
        o.rename.click(on_rename, [state, o.picked, o.name], [*marked, o.name], **status_line, **private)
        o.insert.click(on_insert_tag, [t.question, o.picked], [t.question], **private)
        o.examples.select(on_example, [state], [*media, t.question], **loading, **private).then(
            on_tool, *painting, **quiet, **private
        )
        chat_out = [state, t.chatbot, t.question]
        t.send.click(on_send, [state, t.question, *gen], chat_out, **model_events, **private)
        t.question.submit(on_send, [state, t.question, *gen], chat_out, **model_events, **private)
        t.describe.click(on_describe, [state, o.picked, *gen], chat_out, **model_events, **private)
        t.regenerate.click(on_regenerate, [state, *gen], chat_out, **model_events, **private)
        t.relate.click(on_relate, [state], [t.question], **private)
        t.stop.click(on_stop, [state], None, queue=False, **private)
        t.clear_chat.click(on_clear_chat, [state], [state, t.chatbot], **private)
        t.chatbot.clear(on_clear_chat, [state], [state, t.chatbot], **private)
        t.sample.change(on_sample, [t.sample], [t.temperature, t.top_p], **private)
        t.export.click(on_export, [state, t.export_what], [t.exported], **private)
        banner.change(on_banner, [banner], [banner_box], **private)
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
    operator enables it, and the script that draws a click on the canvas at once."""
    return {
        "allowed_paths": [str(EXAMPLES), str(ASSETS)],
        "max_file_size": f"{int(settings.media.max_upload_mb)}mb",
        "state_session_capacity": settings.max_sessions,
        "css": CSS,
        "head": f"<script>{(ASSETS / 'click_marker.js').read_text(encoding='utf-8')}</script>",
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
