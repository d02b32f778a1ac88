"""What a client can make the server read or serve, what a visitor leaves behind, what messages give away.

The server must read only its own example and asset folders and the files a visitor uploaded, serve
nothing else, delete a visitor's files when the session ends, never run remote code or unpickle weights,
and never show a server path or an access token in a message.
"""

from __future__ import annotations

import ast
import math
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pixelrefer.media.images import load_image
from pixelrefer.media.limits import MediaRejected
from pixelrefer.media.video import load_clip
from pixelrefer.model.inference import PixelRefer
from pixelrefer.runtime.hub import WeightsUnavailable
from pixelrefer.runtime.redact import scrub
from pixelrefer.serve.service import AppSettings, Service
from pixelrefer.serve.workspace import Workspace

from .conftest import REPO
from .corpus import APP_LIMITS, IMAGE_CASES, VIDEO_CASES, Corpus

if TYPE_CHECKING:
    from .conftest import PreviewApp  # the fixture's type; only for annotations

CODE = sorted(
    [*REPO.joinpath("pixelrefer").rglob("*.py"), REPO / "app.py", *REPO.joinpath("bench").glob("*.py")]
)
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def workspace_of(preview_app: PreviewApp, client: Client) -> Workspace | None:
    """The server-side workspace of this client's session (the app's `gr.State` that closes it), if it still has one."""
    (state,) = [
        block
        for block in preview_app.demo.blocks.values()
        if isinstance(block, gr.State) and block.time_to_live != math.inf
    ]
    sessions = preview_app.demo.state_holder.session_data
    if client.session_hash not in sessions:
        return None
    return sessions[client.session_hash].state_data.get(state._id)


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    """Poll `condition` until it holds (the server frees closed sessions on its own clock)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def visitor_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("pixelrefer-visitor-*"))


# ---------------------------------------------------------------------- reading server files


def raw_call(url: str, api: str, data: list) -> tuple[int, str]:
    """Call an endpoint over plain HTTP, as a hostile client would (no upload step): the HTTP status of the
    call and, when it was accepted, its events; else the refusal's body."""
    with httpx.Client(base_url=url, timeout=60) as http:
        started = http.post(f"gradio_api/call/{api}", json={"data": data})
        if started.status_code != 200:
            return started.status_code, started.text
        return 200, http.get(f"gradio_api/call/{api}/{started.json()['event_id']}").text


@pytest.mark.parametrize("where", ["/etc/passwd", "../../../../../../etc/passwd", "app.py", "EXAMPLE"])
def test_a_client_cannot_pass_a_server_path_as_a_file(preview_app: PreviewApp, where: str) -> None:
    """Files the server did not receive as uploads are refused, even in the allowed example folder, before any
    handler runs, with a message that names the parameter and says how to send a file."""
    example = next(REPO.joinpath("examples").rglob("*.jpg"))
    path = str(example) if where == "EXAMPLE" else str(REPO / where) if where == "app.py" else where
    file = {"path": path, "meta": {"_type": "gradio.FileData"}}
    for api, data, name in (
        ("open", [file, None], "image"),
        ("open", [None, file], "video"),
        ("add_object", [file, 0], "mask"),
    ):
        status, text = raw_call(preview_app.url, api, data)
        assert status == 422, text
        assert f"{name} is not a file uploaded to this server" in text and "POST /gradio_api/upload" in text
        assert "root:" not in text and "import" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "../../../../etc/passwd",
        "app.py",
        "{repo}/app.py",
        "{repo}/pixelrefer/serve/service.py",
        "{repo}/examples/../app.py",
        "{repo}/examples/%2e%2e/app.py",
        "{repo}/.git/config",
        "{tmp}/pixelrefer-visitor-x/transcript.md",
    ],
)
def test_the_server_serves_no_file_outside_its_folders(preview_app: PreviewApp, path: str) -> None:
    url = path.format(repo=REPO, tmp=tempfile.gettempdir())
    response = httpx.get(f"{preview_app.url}gradio_api/file={url}")
    assert response.status_code in (403, 404)
    assert "root:" not in response.text


def test_the_example_folder_is_served(preview_app: PreviewApp) -> None:
    example = next(REPO.joinpath("examples").rglob("*.jpg"))
    response = httpx.get(f"{preview_app.url}gradio_api/file={quote(str(example))}")
    assert response.status_code == 200 and response.content == example.read_bytes()


# ---------------------------------------------------------------------- a visitor's files


