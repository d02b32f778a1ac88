"""The page's events: each turns what the browser sent into `Workspace` calls and returns what to show.

Handlers return `{component: value}` dicts (`pixelrefer.serve.views.Views`); the error rule
(`pixelrefer.serve.policy`) wraps every one of them once, in `PageEvents.__init__`, as each method's `event`
mark asks. The model work itself goes through the workspace to `Service.calls`, which on ZeroGPU runs each
piece in its own GPU call with plain data (`pixelrefer.serve.zerogpu_calls`), never the workspace itself.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence

import cv2
import gradio as gr
import numpy as np

from ..segment.base import TrackingCancelled
from . import render
from .brush import brush_layer
from .cancellation import on_cancel as stop_on_cancel
from .cancellation import stops_on_cancel
from .examples import Example
from .flags import generation_settings
from .marks_view import small_mask_note
from .policy import Policy
from .service import Service
from .views import Views
from .visitor import workspace_for
from .visits import MovedAway, Visitors, current_session
from .workspace import Workspace

__all__ = ["EXPORTS", "TOOLS", "PageEvents", "describe_stream", "send_stream", "track_clip"]

TOOLS = {
    "Object (click)": "positive",
    "Background (click)": "negative",
    "Box (2 clicks)": "box",
    "Brush": "brush",
}
EXPORTS = (
    "Masks (PNG zip)",
    "Masks (COCO RLE JSON)",
    "Transcript (Markdown)",
    "Transcript (JSON)",
    "Overlay (PNG of an image; MP4 of a clip's sampled frames)",
)


def event(restore: str | None = None, *, cancellable: bool = False) -> Callable[[Callable], Callable]:
    """Mark a `PageEvents` method as a page event: on a problem, a toast and `Views.<restore>` (or no
    change); `cancellable` ones stop when the visitor's event is cancelled (`stops_on_cancel`)."""

    def mark(fn: Callable) -> Callable:
        fn.page_event = (restore, cancellable)
        return fn

    return mark


