"""The visitor's work without a browser: tokens and tabs (`pixelrefer.serve.visits`), small objects on the
canvas (`pixelrefer.serve.marks_view`), the model panel's text (`pixelrefer.serve.render`)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from gradio.context import LocalContext

from pixelrefer.media.masks import mask_bbox, object_color
from pixelrefer.serve.marks_view import (
    MARK_CLEARANCE_PX,
    MIN_RING_PX,
    SMALL_MASK_PIXELS,
    Shape,
    draw_objects,
    small_mask_note,
)
from pixelrefer.serve.render import _markdown_cell
from pixelrefer.serve.visits import MovedAway, Visitors
from pixelrefer.serve.workspace import Workspace

# ---------------------------------------------------------------------- tokens and tabs


class FakeWorkspace(Workspace):
    """Only what the registry uses of a workspace: its identity and `close`."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def as_session(session: str):
    """Run the registry's calls as an event of `session` would (Gradio sets the request in a context var)."""
    return LocalContext.request.set(SimpleNamespace(session_hash=session))


@pytest.fixture()
def pages():
    """A registry bound to fake Blocks whose sessions' states are plain dicts."""
    clock = Clock()
    visitors = Visitors(ttl_s=60, clock=clock)
    sessions: dict[str, SimpleNamespace] = {}
    blocks = SimpleNamespace(state_holder=SimpleNamespace(session_data=sessions))
    visitors.serve(blocks, state_id=7)

    def open_page(session: str, token: object) -> tuple[Workspace | None, str]:
        sessions.setdefault(session, SimpleNamespace(state_data={}, is_closed=False))
        ws, token = visitors.greet(token, session)
        if ws is not None:
            sessions[session].state_data[7] = ws
        return ws, token

    def make_workspace(session: str) -> FakeWorkspace:
        ws = FakeWorkspace()
        reset = as_session(session)
        try:
            visitors.adopt(ws)
        finally:
            LocalContext.request.reset(reset)
        sessions[session].state_data[7] = ws
        return ws

    yield SimpleNamespace(
        visitors=visitors, clock=clock, sessions=sessions, open=open_page, make=make_workspace
    )
    visitors._visits.clear()


def check_as(visitors: Visitors, session: str, ws: object) -> None:
    reset = as_session(session)
    try:
        visitors.check(ws)
    finally:
        LocalContext.request.reset(reset)


def test_a_reload_finds_the_work_and_the_old_session_lets_go(pages) -> None:
    ws0, token = pages.open("tab-a", "")
    assert ws0 is None and len(token) == 43
    ws = pages.make("tab-a")
    found, same = pages.open("tab-a-reloaded", token)
    assert found is ws and same == token
    # The old session no longer holds it (it is counted once by the session caps), and is told if it acts.
    assert pages.sessions["tab-a"].state_data[7] is None
    with pytest.raises(MovedAway):
        check_as(pages.visitors, "tab-a", None)
    check_as(pages.visitors, "tab-a-reloaded", ws)  # the new one acts freely
    # A second tab of the same browser takes it over the same way; the first is refused from then on.
    assert pages.open("tab-b", token)[0] is ws
    with pytest.raises(MovedAway):
        check_as(pages.visitors, "tab-a-reloaded", ws)


@pytest.mark.parametrize("token", [None, "", "short", "A" * 43, 12345, {"token": "x"}])
def test_unknown_or_malformed_tokens_get_a_fresh_token(pages, token) -> None:
    pages.open("owner", "")
    owned = pages.make("owner")
    ws, fresh = pages.open("stranger", token)
    assert ws is None and fresh != token and len(fresh) == 43
    assert pages.make("stranger") is not owned


def test_idle_workspaces_are_closed_after_the_lifetime(pages) -> None:
    _, token = pages.open("tab", "")
    ws = pages.make("tab")
    pages.clock.now += 59
    assert pages.visitors.sweep() == 0 and not ws.closed
    check_as(pages.visitors, "tab", ws)  # activity keeps it
    pages.clock.now += 59
    assert pages.visitors.sweep() == 0
    pages.clock.now += 61
    assert pages.visitors.sweep() == 1 and ws.closed
    assert pages.sessions["tab"].state_data[7] is None
    assert pages.open("tab-again", token)[0] is None  # an expired token: a fresh workspace


