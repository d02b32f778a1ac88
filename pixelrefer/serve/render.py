"""What the page shows, as text and HTML: object chips, tags in colour, answers, the chat, the model status.

Pure functions of a workspace (or the service): no Gradio here, so each is tested and read on its own.
Everything a visitor typed or named is escaped before it is put in HTML.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from ..media.masks import object_color

if TYPE_CHECKING:
    from ..chat.session import ChatObject
    from .service import Service
    from .workspace import Workspace

__all__ = [
    "NEW_OBJECT",
    "answer_html",
    "banner_title",
    "chips",
    "colour_hex",
    "colour_tags",
    "describe_label",
    "history",
    "markdown_text",
    "object_choices",
    "pair",
    "picked_id",
    "relate_label",
    "status_markdown",
]

NEW_OBJECT = 0
"""The object picker's first choice: new marks make a new object."""

_FINISH_NOTES = {"stopped": " *(stopped)*", "timeout": " *(stopped: time budget reached)*"}


def colour_hex(obj: ChatObject) -> str:
    """The object's colour (its masks', its chip's and its tags') as `#rrggbb`."""
    r, g, b = object_color(obj.color_index)
    return f"#{r:02x}{g:02x}{b:02x}"


def colour_tags(ws: Workspace | None, text: str) -> str:
    """Escape the text and show each `<objectK>` in its object's colour."""
    safe = html.escape(text)
    if ws is None or ws.session is None:
        return safe
    colours = {obj.id: colour_hex(obj) for obj in ws.objects()}

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
        colour = colour_hex(obj)
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
    """The chat as the Chatbot shows it, each stopped answer with its note."""
    if ws is None or ws.session is None:
        return []
    messages = []
    for exchange in ws.session.history:
        messages.append({"role": "user", "content": colour_tags(ws, exchange.question)})
        note = _FINISH_NOTES.get(exchange.finish_reason, "")
        messages.append({"role": "assistant", "content": answer_html(ws, exchange.answer, True) + note})
    return messages


def markdown_text(message: str) -> str:
    """A status message for a Markdown component: tags such as <object1> show as text, not vanish as HTML."""
    return message.replace("<", "&lt;").replace(">", "&gt;")


def object_choices(ws: Workspace | None) -> list[tuple[str, int]]:
    """The object picker's choices: "new object", then each object by tag and name."""
    objects = ws.objects() if ws else []
    return [("new object", NEW_OBJECT)] + [
        (f"<object{o.id}>{' ' + o.name if o.name else ''}", o.id) for o in objects
    ]


def picked_id(object_id: object) -> int | None:
    """The object picker's value as an object id (None for the "new object" choice)."""
    return None if object_id in (None, NEW_OBJECT) else int(object_id)  # type: ignore[arg-type]


def pair(ws: Workspace) -> tuple[ChatObject, ChatObject]:
    """The picked object (or the first) and the next other one: what the relate action asks about."""
    objects = ws.objects()
    first = next((o for o in objects if o.id == ws.target), objects[0])
    second = next(o for o in objects if o.id != first.id)
    return first, second


def describe_label(ws: Workspace | None) -> str | None:
    """The describe action's label (the picked object, the only one, or each in turn); None with no objects."""
    objects = ws.objects() if ws else []
    if not objects:
        return None
    picked = ws.target if ws.target is not None else objects[0].id if len(objects) == 1 else None
    return f"Describe <object{picked}>" if picked is not None else f"Describe each object ({len(objects)})"


def relate_label(ws: Workspace | None) -> str | None:
    """The relate action's label; None with fewer than two objects."""
    if ws is None or len(ws.objects()) < 2:
        return None
    first, second = pair(ws)
    return f"How do {first.tag} and {second.tag} relate?"


def banner_title(banner: str) -> str:
    """The banner's one-line notice (the whole text opens below it)."""
    if "Offline preview" in banner:
        return "Offline preview: a tiny random model answers (meaningless text). details"
    first = re.sub(r"[*_`]", "", banner.strip().splitlines()[0]) if banner.strip() else ""
    return first if len(first) <= 100 else first[:99] + "…"


def _markdown_cell(text: str) -> str:
    """Text shown as itself in a Markdown table cell: HTML, emphasis, strikethrough and pipes escaped."""
    return re.sub(r"([\\`*_~|\[\]])", r"\\\1", html.escape(text))


def status_markdown(service: Service) -> str:
    """What is served and what would fit; with switching off, that it is the operator who chooses."""
    status = dict(service.status())
    fitting = [
        f"{c.source.split('/', 1)[-1]} (~{c.estimate_gib:.1f} GiB)"
        for c in service.choices()
        if c.fits_memory
    ]
    status["fits this machine"] = ", ".join(fitting) or "none of the released checkpoints"
    if not service.settings.allow_model_switch:
        status["switching"] = "off: the model is chosen by whoever runs the app"
    # A "~" pair is strikethrough in Markdown ("~7.3 GiB ... ~30.0 GiB"): escaped, as everything is.
    rows = "\n".join(f"| {k} | {_markdown_cell(v)} |" for k, v in status.items())
    return f"| Setting | Value |\n|---|---|\n{rows}"
