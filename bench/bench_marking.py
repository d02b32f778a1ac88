"""Click-to-mask latency as a visitor feels it: the app in a browser, clicked on its canvas. Nothing is asserted.

`python app.py` runs in its own process (offline preview: the tiny preview model; the segmenter under test)
and Debian's headless Chromium, driven by Playwright, uploads a photo and clicks objects on `#canvas`. A
click is timed in the page, from the pointer going down to:

- point shown: the page's click marker drawn (assets/click_marker.js), or else the first canvas picture
  after the click has loaded (the click drawn, or the mask with it);
- mask shown: the marking message names the segmenter's answer and the picture that came with it has loaded.

Before each timed click the marks are cleared, so every click is a fresh one-click object on a picture the
segmenter has already seen (SAM's image embedding is computed on the first click only; that first click is
reported apart). Segmenters: GrabCut (the offline fallback) and SAM 2.1 tiny with random weights at the real
shape (`sam21_config`, 1024 px input: timings are those of the real checkpoint). The photos are the app's
examples, clicked in the middle of their marked objects, once as shipped and once enlarged to a phone
photo's size (1600 px on the long side, within the app's limits).

    python bench/bench_marking.py                    # both segmenters, 8 clicks per photo
    python bench/bench_marking.py --segmenters grabcut --clicks 12
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
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
LAUNCH = (
    "import runpy, sys, torch; torch.set_flush_denormal(True); "
    "sys.argv = ['app.py', *sys.argv[1:]]; runpy.run_path('app.py', run_name='__main__')"
)


def serve(sam2: str, log_path: Path) -> RunningApp:
    """`python app.py --sam2 <sam2>` in the offline preview, until the block ends."""
    return RunningApp(["--sam2", sam2], log_path, launch=["-c", LAUNCH], timeout_s=300)


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


def bench(url: str, shots: list, clicks: int) -> list[tuple[str, float, float, list, list]]:
    """Per photo: the first click, then `clicks` timed clicks over its objects."""
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        for label, path, middles in shots:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#canvas")
            page.evaluate(WATCH)
            page.locator(UPLOAD).first.set_input_files(str(path))
            # The server's picture replaces the browser's preview when the upload's message arrives.
            page.locator("#mark-info").filter(has_text="Click on an object").wait_for()
            page.wait_for_function(
                "() => { const img = document.querySelector('#canvas img');"
                " return !!img && img.complete && img.naturalWidth > 0 && img.clientWidth > 0; }"
            )
            page.locator("#canvas img").scroll_into_view_if_needed()
            first_point, first_mask = timed_click(page, *middles[0])
            points, masks = [], []
            for k in range(clicks):
                clear_marks(page)
                point, mask = timed_click(page, *middles[k % len(middles)])
                points.append(point)
                masks.append(mask)
            rows.append((label, first_point, first_mask, points, masks))
            page.context.close()
        browser.close()
    return rows


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--segmenters", nargs="+", default=["grabcut", "sam2-tiny"], choices=["grabcut", "sam2-tiny"]
    )
    parser.add_argument("--clicks", type=int, default=8, help="timed clicks per photo, after the first")
    parser.add_argument("--photos", nargs="*", help="only the photos whose label starts with one of these")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-marking-") as folder:
        work = Path(folder)
        shots = photos(work)
        if args.photos:
            shots = [shot for shot in shots if any(shot[0].startswith(p) for p in args.photos)]
        load = os.getloadavg()[0]
        print(
            f"repo {REPO} · {os.cpu_count()} CPUs · load average {load:.2f} · {args.clicks} clicks per photo"
        )
        print(
            "times in seconds from pointer down: point = first picture shown, mask = segmenter's mask shown"
        )
        print(f"| {'segmenter':<14} | {'photo':<20} | first click mask | point p50 | mask p50 | mask p95 |")
        print(f"|{'-' * 16}|{'-' * 22}|{'-' * 18}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
        summary = {}
        for segmenter in args.segmenters:
            sam2 = "grabcut" if segmenter == "grabcut" else str(build_sam(work / "sam2-tiny"))
            with serve(sam2, work / f"{segmenter}.log") as app:
                rows = bench(app.url, shots, args.clicks)
            every = []
            for label, _, first_mask, points, masks in rows:
                every += masks
                print(
                    f"| {segmenter:<14} | {label:<20} | {first_mask:16.2f} | {statistics.median(points):9.2f} "
                    f"| {statistics.median(masks):8.2f} | {p95(masks):8.2f} |"
                )
            summary[segmenter] = (statistics.median(every), p95(every))
        for segmenter, (median, high) in summary.items():
            print(
                f"{segmenter}: click -> mask p50 {median:.2f} s, p95 {high:.2f} s (all photos, after the first click)"
            )


if __name__ == "__main__":
    main()
