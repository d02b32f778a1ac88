"""The named API (`gradio_client`): `/describe_region`, and `/open`, `/add_object`, `/ask` for a chat.

These four are the only events callable by name (`pixelrefer.serve.webguard.RouteGuard` refuses the page's
own). Each goes through the same `Workspace` calls as the page: an object added here gets its marks entry
and starts the warm-up exactly as one kept on the canvas, and its mask is fitted by the workspace's rule.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr

from ..chat.session import ChatSession
from ..media.images import load_image
from ..runtime.errors import InputError
from .cancellation import on_cancel, stops_on_cancel
from .flags import generation_settings
from .policy import Policy
from .service import Service
from .visitor import workspace_for
from .webguard import MODEL_QUEUE
from .workspace import Workspace

__all__ = ["MAX_FRAME_INDEX", "MAX_SEED", "NamedApi", "add_named_api"]

MAX_SEED = 2**63 - 1
"""The largest seed the random generators take."""
MAX_FRAME_INDEX = 10**7
"""Far beyond any clip's frame count; a larger index cannot name a frame, so it is refused as a number."""


class NamedApi:
    """The four endpoints for one service, each wrapped once: the error rule, and a stop when the client
    cancels (their model work goes through `Service.calls`, a GPU call each on ZeroGPU)."""

    def __init__(self, service: Service, policy: Policy) -> None:
        self.service = service
        self.describe_region = stops_on_cancel(policy.for_api(self._describe_region))
        self.open = policy.for_api(self._open)
        self.add_object = policy.for_api(self._add_object)
        self.ask = stops_on_cancel(policy.for_api(self._ask))

    def _describe_region(self, image, mask, max_new_tokens=256, seed=1234) -> str:
        """Describe the masked region of an image (stateless)."""
        ws = Workspace(self.service)
        on_cancel(ws.stop)
        try:
            ws.open_image(image)
            obj = ws.add_mask(self._mask(mask), 0)
            settings = generation_settings(max_new_tokens, False, None, None, seed)
            return ChatSession.final(ws.describe(obj.id, settings)).answer
        finally:
            ws.close()

    def _open(self, ws, image=None, video=None) -> tuple[Workspace, str]:
        """Start a chat about an image or a clip; returns a summary."""
        ws = workspace_for(self.service, ws)
        if image:
            ws.open_image(image)
        elif video:
            ws.open_video(video)
        else:
            raise InputError("Give an image or a video")
        frames = [int(i) for i in ws.clip.indices] if ws.clip is not None else [0]
        return ws, json.dumps({"kind": ws.kind, "frames": frames, "notes": list(ws.notes)})

    def _add_object(self, ws, mask, frame) -> tuple[Workspace, str]:
        """Add an object from a mask image on a frame (0 for an image); returns its tag."""
        if ws is None or ws.session is None:
            raise InputError("Call /open first")
        return ws, ws.add_mask(self._mask(mask), int(frame or 0)).tag

    def _ask(self, ws, question, max_new_tokens=256, seed=1234) -> tuple[Workspace, str]:
        """Ask about the objects (multi-turn within one client session); returns the answer."""
        if ws is None or ws.session is None:
            raise InputError("Call /open first")
        ws = workspace_for(self.service, ws)
        on_cancel(ws.stop)
        settings = generation_settings(max_new_tokens, False, None, None, seed)
        return ws, ChatSession.final(ws.ask(question, settings)).answer

    def _mask(self, path):
        return load_image(path, limits=self.service.settings.media)


def add_named_api(service: Service, policy: Policy, state: gr.State) -> NamedApi:
    """The endpoints' hidden inputs and outputs, and the four events (inside the page's `gr.Blocks`)."""
    api = NamedApi(service, policy)
    c = _hidden_components(service.settings.max_new_tokens)
    model = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": service.model_concurrency}
    c.describe.click(
        api.describe_region, [c.image, c.mask, c.tokens, c.seed], [c.out], api_name="describe_region", **model
    )
    c.open.click(api.open, [state, c.image, c.video], [state, c.out], api_name="open")
    c.add.click(api.add_object, [state, c.mask, c.frame], [state, c.out], api_name="add_object")
    c.ask.click(api.ask, [state, c.question, c.tokens, c.seed], [state, c.out], api_name="ask", **model)
    return api


def _hidden_components(max_new_tokens: int) -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Row(visible=False):
        # Files, not Image/Video components: those decode or convert uploads before the handler runs, so a
        # broken file would get Gradio's generic error instead of the library's message, and a decompression
        # bomb would be decoded before any limit is checked.
        c.image = gr.File(type="filepath")
        c.mask = gr.File(type="filepath")
        c.video = gr.File(type="filepath")
        # Ranges are checked before any handler runs (`pixelrefer.serve.webguard.check_inputs`).
        c.frame = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_FRAME_INDEX)
        c.question = gr.Textbox()
        c.tokens = gr.Number(value=256, precision=0, minimum=1, maximum=max_new_tokens)
        c.seed = gr.Number(value=1234, precision=0, minimum=0, maximum=MAX_SEED)
        c.out = gr.Textbox()
        c.describe, c.open, c.add, c.ask = (gr.Button() for _ in range(4))
    return c