def test_closing_a_workspace_deletes_its_files(preview_app: PreviewApp, corpus: Corpus) -> None:
    ws = Workspace(preview_app.service)
    ws.open_image(corpus.base_image)
    ws.session.add_object(np.ones((64, 96), bool))
    exported = [ws.export_masks_zip(), ws.export_transcript("md"), ws.export_transcript("json")]
    assert all(path.exists() and path.is_relative_to(ws.folder) for path in exported)
    ws.close()
    assert not ws.folder.exists() and ws.session is None


@pytest.fixture()
def closing_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio keeps a closed session's state for an hour (so a reloaded tab finds it); its end-to-end test
    switch makes that a second, so a test can watch the state's delete callback run."""
    monkeypatch.setenv("GRADIO_IS_E2E_TEST", "1")


def test_a_closed_session_frees_its_workspace_and_files(
    preview_app: PreviewApp, corpus: Corpus, closing_quickly: None
) -> None:
    client = Client(preview_app.url, verbose=False, download_files=False)
    client.predict(image=handle_file(corpus.base_image), api_name="/open")
    client.predict(handle_file(corpus.base_mask), 0, api_name="/add_object")
    client.predict("What is <object1>?", 4, 1234, api_name="/ask")
    ws = workspace_of(preview_app, client)
    assert ws is not None and ws.session is not None
    folder = ws.folder
    client.close()
    assert wait_for(lambda: ws.session is None), "the session's workspace was never closed"
    assert not folder.exists()
    assert wait_for(lambda: workspace_of(preview_app, client) is None)


def test_a_refused_first_upload_leaves_no_files(
    preview_app: PreviewApp, corpus: Corpus, closing_quickly: None
) -> None:
    before = visitor_folders()
    client = Client(preview_app.url, verbose=False, download_files=False)
    try:
        with pytest.raises(AppError, match=r"zero_bytes\.mp4 is empty \(0 bytes\)"):
            client.predict(video=handle_file(corpus.files["zero_bytes.mp4"]), api_name="/open")
    finally:
        client.close()
    assert wait_for(lambda: not (visitor_folders() - before), timeout_s=10)


# ---------------------------------------------------------------------- code that must not be there


def test_trust_remote_code_is_never_used() -> None:
    offenders = [path.name for path in CODE if "trust_remote_code" in path.read_text()]
    assert offenders == []


def calls(path: Path) -> Iterator[ast.Call]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_weights_are_never_unpickled() -> None:
    """Static: model classes load with `weights_only=True` (PixelRefer: a .bin is read as plain tensors) or
    `use_safetensors=True` (SAM 2.1); any `torch.load` is weights-only; nothing calls pickle. The loader's
    behaviour on a pickled .bin is tested in test_loading.py."""
    loaders, unsafe = [], []
    for path in CODE:
        for call in calls(path):
            name = dotted(call.func)
            keywords = {k.arg: k.value for k in call.keywords}

            def true(keyword: str, keywords: dict = keywords) -> bool:
                value = keywords.get(keyword)
                return isinstance(value, ast.Constant) and value.value is True

            if name == "torch.load":
                loaders.append((path.name, name, true("weights_only")))
            elif re.search(r"(Model|ForCausalLM)\.from_pretrained$", name):
                loaders.append((path.name, name, true("weights_only") or true("use_safetensors")))
            if name in {"pickle.load", "pickle.loads", "dill.load", "joblib.load"}:
                unsafe.append((path.name, name))
            if name.endswith("np.load") and true("allow_pickle"):
                unsafe.append((path.name, name))
    assert {name for _, name, _ in loaders} == {
        "torch.load",
        "PixelReferForCausalLM.from_pretrained",
        "Sam2Model.from_pretrained",
        "Sam2VideoModel.from_pretrained",
    }
    assert all(safe for _, _, safe in loaders), loaders
    assert unsafe == []


