"""Click-to-mask latency as a visitor feels it: the app in a browser, clicked on its canvas. Nothing is asserted.

`python app.py` runs in its own process (offline preview: the tiny preview model; the segmenter under test)
and Debian's headless Chromium, driven by Playwright, uploads a photo and clicks objects on `#canvas`. A
click is timed in the page, from the pointer going down to:

- point shown: the page's click marker drawn (assets/click_marker.js), or else the first canvas picture
  after the click has loaded (the click drawn, or the mask with it);
- mask shown: the marking message names the segmenter's answer and the picture that came with it has loaded.

The first click on a picture is what SAM's image embedding costs: the app computes it in the background
once the picture is shown (`pixelrefer.serve.prefetch`), so SAM 2.1 runs in two apps side by side: "before"
(`--no-sam-prefetch`: the first click computes the embedding) and "after" (the default). Their trials
alternate (before-after, then after-before), so a machine whose load drifts during the run weighs on both
alike. Each trial is a new visitor who uploads a photo no one uploaded before (one pixel differs per trial,
so SAM's cache, which is keyed by content, cannot help), looks at it for 3 s or 8 s (`--looks`), then clicks
the middle of an object; then `--clicks` more clicks on the same picture (marks cleared in between) give
what a later click costs. The app's log says when each background embedding was ready, from the picture
being shown, how long it computed, and, when a click came before it was ready, when the click came: the
rest of the computation is what that click had to wait for.

Answer latency with and without the background embedding: a new visitor picks an example (a picture with its
objects marked) and sends its question at once, while the embedding of the picture is wanted too (after) or
not (before); timed from Send to the first text of the answer and to its end. These run after the clicks,
before-after alternating (the examples' pictures are not among the clicked ones, so their embeddings are not
cached), and the embeddings of the click trials are those the app logged before them.

Segmenters: GrabCut (the offline fallback; no embedding, one run) and SAM 2.1 tiny with random weights at the
real shape (`sam21_config`, 1024 px input: timings are those of the real checkpoint). The photos are the
app's examples, clicked in the middle of their marked objects, once as shipped and once enlarged to a phone
photo's size (1600 px on the long side, within the app's limits).

    python bench/bench_marking.py                  # both segmenters, 5 trials per photo, look and mode
    python bench/bench_marking.py --short          # SAM only, one photo, one trial per look and mode
    python bench/bench_marking.py --segmenters sam2-tiny --repeats 2 --clicks 2 --photos cat
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pixelrefer.serve.examples import load_examples  # noqa: E402
from tests.app_process import RunningApp  # noqa: E402

CHROMIUM = Path(os.environ.get("PIXELREFER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
UPLOAD = "#image-in input[type=file], #canvas input[type=file]"
"""Where a photo is uploaded: the upload box, or the canvas itself when it takes uploads."""
DONE = re.compile(r"Mask by|found no object")
"""The marking message once the segmenter has answered (with a mask, or saying it found none)."""
WAIT_MS = 120_000

# Records, in page time, the pointer going down on the canvas, every picture the canvas loads and every
# text of the marking message.
WATCH = """() => {
  const log = {down: null, marker: null, loads: [], texts: []};
  window.__marking = log;
  const canvas = document.querySelector('#canvas');
  canvas.addEventListener('pointerdown', () => { log.down = performance.now(); }, true);
  canvas.addEventListener('load', e => {
    if (e.target.tagName === 'IMG') log.loads.push({t: performance.now(), src: e.target.currentSrc});
  }, true);
  new MutationObserver(records => {
    if (records.some(r => [...r.addedNodes].some(n => n.classList && n.classList.contains('click-marker'))))
      log.marker = log.marker ?? performance.now();
  }).observe(canvas, {subtree: true, childList: true});
  const info = document.querySelector('#mark-info');
  new MutationObserver(() => log.texts.push({t: performance.now(), text: info.innerText}))
    .observe(info, {subtree: true, childList: true, characterData: true});
}"""

RESET = "() => { const log = window.__marking; log.down = null; log.marker = null; log.loads = []; log.texts = []; }"

CANVAS_SRC = "() => { const img = document.querySelector('#canvas img'); return img ? img.currentSrc : ''; }"


def build_sam(folder: Path) -> Path:
    """SAM 2.1 tiny with random weights at the official shape, saved in the official layout."""
    import torch
    from transformers import Sam2VideoModel

    from pixelrefer.segment.sam import sam21_config

    torch.manual_seed(0)
    Sam2VideoModel(sam21_config("tiny")).save_pretrained(folder)
    return folder


# Random weights make denormal floats, which real checkpoints do not: flushed, as bench_segment does.
# The prefetch's log lines (when each embedding was ready) go to the app's log, and so does the app's own time
# for each answer: the page's Send handler (`send_stream`) timed from its start to its first update and to its
# end. That is what background work could cost a visitor whose browser runs elsewhere; the browser's figure
# also has Chromium sharing this machine's CPUs with the app.
LAUNCH = """
import logging, runpy, sys, time, torch
torch.set_flush_denormal(True)
logging.basicConfig(format="%(created).3f %(levelname)s:%(name)s:%(message)s")
logging.getLogger("pixelrefer.serve.prefetch").setLevel(logging.INFO)
logging.getLogger("bench").setLevel(logging.INFO)
import pixelrefer.serve.handlers as handlers
send_stream = handlers.send_stream
def timed(*args, **kwargs):
    began, first = time.perf_counter(), None
    for shown in send_stream(*args, **kwargs):
        first = first or time.perf_counter() - began
        yield shown
    done = time.perf_counter() - began
    logging.getLogger("bench").info("answer in the app: first update %.3f s, done %.3f s", first or done, done)
