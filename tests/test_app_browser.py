"""The app in a real browser: Playwright's Python package driving Debian's headless Chromium.

The flows run against the app in offline preview (served in this process, see `preview_app` in
conftest.py, whose answers may be longer than the app's; the image and clip flows, whose screenshots are kept
in assets/, run on one with the app's own limits, `default_app`): an example with a streamed answer; an image uploaded onto the canvas with a clicked and a
boxed object, a chat about both, a stopped answer and a regenerated one; a clip marked on a middle frame,
tracked, previewed and asked about; every expected error, after which the canvas still makes masks;
Describe with three objects; the brush starting clean after Keep; a clip example opening the clip view;
a cancelled tracking run; the first screen on a desktop and on a phone. One more runs the real path in a
separate `python app.py` process: a fixture PixelRefer checkpoint and a tiny random SAM 2.1 saved by the
test.

Every test saves a full-page screenshot under artifacts/screenshots/. The README's screenshots of the image
and video flows are rewritten from the same runs with

    PIXELREFER_UPDATE_SCREENSHOTS=1 HF_HUB_OFFLINE=1 python -m pytest tests/test_app_browser.py

Chromium is Debian's (`/usr/bin/chromium`, or $PIXELREFER_CHROMIUM); Playwright's own browsers are never
used. Without Chromium these tests fail, they are not skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from transformers import LogitsProcessor

from pixelrefer.media.masks import mask_from_rle, object_color
from pixelrefer.media.video import load_clip, probe_video, read_frames
from pixelrefer.model import engine as transformers_engine

from .app_media import SceneClip, SceneImage, iou, write_scene_clip, write_scene_image
from .app_process import RunningApp
from .conftest import REPO, PreviewApp, fixtures_root, serving_preview

pytestmark = pytest.mark.browser

SCREENSHOTS = REPO / "artifacts" / "screenshots"
README_SCREENSHOTS = REPO / "assets" / "screenshots"
CHROMIUM = Path(os.environ.get("PIXELREFER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 60_000
"""How long to wait for something to appear: generous, since these are waits, never timings."""


# ---------------------------------------------------------------------- browser and pages


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"Debian's Chromium is not at {CHROMIUM}: apt-get install chromium (see README)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def open_app(browser: Browser, url: str, viewport: dict = VIEWPORT) -> Page:
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(WAIT_MS)
    page.goto(url, wait_until="load")
    page.wait_for_selector("#chat")
    return page


@pytest.fixture(scope="module")
def default_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreviewApp]:
    """The offline preview with the app's own limits (the session's preview app raises the answer length for
    the other tests): the README's image-flow screenshot shows what a visitor of `python app.py` sees."""
    with serving_preview(tmp_path_factory.mktemp("default-app")) as running:
        yield running


@pytest.fixture()
def default_page(browser: Browser, default_app: PreviewApp) -> Iterator[Page]:
    """A new visitor on the app with its own limits."""
    opened = open_app(browser, default_app.url)
    yield opened
    opened.context.close()


@pytest.fixture()
def page(browser: Browser, preview_app: PreviewApp) -> Iterator[Page]:
    """A new visitor (own browser context, so own session) on the preview app."""
    opened = open_app(browser, preview_app.url)
    yield opened
    opened.context.close()


