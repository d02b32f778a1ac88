"""Every way a visitor's session ends deletes every file served for it: each export kind (mask zip, COCO RLE
JSON, Markdown and JSON transcripts, overlay PNG of an image, overlay MP4 of a clip) after each exit (the
visitor closes the tab, the session expires, the web server evicts it to make room for a newer one).

The exits run through Gradio's own `StateHolder` with a delete callback like the app's, as the server does: expiry
calls the callback; eviction does not (Gradio drops the value), so the workspace's files go when it is
garbage-collected. The served copy is made where Gradio makes it (`servedfiles.served_copy`)."""

from __future__ import annotations

import gc
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.state_holder import StateHolder

from pixelrefer.serve.servedfiles import record_copy, served_copy
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .app_media import write_scene_clip
from .conftest import fixtures_root

EXPORTS: dict[str, tuple[str, Callable[[Workspace], Path]]] = {
    "masks zip": ("image", lambda ws: ws.export_masks_zip()),
    "masks json": ("image", lambda ws: ws.export_masks_json()),
    "transcript md": ("image", lambda ws: ws.export_transcript("md")),
    "transcript json": ("image", lambda ws: ws.export_transcript("json")),
    "overlay png": ("image", lambda ws: ws.overlay_png()),
    "overlay mp4": ("clip", lambda ws: ws.overlay_video()),
}
EXITS = ("close", "expiry", "eviction")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    settings = replace(
        AppSettings(),
        model=str(fixtures_root() / "pixelrefer-tiny" / "checkpoint"),
        sam2="grabcut",
        device="cpu",
        preview_dir=tmp_path_factory.mktemp("preview"),
    )
    started = Service(settings).start()
    started.warmer.close()  # no warm-ups: files are what these tests are about
    yield started


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scene_clip(tmp_path_factory.mktemp("clip"), seconds=2, fps=4).path


def visitor(service: Service, media: str, clip_path: Path) -> Workspace:
    """A visitor of the app (its files recorded as the app records them) with media and one object."""
    ws = Workspace(service)
    ws.on_file = record_copy
    if media == "image":
        ws.open_image(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    else:
        ws.open_video(clip_path)
    height, width = ws.frame.shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 4 : width // 2] = True
    ws.add_mask(mask, ws.frame_index)
    return ws


def served(path: Path) -> Path:
    """Copy `path` where Gradio serves it from, as Gradio does when a handler returns it."""
    copy = served_copy(path)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, copy)
    return copy


def close_workspace(ws: Workspace | None) -> None:
    """The app's delete callback for its state (`pixelrefer.serve.visitor.close_workspace`)."""
    if ws is not None:
        ws.close()


def session_store(ttl_s: float, capacity: int) -> tuple[StateHolder, int]:
    """Gradio's per-session store for a page with the app's state (its delete callback and lifetime)."""
    with gr.Blocks() as demo:
        state = gr.State(None, delete_callback=close_workspace, time_to_live=ttl_s)
    demo.state_session_capacity = capacity
    holder = StateHolder()
    holder.set_blocks(demo)
    return holder, state._id


@pytest.mark.parametrize("exit_", EXITS)
@pytest.mark.parametrize("export", EXPORTS)
def test_every_export_is_deleted_on_every_exit(
    service: Service,
    clip_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    export: str,
    exit_: str,
) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    media, make = EXPORTS[export]
    ws = visitor(service, media, clip_path)
    written = make(ws)
    copy = served(written)
    assert copy in ws.copies, f"the {export} export was not recorded for deletion"
    folder = ws.folder
    assert written.exists() and copy.exists()
    if exit_ == "close":
        close_workspace(ws)
        del ws
    else:
        holder, state = session_store(ttl_s=0.05 if exit_ == "expiry" else 3600, capacity=1)
        holder["visitor"][state] = ws
        del ws
        if exit_ == "expiry":
            time.sleep(0.1)
            holder.delete_all_expired_state()
        else:
            holder["newcomer"]  # a newer session: the store is full, Gradio evicts the oldest
            assert "visitor" not in holder
    assert not copy.exists(), f"the served copy of the {export} export outlived the session ({exit_})"
    assert not copy.parent.exists()
    assert not written.exists() and not folder.exists()


def test_an_evicted_visitor_is_freed_without_a_collection(service: Service, clip_path: Path) -> None:
    """Nothing holds a workspace in a cycle: once Gradio drops it, it is freed at once (its files with it),
    not whenever the garbage collector next runs."""
    gc.disable()
    try:
        holder, state = session_store(ttl_s=3600, capacity=1)
        ws = visitor(service, "clip", clip_path)
        ws.overlay_video()
        folder = ws.folder
        alive = weakref.ref(ws)
        holder["visitor"][state] = ws
        del ws
        holder["newcomer"]
        assert alive() is None and not folder.exists()
    finally:
        gc.enable()
