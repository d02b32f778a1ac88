"""What a visitor can download: the masks (PNG zip, COCO RLE JSON), the transcript (Markdown, JSON) and the
overlay (a PNG of an image, an MP4 of a clip at its own frame rate), each written into the visitor's folder.

Functions of the chat session and the media only; `Workspace` calls them with its folder and notes each file
it serves. The Markdown transcript is HTML-escaped: names and questions are what a visitor typed, and a
Markdown viewer would render raw HTML in them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import numpy as np

from ..chat.session import ChatSession
from ..media.masks import export_png_zip, export_rle_json
from ..media.video import Clip, overlay_image, write_clip_overlay
from ..runtime.errors import InputError
from .render import colour_hex

__all__ = [
    "PREVIEW_NOTE",
    "masks_json",
    "masks_zip",
    "overlay_png",
    "overlay_video",
    "transcript_json",
    "transcript_markdown",
]

PREVIEW_NOTE = "Offline preview: answers from a tiny random model, meaningless."


def _mask_set(session: ChatSession) -> dict[int, dict[int, np.ndarray]]:
    if not session.objects:
        raise InputError("There are no objects to export")
    return {obj.id: dict(obj.masks) for obj in session.objects}


def masks_zip(session: ChatSession, folder: Path) -> Path:
    """One PNG per object and frame, in a zip."""
    return export_png_zip(_mask_set(session), folder / "masks.zip")


def masks_json(session: ChatSession, folder: Path) -> Path:
    """Every object's masks as COCO RLE, in one JSON file."""
    return export_rle_json(_mask_set(session), folder / "masks_coco_rle.json")


def _objects(session: ChatSession) -> list[dict]:
    return [{"id": o.id, "tag": o.tag, "name": o.name, "color": colour_hex(o)} for o in session.objects]


def transcript_json(session: ChatSession, folder: Path, preview: bool) -> Path:
    """The objects and every turn, marked as the preview's when the preview answered."""
    path = folder / "transcript.json"
    record = {"preview": preview, "objects": _objects(session), "turns": session.transcript()}
    path.write_text(json.dumps(record, indent=2))
    return path


def transcript_markdown(session: ChatSession, folder: Path, preview: bool) -> Path:
    """The objects and every turn as Markdown; what was typed or generated is escaped, so it shows as text."""
    lines = ["# PixelRefer chat", ""]
    if preview:
        lines += [f"*{PREVIEW_NOTE}*", ""]
    for obj in session.objects:
        lines.append(f"- {html.escape(obj.tag)}{' (' + html.escape(obj.name) + ')' if obj.name else ''}")
    for turn in session.transcript():
        question, answer = html.escape(turn["question"]), html.escape(turn["answer"])
        lines += ["", f"**You:** {question}", "", f"**PixelRefer:** {answer}"]
    path = folder / "transcript.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def overlay_png(image: np.ndarray, session: ChatSession, folder: Path) -> Path:
    """The image with every object drawn on it."""
    masks = {obj.id: obj.masks[0] for obj in session.objects if 0 in obj.masks}
    colors = {obj.id: obj.color_index for obj in session.objects}
    drawn = overlay_image(image, masks, colors) if masks else image
    path = folder / "overlay.png"
    cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    return path


def overlay_video(clip: Clip, session: ChatSession, folder: Path) -> Path:
    """The clip at its own frame rate with every object drawn where it was tracked (the nearest sampled
    frame's mask), as a browser-playable MP4; or its sampled frames, captioned as such, when the whole clip
    cannot be played (`pixelrefer.media.video.write_clip_overlay`)."""
    masks = {obj.id: dict(obj.masks) for obj in session.objects}
    colors = {obj.id: obj.color_index for obj in session.objects}
    return write_clip_overlay(clip, masks, colors, folder / "overlay.mp4")