handlers.send_stream = timed
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
"""


def serve(sam2: str, log_path: Path, flags: list[str]) -> RunningApp:
    """`python app.py --sam2 <sam2> <flags>` in the offline preview, until the block ends; answers of at most
    64 tokens (the preview's answers are random text: their length only adds the same time to both runs).
    Every visitor of the bench comes from this machine, and a closed tab's session ends a while later, so the
    per-client session cap (8) is raised: it would refuse the bench's ninth visitor."""
    limits = ["--max-new-tokens", "64", "--sessions-per-client", "1000"]
    return RunningApp(["--sam2", sam2, *limits, *flags], log_path, launch=["-c", LAUNCH], timeout_s=300)


def photos(folder: Path) -> list[tuple[str, Path, list[tuple[float, float]]]]:
    """The example photos (as shipped and enlarged), each with the middle of every marked object, given as
    fractions of the picture's width and height (the canvas may show a smaller copy)."""
    made = []
    for example in load_examples(REPO / "examples"):
        if example.kind != "image":
            continue
        image = np.asarray(Image.open(example.path).convert("RGB"))
        middles = []
        for obj in example.objects:
            mask = next(iter(obj.masks.values())).astype(np.uint8)
            depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
            row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
            middles.append((float(col), float(row)))
        height, width = image.shape[:2]
        middles = [(x / width, y / height) for x, y in middles]
        made.append((f"{example.name} {width}x{height}", example.path, middles))
        scale = 1600 / max(height, width)
        big = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
        path = folder / f"{example.name}_big.png"
        Image.fromarray(big).save(path)
        made.append((f"{example.name} {big.shape[1]}x{big.shape[0]}", path, middles))
    return made


def click_pixel(page: Page, x: float, y: float) -> None:
    """Click the canvas at (x, y), fractions of the picture's width and height, as Gradio maps clicks to
    pixels (the picture is fitted into the canvas)."""
    image = page.locator("#canvas img")
    box = image.evaluate(
        """img => ({width: img.clientWidth, height: img.clientHeight,
                   natural_width: img.naturalWidth, natural_height: img.naturalHeight})"""
    )
    scale = min(box["width"] / box["natural_width"], box["height"] / box["natural_height"], 1)
    left = (box["width"] - box["natural_width"] * scale) / 2
    top = (box["height"] - box["natural_height"] * scale) / 2
    x, y = x * box["natural_width"], y * box["natural_height"]
    image.click(position={"x": left + x * scale, "y": top + y * scale})


def clear_marks(page: Page) -> None:
    page.get_by_role("button", name="Clear marks", exact=True).click()
    page.wait_for_function(
        "re => !new RegExp(re).test(document.querySelector('#mark-info').innerText)", arg=DONE.pattern
    )


def timed_click(page: Page, x: float, y: float) -> tuple[float, float]:
    """(point shown, mask shown) in seconds after the pointer went down."""
    before = page.evaluate(CANVAS_SRC)
    page.evaluate(RESET)
    click_pixel(page, x, y)
    try:
        page.wait_for_function(
            "re => new RegExp(re).test(document.querySelector('#mark-info').innerText)", arg=DONE.pattern
        )
    except PlaywrightTimeout as exc:
        shown = page.locator("#mark-info").inner_text()
        raise RuntimeError(f"no mask after a click at ({x:.2f}, {y:.2f}); the page says {shown!r}") from exc
    # The answer's picture has loaded (the message and the picture arrive in the same update).
    page.wait_for_function(
        """before => { const img = document.querySelector('#canvas img');
        return img && img.currentSrc !== before && img.complete &&
               window.__marking.loads.some(l => l.src === img.currentSrc); }""",
        arg=before,
    )
    log = page.evaluate(
        """() => { const log = window.__marking, src = document.querySelector('#canvas img').currentSrc;
        return {down: log.down, marker: log.marker, loads: log.loads,
                final: log.loads.filter(l => l.src === src).pop().t,
                text: log.texts.find(e => /Mask by|found no object/.test(e.text))}; }"""
    )
    down = log["down"]
    # The point is on screen with the page's click marker, else with the first new picture.
    first = log["marker"] or min(entry["t"] for entry in log["loads"] if entry["src"] != before)
    mask = max(log["final"], log["text"]["t"] if log["text"] else log["final"])
    return (first - down) / 1000, (mask - down) / 1000


def _new_visitor(browser, url: str) -> Page:
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url, wait_until="load")
    page.wait_for_selector("#canvas")
    page.evaluate(WATCH)
    return page


