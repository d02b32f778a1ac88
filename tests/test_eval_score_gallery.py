"""The gallery after scoring: reference beside each model's answer, seconds, per-item scores, a summary
line per model, pages for large runs, and a page that stays readable at phone width (Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrefer.eval.score import score_file
from pixelrefer.report import write_eval_report, write_report
from pixelrefer.runtime.errors import InputError

ITEMS = [
    ("(A) The man in white", "Basic Questions", "(A)", "(B)"),
    ("(C) He sits <down>", "Sequential Questions", "(C) He sits", "(C)"),
    ("(B) Behind the car", "Relationship Question", "(A) " + "very long " * 40, None),
    ("(D) Nothing", "Reasoning Question", "D", "(D)"),
    ("(A) It falls", "Future Predictions", "(A)", "(B)"),
]


def _run(path: Path, model: str, column: int) -> Path:
    with path.open("w") as handle:
        for i, (answer, kind, *predictions) in enumerate(ITEMS):
            prediction = predictions[column]
            cut = column == 0 and i == 2
            row = {
                "schema": "pixelrefer.eval/1",
                "benchmark": "videorefer-q",
                "id": f"q{i}",
                "index": i,
                "reference": {"Answer": answer, "type": kind, "video": "v.mp4"},
                "prompt": f"Question {i} about <region>?",
                "prediction": prediction or "",
                "finish_reason": "length" if cut else ("error" if prediction is None else "eos"),
                "error": None if prediction is not None else "unreadable video",
                "seconds": 1.5 + i,
                "provenance": {"model": model},
            }
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    full = _run(tmp_path / "full.jsonl", "PixelRefer-2B", 0)
    lite = _run(tmp_path / "lite.jsonl", "PixelRefer-Lite-2B", 1)
    scores = tmp_path / "full.scores.json"
    scores.write_text(json.dumps(score_file("videorefer-q", full).to_json()))
    return full, lite, scores


def test_eval_gallery_shows_reference_seconds_scores_and_summary(runs, tmp_path):
    full, lite, scores = runs
    page = write_eval_report([full, lite], tmp_path / "g.html", scores=[scores]).read_text()
    assert "PixelRefer-2B" in page and "PixelRefer-Lite-2B" in page
    assert "<b>reference:</b> (C) He sits &lt;down&gt;" in page and "<down>" not in page  # escaped
    assert "Question 1 about &lt;region&gt;?" in page
    assert "1.50 s" in page and "cut off by the token limit" in page
    assert "error: unreadable video" in page
    assert page.count('class="score">score 1.000') == 4 and page.count('class="score">score 0.000') == 1
    summary = re.search(r'<table class="summary">.*?</table>', page).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", summary)
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", r) for r in rows]
    assert cells[0] == ["model", "answered", "errors", "cut off", "not answered", "s / item", "score"]
    assert cells[1] == ["PixelRefer-2B", "5", "0", "1", "0", "3.50", "0.800"]
    assert cells[2] == ["PixelRefer-Lite-2B", "4", "1", "0", "0", "3.50", "not scored"]


def test_report_command_path_takes_predictions_and_scores(runs, tmp_path):
    full, lite, scores = runs
    page = write_report(full, [lite, scores], tmp_path / "r.html", titles=["A", "B"]).read_text()
    assert "<td>A</td>" in page and "<td>B</td>" in page and "0.800" in page


def test_large_runs_are_paged(runs, tmp_path):
    full, _, _ = runs
    first = write_eval_report([full], tmp_path / "p.html", page_size=2)
    pages = sorted(tmp_path.glob("p*.html"))
    assert [p.name for p in pages] == ["p-2.html", "p-3.html", "p.html"]
    assert first.read_text().count('<section class="item"') == 2
    assert (tmp_path / "p-3.html").read_text().count('<section class="item"') == 1
    assert 'href="p-2.html"' in first.read_text() and 'href="p.html"' in (tmp_path / "p-3.html").read_text()
    with pytest.raises(InputError, match="page size"):
        write_eval_report([full], tmp_path / "x.html", page_size=0)


def test_batch_gallery_summary_seconds_and_pages(tmp_path):
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps(
                {"id": f"i{k}", "image": "a.png", "objects": [{"mask": "m.png"}], "questions": ["What?"]}
            )
            + "\n"
            for k in range(3)
        )
    )
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps({"id": "i0", "answers": [{"question": "What?", "answer": "a box", "finish_reason": "length"}],
                    "error": None, "seconds": 2.25, "model": "M"}) + "\n"
        + json.dumps({"id": "i1", "answers": [], "error": "boom", "seconds": 0.5, "model": "M"}) + "\n"
    )  # fmt: skip
    first = write_report(items, [answers], tmp_path / "b.html", page_size=2)
    page = first.read_text()
    assert "2.25 s" in page and "[length]" in page
    assert "<td>M</td><td>1</td><td>1</td><td>1</td><td>1</td>" in page  # answered, errors, cut off, missing
    assert (tmp_path / "b-2.html").is_file() and 'href="b-2.html"' in page


@pytest.mark.browser
@pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium: bash .ci/browser"
)
def test_phone_width_has_no_sideways_scroll(runs, tmp_path):
    from playwright.sync_api import sync_playwright

    full, lite, scores = runs
    page_path = write_eval_report([full, lite], tmp_path / "phone.html", scores=[scores])
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(page_path.as_uri())
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            columns = page.evaluate(
                "[...document.querySelectorAll('.col')].slice(0, 2).map(c => c.getBoundingClientRect().width)"
            )
        finally:
            browser.close()
    assert widths[0] <= widths[1]  # nothing runs off the side of a phone
    assert min(columns) > 300  # the two models' answers stack, each nearly the full width
