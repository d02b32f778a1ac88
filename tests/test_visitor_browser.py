# ruff: noqa: F811 - the fixtures imported from test_app_browser are parameters of the tests
"""The visitor's second five minutes, in a real browser (issue 18): work survives a reload and is never
reached from another browser, the phone layout, nothing lost silently, small objects stay visible.

Same set-up as `tests/test_app_browser.py` (its helpers, the one preview app of the test run, Debian's
Chromium): one browser for this module, a new context (its own localStorage, so its own token) per visitor.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect

from pixelrefer.media.masks import object_color
from pixelrefer.serve.workspace import Workspace

from .app_media import DISC_RGB, SceneImage
from .conftest import PreviewApp
from .test_app_browser import (
    PHONE,
    SCREENSHOTS,
    UPLOAD,
    VIEWPORT,
    WAIT_MS,
    answers,
    browser,  # noqa: F401 - the module's browser (a fixture)
    choose_tool,
    keep,
    mark,
    object_tags,
    open_panel,
    pace,  # noqa: F401 - answers at a real model's pace (an autouse fixture)
    pick_example,
    questions,
    save_screenshot,
    scene,  # noqa: F401 - the generated picture (a fixture)
    send,
    set_max_tokens,
    toast,
    upload,
    wait_chat_done,
    wait_text,
    watch_chat,
)

pytestmark = pytest.mark.browser

NARROW_PHONE = {"width": 360, "height": 740}
TOKEN_KEY = "pixelrefer-visit"
"""The page's `gr.BrowserState` storage key (app.py)."""


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A visitor: a browser context of its own (its own localStorage, so its own token)."""
    opened = browser.new_context(viewport=VIEWPORT)
    opened.set_default_timeout(WAIT_MS)
    yield opened
    opened.close()


def visit(context: BrowserContext, url: str) -> Page:
    """A tab of this visitor on the app, once the page has loaded its work (or found none)."""
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("#chat")
    page.wait_for_function(f"() => !!localStorage.getItem({TOKEN_KEY!r})")
    return page


def square_centre(scene: SceneImage) -> tuple[float, float]:
    x0, y0, x1, y1 = scene.square_box
    return (x0 + x1) / 2, (y0 + y1) / 2


def marked_with_a_chat(page: Page, scene: SceneImage) -> None:
    upload(page, scene.path)
    mark(page, *scene.disc_centre, expect="Mask by GrabCut")
    keep(page, "<object1>")
    set_max_tokens(page, 8)
    send(page, "What is <object1>?")
    assert len(answers(page)) == 1


def test_reload_keeps_canvas_objects_and_chat(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    page = visit(context, preview_app.url)
    marked_with_a_chat(page, scene)
    answer = answers(page)[0]
    page.reload(wait_until="load")
    wait_text(page, "#mark-info", "Your work is back")
    expect(page.locator("#canvas img")).to_have_count(1)
    assert object_tags(page) == ["<object1>"]
    assert questions(page) == ["What is <object1>?"] and answers(page) == [answer]
    # The settings of the last answer came back too, and the restored work still takes marks.
    open_panel(page, "generation-settings")
    expect(page.get_by_label("number input for Max new tokens")).to_have_value("8")
    mark(page, *square_centre(scene), expect="Mask by GrabCut")
    keep(page, "<object2>")
    save_screenshot(page, "reloaded")


def test_an_answer_streaming_at_reload_shows_as_stopped(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage, pace
) -> None:
    page = visit(context, preview_app.url)
    upload(page, scene.path)
    mark(page, *scene.disc_centre, expect="Mask by GrabCut")
    keep(page, "<object1>")
    pace(0.02, endless=True)
    set_max_tokens(page, 2000)
    page.locator("#question textarea").fill("Tell me everything about <object1>.")
    watch_chat(page)
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_function("() => window.__chatLog.some(e => e.busy && e.count === 1 && e.text.trim())")
    page.reload(wait_until="load")
    wait_text(page, "#mark-info", "Your work is back")
    assert questions(page) == ["Tell me everything about <object1>."]
    (stopped,) = answers(page)
    assert stopped.rstrip().endswith("(stopped)"), stopped[-200:]


def test_other_visitors_and_bad_tokens_get_a_fresh_workspace(
    browser: Browser, context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    first = visit(context, preview_app.url)
    upload(first, scene.path)
    mark(first, *scene.disc_centre, expect="Mask by GrabCut")
    keep(first, "<object1>")
    visitors = preview_app.page.events.visitors

    def fresh(page: Page) -> None:
        expect(page.locator("#canvas img")).to_have_count(0)
        assert object_tags(page) == [] and "Your work is back" not in page.locator("#mark-info").inner_text()

    # Another browser (its own token), one with a forged token, one with a token of the right shape.
    for forged in (None, "not a token", "A" * 43):
        other = browser.new_context(viewport=VIEWPORT)
        try:
            if forged is not None:
                other.add_init_script(f"localStorage.setItem({TOKEN_KEY!r}, {forged!r})")
            page = visit(other, preview_app.url)
            fresh(page)
            # ... and its own work does not reach the first visitor's.
            upload(page, scene.path)
            mark(page, *square_centre(scene), expect="Mask by GrabCut")
            keep(page, "<object1>")
        finally:
            other.close()
    first.reload(wait_until="load")
    wait_text(first, "#mark-info", "Your work is back")
    assert object_tags(first) == ["<object1>"]

    # An expired token: the workspace idle past the session lifetime is closed, the next load starts afresh.
    assert visitors.sweep(now=visitors.clock() + visitors.ttl_s + 1) >= 1
    first.reload(wait_until="load")
    first.wait_for_function("() => document.querySelector('#mark-info') !== null")
    fresh(first)


def test_a_second_tab_takes_the_work_and_the_first_is_told(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    first = visit(context, preview_app.url)
    upload(first, scene.path)
    mark(first, *scene.disc_centre, expect="Mask by GrabCut")
    keep(first, "<object1>")
    second = visit(context, preview_app.url)  # same browser: same token, the same work
    wait_text(second, "#mark-info", "Your work is back")
    assert object_tags(second) == ["<object1>"]
    # The first tab's next action is refused, visibly, and changes nothing of the work.
    first.get_by_role("button", name="Clear marks", exact=True).click()
    toast(first, "Your work is open in another tab")
    mark(second, *square_centre(scene), expect="Mask by GrabCut")
    keep(second, "<object2>")
    # Reloading the first tab takes the work back, with what the second tab added.
    first.reload(wait_until="load")
    wait_text(first, "#mark-info", "Your work is back")
    assert object_tags(first) == ["<object1>", "<object2>"]
    second.get_by_role("button", name="Keep object", exact=True).click()
    toast(second, "Your work is open in another tab")


# ---------------------------------------------------------------------- settings


def new_work(preview_app: PreviewApp, before: set[int]) -> Workspace:
    """The one workspace made since `before` (the ids of those held then): this test's visitor's."""
    visits = list(preview_app.page.events.visitors._visits.values())
    (ws,) = [visit.ws for visit in visits if id(visit.ws) not in before]
    return ws


def held_now(preview_app: PreviewApp) -> set[int]:
    return {id(visit.ws) for visit in list(preview_app.page.events.visitors._visits.values())}


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Wait for a server-side state the page cannot show (what the workspace keeps)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_max_tokens_typed_while_an_answer_streams_and_after_it_stay(
    context: BrowserContext, preview_app: PreviewApp, pace
) -> None:
    before = held_now(preview_app)
    page = visit(context, preview_app.url)
    field = page.get_by_label("number input for Max new tokens")
    # Shown from the start: a closed panel's fields are set once more when first opened, undoing what was typed.
    expect(field).to_be_visible()
    pick_example(page, "cat")
    ws = new_work(preview_app, before)
    pace(0.02, endless=True)
    set_max_tokens(page, 300)
    watch_chat(page)
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_function("() => window.__chatLog.some(e => e.busy && e.count === 1 && e.text.trim())")
    set_max_tokens(page, 24)  # while the answer streams
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_chat_done(page)
    expect(field).to_have_value("24")
    # The next answer is decoded with it, and the field still holds it when that answer is over.
    pace(0.01, endless=True)
    send(page, "And its colour?")
    assert ws.session.history[-1].settings.max_new_tokens == 24
    expect(field).to_have_value("24")
    set_max_tokens(page, 12)  # after the answer
    wait_until(lambda: ws.page_settings.get("max_new_tokens") == 12, "the typed value reached the workspace")
    expect(field).to_have_value("12")


def test_a_reload_brings_back_settings_changed_without_sending(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    before = held_now(preview_app)
    page = visit(context, preview_app.url)
    upload(page, scene.path)
    ws = new_work(preview_app, before)
    set_max_tokens(page, 77)
    page.get_by_label("Sample (otherwise greedy)").check()
    temperature = page.get_by_label("number input for Temperature")
    expect(temperature).to_be_enabled()
    temperature.fill("1.3")
    temperature.blur()
    choose_tool(page, "Brush")
    expect(page.locator("#painter")).to_be_visible()
    wanted = {"max_new_tokens": 77, "sample": True, "temperature": 1.3, "tool": "Brush"}
    wait_until(lambda: all(ws.page_settings.get(k) == v for k, v in wanted.items()), "the settings were kept")
    page.reload(wait_until="load")
    wait_text(page, "#mark-info", "Your work is back")
    expect(page.get_by_label("number input for Max new tokens")).to_have_value("77")
    expect(page.get_by_label("Sample (otherwise greedy)")).to_be_checked()
    expect(page.get_by_label("number input for Temperature")).to_have_value("1.3")
    expect(page.get_by_label("number input for Temperature")).to_be_enabled()
    expect(page.locator("#tool").get_by_label("Brush", exact=True)).to_be_checked()
    expect(page.locator("#painter")).to_be_visible()  # the brush paints on the restored picture
    expect(page.locator("#canvas")).to_be_hidden()
    save_screenshot(page, "reloaded_settings")


# ---------------------------------------------------------------------- the phone


def order_of(page: Page, *selectors: str) -> list[float]:
    """The page-top offsets of the elements, in the order given."""
    return [
        page.evaluate(f"document.querySelector({s!r}).getBoundingClientRect().top + scrollY")
        for s in selectors
    ]


def test_phone_example_brings_the_canvas_and_objects_before_chat(
    browser: Browser, preview_app: PreviewApp
) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = visit(context, preview_app.url)
        # The examples are on the first screen, right under the canvas.
        (examples_top,) = order_of(page, "#examples")
        assert examples_top < PHONE["height"], f"the examples start at y={examples_top:.0f}"
        page.mouse.wheel(0, 5000)  # a visitor who scrolled down first ...
        page.wait_for_function("() => scrollY > 0")
        coffee = next(e for e in preview_app.examples if e.name == "coffee")
        pick_example(page, coffee.name)
        # ... finds the canvas in view after tapping an example.
        page.wait_for_function(
            "() => { const r = document.querySelector('#canvas').getBoundingClientRect();"
            " return r.top >= -2 && r.top < innerHeight / 3; }"
        )
        canvas, objects, chat = order_of(page, "#canvas", "#objects", "#chat")
        assert canvas < objects < chat, (canvas, objects, chat)
        assert len(object_tags(page)) == len(coffee.objects)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        save_screenshot(page, "phone_example")
        page.evaluate("scrollTo(0, 0)")
        save_screenshot(page, "phone", readme=True)
    finally:
        context.close()


def test_narrow_phone_has_no_overflow_and_keeps_the_order(browser: Browser, preview_app: PreviewApp) -> None:
    context = browser.new_context(viewport=NARROW_PHONE, is_mobile=True, has_touch=True)
    try:
        page = visit(context, preview_app.url)
        pick_example(page, next(e for e in preview_app.examples if e.kind == "video").name)
        expect(page.locator("#frame input[type=range]")).to_be_visible()
        canvas, objects, chat = order_of(page, "#canvas", "#objects", "#chat")
        assert canvas < objects < chat, (canvas, objects, chat)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW_PHONE["width"], f"the page is {width} px wide on a 360 px phone"
        save_screenshot(page, "phone_360_clip")
    finally:
        context.close()


# ---------------------------------------------------------------------- nothing lost silently


def test_a_click_right_after_the_picture_appears_is_answered(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    page = visit(context, preview_app.url)
    page.locator(UPLOAD).set_input_files(str(scene.path))
    # The uploaded picture, shown and decoded; the server's copy replaces it moments later (any time now).
    page.wait_for_function(
        "() => { const img = document.querySelector('#canvas img'); return img && img.complete && img.naturalWidth; }"
    )
    box = page.locator("#canvas img").first.bounding_box()
    x, y = scene.disc_centre
    width, height = scene.size
    # The page's "please click again" note lasts seconds: latch it so that the outcome cannot be missed.
    page.evaluate(
        """() => new MutationObserver(() => {
            const note = document.querySelector('#click-note');
            if (note && /click again/i.test(note.textContent)) window.__clickAgain = note.textContent;
        }).observe(document.body, {subtree: true, childList: true, characterData: true})"""
    )
    page.mouse.click(box["x"] + box["width"] * x / width, box["y"] + box["height"] * y / height)
    # The click, which the page could not send while the picture was being set, is kept and applied: a mask,
    # or else a visible note to click again (assets/click_marker.js) -- never a dot that stays, nothing said.
    page.wait_for_function(
        """() => window.__clickAgain
            || (document.querySelector('#mark-info')?.innerText || '').includes('Mask by')"""
    )
    said = page.evaluate("() => window.__clickAgain || ''")
    if said:  # the visitor was told; the click it asks for then works
        page.mouse.click(box["x"] + box["width"] * x / width, box["y"] + box["height"] * y / height)
        wait_text(page, "#mark-info", "Mask by")
    save_screenshot(page, "click_right_after")
    expect(page.locator("#canvas .click-marker")).to_have_count(0)


def test_clear_asks_first_and_cancel_keeps_the_work(context: BrowserContext, preview_app: PreviewApp) -> None:
    page = visit(context, preview_app.url)
    cat = next(e for e in preview_app.examples if e.name == "cat")
    pick_example(page, cat.name)
    tags = object_tags(page)
    asked: list[str] = []

    def answer(dialog, accept: bool) -> None:
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.locator(
        '#canvas button[aria-label="Remove Image"], #canvas button[aria-label="Clear"]'
    ).first.click()
    assert asked and "Start over" in asked[0]
    expect(page.locator("#canvas img")).to_have_count(1)
    assert object_tags(page) == tags
    # Insert tag with "new object" picked says why it does nothing.
    page.get_by_role("button", name="Insert tag", exact=True).click()
    toast(page, "Pick an object in the list first")
    # Accepted, it starts over.
    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.locator(
        '#canvas button[aria-label="Remove Image"], #canvas button[aria-label="Clear"]'
    ).first.click()
    expect(page.locator("#canvas img")).to_have_count(0)
    expect(page.locator("#objects .chip")).to_have_count(0)


# ---------------------------------------------------------------------- small objects


def canvas_picture(page: Page) -> np.ndarray:
    """The canvas's picture as the browser has it (RGB)."""
    source = page.locator("#canvas img").first.get_attribute("src")
    data = page.request.get(source).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_a_tiny_mask_is_visible_and_warned_about(
    context: BrowserContext, preview_app: PreviewApp, tmp_path: Path
) -> None:
    picture = np.full((360, 480, 3), 235, np.uint8)
    picture[295:305, 95:105] = (20, 20, 20)  # a 10x10 speck
    path = tmp_path / "speck.png"
    Image.fromarray(picture).save(path)
    page = visit(context, preview_app.url)
    upload(page, path)
    choose_tool(page, "Box (2 clicks)")
    mark(page, 90, 290, expect="Now click the opposite corner.")
    mark(page, 110, 310, expect="Mask by")
    wait_text(page, "#mark-info", "the model sees almost nothing")
    page.get_by_role("button", name="Keep object", exact=True).click()
    toast(page, "covers only")
    wait_text(page, "#objects", "<object1>")
    # The object is drawn with a ring around it and its label beside it, not on it.
    shown = canvas_picture(page)
    Image.fromarray(shown.astype(np.uint8)).save(SCREENSHOTS / "tiny_mask_canvas.png")
    red = np.array(object_color(0))
    ring = [
        np.abs(shown[300 + dy, 100 + dx] - red).sum() < 90
        for dy, dx in ((0, 13), (0, -13), (13, 0), (-13, 0), (0, 12), (0, -12), (12, 0), (-12, 0))
    ]
    assert sum(ring) >= 2, "no ring drawn around the tiny object"
    # Its inside is the speck under a tint, not covered by the label (a solid box of its colour).
    centre = shown[299:301, 99:101]
    assert (np.abs(centre - red).sum(axis=-1) > 60).all(), "the label covers the object"
    save_screenshot(page, "tiny_mask")


