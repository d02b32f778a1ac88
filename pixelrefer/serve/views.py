"""What an event refreshes, addressed by component: the one place that knows which outputs show what.

Handlers return `{component: value}` dicts built here, and the page's wiring names the same output lists
(`Views.marked`, `Views.media`, ...), so no handler keeps a tuple in step with a list far away.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from . import render
from .visits import Visitors
from .workspace import Workspace

__all__ = ["Views"]


class Views:
    """The page's components (`ui`, as the panels built them) and what each kind of event refreshes."""

    def __init__(self, ui: SimpleNamespace, visitors: Visitors | None = None) -> None:
        self.ui = ui
        self.visitors = visitors
        self.marked = [ui.state, ui.canvas, ui.chips, ui.picked, ui.mark_info, ui.describe, ui.relate]
        """After a mark, an object edit or a seek: the picture, the objects and the status line."""
        self.media = [*self.marked, ui.clip_bar, ui.frame, ui.overlay, ui.chatbot]
        """After new media: also the clip timeline, the tracked preview and the chat."""
        self.painting = [ui.canvas, ui.painter, ui.brush_row]
        """The brush tool: the painter shown in the canvas's place, on the same picture."""
        self.chat = [ui.state, ui.chatbot, ui.question]
        """An answer: the conversation, and the question box emptied."""
        self.generation = [ui.max_tokens, ui.sample, ui.temperature, ui.top_p, ui.seed]
        """The generation settings, as `pixelrefer.serve.flags.generation_settings` reads them."""
        self.restored = [*self.media, ui.token, ui.tool, *self.generation]
        """A page load: the work the browser's token names, the token, the tool and generation settings."""

    def held(self, ws: Workspace | None) -> Workspace | None:
        """What this tab's state keeps: `ws`, unless another tab of the browser took the work over."""
        return ws if self.visitors is None else self.visitors.holds(ws)

    def after_marking(self, ws: Workspace | None, message: str = "") -> dict:
        """Canvas, chips, object picker, the status line and the quick actions."""
        ui = self.ui
        picked = ws.target if ws is not None and ws.target is not None else render.NEW_OBJECT
        describe, relate = render.describe_label(ws), render.relate_label(ws)
        return {
            ui.state: self.held(ws),
            ui.canvas: ws.canvas() if ws is not None and ws.kind != "none" else None,
            ui.chips: render.chips(ws),
            ui.picked: gr.update(choices=render.object_choices(ws), value=picked),
            ui.mark_info: render.markdown_text(message),
            ui.describe: gr.update(visible=True, value=describe) if describe else gr.update(visible=False),
            ui.relate: gr.update(visible=True, value=relate) if relate else gr.update(visible=False),
        }

    def after_media(self, ws: Workspace | None, message: str) -> dict:
        """`after_marking`, the clip timeline (shown for clips only), the tracked preview and the chat."""
        ui = self.ui
        if ws is None or ws.clip is None:
            clip = {ui.clip_bar: gr.update(visible=False), ui.frame: gr.update(value=0)}
            clip[ui.overlay] = gr.update(visible=False)
        else:
            last = max(1, len(ws.clip) - 1)
            clip = {
                ui.clip_bar: gr.update(visible=True),
                ui.frame: gr.update(minimum=0, maximum=last, value=ws.position, step=1),
                ui.overlay: gr.update(
                    visible=ws.tracked, value=str(ws.overlay_video()) if ws.tracked else None
                ),
            }
        return {**self.after_marking(ws, message), **clip, ui.chatbot: render.history(ws)}

    def after_answer(self, ws: Workspace, messages: list[dict]) -> dict:
        return {self.ui.state: self.held(ws), self.ui.chatbot: messages, self.ui.question: ""}

    def settings(self, ws: Workspace | None) -> dict:
        """The marking tool and generation settings the workspace keeps (those changed or used for its last
        answer); none for a setting never changed."""
        saved = getattr(ws, "page_settings", None) or {}
        ui = self.ui
        shown = {}
        for key, component in (("tool", ui.tool), ("max_new_tokens", ui.max_tokens), ("seed", ui.seed)):
            if saved.get(key) is not None:
                shown[component] = saved[key]
        if "sample" in saved:
            sampling = bool(saved["sample"])
            shown[ui.sample] = sampling
            for key, component in (("temperature", ui.temperature), ("top_p", ui.top_p)):
                shown[component] = gr.update(value=saved.get(key), interactive=sampling)
        return shown

    def restore_chat(self, ws: object, *args: object, message: str) -> dict:
        """After a refused or failed answer: the conversation as it stands, the question kept for editing."""
        return {self.ui.chatbot: render.history(ws)} if isinstance(ws, Workspace) else gr.skip()

    def restore_media(self, ws: object, *args: object, message: str) -> dict:
        """After a refused upload: the picture (or the empty canvas) as it was, the message beside it."""
        return self.after_media(ws if isinstance(ws, Workspace) else None, message)

    @staticmethod
    def fresh_painter(ws: Workspace) -> dict:
        """The brush's picture with no strokes: the canvas as it is now (objects, draft mask, marks)."""
        picture = ws.canvas()
        return gr.update(value={"background": picture, "layers": [], "composite": picture})
