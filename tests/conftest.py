"""Shared test setup: offline hubs, where the repo and the fixtures are, a tiny random SAM 2.1, the preview app."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from .app_process import REPO, free_port

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub


def fixtures_root() -> Path:
    """The official code's outputs on tiny checkpoints: $PIXELREFER_FIXTURES, else ../shared/fixtures."""
    value = os.environ.get("PIXELREFER_FIXTURES")
    return Path(value).resolve() if value else (REPO / ".." / "shared" / "fixtures").resolve()


# ---------------------------------------------------------------------- the tiny checkpoints' cases (chat, warm-up)

TINY_VARIANTS = ["pixelrefer-tiny", "pixelrefer-lite-tiny"]


@pytest.fixture(scope="module", params=TINY_VARIANTS)
def model(request):
    """Each tiny checkpoint of the fixtures, in float32 (their greedy ids were recorded in float32: bfloat16
    flips near-tied steps). A test module with its own `model` fixture overrides this one."""
    from pixelrefer import PixelRefer

    return PixelRefer.from_pretrained(
        str(fixtures_root() / request.param / "checkpoint"), device="cpu", dtype="float32"
    )


def fixture_case(model, name: str) -> tuple[Path, dict]:
    """The folder and `case.json` of the fixture case `name` recorded for `model`'s variant."""
    variant = "pixelrefer-tiny" if model.variant == "full" else "pixelrefer-lite-tiny"
    folder = fixtures_root() / variant / "cases" / name
    return folder, json.loads((folder / "case.json").read_text())


def fixture_mask(path: Path):
    """A fixture's mask PNG as a bool array."""
    from pixelrefer import load_image

    return load_image(path)[..., 0] > 0


def image_session(model, **kwargs):
    """A chat on the two-object image case, both objects added."""
    from pixelrefer import ChatSession

    folder, case = fixture_case(model, "image_2regions")
    session = ChatSession(model, image=folder / case["image_file"], **kwargs)
    for name in case["mask_files"]:
        session.add_object(fixture_mask(folder / name))
    return session


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random SAM 2.1 checkpoint (official layout), built once per test run."""
    from .sam_builders import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("sam2-tiny"))


@pytest.fixture(scope="session")
def sam2(tiny_sam2_dir: Path):
    """The SAM 2.1 segmenter on the tiny checkpoint, on the CPU in float32."""
    from pixelrefer.segment.sam import Sam2Segmenter, sam_placement

    # Random weights produce denormal floats that slow CPU kernels down by orders of magnitude.
    torch.set_flush_denormal(True)
    return Sam2Segmenter.load(str(tiny_sam2_dir), placement=sam_placement("cpu", "float32"))


@pytest.fixture(scope="session")
def coded_clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`coded_clip(n_frames, rate, width=32, height=32)`: an mp4 whose frames encode their index (cached)."""
    from .framecode import write_coded_clip

    folder = tmp_path_factory.mktemp("clips")
    made: dict[tuple, Path] = {}

    def make(n_frames: int, rate: str, width: int = 32, height: int = 32) -> Path:
        key = (n_frames, rate, width, height)
        if key not in made:
            name = f"clip_{n_frames}_{rate.replace('/', '-')}_{width}x{height}.mp4"
            made[key] = write_coded_clip(folder / name, n_frames, rate, width, height)
        return made[key]

    return make


# ---------------------------------------------------------------------- the Gradio app (test_app_*.py)


@dataclass(frozen=True)
class PreviewApp:
    """`app.py` serving its offline preview in this process: the URL, the Blocks, the shared service, and the
    page (its components by name and its handlers, for tests that call a handler as Gradio does)."""

    url: str
    demo: Any
    service: Any
    examples: tuple[Any, ...]
    page: Any

    def workspace_of(self, client: Any) -> Any:
        """The server-side workspace of a `gradio_client.Client`'s session (the page's `gr.State`), or None
        once the session is gone."""
        session = self.demo.state_holder.session_data.get(client.session_hash)
        return None if session is None else session[self.page.ui.state._id]


APP_PREVIEW_MAX_NEW_TOKENS = 4096
"""The preview app's token limit in the tests: long enough that a visitor can stop an answer mid-way."""


@contextlib.contextmanager
def serving_preview(folder: Path, **overrides: Any) -> Iterator[PreviewApp]:
    """The app in offline preview (tiny random PixelRefer built under `folder`, GrabCut masks), built with its
    own Service and launched as `main()` launches it, on a free port; `overrides` replace AppSettings fields."""
    import app
    from pixelrefer.serve.clients import HttpLimits
    from pixelrefer.serve.service import AppSettings, Service

    # Every test's visitors come from 127.0.0.1: as one client they would meet the per-client caps meant for
    # one person's tabs (tests/test_server_*.py check those on their own guards).
    many = 10_000
    clients = replace(
        HttpLimits(),
        requests_per_client=many,
        sessions_per_client=many,
        waiting_per_client=many,
        queued_per_client=many,
    )
    settings = replace(
        AppSettings(),
        preview_dir=folder,
        http=clients,
        ram_budget_gb=8.0,  # fixed: the default follows free memory, which a busy host makes too small
        **overrides,
    )
    service = Service(settings).start()
    assert service.preview, f"the app should fall back to its offline preview, not serve {service.requested}"
    assert service.segmenter is not None and service.segmenter.is_classical
    page = app.build_page(service)
    port = free_port()
    page.demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(settings),
    )
    try:
        yield PreviewApp(f"http://127.0.0.1:{port}/", page.demo, service, page.examples, page)
    finally:
        page.demo.close()
        service.close()


@pytest.fixture(scope="session")
def preview_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreviewApp]:
    """The app in offline preview, launched once per test run, with answers of up to
    `APP_PREVIEW_MAX_NEW_TOKENS`."""
    with serving_preview(
        tmp_path_factory.mktemp("app-preview"), max_new_tokens=APP_PREVIEW_MAX_NEW_TOKENS
    ) as running:
        yield running


@pytest.fixture()
def client(preview_app: PreviewApp) -> Iterator[Any]:
    """A fresh `gradio_client.Client` of the preview app: its own session, so its own workspace there."""
    from gradio_client import Client

    connected = Client(preview_app.url, verbose=False, download_files=False)
    try:
        yield connected
    finally:
        connected.close()


# ---------------------------------------------------------------------- the bad-input corpus (test_corpus_*.py)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """Every file of the bad-input corpus (`tests/corpus.py`), built once per test run (about two seconds)."""
    from .corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))