def test_a_picked_object_shows_its_mask(
    context: BrowserContext, preview_app: PreviewApp, scene: SceneImage
) -> None:
    page = visit(context, preview_app.url)
    upload(page, scene.path)
    mark(page, *scene.disc_centre, expect="Mask by GrabCut")
    keep(page, "<object1>")
    before = canvas_picture(page)
    page.locator("#object-picker").get_by_label("<object1>").check()
    wait_text(page, "#mark-info", "re-mark <object1>")
    after = canvas_picture(page)
    raw = np.array(DISC_RGB)
    inside = scene.disc
    # Still tinted in its colour (more than before, being picked), not the bare picture with a box.
    assert np.abs(after[inside] - raw).sum(axis=-1).mean() > 40
    assert np.abs(after[inside] - raw).sum(axis=-1).mean() >= np.abs(before[inside] - raw).sum(axis=-1).mean()
    save_screenshot(page, "picked_object")


# ---------------------------------------------------------------------- the queue


def test_the_question_box_stays_usable_while_a_question_waits(
    browser: Browser, context: BrowserContext, preview_app: PreviewApp, scene: SceneImage, pace
) -> None:
    pace(0.02, endless=True)
    busy = browser.new_context(viewport=VIEWPORT)
    try:
        other = visit(busy, preview_app.url)
        pick_example(other, "cat")
        set_max_tokens(other, 2000)
        watch_chat(other)
        other.get_by_role("button", name="Send", exact=True).click()
        other.wait_for_function("() => window.__chatLog.some(e => e.busy && e.count === 1 && e.text.trim())")

        page = visit(context, preview_app.url)
        pick_example(page, "cat")
        set_max_tokens(page, 4)
        watch_chat(page)
        page.get_by_role("button", name="Send", exact=True).click()
        page.wait_for_function("() => window.__chatLog.some(e => e.busy)")  # waiting for the model
        box = page.locator("#question textarea")
        on_top = box.evaluate(
            "el => { const r = el.getBoundingClientRect();"
            " return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === el; }"
        )
        assert on_top, "something covers the question box while the question waits"
        box.fill("And what is next to <object1>?")
        expect(box).to_have_value("And what is next to <object1>?")
        other.get_by_role("button", name="Stop", exact=True).click()
        wait_chat_done(page)
        assert len(answers(page)) == 1
    finally:
        busy.close()