def _upload(page: Page, path: Path) -> float:
    """Upload `path`; the perf_counter time at which the server's picture was on the canvas."""
    page.locator(UPLOAD).first.set_input_files(str(path))
    # The server's picture replaces the browser's preview when the upload's message arrives.
    page.locator("#mark-info").filter(has_text="Click on an object").wait_for()
    page.wait_for_function(
        "() => { const img = document.querySelector('#canvas img');"
        " return !!img && img.complete && img.naturalWidth > 0 && img.clientWidth > 0; }"
    )
    shown = time.perf_counter()
    page.locator("#canvas img").scroll_into_view_if_needed()
    return shown


def variant(path: Path, trial: int, folder: Path) -> Path:
    """The photo with one pixel changed: new content for SAM's cache (keyed by the pixels), the same picture."""
    image = np.asarray(Image.open(path).convert("RGB")).copy()
    image[0, 0] = (trial * 37 % 256, trial * 91 % 256, trial // 256 % 256)
    made = folder / f"{path.stem}_trial{trial}.png"
    Image.fromarray(image).save(made)
    return made


@dataclass
class Trial:
    mode: str
    photo: str
    look: float
    first: float
    later: list[float]


def one_trial(
    browser, url: str, path: Path, middles: list, look: float, clicks: int
) -> tuple[float, list[float]]:
    """A new visitor uploads `path`, looks at it for `look` s, clicks; then `clicks` later clicks."""
    page = _new_visitor(browser, url)
    try:
        shown = _upload(page, path)
        time.sleep(max(0.0, shown + look - time.perf_counter()))
        _, first = timed_click(page, *middles[0])
        later = []
        for k in range(clicks):
            clear_marks(page)
            later.append(timed_click(page, *middles[(k + 1) % len(middles)])[1])
    finally:
        page.context.close()
    return first, later


def alternating(modes: list[str], k: int) -> list[str]:
    """The modes in their order for the k-th round, reversed every other round."""
    return modes if k % 2 == 0 else modes[::-1]


def first_clicks(
    browser, urls: dict[str, str], shots: list, looks: list[float], repeats: int, clicks: int, folder: Path
) -> list[Trial]:
    """Per photo, look and repeat, in every app (the first one alternating): a new visitor, a new variant."""
    trials, count, rounds = [], 0, 0
    for label, path, middles in shots:
        for look in looks:
            for _ in range(repeats):
                for mode in alternating(list(urls), rounds):
                    count += 1
                    first, later = one_trial(
                        browser, urls[mode], variant(path, count, folder), middles, look, clicks
                    )
                    trials.append(Trial(mode, label, look, first, later))
                rounds += 1
    return trials


ANSWER_DONE = """n => { const bots = document.querySelectorAll('#chat [data-testid="bot"]');
  const tracker = document.querySelector('#chat [data-testid="status-tracker"]');
  return bots.length >= n && bots[bots.length - 1].innerText.trim().length > 0 &&
         (!tracker || tracker.classList.contains('hide')); }"""

ANSWER_STARTED = """n => { const bots = document.querySelectorAll('#chat [data-testid="bot"]');
  return bots.length >= n && bots[bots.length - 1].innerText.trim().length > 0; }"""


def answers_at_once(
    browser, urls: dict[str, str], examples: int | None
) -> list[tuple[str, str, float, float]]:
    """Per image example (the first `examples`), in every app (the first one alternating): a new visitor picks
    it and sends its question at once; (mode, name, first text, done)."""
    rows = []
    images = [example for example in load_examples(REPO / "examples") if example.kind == "image"]
    for k, example in enumerate(images[:examples]):
        for mode in alternating(list(urls), k):
            page = _new_visitor(browser, urls[mode])
            try:
                page.locator("#examples .thumbnail-item", has_text=example.name).first.click()
                page.locator("#mark-info").filter(has_text=f"Example “{example.name}” loaded").wait_for()
                began = time.perf_counter()
                page.get_by_role("button", name="Send", exact=True).click()
                page.wait_for_function(ANSWER_STARTED, arg=1, polling=20)
                started = time.perf_counter()
                page.wait_for_function(ANSWER_DONE, arg=1, polling=20)
                rows.append((mode, example.name, started - began, time.perf_counter() - began))
            finally:
                page.context.close()
    return rows


READY = re.compile(
    r"^([\d.]+) .*SAM image embedding ready ([\d.]+) s after the picture was shown \(([\d.]+) s computing, "
    r"([\d.]+) s paused(?:; a click waited for it from ([\d.]+) s)?",
    re.MULTILINE,
)


@dataclass
class Ready:
    ready: float
    """From the picture shown to the embedding kept."""
    computing: float
    paused: float
    """Waiting for its turn (visitors' requests, a warm-up for a question)."""
    clicked: float | None
    """From the picture shown to a click waiting for it (None: it was ready before any click)."""


ANSWERED = re.compile(r"answer in the app: first update ([\d.]+) s, done ([\d.]+) s")


def answered_in_app(log: Path) -> list[tuple[float, float]]:
    """(first update, done) of every answer the app logged, in order."""
    return [(float(a), float(b)) for a, b in ANSWERED.findall(log.read_text(errors="replace"))]


def embedding_ready(log: Path, until: float) -> list[Ready]:
    """Every background embedding the app logged before `until` (a `time.time()`)."""
    found = READY.findall(log.read_text(errors="replace"))
    return [
        Ready(float(b), float(c), float(d), float(e) if e else None)
        for a, b, c, d, e in found
        if float(a) < until
    ]


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} / {p95(values):5.2f}" if values else "    -"