def test_the_state_callback_closes_and_forgets(pages) -> None:
    _, token = pages.open("tab", "")
    ws = pages.make("tab")
    pages.visitors.release(ws)
    assert ws.closed and len(pages.visitors) == 0
    assert pages.open("tab-2", token)[0] is None
    pages.visitors.release(None)  # an empty state: nothing to do


def keep_as(visitors: Visitors, session: str, ws: object, settings: dict) -> None:
    reset = as_session(session)
    try:
        visitors.keep_settings(ws, settings)
    finally:
        LocalContext.request.reset(reset)


def test_changed_settings_are_kept_with_the_work(pages) -> None:
    """Settings changed without sending reach the workspace a reload finds: before the tab has one (given to
    its first), while the event that makes it is on its way back (the state still empty), and never the work
    another tab took over."""
    _, token = pages.open("tab", "")
    keep_as(pages.visitors, "tab", None, {"tool": "Box (2 clicks)", "max_new_tokens": 40})
    ws = pages.make("tab")
    assert ws.page_settings == {"tool": "Box (2 clicks)", "max_new_tokens": 40}
    keep_as(pages.visitors, "tab", None, {"max_new_tokens": 64})  # the state not yet holding it
    keep_as(pages.visitors, "tab", ws, {"temperature": 0.7})
    assert ws.page_settings == {"tool": "Box (2 clicks)", "max_new_tokens": 64, "temperature": 0.7}
    assert pages.open("tab-reloaded", token)[0] is ws
    keep_as(pages.visitors, "tab", ws, {"tool": "Brush"})  # the stale tab writes nothing
    assert ws.page_settings["tool"] == "Box (2 clicks)"
    # Another visitor's settings stay theirs.
    pages.open("other", "")
    keep_as(pages.visitors, "other", None, {"tool": "Brush"})
    assert pages.make("other").page_settings == {"tool": "Brush"} and ws.page_settings["tool"] != "Brush"


# ---------------------------------------------------------------------- small objects


def speck(size: int = 6, at: tuple[int, int] = (200, 150)) -> np.ndarray:
    mask = np.zeros((300, 400), bool)
    mask[at[1] : at[1] + size, at[0] : at[0] + size] = True
    return mask


def test_small_masks_are_warned_about() -> None:
    assert small_mask_note(SMALL_MASK_PIXELS, "<object1>") is None
    note = small_mask_note(143, "<object1>")
    assert note is not None and "143 pixels" in note and "<object1>" in note


