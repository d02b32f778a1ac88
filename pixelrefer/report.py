"""A static HTML gallery of a batch run: each item's picture with its objects drawn, its questions and answers.

One column per answers file (e.g. PixelRefer-2B next to PixelRefer-Lite-2B on the same items). The page is
one self-contained file (thumbnails inline as JPEG), so it can be mailed or opened from anywhere; all text
is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .batch import LoadedItem, iter_loaded, last_rows
from .eval.rows import SCHEMA, read_rows
from .media.video import overlay_image
from .runtime.errors import InputError

__all__ = ["thumbnails", "write_eval_report", "write_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} .meta{color:#666;font-size:13px}
.item{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px;margin:14px 0;display:flex;gap:16px}
.pics{flex:0 0 auto;display:flex;flex-direction:column;gap:6px} .pics img{border-radius:4px;max-width:260px}
.cols{display:flex;gap:16px;flex:1} .col{flex:1;min-width:0}
.col h3{margin:0 0 6px;font-size:14px;color:#555} .q{font-weight:600;margin-top:8px} .a{white-space:pre-wrap}
.err{color:#b00020} .tag{font-family:monospace;font-size:12px;color:#888}
.ref{background:#f1f6ee;border-radius:6px;padding:6px 8px;margin:6px 0} .score{font-weight:600;color:#333}
.summary{border-collapse:collapse;font-size:13px;margin:8px 0} .summary td,.summary th{padding:3px 8px;text-align:left}
.summary tr{border-bottom:1px solid #eee} nav{margin:10px 0;font-size:14px} nav a,nav b{margin-right:8px}
@media (max-width:640px){body{margin:8px}.item,.cols{flex-direction:column}.pics img{max-width:100%}
.summary{display:block;overflow-x:auto}}
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
    if isinstance(row.get("seconds"), int | float):
        parts.append(f'<div class="tag">{row["seconds"]:.2f} s</div>')
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
    page_size: int = 100,
) -> Path:
    """Write the gallery of `items_path` with one column per answers file; returns `out_path`.

    An `eval run` predictions file in place of the items file gives the eval gallery (`write_eval_report`),
    every file after it being another model's predictions or an `eval score --json` file.
    """
    if _is_eval_rows(Path(items_path)):
        predictions = [Path(items_path), *(Path(a) for a in answers)]
        scores = [p for p in predictions if p.suffix == ".json" and _score_file(p) is not None]
        return write_eval_report(
            [p for p in predictions if p not in scores],
            out_path,
            scores=scores,
            titles=titles,
            page_size=page_size,
        )
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
    summary = _summary(
        [(name, _batch_counts(rows, len(blocks))) for name, rows in zip(names, columns, strict=True)]
    )
    meta = f"{len(blocks)} items from {html.escape(items_path.name)}"
    return _write_pages(Path(out_path), title, meta + summary, blocks, page_size)


def _batch_counts(rows: dict[str, dict], items: int) -> dict[str, Any]:
    """answered, errors, cut off (an answer stopped by the token limit) and not answered, of one answers file."""
    answered = [r for r in rows.values() if isinstance(r, dict) and not r.get("error")]
    cut = sum(
        any(isinstance(a, dict) and a.get("finish_reason") == "length" for a in r.get("answers") or [])
        for r in answered
        if isinstance(r.get("answers"), list)
    )
    return {
        "answered": len(answered),
        "errors": len(rows) - len(answered),
        "cut off": cut,
        "not answered": max(0, items - len(rows)),
    }


def _summary(lines: list[tuple[str, dict[str, Any]]]) -> str:
    """One table row per model: its counts (and score, where the run was scored)."""
    keys = list(dict.fromkeys(k for _, counts in lines for k in counts))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["model", *keys])
    body = "".join(
        f"<tr><td>{html.escape(str(name))}</td>"
        + "".join(f"<td>{html.escape(str(counts.get(k, '')))}</td>" for k in keys)
        + "</tr>"
        for name, counts in lines
    )
    return f'<table class="summary"><tr>{head}</tr>{body}</table>'


def _page_name(out_path: Path, page: int) -> str:
    return out_path.name if page == 0 else f"{out_path.stem}-{page + 1}{out_path.suffix}"


def _write_pages(out_path: Path, title: str, header: str, blocks: list[str], page_size: int) -> Path:
    """`blocks` over pages of `page_size` (OUT.html, OUT-2.html, ...) linked to each other; returns OUT."""
    if page_size < 1:
        raise InputError("the page size must be at least 1")
    count = max(1, -(-len(blocks) // page_size))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for page in range(count):
        nav = ""
        if count > 1:
            links = "".join(
                f"<b>{i + 1}</b>"
                if i == page
                else f'<a href="{html.escape(_page_name(out_path, i))}">{i + 1}</a>'
                for i in range(count)
            )
            nav = f"<nav>page {links}</nav>"
        shown = blocks[page * page_size : (page + 1) * page_size]
        document = (
            f'<!doctype html><html><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{title}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
            f'<div class="meta">{header}</div>{nav}{"".join(shown)}{nav}</body></html>'
        )
        (out_path.parent / _page_name(out_path, page)).write_text(document, encoding="utf-8")
    return out_path


def _is_eval_rows(path: Path) -> bool:
    """Whether `path` is an `eval run` predictions file (its first row carries the eval schema)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline() or "null")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(first, dict) and first.get("schema") == SCHEMA