def save_screenshot(page: Page, name: str, *, readme: bool = False) -> Path:
    """artifacts/screenshots/<name>.png, and with PIXELREFER_UPDATE_SCREENSHOTS=1 the README's copy."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if readme and os.environ.get("PIXELREFER_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = README_SCREENSHOTS / f"{name}.png"
        # The first screen, as a visitor sees it; 128 colours keep the file small.
        shot = Image.open(path).convert("RGB")
        viewport = page.viewport_size or VIEWPORT
        shot = shot.crop((0, 0, shot.width, min(shot.height, viewport["height"])))
        shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        assert target.stat().st_size < 400_000
    return path


class Paced(LogitsProcessor):
    """Holds each decoding step for `delay_s`; with `eos_ids`, also keeps the model from ending by itself."""

    def __init__(self, delay_s: float, eos_ids: frozenset[int] = frozenset()) -> None:
        self.delay_s = delay_s
        self.eos_ids = sorted(eos_ids)

    def __call__(self, input_ids, scores):
        time.sleep(self.delay_s)
        if self.eos_ids:
            scores[:, self.eos_ids] = float("-inf")
        return scores


@pytest.fixture(autouse=True)
def pace(monkeypatch: pytest.MonkeyPatch, preview_app: PreviewApp) -> Callable[..., None]:
    """Stream the in-process preview model at a real model's pace.

    The tiny preview model decodes about 750 tokens a second here, faster than Chromium renders them: the page
    could show a whole answer at once, or finish it before a Stop click arrives. 100 tokens a second is still
    faster than a 2B model on a CPU. `endless` masks the end-of-sequence tokens, so an answer lasts to its
    token limit whatever this machine's arithmetic makes of the random weights (a one-token answer cannot be
    seen streaming).
    """
    original = transformers_engine.build_logits_processors

    def set_pace(delay_s: float, *, endless: bool = False) -> None:
        def build(settings, config):
            processors = original(settings, config)
            eos_ids = frozenset(preview_app.service.model.eos_ids) if endless else frozenset()
            processors.append(Paced(delay_s, eos_ids))
            return processors

        monkeypatch.setattr(transformers_engine, "build_logits_processors", build)

    set_pace(0.01, endless=True)
    return set_pace


# ---------------------------------------------------------------------- what the page shows


def wait_text(page: Page, selector: str, text: str) -> None:
    """Wait until the element's text contains `text`."""
    page.locator(selector).filter(has_text=text).wait_for()


def mark_info(page: Page) -> str:
    return page.locator("#mark-info").inner_text()


CANVAS_COVERED = '#canvas [data-testid="status-tracker"]:not(.hide)'
"""Gradio's pending overlay on the canvas: opaque, and it takes the clicks (only new media shows it)."""


def click_pixel(page: Page, x: float, y: float) -> None:
    """Click the canvas at image pixel (x, y), placing the pointer the way Gradio maps clicks to pixels."""
    image = page.locator("#canvas img")
    image.scroll_into_view_if_needed()
    expect(page.locator(CANVAS_COVERED)).to_have_count(0)  # a picture still arriving would take the click
    image.evaluate("img => img.complete && img.naturalWidth > 0 || img.decode()")  # its size is known
    box = image.evaluate(
        """img => { const r = img.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                natural_width: img.naturalWidth, natural_height: img.naturalHeight}; }"""
    )
    scale = min(box["width"] / box["natural_width"], box["height"] / box["natural_height"], 1)
    left = box["left"] + (box["width"] - box["natural_width"] * scale) / 2
    top = box["top"] + (box["height"] - box["natural_height"] * scale) / 2
    page.mouse.click(left + x * scale, top + y * scale)


def mark(page: Page, x: float, y: float, expect: str) -> None:
    """Click the canvas and wait for the marking message to say `expect`."""
    click_pixel(page, x, y)
    wait_text(page, "#mark-info", expect)


UPLOAD = "#canvas input[type=file]"
OPEN_CLIP = "input[type=file][accept*=video]"


def upload(page: Page, path: Path, expect: str = "Click on an object to mark it.") -> None:
    """Drop a file onto the canvas and wait for the marking message."""
    page.locator(UPLOAD).set_input_files(str(path))
    wait_text(page, "#mark-info", expect)


def pick_example(page: Page, name: str) -> None:
    """Click an example's thumbnail and wait until it is loaded."""
    page.locator("#examples .thumbnail-item", has_text=name).first.click()
    wait_text(page, "#mark-info", f"Example “{name}” loaded")


def toast(page: Page, text: str) -> None:
    """Wait for a toast that says `text`, then close every toast."""
    page.locator(".toast-body", has_text=text).first.wait_for()
    for close in page.locator(".toast-close").all():
        if close.is_visible():
            close.click()


def no_error_state(page: Page) -> None:
    """No component shows Gradio's error state (the red "Error" pill that replaces its content)."""
    expect(page.locator('[data-testid="status-tracker"] .error')).to_have_count(0)


def keep(page: Page, tag: str) -> None:
    page.get_by_role("button", name="Keep object", exact=True).click()
    wait_text(page, "#mark-info", f"Kept as {tag}")
    wait_text(page, "#objects", tag)


def choose_tool(page: Page, tool: str) -> None:
    page.get_by_label(tool, exact=True).check()


def open_panel(page: Page, elem_id: str) -> None:
    """Open a collapsed accordion (idempotent)."""
    panel = page.locator(f"#{elem_id}")
    if not panel.locator("input, button").nth(1).is_visible():
        panel.get_by_role("button").first.click()