# ---------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("/tmp/gradio/3f9a/clip.mp4 does not exist", "clip.mp4 does not exist"),
        (
            "Cannot load '/srv/models/PixelRefer-2B': no such folder",
            "Cannot load 'PixelRefer-2B': no such folder",
        ),
        (
            "[Errno 2] No such file or directory: '/etc/passwd'",
            "[Errno 2] No such file or directory: 'passwd'",
        ),
        (r"C:\Users\ops\models\ckpt failed", "ckpt failed"),
        ("see ~/.cache/huggingface/hub/models--a--b/ for it", "see models--a--b for it"),
        (f"401 Unauthorized for token {TOKEN}.", "401 Unauthorized for token hf_***."),
        (
            "offline mode (HF_HUB_OFFLINE=1); hf_hub_download failed",
            "offline mode (HF_HUB_OFFLINE=1); hf_hub_download failed",
        ),
        (
            "https://huggingface.co/Alibaba-DAMO-Academy/PixelRefer-2B",
            "https://huggingface.co/Alibaba-DAMO-Academy/PixelRefer-2B",
        ),
        (
            "Frame 5 is not one of the clip's sampled frames (7, 15, 23)",
            "Frame 5 is not one of the clip's sampled frames (7, 15, 23)",
        ),
        (
            "a hub id of the form 'owner/name' at 1/2 the rate, 16/9",
            "a hub id of the form 'owner/name' at 1/2 the rate, 16/9",
        ),
        ("What is <object1>?</object1> <|im_end|>", "What is <object1>?</object1> <|im_end|>"),
        ("Call /open first, then /ask", "Call /open first, then /ask"),
    ],
)
def test_scrub_keeps_base_names_and_masks_tokens(message: str, shown: str) -> None:
    assert scrub(message) == shown


def test_the_banner_names_no_server_folder_and_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "/srv/private/checkpoints/PixelRefer-7B"
    load = PixelRefer.from_pretrained

    def guarded(source: str, **kwargs) -> PixelRefer:
        if source == secret:
            raise WeightsUnavailable(source, f"401 with token {TOKEN} (see {secret}/config.json)")
        return load(source, **kwargs)

    monkeypatch.setattr(PixelRefer, "from_pretrained", guarded)
    settings = replace(
        AppSettings(), model=secret, sam2="/srv/private/sam2", preview_dir=tmp_path, device="cpu"
    )
    service = Service(settings).start()
    banner = service.banner
    assert service.preview
    assert "Cannot load 'PixelRefer-7B': 401 with token hf_*** (see config.json)" in banner
    assert "Cannot load 'sam2'" in banner
    assert "/srv" not in banner and "private" not in banner and TOKEN not in banner


def test_the_app_scrubs_what_it_shows(preview_app: PreviewApp) -> None:
    from pixelrefer.serve.policy import Policy

    @Policy(preview_app.service).for_api
    def leaky() -> None:
        raise MediaRejected(f"/tmp/gradio/abc123/holiday.mp4 could not be read with token {TOKEN}")

    with pytest.raises(gr.Error) as shown:
        leaky()
    assert shown.value.message == "holiday.mp4 could not be read with token hf_***"


def test_no_refusal_in_the_corpus_names_a_server_path(corpus: Corpus) -> None:
    """Every message the readers give for the corpus files is already clean (before any scrubbing)."""
    for case in IMAGE_CASES + VIDEO_CASES:
        if case.outcome.answers:
            continue
        try:
            if case.kind == "image":
                load_image(corpus.media(case), limits=APP_LIMITS)
            else:
                load_clip(corpus.media(case), APP_LIMITS)
        except ValueError as exc:
            assert scrub(str(exc)) == str(exc) and str(corpus.folder) not in str(exc), str(exc)
            assert not re.search(r"(^|[\s'(])/\w", str(exc)), str(exc)


def test_an_ended_sessions_export_is_no_longer_served(
    preview_app: PreviewApp, corpus: Corpus, closing_quickly: None
) -> None:
    """The copy Gradio serves of an export is deleted with the session, so its URL stops working."""
    client = Client(preview_app.url, verbose=False, download_files=False)
    client.predict(image=handle_file(corpus.base_image), api_name="/open")
    client.predict(handle_file(corpus.base_mask), 0, api_name="/add_object")
    ws = workspace_of(preview_app, client)
    (index,) = [i for i, fn in preview_app.demo.fns.items() if fn.api_name == "on_export"]
    (trigger, _), *_ = preview_app.demo.fns[index].targets
    with httpx.Client(base_url=f"{preview_app.url}gradio_api/", timeout=30) as http:
        body = {"data": [None, "Masks (PNG zip)"], "fn_index": index, "trigger_id": trigger}
        joined = http.post("queue/join", json={**body, "session_hash": client.session_hash})
        assert joined.status_code == 200, joined.text
        events = http.get("queue/data", params={"session_hash": client.session_hash}).text
        (done,) = [line for line in events.splitlines() if '"process_completed"' in line]
        served = re.search(r'"path": ?"([^"]+masks\.zip)"', done).group(1)
        assert http.get(f"file={served}").status_code == 200
        assert Path(served) in ws.copies
        client.close()
        assert wait_for(lambda: ws.session is None), "the session's workspace was never closed"
        assert http.get(f"file={served}").status_code in (403, 404)
    assert not Path(served).exists()
