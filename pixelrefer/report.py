"""A static HTML gallery of a batch run: each item's picture with its objects drawn, its questions and answers.

One column per answers file (e.g. PixelRefer-2B next to PixelRefer-Lite-2B on the same items). The page is
one self-contained file (thumbnails inline as JPEG), so it can be mailed or opened from anywhere; all text
is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .batch import LoadedItem, iter_loaded, last_rows
from .media.video import overlay_image

__all__ = ["thumbnails", "write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} .meta{color:#666;font-size:13px}
.item{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px;margin:14px 0;display:flex;gap:16px}
.pics{flex:0 0 auto;display:flex;flex-direction:column;gap:6px} .pics img{border-radius:4px;max-width:260px}
.cols{display:flex;gap:16px;flex:1} .col{flex:1;min-width:0}
.col h3{margin:0 0 6px;font-size:14px;color:#555} .q{font-weight:600;margin-top:8px} .a{white-space:pre-wrap}
.err{color:#b00020} .tag{font-family:monospace;font-size:12px;color:#888}
"""


def _jpeg(picture: np.ndarray, side: int) -> str:
    image = Image.fromarray(picture)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(loaded: LoadedItem, side: int = 260, most: int = 3) -> list[tuple[str, np.ndarray]]:
    """(caption, picture with the objects drawn) for an image, or for up to `most` masked frames of a clip."""
    labels = {k: k - 1 for k in range(1, len(loaded.objects) + 1)}
    if "image" in loaded.media:
        masks = {k: masks[0] for k, (masks, _) in enumerate(loaded.objects, start=1)}
        return [("image", overlay_image(loaded.media["image"], masks, labels))]
    clip = loaded.media["clip"]
    frames = dict(zip(clip.indices, clip.frames, strict=True)) | loaded.media["extra_frames"]
    marked = sorted({f for masks, _ in loaded.objects for f in masks})
    picks = [
        marked[i]
        for i in sorted(set(np.linspace(0, len(marked) - 1, min(most, len(marked))).round().astype(int)))
    ]
    out = []
    for frame in picks:
        masks = {k: m[frame] for k, (m, _) in enumerate(loaded.objects, start=1) if frame in m}
        out.append((f"frame {frame}", overlay_image(frames[frame], masks, labels)))
    return out


def _column(row: dict | None) -> str:
    if row is None:
        return '<p class="err">not answered yet</p>'
    answers = row.get("answers", []) if isinstance(row, dict) else None
    if not isinstance(answers, list):
        return f'<p class="err">bad row: {html.escape(_shape(row))}</p>'
    parts = []
    if row.get("error"):
        parts.append(f'<p class="err">error: {html.escape(str(row["error"]))}</p>')
    for answer in answers:
        if not isinstance(answer, dict):
            parts.append(f'<p class="err">bad answer: {html.escape(_shape(answer))}</p>')
            continue
        parts.append(f'<div class="q">{html.escape(str(answer.get("question", "")))}</div>')
        reason = answer.get("finish_reason", "")
        if not isinstance(reason, str):
            note = f' <span class="err">[bad finish_reason: {html.escape(_shape(reason))}]</span>'
        else:
            note = f' <span class="tag">[{html.escape(reason)}]</span>' if reason and reason != "eos" else ""
        parts.append(f'<div class="a">{html.escape(str(answer.get("answer", "")))}{note}</div>')
    return "".join(parts)


def _shape(value: object) -> str:
    """A bad value as the report shows it: its JSON type and at most 80 characters of it."""
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'…' if len(text) > 80 else ''}"


def write_report(
    items_path: str | Path,
    answers: list[str | Path],
    out_path: str | Path,
    *,
    titles: list[str] | None = None,
    side: int = 260,
) -> Path:
    """Write the gallery of `items_path` with one column per answers file; returns `out_path`."""
    items_path, out_path = Path(items_path), Path(out_path)
    columns = [last_rows(Path(a)) for a in answers]
    names = titles or [
        next((r.get("model") for r in rows.values() if r.get("model")), Path(a).stem)
        for rows, a in zip(columns, answers, strict=True)
    ]
    blocks = []
    for item, loaded, problem in iter_loaded(items_path):
        if loaded is not None:
            pics = "".join(
                f'<figure style="margin:0"><img src="{_jpeg(picture, side)}" alt="{html.escape(caption)}">'
                f'<figcaption class="tag">{html.escape(caption)}</figcaption></figure>'
                for caption, picture in thumbnails(loaded, side)
            )
        else:
            pics = f'<p class="err">{html.escape(problem)}</p>'
        cols = "".join(
            f'<div class="col"><h3>{html.escape(str(name))}</h3>'
            f"{_column({'error': item.problem} if item.problem else rows.get(item.id))}</div>"
            for name, rows in zip(names, columns, strict=True)
        )
        blocks.append(
            f'<section class="item" id="{html.escape(item.id)}"><div class="pics">'
            f'<div class="tag">{html.escape(item.id)}</div>{pics}</div><div class="cols">{cols}</div></section>'
        )
    title = "PixelRefer batch: " + " vs ".join(html.escape(str(n)) for n in names)
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>'
        f'<body><h1>{title}</h1><p class="meta">{len(blocks)} items from {html.escape(items_path.name)}</p>'
        + "".join(blocks)
        + "</body></html>"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path