def set_max_tokens(page: Page, value: int) -> None:
    """Type the answer's token limit once, as a visitor does; the field keeps it."""
    open_panel(page, "generation-settings")
    field = page.get_by_label("number input for Max new tokens")
    field.fill(str(value))
    field.press("Enter")
    field.blur()
    expect(field).to_have_value(str(value))


def object_tags(page: Page) -> list[str]:
    return page.locator("#objects .chip").all_inner_texts()


# ---------------------------------------------------------------------- the chat

WATCH_CHAT = """() => {
  const chat = document.querySelector('#chat');
  const log = [];
  const record = () => {
    const tracker = chat.querySelector('[data-testid="status-tracker"]');
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    log.push({busy: !!tracker && !tracker.classList.contains('hide'), count: bots.length,
              text: bots.length ? bots[bots.length - 1].innerText : ''});
  };
  if (window.__chatObserver) window.__chatObserver.disconnect();
  window.__chatObserver = new MutationObserver(record);
  window.__chatObserver.observe(chat, {subtree: true, childList: true, characterData: true, attributes: true,
                                       attributeFilter: ['class']});
  window.__chatLog = log;
  record();
}"""

CHAT_DONE = """() => { const log = window.__chatLog; const first = log.findIndex(e => e.busy);
  return first >= 0 && log.slice(first).some(e => !e.busy) && !log[log.length - 1].busy; }"""


def watch_chat(page: Page) -> None:
    """Record every change of the chat (busy or not, the number of answers, the last answer's text)."""
    page.evaluate(WATCH_CHAT)


def wait_chat_done(page: Page) -> list[dict]:
    """Wait until the chat was busy and is idle again; returns what was recorded since `watch_chat`."""
    page.wait_for_function(CHAT_DONE, timeout=WAIT_MS * 2)
    return page.evaluate("window.__chatLog")