class PageEvents:
    """The handlers of one page, for one service; `views` says what each refreshes."""

    def __init__(
        self,
        service: Service,
        policy: Policy,
        views: Views,
        examples: Sequence[Example],
        visitors: Visitors | None = None,
    ) -> None:
        self.service, self.policy, self.views, self.ui = service, policy, views, views.ui
        self.examples = tuple(examples)
        self.visitors = visitors if visitors is not None else Visitors(service.settings.session_ttl_s)
        for name, fn in inspect.getmembers(type(self), lambda f: hasattr(f, "page_event")):
            restore, cancellable = fn.page_event
            guarded = policy.for_page(getattr(views, restore) if restore else None)(getattr(self, name))
            guarded = self._this_tab_only(guarded)
            guarded = service.background.during(guarded)  # background work waits while it is handled
            setattr(self, name, stops_on_cancel(guarded) if cancellable else guarded)
        self.on_load_model = policy.for_api(self.on_load_model)  # a page event that says why it refused

    def _this_tab_only(self, fn: Callable) -> Callable:
        """`fn` refused, with a toast and no change, when this tab's work was taken over by another tab of
        the same browser (`pixelrefer.serve.visits`): one workspace is never written by two tabs."""
        check = self.visitors.check

        def refuse(exc: MovedAway):
            gr.Warning(str(exc))
            return gr.skip()

        if inspect.isgeneratorfunction(inspect.unwrap(fn)):

            @functools.wraps(fn)
            def streaming(ws, *args, **kwargs):
                try:
                    check(ws)
                except MovedAway as exc:
                    yield refuse(exc)
                    return
                yield from fn(ws, *args, **kwargs)

            return streaming

        @functools.wraps(fn)
        def plain(ws, *args, **kwargs):
            try:
                check(ws)
            except MovedAway as exc:
                return refuse(exc)
            return fn(ws, *args, **kwargs)

        return plain

    def workspace(self, ws: Workspace | None) -> Workspace:
        """This tab's workspace; a new one is kept under the token the page got when it loaded."""
        made = workspace_for(self.service, ws)
        if made is not ws:
            self.visitors.adopt(made)
        return made

    # ------------------------------------------------------------------ page load

    def on_page_load(self, token, request: gr.Request):
        """A page load (a new tab, or a reload): the work the browser's token names, as it was left, with the
        settings of its last answer; an answer that was streaming when the page went away ends as stopped."""
        ws, token = self.visitors.greet(token, getattr(request, "session_hash", None) or current_session())
        if ws is None:
            return {**self.views.after_media(None, ""), self.ui.token: token}
        try:
            ws = workspace_for(self.service, ws)
            finish_stream(ws)
            message = "Your work is back: the picture, its objects and the chat."
            shown = self.views.after_media(ws, message if ws.kind != "none" else "")
        except Exception as exc:  # a workspace that cannot be shown is a bug, logged; the page stays usable
            gr.Warning(self.policy.explain(exc).message)
            shown = self.views.after_media(None, "")
        return {**shown, **self.views.settings(ws), self.ui.token: token}

    # ------------------------------------------------------------------ media

    @event("restore_media")
    def on_upload(self, ws, upload):
        """An image dropped on the canvas. Its event skips Gradio's decoding (`preprocess=False`), so the file
        reaches the library's checks and a file that is not an image gets the library's message."""
        path = (upload or {}).get("path")
        if not path:
            return self.views.after_media(ws, "")
        ws = self.workspace(ws)
        ws.open_image(path)
        return self.views.after_media(ws, "Click on an object to mark it.")

    @event("restore_media")
    def on_open_clip(self, ws, path):
        if not path:
            return self.views.after_media(ws, "")
        ws = self.workspace(ws)
        notes = ws.open_video(path)
        return self.views.after_media(
            ws, " ".join(notes) or f"{len(ws.clip)} frames sampled. Mark objects, then Track."
        )

    @event()
    def on_clear_canvas(self, ws):
        """The canvas's own clear button: start over."""
        if ws is not None:
            ws.close()
        return self.views.after_media(None, "Drop an image on the canvas, open a clip, or pick an example.")

    @event()
    def on_seek(self, ws, position):
        if ws is None or ws.clip is None:
            return gr.skip()
        ws.seek(int(position))
        return self.views.after_marking(
            ws, f"Frame {ws.frame_index} (t = {ws.clip.timestamps[ws.position]:.1f} s)."
        )

    @event()
    def on_example(self, ws, evt: gr.SelectData):
        example = self.examples[evt.index]
        ws = self.workspace(ws)
        question = ws.open_example(example)
        shown = self.views.after_media(ws, f"Example “{example.name}” loaded with its objects.")
        return {**shown, self.ui.question: question}

    # ------------------------------------------------------------------ marking

    @event()
    def on_click(self, ws, tool, evt: gr.SelectData):
        ws = self.workspace(ws)
        mode = TOOLS[tool]
        if mode == "brush":
            return self.views.after_marking(ws, "The brush paints on the picture; switch tool to click.")
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
            message += _small_note(int(result.mask.sum()), "This mask")
        return self.views.after_marking(ws, message)

    @event()
    def on_brush(self, ws, editor, as_mask):
        ws = self.workspace(ws)
        layer = brush_layer(editor)
        if layer is None or not layer.any():
            raise gr.Error("Paint over the object first.", print_exception=False)
        height, width = ws.frame.shape[:2]
        if layer.shape != (height, width):  # the painter shows the canvas's display copy
            layer = cv2.resize(layer.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        result = ws.scribble(layer, as_mask=bool(as_mask))
        message = (
            result.message if result.empty else f"Mask by {result.segmenter}. **Keep object** to add it."
        )
        return {**self.views.after_marking(ws, message), self.ui.painter: self.views.fresh_painter(ws)}

    @event()
    def on_tool(self, ws, tool):
        """The brush paints in the canvas's place, on the same picture; the click tools mark the canvas itself."""
        ui = self.ui
        if TOOLS[tool] != "brush" or ws is None or ws.kind == "none":
            return {
                ui.canvas: gr.update(visible=True),
                ui.painter: gr.update(visible=False),
                ui.brush_row: gr.update(visible=False),
            }
        painter = {**self.views.fresh_painter(ws), "visible": True}
        return {
            ui.canvas: gr.update(visible=False),
            ui.painter: painter,
            ui.brush_row: gr.update(visible=True),
        }

    @event()
    def on_keep(self, ws, name, tool):
        ws = self.workspace(ws)
        obj = ws.keep(name or "")
        note = " Track again to follow it through the clip." if ws.clip is not None else ""
        small = small_mask_note(int(obj.masks[ws.frame_index].sum()), obj.tag)
        if small:  # kept, since the visitor may mean it, but never silently
            gr.Warning(render.markdown_text(small))
            note += f" {small}"
        shown = {**self.views.after_marking(ws, f"Kept as {obj.tag}.{note}"), self.ui.name: ""}
        # The strokes belonged to the kept object: the next object starts from a clean brush.
        if TOOLS[tool] == "brush":
            shown[self.ui.painter] = self.views.fresh_painter(ws)
        return shown

    @event()
    def on_clear_marks(self, ws, tool):
        if ws is None or ws.kind == "none":
            raise gr.Error(
                "There are no marks to clear: open a picture or a clip first.", print_exception=False
            )
        ws.clear_marks()
        shown = self.views.after_marking(ws, "Marks cleared.")
        if TOOLS[tool] == "brush":
            shown[self.ui.painter] = self.views.fresh_painter(ws)
        return shown

    # ------------------------------------------------------------------ objects

    @event()
    def on_select_object(self, ws, object_id):
        if ws is None or ws.kind == "none":
            return gr.skip()
        object_id = render.picked_id(object_id)
        ws.select(object_id)
        if object_id is None:
            return self.views.after_marking(ws, "New marks make a new object.")
        return self.views.after_marking(
            ws, f"Marks now re-mark <object{object_id}> on this frame; **Keep object** to apply."
        )

    @event()
    def on_delete(self, ws, object_id):
        object_id = _picked_object(ws, object_id)
        ws.delete(object_id)
        shown = self.views.after_marking(ws, f"<object{object_id}> deleted; the chat restarted.")
        return {**shown, self.ui.chatbot: render.history(ws)}

    @event()
    def on_rename(self, ws, object_id, name):
        object_id = _picked_object(ws, object_id)
        ws.rename(object_id, name or "")
        return {**self.views.after_marking(ws, f"<object{object_id}> renamed."), self.ui.name: ""}

    @staticmethod
    def on_insert_tag(question, object_id):
        """The picked object's tag at the end of the question; with "new object" picked, it says so."""
        if render.picked_id(object_id) is None:
            gr.Warning("Pick an object in the list first: Insert tag adds its tag, e.g. &lt;object1&gt;.")
            return gr.skip()
        spacer = "" if not question or question.endswith(" ") else " "
        return f"{question or ''}{spacer}<object{int(object_id)}>"

    # ------------------------------------------------------------------ clips

    @event(cancellable=True)
    def on_track(self, ws, progress=gr.Progress()):  # noqa: B008 - how Gradio injects progress
        if ws is None or ws.clip is None:
            raise gr.Error("Open a clip first.", print_exception=False)
        ws, message, overlay = track_clip(ws, progress)
        shown = self.views.after_marking(ws, message)
        if overlay is not None:
            shown[self.ui.overlay] = gr.update(visible=True, value=overlay)
        return shown

    @staticmethod
    def on_cancel(ws):
        """Tracking checks this flag at every step and ends with a message (the event itself is not killed, so
        the canvas keeps its picture)."""
        if ws is None or ws.clip is None:
            return gr.skip()
        ws.cancel.set()
        return "Cancelling the tracking…"

    # ------------------------------------------------------------------ chat

    @event("restore_chat")
    def on_send(self, ws, question, max_new_tokens, sample, temperature, top_p, seed):
        ws = self.workspace(ws)
        remember_settings(ws, max_new_tokens, sample, temperature, top_p, seed)
        question = (question or "").strip()
        for answered in send_stream(ws, question, max_new_tokens, sample, temperature, top_p, seed):
            yield self.views.after_answer(*answered)

    @event("restore_chat")
    def on_describe(self, ws, object_id, max_new_tokens, sample, temperature, top_p, seed):
        """The picked object, or each object in turn: one answer per object, each under its own question."""
        ws = self.workspace(ws)
        remember_settings(ws, max_new_tokens, sample, temperature, top_p, seed)
        if not ws.objects():
            raise gr.Error("Mark an object first.", print_exception=False)
        for answered in describe_stream(ws, object_id, max_new_tokens, sample, temperature, top_p, seed):
            yield self.views.after_answer(*answered)

    @event("restore_chat")
    def on_regenerate(self, ws, max_new_tokens, sample, temperature, top_p, seed):
        ws = self.workspace(ws)
        if not ws.session or not ws.session.history:
            raise gr.Error("There is no answer to regenerate yet.", print_exception=False)
        for answered in regenerate_stream(ws, max_new_tokens, sample, temperature, top_p, seed):
            yield self.views.after_answer(*answered)

    @event()
    def on_relate(self, ws):
        if ws is None or len(ws.objects()) < 2:
            raise gr.Error("Mark two objects first.", print_exception=False)
        first, second = render.pair(ws)
        return f"How do {first.tag} and {second.tag} relate to each other?"

    @staticmethod
    def on_stop(ws) -> None:
        if ws is not None:
            ws.stop()

    @event()
    def on_clear_chat(self, ws):
        if ws is not None and ws.session is not None:
            ws.session.clear()
        return {self.ui.state: self.views.held(ws), self.ui.chatbot: []}

    @event()
    def on_settings(self, ws, tool, max_new_tokens, sample, temperature, top_p, seed) -> None:
        """A setting the visitor changed (a generation setting, the marking tool), kept with the work without
        sending anything (no model, nothing shown), so that a reload shows it again."""
        settings = generation_fields(max_new_tokens, sample, temperature, top_p, seed)
        self.visitors.keep_settings(ws, {**settings, "tool": tool})

    def on_sample(self, sample: bool):
        """Temperature and top-p only matter when sampling."""
        return {
            self.ui.temperature: gr.update(interactive=bool(sample)),
            self.ui.top_p: gr.update(interactive=bool(sample)),
        }

    # ------------------------------------------------------------------ export and model

    @event()
    def on_export(self, ws, what):
        if ws is None or ws.session is None:
            raise gr.Error("Nothing to export yet.", print_exception=False)
        make = {
            EXPORTS[0]: ws.export_masks_zip,
            EXPORTS[1]: ws.export_masks_json,
            EXPORTS[2]: lambda: ws.export_transcript("md"),
            EXPORTS[3]: lambda: ws.export_transcript("json"),
            EXPORTS[4]: ws.overlay_png if ws.kind == "image" else ws.overlay_video,
        }
        return str(make[what]())

    def on_load_model(self, source):
        """Load another checkpoint for everyone (only when the operator allows switching)."""
        if not source:
            raise gr.Error("Choose a checkpoint.", print_exception=False)
        self.service.switch(source)
        return self.model_shown()

    def on_model_tick(self, seen):
        """Every page: the panel and banner again once another visitor (or the operator) switched the model."""
        if seen == self.service.generation:
            return gr.skip()
        return self.model_shown()

    def model_shown(self) -> dict:
        ui, service = self.ui, self.service
        return {
            ui.status: render.status_markdown(service),
            ui.banner: service.banner,
            ui.model_seen: service.generation,
        }

    def picker_update(self):
        choices = [(c.label, c.source) for c in self.service.choices() if c.fits]
        requested = self.service.requested
        return gr.update(
            choices=choices, value=requested if any(s == requested for _, s in choices) else None
        )

    @staticmethod
    def on_banner(banner: str):
        return gr.update(label=render.banner_title(banner), visible=bool(banner.strip()))


def _small_note(pixels: int, what: str) -> str:
    note = small_mask_note(pixels, what)
    return f" {note}" if note else ""


def _picked_object(ws: Workspace | None, object_id: object) -> int:
    object_id = render.picked_id(object_id)
    if ws is None or object_id is None:
        raise gr.Error("Pick an object in the list first.", print_exception=False)
    return object_id


# ---------------------------------------------------------------------- the model work (`Service.calls`)


_STREAMING: weakref.WeakKeyDictionary[Workspace, threading.Event] = weakref.WeakKeyDictionary()
"""Workspaces with an answer streaming, each with the event set when that answer is over (or stopped)."""


def generation_fields(max_new_tokens, sample, temperature, top_p, seed) -> dict:
    """The generation settings as the workspace keeps them for the page (`Views.settings` shows them)."""
    return {
        "max_new_tokens": max_new_tokens,
        "sample": bool(sample),
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }


def remember_settings(ws: Workspace, max_new_tokens, sample, temperature, top_p, seed) -> None:
    """The generation settings of the last answer, shown again when the page is reloaded (with the tool)."""
    ws.page_settings = {
        **ws.page_settings,
        **generation_fields(max_new_tokens, sample, temperature, top_p, seed),
    }


def finish_stream(ws: Workspace, wait_s: float = 5.0) -> None:
    """An answer still streaming for a page that went away is stopped; wait (briefly) until the chat
    recorded it as stopped, so the page that comes back shows it."""
    done = _STREAMING.get(ws)
    if done is not None and not done.is_set():
        ws.stop()
        done.wait(wait_s)


def _drain(replies: Iterator, done: threading.Event) -> None:
    try:
        for _ in replies:
            pass
    except Exception:  # the answer was abandoned: how it ended matters no more than its text
        pass
    finally:
        done.set()


def _stream(ws: Workspace, replies: Iterator, question: str) -> Iterator[tuple[Workspace, list[dict]]]:
    """The chat as the answer grows: the history, the question, the answer so far; the history when done.

    A page that goes away mid-answer (a reload, a closed tab) closes this generator: the answer is then
    stopped and run to its end on another thread, so the chat records it as stopped with its text so far,
    and the reloaded page shows it so."""
    messages = render.history(ws) + [
        {"role": "user", "content": render.colour_tags(ws, question)},
        {"role": "assistant", "content": ""},
    ]
    text = ""
    done = _STREAMING[ws] = threading.Event()
    finished = False
    try:
        for reply in replies:
            text += reply.delta
            messages[-1]["content"] = render.answer_html(ws, text)
            if reply.done:
                messages = render.history(ws)
            yield ws, messages
        finished = True
    finally:
        if finished:
            done.set()
        else:
            ws.stop()
            threading.Thread(target=_drain, args=(replies, done), daemon=True).start()


def send_stream(ws, question, max_new_tokens, sample, temperature, top_p, seed):
    """The answer to a question, as it grows."""
    settings = generation_settings(max_new_tokens, sample, temperature, top_p, seed)
    yield from _stream(ws, ws.ask(question, settings), question)


def describe_stream(ws, object_id, max_new_tokens, sample, temperature, top_p, seed):
    """The picked object described, or each object in turn; a stopped answer ends the round."""
    picked = render.picked_id(object_id)
    targets = [picked] if picked is not None else [obj.id for obj in ws.objects()]
    settings = generation_settings(max_new_tokens, sample, temperature, top_p, seed)
    for target in targets:
        yield from _stream(ws, ws.describe(target, settings), f"Describe <object{target}> in detail.")
        if ws.session.history[-1].finish_reason in ("stopped", "timeout"):
            return


def regenerate_stream(ws, max_new_tokens, sample, temperature, top_p, seed):
    """The last answer again. Greedy decoding would repeat the same answer, and a fixed seed the same sample:
    always sample, with the next seed after the one the last answer used."""
    last = ws.session.history[-1]
    settings = generation_settings(max_new_tokens, True, temperature, top_p, last.settings.seed + 1)
    yield from _stream(ws, ws.regenerate(settings), last.question)


def track_clip(ws, progress) -> tuple[Workspace, str, str | None]:
    """Every object followed through the clip: the workspace, the status message and the overlay video (None
    when the visitor cancelled; the objects keep the masks they had)."""
    stop_on_cancel(ws.cancel.set)
    try:
        ws.track(progress=lambda done, total: progress((done, total), desc="Tracking", unit="steps"))
    except TrackingCancelled as exc:
        gr.Info("Tracking cancelled.")
        return ws, f"{exc}; the objects keep the masks they had.", None
    return ws, f"Tracked through every sampled frame ({len(ws.clip)}).", str(ws.overlay_video())
