"""The app's whole flow through its real handlers, printed as JSON: run normally, and under the ZeroGPU stand-in.

    python tests/zerogpu/flow.py WORKDIR          # normal mode (no `spaces` on the path)
    PYTHONPATH=tests/zerogpu python tests/zerogpu/flow.py WORKDIR    # ZeroGPU mode (the stand-in says so)

It builds the app's `Service` on the tiny fixture checkpoint and a tiny random SAM 2.1, builds the page, and
calls the handlers Gradio calls (the same functions, with the same arguments): open a picture, mark an
object with a click and another with a box, keep both, ask, ask a follow-up, describe each, regenerate,
stop an answer; then open a clip, mark, keep, track, ask, describe. The last line printed is JSON: every
answer (text and token ids), every mask (a digest), the toasts (a refused step shows up there), and in
ZeroGPU mode what the stand-in saw (`violations()`, which must stay empty) and whether model work outside a
call is refused (the warm-up, SAM, an answer called directly).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
# Run as a script, this folder would come first on the path and its `spaces` stand-in with it: the stand-in
# is only wanted when PYTHONPATH names it (ZeroGPU mode).
sys.path[0] = str(REPO)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import app  # noqa: E402
from pixelrefer.chat.session import ChatSession  # noqa: E402
from pixelrefer.segment.base import Prompt  # noqa: E402
from pixelrefer.serve.service import AppSettings, Service  # noqa: E402
from tests.app_media import write_scene_clip, write_scene_image  # noqa: E402
from tests.sam_builders import build_tiny_sam2  # noqa: E402

FIXTURES = Path(os.environ.get("PIXELREFER_FIXTURES") or REPO.parent / "shared" / "fixtures").resolve()
CHECKPOINT = FIXTURES / "pixelrefer-tiny" / "checkpoint"
CLICK, BOX = "Object (click)", "Box (2 clicks)"
GENERATION = (12, False, 0.2, 0.9, 1234)  # max new tokens, sample, temperature, top-p, seed: greedy
TOASTS: list[str] = []


def digest(mask: np.ndarray) -> str:
    return hashlib.blake2b(np.packbits(mask).tobytes() + repr(mask.shape).encode(), digest_size=8).hexdigest()


def state(ws) -> dict:
    """What the visitor has: the objects' masks by frame, and the conversation with its token ids."""
    return {
        "objects": {o.tag: {str(f): digest(m) for f, m in sorted(o.masks.items())} for o in ws.objects()},
        "history": [
            {"question": e.question, "answer": e.answer, "ids": e.answer_ids, "finish": e.finish_reason}
            for e in ws.session.history
        ],
    }


def shown(outputs: dict, ui) -> str:
    """The chat as the page shows it after a streamed event (its last update)."""
    return json.dumps(outputs[-1][ui.chatbot], sort_keys=True) if outputs else ""


def main(workdir: Path) -> dict:
    torch.set_flush_denormal(True)  # random SAM weights make denormals that slow CPU kernels down
    for name in ("Warning", "Info"):
        setattr(gr, name, lambda message, *args, _kind=name, **kwargs: TOASTS.append(f"{_kind}: {message}"))
    sam = (
        build_tiny_sam2(workdir / "sam2")
        if not (workdir / "sam2" / "config.json").exists()
        else workdir / "sam2"
    )
    image = write_scene_image(workdir, 240, 180)
    clip = write_scene_clip(workdir, seconds=3, fps=4, step=3, width=160, height=120)
    settings = replace(
        AppSettings(), model=str(CHECKPOINT), device="cpu", dtype="float32", sam2=str(sam),
        max_new_tokens=2048, preview_dir=workdir / "preview", ram_budget_gb=8.0,
    )  # fmt: skip
    service = Service(settings).start()
    assert not service.preview and not service.segmenter.is_classical, service.banner
    page = app.build_page(service)
    events, ui = page.events, page.ui
    seen: dict = {"zero_gpu": service.zero_gpu}

    # A picture: one object by a click, one by a box; both kept.
    ws = events.on_upload(None, {"path": str(image.path)})[ui.state]
    events.on_click(ws, CLICK, SimpleNamespace(index=list(image.disc_centre)))
    events.on_keep(ws, "disc", CLICK)
    x0, y0, x1, y1 = image.square_box
    events.on_click(ws, BOX, SimpleNamespace(index=[x0 - 3, y0 - 3]))
    events.on_click(ws, BOX, SimpleNamespace(index=[x1 + 3, y1 + 3]))
    events.on_keep(ws, "square", BOX)
    seen["marked"] = state(ws)

    # Ask, a follow-up, describe each object, regenerate (a sample with the next seed).
    seen["ask"] = shown(list(events.on_send(ws, "What is <object1> next to <object2>?", *GENERATION)), ui)
    seen["follow_up"] = shown(list(events.on_send(ws, "And what colour is <object2>?", *GENERATION)), ui)
    seen["describe"] = shown(list(events.on_describe(ws, 0, *GENERATION)), ui)
    seen["regenerate"] = shown(list(events.on_regenerate(ws, *GENERATION)), ui)
    seen["image_chat"] = state(ws)

    # Stop: an answer stopped after its first piece ends as stopped, kept in the conversation.
    answer = events.on_send(ws, "Tell me everything about <object1>.", 2000, False, 0.2, 0.9, 1234)
    next(answer)
    events.on_stop(ws)
    list(answer)
    assert ws.session.history, TOASTS
    last = ws.session.history[-1]
    seen["stopped"] = {
        "finish": last.finish_reason,
        "kept": last.question,
        "tokens_below": len(last.answer_ids) < 2000,
    }

    # A clip: mark the disc on the first sampled frame, keep, track, ask, describe.
    ws = events.on_open_clip(ws, str(clip.path))[ui.state]
    events.on_click(ws, CLICK, SimpleNamespace(index=list(clip.centres[ws.frame_index])))
    events.on_keep(ws, "disc", CLICK)
    steps: list[tuple] = []
    tracked = asyncio.run(events.on_track(ws, progress=lambda step, **kwargs: steps.append(step)))
    seen["tracked"] = {"tracked": ws.tracked, "steps": steps, "overlay": tracked[ui.overlay]["visible"]}
    seen["clip_ask"] = shown(list(events.on_send(ws, "Where does <object1> go?", *GENERATION)), ui)
    seen["clip_describe"] = shown(list(events.on_describe(ws, 1, *GENERATION)), ui)
    seen["clip_chat"] = state(ws)
    seen["toasts"] = list(TOASTS)
    seen["warm_ups"] = len(service.warmer.reports)

    if service.zero_gpu and "spaces" in sys.modules:
        seen |= refusals(service, ws)
    ws.close()
    return seen


def refusals(service: Service, ws) -> dict:
    """In ZeroGPU mode under the stand-in: nothing ran the model outside a call, and the stand-in would have
    said so (model work called directly here is refused), so the empty list means something."""
    import spaces

    found = {"violations": spaces.violations()}

    def refused(run) -> str:
        try:
            run()
        except spaces.ZeroGPUViolation:
            return "refused"
        return "ran"

    session = ws.session
    frame = ws.frame
    found["direct"] = {
        "warm_up": refused(session.warm),
        "answer": refused(lambda: ChatSession.final(session.ask("What is <object1>?"))),
        "sam": refused(lambda: service.segmenter.segment_image(frame, Prompt(points=((10, 10),)))),
    }
    return found


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