def test_a_tiny_mask_gets_a_ring_and_a_label_beside_it() -> None:
    frame = np.full((300, 400, 3), 235, np.uint8)
    mask = speck()
    drawn = draw_objects(frame, [Shape("1", mask, 0)])
    colour = np.array(object_color(0))
    close = np.abs(drawn.astype(int) - colour).sum(axis=-1) < 40
    x0, y0, x1, y1 = mask_bbox(mask)
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    # The ring: object-coloured pixels at about MIN_RING_PX from the centre, on all four sides.
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ring = [
            close[centre[1] + dy * r, centre[0] + dx * r] for r in range(MIN_RING_PX - 2, MIN_RING_PX + 3)
        ]
        assert any(ring), (dx, dy)
    # The label (a solid box in the object's colour, larger than the mask) is drawn outside the mask's box.
    solid = close.copy()
    solid[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = False
    ys, xs = np.nonzero(solid[: centre[1] - MIN_RING_PX - 1])  # above the ring
    assert len(xs) > 60, "no label above the object"
    inside = drawn[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].astype(int)
    assert (np.abs(inside - colour).sum(axis=-1) > 40).all(), "the object is covered"


def test_a_large_mask_keeps_its_label_inside_and_the_picked_one_is_highlighted() -> None:
    frame = np.full((300, 400, 3), 235, np.uint8)
    mask = speck(size=120, at=(100, 80))
    plain = draw_objects(frame, [Shape("1", mask, 0)])
    picked = draw_objects(frame, [Shape("1", mask, 0, picked=True)])
    outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    grown = np.zeros_like(mask)
    grown[74:206, 94:226] = True
    halo = grown & ~mask
    assert (plain[outside] == 235).all(), "something drawn outside a large object (its label belongs inside)"
    assert (picked[halo] > 240).all(axis=-1).sum() > (plain[halo] > 240).all(axis=-1).sum(), "no white halo"
    tint = np.abs(picked[mask].astype(int) - frame[mask]).mean()
    assert tint > np.abs(plain[mask].astype(int) - frame[mask]).mean(), "the picked one is not stronger"


def label_pixels(drawn: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Where the picture shows the label's solid box: the object's colour itself (not a tint), off the
    mask's outline."""
    solid = np.abs(drawn.astype(int) - np.array(object_color(0))).sum(axis=-1) < 40
    kernel = np.ones((7, 7), np.uint8)
    outline = cv2.dilate(mask.astype(np.uint8), kernel) > cv2.erode(mask.astype(np.uint8), kernel)
    return solid & ~outline


def near(point: tuple[int, int], radius: float, shape: tuple[int, int] = (300, 400)) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(xs - point[0], ys - point[1]) <= radius


def test_a_label_inside_a_large_mask_keeps_clear_of_the_click() -> None:
    frame = np.full((300, 400, 3), 235, np.uint8)
    mask = speck(size=120, at=(100, 80))
    click = (160, 140)  # the middle of the mask: where its label went before
    solid = label_pixels(draw_objects(frame, [Shape("new", mask, 0)], marks=[click]), mask)
    assert not (solid & near(click, MARK_CLEARANCE_PX - 1)).any(), "the label covers the click"
    inner = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert (solid & inner).sum() > 300, "the label left a mask with room for it"
    # Box corners count as marks too, and a mask with no clear spot gets its label outside, not on the click.
    narrow = np.zeros((300, 400), bool)
    narrow[120:166, 130:210] = True  # 80 x 46: large enough for a label inside, but not clear of its middle
    corners = [(130, 120), (209, 165)]
    solid = label_pixels(draw_objects(frame, [Shape("new", narrow, 0)], marks=[(170, 143), *corners]), narrow)
    for mark in [(170, 143), *corners]:
        assert not (solid & near(mark, MARK_CLEARANCE_PX - 1)).any(), mark
    assert (solid & ~cv2.dilate(narrow.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)).sum() > 300


def test_empty_masks_draw_nothing() -> None:
    frame = np.full((30, 40, 3), 200, np.uint8)
    assert (draw_objects(frame, [Shape("1", np.zeros((30, 40), bool), 0)]) == frame).all()


# ---------------------------------------------------------------------- the model panel


def test_model_panel_cells_show_tildes_and_markup_as_text() -> None:
    cell = _markdown_cell("PixelRefer-2B (~7.3 GiB), PixelRefer-7B (~30.0 GiB) *x* <b>|")
    assert "\\~7.3" in cell and "\\~30.0" in cell and "\\*x\\*" in cell and "&lt;b&gt;" in cell
    assert "\\|" in cell


def test_a_new_workspace_of_the_same_tab_is_the_tokens(pages) -> None:
    """After the canvas's × (a new workspace for the same tab), a reload finds the new one; a stale tab's
    new workspace never replaces the work another tab holds."""
    _, token = pages.open("tab", "")
    pages.make("tab")
    fresh = pages.make("tab")
    assert pages.open("tab-reloaded", token)[0] is fresh
    after_reload = pages.make("tab-reloaded")
    assert pages.open("tab-again", token)[0] is after_reload
    pages.make("tab")  # the first, stale tab: refused by `check` in the app; here, it takes nothing over
    assert pages.open("tab-last", token)[0] is after_reload