def summary(
    segmenter: str, mode: str, trials: list[Trial], looks: list[float], ready: list[Ready], answers
) -> str:
    """One row of the closing table."""
    mine = [t for t in trials if t.mode == mode]
    firsts = [spread([t.first for t in mine if t.look == look]) for look in looks]
    later = spread([v for t in mine for v in t.later])
    ready_s = spread([r.ready for r in ready]) if ready else "-"
    waited = spread([r.ready - r.clicked for r in ready if r.clicked is not None])
    rows = [row for row in answers if row[0] == mode]
    answered = [spread([row[k] for row in rows if row[k] is not None]) if rows else "-" for k in (2, 3, 4, 5)]
    cells = [segmenter, mode, ready_s, *firsts, later, waited if ready else "-", *answered]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--segmenters", nargs="+", default=["grabcut", "sam2-tiny"], choices=["grabcut", "sam2-tiny"]
    )
    parser.add_argument(
        "--looks", nargs="+", type=float, default=[3.0, 8.0], help="seconds before the first click"
    )
    parser.add_argument("--repeats", type=int, default=5, help="trials per photo, look and mode")
    parser.add_argument("--clicks", type=int, default=3, help="later clicks per trial, after the first")
    parser.add_argument("--photos", nargs="*", help="only the photos whose label starts with one of these")
    parser.add_argument("--no-answers", action="store_true", help="skip the answer-latency trials")
    parser.add_argument(
        "--short",
        action="store_true",
        help="a smoke run (about 2 minutes): SAM only, the first photo as shipped, one trial "
        "per look and mode, one later click, one example's answer",
    )
    args = parser.parse_args()
    examples = None
    if args.short:
        args.segmenters, args.repeats, args.clicks, examples = ["sam2-tiny"], 1, 1, 1

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-marking-") as folder:
        work = Path(folder)
        shots = photos(work)
        if args.photos:
            shots = [shot for shot in shots if any(shot[0].startswith(p) for p in args.photos)]
        if args.short:
            shots = shots[:1]
        print(
            f"repo {REPO} · {os.cpu_count()} CPUs · load average {os.getloadavg()[0]:.2f} at the start · "
            f"{args.repeats} trials per photo, look and mode, {args.clicks} later clicks each"
        )
        answers, ready, results, phases = [], {}, {}, []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            for segmenter in args.segmenters:
                sam2 = "grabcut" if segmenter == "grabcut" else str(build_sam(work / "sam2-tiny"))
                modes = (
                    {"-": []} if segmenter == "grabcut" else {"before": ["--no-sam-prefetch"], "after": []}
                )
                logs = {mode: work / f"{segmenter}-{mode}.log" for mode in modes}
                with contextlib.ExitStack() as apps:
                    mark = time.monotonic()
                    urls = {
                        mode: apps.enter_context(serve(sam2, logs[mode], flags)).url
                        for mode, flags in modes.items()
                    }
                    phases.append(f"{segmenter}: apps started in {time.monotonic() - mark:.0f} s")
                    mark = time.monotonic()
                    results[segmenter] = first_clicks(
                        browser, urls, shots, args.looks, args.repeats, args.clicks, work
                    )
                    phases.append(
                        f"{len(results[segmenter])} click trials in {time.monotonic() - mark:.0f} s"
                    )
                    clicked, mark = time.time(), time.monotonic()
                    if not args.no_answers and segmenter != "grabcut":
                        answers += [(segmenter, *row) for row in answers_at_once(browser, urls, examples)]
                        phases.append(f"answers in {time.monotonic() - mark:.0f} s")
                for mode in modes:
                    ready[(segmenter, mode)] = embedding_ready(logs[mode], clicked)
                    in_app = iter(answered_in_app(logs[mode]))
                    answers = [
                        (*row, *next(in_app, (None, None))) if row[:2] == (segmenter, mode) else row
                        for row in answers
                    ]
            browser.close()
        ended_load = os.getloadavg()[0]

    print()
    print(
        "seconds from pointer down to the mask shown (p50 / p95); look = seconds the picture was shown first"
    )
    print(
        f"| {'segmenter':<10} | {'prefetch':<8} | {'photo':<20} | look | first click p50/p95 | later p50/p95 |"
    )
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 22}|------|{'-' * 21}|{'-' * 15}|")
    for segmenter, trials in results.items():
        for mode in dict.fromkeys(t.mode for t in trials):
            for label in dict.fromkeys(t.photo for t in trials):
                for look in args.looks:
                    chosen = [t for t in trials if t.mode == mode and t.photo == label and t.look == look]
                    later = [v for t in chosen for v in t.later]
                    print(
                        f"| {segmenter:<10} | {mode:<8} | {label:<20} | {look:4.0f} | "
                        f"{spread([t.first for t in chosen]):>19} | {spread(later):>13} |"
                    )

    print()
    print(
        "Summary, p50 / p95 in seconds. ready: the background embedding kept, from the picture shown (app log); "
        "waited: the rest of the embedding a first click waited for when it came before it was ready; "
        "answer: an example's question sent at once, to the first text and to the end, in the browser (Chromium "
        "shares the CPUs with the app) and in the app (its Send handler, to its first update and its end)."
    )
    looks = [f"first click, {look:g} s look" for look in args.looks]
    header = [
        "segmenter",
        "prefetch",
        "embedding ready",
        *looks,
        "later clicks",
        "waited",
        "answer first text",
        "answer done",
        "in the app: first",
        "done",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for segmenter, trials in results.items():
        for mode in dict.fromkeys(t.mode for t in trials):
            rows = [row[1:] for row in answers if row[0] == segmenter]
            print(summary(segmenter, mode, trials, args.looks, ready.get((segmenter, mode), []), rows))
    for (segmenter, mode), found in ready.items():
        if found:
            each = ", ".join(
                f"{r.ready:.2f}/{r.computing:.2f}/{r.paused:.2f}" + (f"/{r.clicked:.2f}" if r.clicked else "")
                for r in found
            )
            print(f"{segmenter} {mode}, each embedding: ready/computing/paused[/clicked at] {each}")
    for segmenter, mode, name, started, done, app_first, app_done in answers:
        in_app = "-" if app_done is None else f"{app_first:.2f} / {app_done:.2f} s"
        print(
            f"answer right after picking '{name}', {segmenter} prefetch {mode}: first text {started:.2f} s, "
            f"done {done:.2f} s (in the app {in_app})"
        )
    print(
        f"load average {ended_load:.2f} at the end; {time.monotonic() - began:.0f} s in all ({'; '.join(phases)})"
    )


if __name__ == "__main__":
    main()