def answers(page: Page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def questions(page: Page) -> list[str]:
    return page.locator('#chat [data-testid="user"]').all_inner_texts()


def send(page: Page, question: str | None = None) -> list[dict]:
    """Send (the question in the box, or `question`) and wait for the whole answer."""
    if question is not None:
        page.locator("#question textarea").fill(question)
    watch_chat(page)
    page.get_by_role("button", name="Send", exact=True).click()
    return wait_chat_done(page)


def assert_streamed(log: list[dict], final: str, count: int) -> None:
    """The answer appeared piece by piece: some shorter, non-empty state of it was shown before the end."""
    assert final.strip(), "the final answer is empty"
    partial = [e["text"] for e in log if e["count"] == count and e["text"].strip() and e["text"] != final]
    assert partial, f"no intermediate state of the answer was shown (log: {log})"
    assert any(len(text) < len(final) for text in partial)


def tag_colour(page: Page, message: int, tag: str) -> str:
    """The CSS colour of `<objectK>` in the `message`-th question of the chat."""
    span = (
        page.locator('#chat [data-testid="user"]')
        .nth(message)
        .locator("span[style*=color]", has_text=tag)
        .first
    )
    return span.evaluate("e => getComputedStyle(e).color")


def css_rgb(colour: tuple[int, int, int]) -> str:
    return f"rgb({colour[0]}, {colour[1]}, {colour[2]})"


# ---------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneImage:
    return write_scene_image(tmp_path_factory.mktemp("browser-image"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SceneClip:
    return write_scene_clip(tmp_path_factory.mktemp("browser-clip"))


def download(page: Page, url: str, target: Path) -> Path:
    """Fetch a file the page links to, in the page's session."""
    response = page.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    target.write_bytes(response.body())
    return target


# ---------------------------------------------------------------------- the flows


def test_example_gives_a_streamed_answer(page: Page, preview_app: PreviewApp, scene: SceneImage) -> None:
    assert "Offline preview" in page.locator("#banner").inner_text()
    examples = {example.name: example for example in preview_app.examples}
    coffee, cat = examples["coffee"], examples["cat"]

    # An upload first, then an example, which takes its place on the same canvas ...
    upload(page, scene.path)
    uploaded = page.locator("#canvas img").first.get_attribute("src")
    pick_example(page, coffee.name)
    expect(page.locator("#canvas img").first).not_to_have_attribute("src", uploaded)
    expect(page.locator("#question textarea")).to_have_value(coffee.question)
    assert len(object_tags(page)) == len(coffee.objects)
    send(page)
    assert len(answers(page)) == 1
    # The chat's own trash button forgets the conversation too: the next answer comes alone.
    page.once("dialog", lambda dialog: dialog.accept())  # it asks first (assets/confirm_clear.js)
    page.locator("#chat").get_by_role("button", name="Clear", exact=True).click()
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    send(page, coffee.question)
    assert len(answers(page)) == 1 and questions(page) == [coffee.question]

    # ... then another example replaces all of it: objects, question, conversation.
    pick_example(page, cat.name)
    expect(page.locator("#question textarea")).to_have_value(cat.question)
    assert object_tags(page) == [f"<object{k}> {obj.name}" for k, obj in enumerate(cat.objects, start=1)]
    assert answers(page) == [] and questions(page) == []

    log = send(page)
    (final,) = answers(page)
    assert_streamed(log, final, count=1)
    assert questions(page) == [cat.question]
    save_screenshot(page, "example_flow")


def test_image_two_objects_chat_stop_regenerate(
    default_page: Page, default_app: PreviewApp, scene: SceneImage, tmp_path: Path, pace: Callable[..., None]
) -> None:
    page = default_page  # the app's own limits, as the README's screenshot shows them
    upload(page, scene.path)

    # One click on the disc, kept as <object1>.
    mark(page, *scene.disc_centre, expect="Mask by GrabCut")
    keep(page, "<object1>")

    # The square with the box tool: two opposite corners, kept as <object2>.
    choose_tool(page, "Box (2 clicks)")
    x0, y0, x1, y1 = scene.square_box
    mark(page, x0 - 12, y0 - 12, expect="Now click the opposite corner.")
    mark(page, x1 + 12, y1 + 12, expect="Mask by GrabCut")
    keep(page, "<object2>")
    assert object_tags(page) == ["<object1>", "<object2>"]

    # The kept masks are the objects: exported as COCO RLE and compared with the truth.
    open_panel(page, "export-panel")
    page.get_by_label("Masks (COCO RLE JSON)", exact=True).check()
    page.locator("#export-panel").get_by_role("button", name="Export", exact=True).click()
    link = page.locator("#download a[href]").first
    link.wait_for()
    exported = json.loads(download(page, link.get_attribute("href"), tmp_path / "masks.json").read_text())
    masks = {entry["object_id"]: mask_from_rle(entry["segmentation"]) for entry in exported["annotations"]}
    assert set(masks) == {1, 2}
    assert iou(masks[1], scene.disc) > 0.9
    assert iou(masks[2], scene.square) > 0.9

    # Ask about both; the tags are shown in their objects' colours.
    page.get_by_role("button", name="How do <object1> and <object2> relate?").click()
    expect(page.locator("#question textarea")).to_have_value(
        "How do <object1> and <object2> relate to each other?"
    )
    log = send(page, "Tell me about <object1> and <object2>.")
    (final,) = answers(page)
    assert_streamed(log, final, count=1)
    assert questions(page) == ["Tell me about <object1> and <object2>."]
    assert tag_colour(page, 0, "<object1>") == css_rgb(object_color(0))
    assert tag_colour(page, 0, "<object2>") == css_rgb(object_color(1))

    # A long answer, stopped while it streams: the app's limit (512) at 50 tokens a second, so Stop lands in the
    # middle.
    pace(0.02, endless=True)
    set_max_tokens(page, default_app.service.settings.max_new_tokens)
    page.locator("#question textarea").fill("Describe <object2> next to <object1> in great detail.")
    watch_chat(page)
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_function(
        """() => window.__chatLog.some(e => e.busy && e.count === 2 && e.text.trim().length > 0)"""
    )
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_chat_done(page)
    stopped = answers(page)
    assert len(stopped) == 2 and stopped[0] == final
    assert stopped[1].rstrip().endswith("(stopped)"), stopped[1][-200:]

    # Regenerate answers the stopped question again, in its place, to the end (at the page's default length).
    pace(0.01, endless=True)
    page.locator("#generation-settings").get_by_test_id("reset-button").first.click()
    expect(page.get_by_label("number input for Max new tokens")).to_have_value("256")
    watch_chat(page)
    page.get_by_role("button", name="Regenerate", exact=True).click()
    log = wait_chat_done(page)
    regenerated = answers(page)
    assert len(regenerated) == 2 and regenerated[0] == final
    assert regenerated[1].strip() and "(stopped)" not in regenerated[1]
    assert any(e["busy"] and e["count"] == 2 for e in log)
    assert questions(page)[1] == "Describe <object2> next to <object1> in great detail."
    save_screenshot(page, "image_flow", readme=True)


def test_clip_marked_on_a_middle_frame_tracked_and_asked(
    default_page: Page, clip: SceneClip, tmp_path: Path
) -> None:
    page = default_page  # the app's own limits, as its screenshot shows them
    sampled = load_clip(clip.path)
    assert len(sampled) == 4
    middle = 2

    expect(page.locator("#frame")).to_have_count(0)  # the clip timeline belongs to clips only
    page.locator(OPEN_CLIP).set_input_files(str(clip.path))
    wait_text(page, "#mark-info", f"{len(sampled)} frames sampled")

    # Move the frame slider to a middle frame, as a visitor drags it.
    slider = page.locator("#frame input[type=range]")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * middle / (len(sampled) - 1), box["y"] + box["height"] / 2)
    frame_index = sampled.indices[middle]
    wait_text(page, "#mark-info", f"Frame {frame_index} (t = {sampled.timestamps[middle]:.1f} s)")
    expect(page.locator("#frame input[type=number]")).to_have_value(str(middle))

    # Mark the disc where it is on that frame, keep it, and track it through the clip.
    mark(page, *clip.centres[frame_index], expect="Mask by GrabCut")
    keep(page, "<object1>")
    assert object_tags(page) == ["<object1> · 1 frame(s)"]
    page.get_by_role("button", name="Track objects through the clip").click()
    wait_text(page, "#mark-info", f"Tracked through every sampled frame ({len(sampled)}).")
    assert object_tags(page) == [f"<object1> · {len(sampled)} frame(s)"]

    # The overlay clip plays in the page and shows the disc tinted on every frame, before and after the mark.
    video = page.locator("#overlay video")
    video.wait_for()
    source = video.get_attribute("src")
    assert source
    overlay = download(page, source, tmp_path / "overlay.mp4")
    # Every frame of the clip at its own rate, tinted with the nearest sampled frame's mask.
    info = probe_video(overlay)
    assert (info.n_frames, info.width, info.height) == (len(clip.centres), *clip.size)
    assert info.fps == pytest.approx(clip.fps)
    raw_frames = read_frames(clip.path, range(info.n_frames))
    red = object_color(0)[0]
    for position, drawn in enumerate(read_frames(overlay, range(info.n_frames))):
        disc = clip.disc(min(sampled.indices, key=lambda f: (abs(f - position), f)))
        raw = raw_frames[position].astype(float)
        tinted = drawn.astype(float)
        inside = tinted[disc].mean(axis=0) - raw[disc].mean(axis=0)
        # 45 % of the object's colour over the disc: red rises by about 0.45 * (230 - 20).
        assert inside[0] > 0.3 * (red - raw[disc][:, 0].mean()), (position, inside)
        far = np.zeros_like(disc)
        far[:, int(disc.nonzero()[1].max()) + 20 :] = True  # right of the disc: nothing drawn there
        assert np.abs(tinted[far] - raw[far]).mean() < 6, position

    # And a question about it.
    log = send(page, "What is <object1> doing in this clip?")
    (final,) = answers(page)
    assert_streamed(log, final, count=1)
    save_screenshot(page, "video_flow", readme=True)


# ---------------------------------------------------------------------- errors, objects, clips, phones


def test_errors_leave_every_component_usable(page: Page, scene: SceneImage, tmp_path: Path) -> None:
    # A text file named .png reaches the library's check (Gradio does not decode it first).
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture\n")
    page.locator(UPLOAD).set_input_files(str(fake))
    toast(page, "not an image")
    no_error_state(page)

    upload(page, scene.path)
    page.get_by_role("button", name="Keep object", exact=True).click()  # nothing marked yet
    toast(page, "Mark the object first")
    no_error_state(page)
    mark(page, *scene.disc_centre, expect="Mask by GrabCut")
    keep(page, "<object1>")

    # A tag that names no object: the toast shows the tag as text, the question stays to be corrected.
    page.locator("#question textarea").fill("What is <object9>?")
    page.get_by_role("button", name="Send", exact=True).click()
    toast(page, "<object9> is not a marked object")
    expect(page.locator("#question textarea")).to_have_value("What is <object9>?")
    no_error_state(page)

    # After all of it, the canvas still takes clicks and makes masks.
    x0, y0, x1, y1 = scene.square_box
    mark(page, (x0 + x1) / 2, (y0 + y1) / 2, expect="Mask by GrabCut")
    keep(page, "<object2>")
    assert object_tags(page) == ["<object1>", "<object2>"]
    no_error_state(page)


def test_describe_with_three_objects(page: Page, preview_app: PreviewApp) -> None:
    coffee = {example.name: example for example in preview_app.examples}["coffee"]
    assert len(coffee.objects) == 3
    pick_example(page, coffee.name)
    set_max_tokens(page, 6)
    watch_chat(page)
    page.get_by_role("button", name="Describe each object (3)").click()
    page.wait_for_function("() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 3")
    wait_chat_done(page)
    assert questions(page) == [f"Describe <object{k}> in detail." for k in (1, 2, 3)]
    assert all(answer.strip() for answer in answers(page))
    no_error_state(page)


def test_clip_example_opens_the_clip_view(page: Page, preview_app: PreviewApp) -> None:
    clip_example = next(example for example in preview_app.examples if example.kind == "video")
    expect(page.locator("#frame")).to_have_count(0)
    pick_example(page, clip_example.name)
    expect(page.locator("#frame input[type=range]")).to_be_visible()
    expect(page.get_by_role("button", name="Track objects through the clip")).to_be_visible()
    expect(page.locator("#overlay video")).to_have_count(1)
    assert len(object_tags(page)) == len(clip_example.objects)
    # The tracked preview sits beside the canvas, on the first screen of a desktop.
    bottom = page.evaluate(
        "document.querySelector('#overlay video').getBoundingClientRect().bottom + scrollY"
    )
    assert bottom < VIEWPORT["height"], f"the tracked preview ends {bottom:.0f} px down"
    save_screenshot(page, "clip_example")


def test_the_click_point_shows_before_the_mask(
    page: Page, preview_app: PreviewApp, scene: SceneImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The click is drawn in the page the moment the pointer goes down (assets/click_marker.js), so it is
    on screen before the segmenter's picture comes back; that picture then replaces it. While the mask is
    computed the picture stays in view (no overlay hides the point) and takes the next click."""
    segmenter = preview_app.service.segmenter
    original = segmenter.segment_image

    def slow_segment(image, prompt):
        time.sleep(1.0)  # a slow segmenter: long enough to look at the page meanwhile
        return original(image, prompt)

    monkeypatch.setattr(segmenter, "segment_image", slow_segment)
    upload(page, scene.path)
    page.evaluate(
        """() => {
        window.seen = [];
        const canvas = document.querySelector('#canvas');
        new MutationObserver(records => { for (const r of records) {
            for (const n of r.addedNodes) if (n.classList && n.classList.contains('click-marker')) seen.push('marker');
            if (r.type === 'attributes' || [...r.addedNodes].some(n => n.tagName === 'IMG')) seen.push('picture');
        } }).observe(canvas, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
        }"""
    )
    click_pixel(page, *scene.disc_centre)
    expect(page.locator("#canvas .click-marker")).to_be_visible()
    # Looked at once, while the slow segmenter still runs: what is on top at the click point?
    on_top = page.evaluate(
        """covered => { const r = document.querySelector('#canvas .click-marker').getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {picture: hit.closest('#canvas img') !== null, covers: document.querySelectorAll(covered).length}; }""",
        CANVAS_COVERED,
    )
    assert on_top == {"picture": True, "covers": 0}, "something covers the picture while the mask is computed"
    wait_text(page, "#mark-info", "Mask by GrabCut")
    seen = page.evaluate("window.seen")
    assert "marker" in seen and "picture" in seen[seen.index("marker") :], seen
    expect(page.locator("#canvas .click-marker")).to_have_count(0)
    no_error_state(page)


def test_brush_starts_clean_after_keep(page: Page, scene: SceneImage) -> None:
    upload(page, scene.path)
    choose_tool(page, "Brush")
    expect(page.locator("#canvas")).to_be_hidden()  # the brush paints in the canvas's place
    surface = page.locator("#painter canvas").last
    surface.wait_for()
    page.wait_for_timeout(500)
    box = surface.bounding_box()
    x, y = box["x"] + box["width"] * 0.31, box["y"] + box["height"] * 0.5
    page.mouse.move(x - 15, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x - 15 + 3 * step, y + step, steps=2)
    page.mouse.up()
    page.get_by_role("button", name="Segment from strokes").click()
    wait_text(page, "#mark-info", "Mask by")
    keep(page, "<object1>")
    # The strokes went with <object1>: segmenting again finds nothing painted.
    page.get_by_role("button", name="Segment from strokes").click()
    toast(page, "Paint over the object first.")
    no_error_state(page)


def test_cancel_tracking_says_so_and_keeps_the_frame(
    page: Page, preview_app: PreviewApp, clip: SceneClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    segmenter = preview_app.service.segmenter
    original = segmenter._track

    def slow_track(frames, prompts, progress, cancel):
        def step(done: int, total: int) -> None:
            time.sleep(0.5)  # long enough for the Cancel click to land mid-run
            if progress is not None:
                progress(done, total)

        return original(frames, prompts, step, cancel)

    monkeypatch.setattr(segmenter, "_track", slow_track)
    sampled = load_clip(clip.path)
    page.locator(OPEN_CLIP).set_input_files(str(clip.path))
    wait_text(page, "#mark-info", f"{len(sampled)} frames sampled")
    mark(page, *clip.centres[sampled.indices[0]], expect="Mask by GrabCut")
    keep(page, "<object1>")
    shown = page.locator("#canvas img").first.get_attribute("src")
    page.get_by_role("button", name="Track objects through the clip").click()
    page.get_by_role("button", name="Cancel tracking").click()
    wait_text(page, "#mark-info", "Tracking was cancelled")
    toast(page, "Tracking cancelled")
    no_error_state(page)
    expect(page.locator("#canvas img").first).to_have_attribute("src", shown)
    assert object_tags(page) == ["<object1> · 1 frame(s)"]
    mark(page, *clip.centres[sampled.indices[0]], expect="Mask by GrabCut")  # the canvas still marks


def test_phone_first_screen(browser: Browser, preview_app: PreviewApp) -> None:
    page = open_app(browser, preview_app.url, PHONE)
    try:
        banner = page.locator("#banner")
        assert "Offline preview" in banner.inner_text()
        assert banner.bounding_box()["height"] < 90  # a one-line notice ...
        # The canvas, its examples on the first screen, then the objects, then the chat.
        top = "document.querySelector('{}').getBoundingClientRect().top + scrollY"
        canvas, examples, objects, chat = (
            page.evaluate(top.format(s)) for s in ("#canvas", "#examples", "#objects", "#chat")
        )
        assert canvas < examples < PHONE["height"], f"the examples start {examples:.0f} px down"
        assert examples < objects < chat, (objects, chat)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px phone"
        save_screenshot(page, "phone_first_screen")  # the README's phone.png: test_visitor_browser.py
        banner.get_by_role("button").first.click()  # ... that opens to the whole text
        wait_text(page, "#banner", "tiny random model built on this machine")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        page.context.close()


# ---------------------------------------------------------------------- the real path


@pytest.fixture(scope="module")
def real_app(tiny_sam2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --model <fixture checkpoint> --sam2 <tiny random SAM 2.1>` in its own process."""
    checkpoint = fixtures_root() / "pixelrefer-tiny" / "checkpoint"
    assert (checkpoint / "config.json").is_file(), (
        f"no fixture checkpoint at {checkpoint}: set PIXELREFER_FIXTURES"
    )
    log_path = tmp_path_factory.mktemp("real-app") / "app.log"
    with RunningApp(["--model", str(checkpoint), "--sam2", str(tiny_sam2_dir)], log_path) as app:
        yield app.url


def test_real_path_sam2_click_and_answer(browser: Browser, real_app: str, scene: SceneImage) -> None:
    page = open_app(browser, real_app)
    try:
        expect(page.locator("#banner")).to_be_hidden()
        open_panel(page, "model-panel")
        status = page.locator("#model-status").inner_text()
        assert "checkpoint" in status and "SAM 2.1" in status and "preview" not in status

        upload(page, scene.path)
        mark(page, *scene.disc_centre, expect="Mask by SAM 2.1")
        keep(page, "<object1>")

        set_max_tokens(page, 64)
        log = send(page, "What is <object1>?")
        (final,) = answers(page)
        assert_streamed(log, final, count=1)
        save_screenshot(page, "real_path")
    finally:
        page.context.close()