def _score_file(path: Path) -> dict[str, Any] | None:
    """An `eval score --json` document, or None."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) and isinstance(document.get("per_item"), dict) else None


def _eval_rows(path: Path) -> dict[str, dict]:
    """Each item's last row (an error row never hides an answer), in the annotation file's order."""
    rows: dict[str, dict] = {}
    for row in read_rows(path):
        key = str(row.get("id"))
        earlier = rows.get(key)
        if earlier is None or not row.get("error") or earlier.get("error"):
            rows[key] = row
    return dict(
        sorted(rows.items(), key=lambda kv: kv[1].get("index") if isinstance(kv[1].get("index"), int) else 0)
    )


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_number(v)}" for k, v in value.items() if isinstance(v, int | float))
    return str(value)


def _eval_counts(rows: dict[str, dict], items: int, score: dict[str, Any] | None) -> dict[str, Any]:
    answered = [r for r in rows.values() if not r.get("error")]
    seconds = [r["seconds"] for r in answered if isinstance(r.get("seconds"), int | float)]
    counts: dict[str, Any] = {
        "answered": len(answered),
        "errors": len(rows) - len(answered),
        "cut off": sum(r.get("finish_reason") == "length" for r in answered),
        "not answered": max(0, items - len(rows)),
        "s / item": f"{sum(seconds) / len(seconds):.2f}" if seconds else "",
    }
    counts["score"] = _number(score.get("overall")) if score else "not scored"
    return counts


def _reference(reference: Any) -> str:
    """The reference answer where the benchmark has one, with its question type or category as a tag."""
    if not isinstance(reference, dict):
        return ""
    answer = reference.get("Answer")
    tag = reference.get("type") or reference.get("category")
    parts = []
    if isinstance(tag, str) and tag != answer:
        parts.append(f'<span class="tag">{html.escape(tag)}</span> ')
    if answer is not None:
        text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        parts.append(f"<b>reference:</b> {html.escape(text)}")
    return f'<div class="ref">{"".join(parts)}</div>' if parts else ""


def _eval_column(row: dict | None, scored: dict[str, Any] | None) -> str:
    if row is None:
        return '<p class="err">not answered</p>'
    tags = []
    if isinstance(row.get("seconds"), int | float):
        tags.append(f"{row['seconds']:.2f} s")
    reason = row.get("finish_reason")
    if isinstance(reason, str) and reason not in ("", "eos", "error"):
        tags.append("cut off by the token limit" if reason == "length" else reason)
    head = f'<div class="tag">{html.escape(" · ".join(tags))}</div>' if tags else ""
    if scored is not None and isinstance(scored.get("score"), int | float):
        head += f'<div class="score">score {_number(float(scored["score"]))}</div>'
    if row.get("error"):
        return head + f'<p class="err">error: {html.escape(str(row["error"]))}</p>'
    return head + f'<div class="a">{html.escape(str(row.get("prediction", "")))}</div>'


def write_eval_report(
    predictions: list[str | Path],
    out_path: str | Path,
    *,
    scores: list[str | Path] = (),
    titles: list[str] | None = None,
    page_size: int = 100,
) -> Path:
    """The gallery of `eval run` predictions, one column per model beside the reference answer.

    Each `eval score --json` file in `scores` is matched to the predictions file it names (else taken in
    order) and adds its per-item score to each answer and its overall score to the model's summary line.
    Text only: the media stay where the benchmark keeps them. Returns `out_path` (the first page).
    """
    paths = [Path(p) for p in predictions]
    if not paths:
        raise InputError("no predictions file to show")
    columns = [_eval_rows(p) for p in paths]
    documents = [d for d in (_score_file(Path(s)) for s in scores) if d is not None]
    by_file: list[dict[str, Any] | None] = []
    for position, path in enumerate(paths):
        named = [d for d in documents if d.get("predictions") == str(path.resolve())]
        by_file.append(named[0] if named else (documents[position] if position < len(documents) else None))
    names = titles or [
        next(
            (
                str(r["provenance"].get("model"))
                for r in rows.values()
                if isinstance(r.get("provenance"), dict)
            ),
            p.stem,
        )
        for rows, p in zip(columns, paths, strict=True)
    ]
    order = list(dict.fromkeys(key for rows in columns for key in rows))
    blocks = []
    for key in order:
        first = next(rows[key] for rows in columns if key in rows)
        cols = "".join(
            f'<div class="col"><h3>{html.escape(str(name))}</h3>'
            f"{_eval_column(rows.get(key), (score or {}).get('per_item', {}).get(key))}</div>"
            for name, rows, score in zip(names, columns, by_file, strict=True)
        )
        prompt = html.escape(str(first.get("prompt", "")))
        blocks.append(
            f'<section class="item" id="{html.escape(key)}"><div class="cols" style="flex-direction:column">'
            f'<div><span class="tag">{html.escape(key)}</span><div class="q">{prompt}</div>'
            f"{_reference(first.get('reference'))}</div>"
            f'<div class="cols">{cols}</div></div></section>'
        )
    benchmark = next((str(r.get("benchmark")) for rows in columns for r in rows.values()), "eval")
    title = f"PixelRefer {html.escape(benchmark)}: " + " vs ".join(html.escape(str(n)) for n in names)
    summary = _summary(
        [
            (name, _eval_counts(rows, len(order), score))
            for name, rows, score in zip(names, columns, by_file, strict=True)
        ]
    )
    return _write_pages(Path(out_path), title, f"{len(order)} items{summary}", blocks, page_size)
