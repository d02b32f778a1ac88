"""The HTTP layer against a real server process (`python app.py`, offline preview, one per module), probed as
the issue's outsider did, with the server's memory read from outside (RSS of the process):

- component functions by name and an editor value listing a big layer 40 times are refused before anything
  is decoded (RSS growth under 100 MB);
- a DASH manifest whose BaseURL names a server file returns no byte of it, with a real ffmpeg on PATH;
- one client hammering the stateless `/describe_region` cannot make the model queue "full" for another;
- sessions cannot be flooded away: a client has its share, a newcomer is told the demo is full, and the
  active visitors keep their work;
- a stream nobody reads is cut and its memory returned; a stalled body gets 408; headers never finished
  get the connection closed.

Identity: the server trusts one proxy (`--trusted-proxies 1`); the test is that proxy, so each simulated
client is the address it writes into X-Forwarded-For.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from .app_media import write_mask_png, write_scene_image
from .conftest import REPO, free_port

MB = 1024 * 1024
STALL_S = 5
MAX_SESSIONS = 6


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    folder: Path
    secret: Path
    log: Path

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def http(self, address: str, **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}gradio_api/", headers={"X-Forwarded-For": address}, timeout=60, **kwargs
        )

    def client(self, address: str) -> Client:
        return Client(self.url, verbose=False, download_files=False, headers={"X-Forwarded-For": address})


def settled_rss(server: Server, seconds: float = 1.0) -> int:
    """The server's RSS once it has been idle a moment (the allocator returns freed arenas lazily)."""
    time.sleep(seconds)
    return server.rss()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("http-server")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())  # a real ffmpeg on the server's PATH
    private = folder / "private"
    private.mkdir()
    secret = private / "secret.mp4"
    subprocess.run(
        [str(bin_dir / "ffmpeg"), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=size=32x32:rate=3", "-frames:v", "6", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(secret)],
        check=True,
    )  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = [
        sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--sam2", "grabcut",
        "--trusted-proxies", "1", "--max-sessions", str(MAX_SESSIONS), "--sessions-per-client", "3",
        "--queue-size", "16", "--waiting-per-client", "2", "--stream-stall-s", str(STALL_S),
        "--body-stall-s", str(STALL_S), "--max-new-tokens", "4096",
    ]  # fmt: skip
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the server did not start: {log.read_text()[-3000:]}")
    try:
        yield Server(url, port, process, folder, secret, log)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("limits-media")
    image = write_scene_image(folder)
    return image.path, write_mask_png(image.disc, folder / "disc.png")


def config(server: Server) -> dict:
    return httpx.get(f"{server.url}config", timeout=30).json()


def event_of(server: Server, name: str) -> dict:
    (dependency,) = [d for d in config(server)["dependencies"] if d.get("api_name") == name]
    return dependency


def upload(http: httpx.Client, name: str, content: bytes) -> dict:
    response = http.post("upload", files=[("files", (name, content))])
    assert response.status_code == 200, response.text
    (path,) = response.json()
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- decoding before handlers


def test_component_functions_by_name_cost_nothing(server: Server) -> None:
    """The issue's probe: accept_blobs with index 100000000 grew RSS by ~760 MB a request; blobs under fresh
    ids were kept. Now every component call is refused before its body is read."""
    (editor,) = [c["id"] for c in config(server)["components"] if c.get("type") == "imageeditor"]
    tiny = png(np.zeros((8, 8, 4), np.uint8))
    blob = os.urandom(2 * MB)
    before = settled_rss(server)
    statuses = Counter()
    with server.http("10.0.1.1") as http:
        for k in range(12):
            form = {"component_id": str(editor), "session_hash": f"probe{k}", "fn_name": "accept_blobs",
                    "type": "layer", "index": "100000000", "id": f"id{k}"}  # fmt: skip
            try:
                response = http.post(
                    "component_server", data=form, files={"file": ("l.png", tiny if k < 2 else blob)}
                )
                statuses[response.status_code] += 1
            except httpx.HTTPError:
                statuses["closed"] += 1  # refused while the body was still being sent
    after = settled_rss(server)
    assert statuses[404] >= 2 and set(statuses) <= {404, "closed"}, statuses
    print(f"component_server x12: RSS {before / MB:.0f} -> {after / MB:.0f} MB")
    assert after - before < 100 * MB


def test_an_editor_value_with_many_layers_is_refused_before_decoding(server: Server) -> None:
    """One 4000x3000 RGBA PNG (a few KB) listed 40 times as layers peaked at +1.9 GB before the handler ran."""
    big = png(np.zeros((3000, 4000, 4), np.uint8))
    brush = event_of(server, "on_brush")
    (editor,) = [c["id"] for c in config(server)["components"] if c.get("type") == "imageeditor"]
    with server.http("10.0.1.2") as http:
        file = upload(http, "layer.png", big)

        def join(layers: int) -> httpx.Response:
            value = {"background": file, "layers": [file] * layers, "composite": file}
            data = [value if i == editor else None for i in brush["inputs"]]
            body = {"data": data, "fn_index": brush["id"], "trigger_id": brush["targets"][0][0],
                    "session_hash": f"layers{layers}"}  # fmt: skip
            return http.post("queue/join", json=body)

        before = settled_rss(server)
        many = join(40)
        two = join(2)
        after = settled_rss(server)
    assert many.status_code == 413 and "at most 2 layers; this value has 40" in many.json()["error"]
    assert two.status_code == 413 and "48,000,000 pixels together" in two.json()["error"]
    print(f"40 layers of 4000x3000: {len(big)} bytes each; RSS {before / MB:.0f} -> {after / MB:.0f} MB")
    assert after - before < 100 * MB


def dash(target: str) -> bytes:
    return (
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT2S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
        '<Period><AdaptationSet mimeType="video/mp4"><Representation id="1" bandwidth="1000" width="32" '
        f'height="32" codecs="avc1.64000a"><BaseURL>{target}</BaseURL><SegmentBase/></Representation>'
        "</AdaptationSet></Period></MPD>"
    ).encode()


def test_a_dash_manifest_reads_no_server_file(server: Server) -> None:
    """With a real ffmpeg on the server's PATH (which plainly follows the manifest to the file), neither
    Gradio's recording route nor the app's clip reader returns a byte of it."""
    ffmpeg = shutil.which("ffmpeg", path=str(server.folder / "bin"))
    manifest = server.folder / "probe.mpd"
    manifest.write_bytes(dash(str(server.secret)))
    followed = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(manifest), "-f", "rawvideo", "-"],
        capture_output=True,
        check=False,
    )
    assert len(followed.stdout) > 1000, "the manifest must really lead ffmpeg to the file"
    secret = server.secret.read_bytes()
    relative = os.path.relpath(server.secret, "/tmp/gradio")  # where Gradio keeps uploads
    targets = [str(server.secret), f"file://{server.secret}", relative, "../" * 12 + str(server.secret)[1:]]
    with server.http("10.0.1.3") as http:
        for target in targets:
            body = dash(target)
            recorded = http.post("process_recording", files={"video": ("recording.mpd", body)})
            assert recorded.status_code == 404 and secret[-64:] not in recorded.content
    client = server.client("10.0.1.3")
    try:
        for target in targets:
            clip = server.folder / "clip.mp4"
            clip.write_bytes(dash(target))
            with pytest.raises(AppError, match="could not be read as a video") as refused:
                client.predict(video=handle_file(clip), api_name="/open")
            assert str(server.secret.parent) not in str(refused.value)
    finally:
        client.close()


# ---------------------------------------------------------------------- a fair share of the model


def test_one_client_cannot_fill_the_model_queue_for_another(server: Server, scene) -> None:
    """The issue's probe: one client re-submitting /describe_region from two threads got another visitor
    "Queue is full" 15 times out of 15. Now the hog is told it has its share; the other is answered."""
    image, mask = scene
    stop = threading.Event()
    hog: Counter = Counter()
    with server.http("10.0.2.1") as http:
        data = [upload(http, "i.png", image.read_bytes()), upload(http, "m.png", mask.read_bytes()), 24, 1]

    def hammer() -> None:
        with server.http("10.0.2.1") as http:
            while not stop.is_set():
                response = http.post("call/describe_region", json={"data": data})
                hog[response.status_code] += 1
                if response.status_code != 200:
                    time.sleep(0.02)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    answered, full = 0, []
    client = server.client("10.0.2.2")
    try:
        time.sleep(1.0)
        client.predict(image=handle_file(image), api_name="/open")
        client.predict(handle_file(mask), 0, api_name="/add_object")
        for _ in range(4):
            try:
                client.predict("What is <object1>?", 4, 1, api_name="/ask")
                answered += 1
            except AppError as exc:
                full.append(str(exc))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        client.close()
    print(f"hog: {dict(hog)}; other visitor: {answered} answered, {len(full)} refused")
    assert full == [] and answered == 4
    assert hog[429] > 0 and hog[200] >= 2
    assert hog[503] == 0, "the hog never sees the queue full: it is stopped at its own share first"


# ---------------------------------------------------------------------- streams and slow clients


def unread_stream(server: Server, path: str, address: str) -> socket.socket:
    """A GET of an event stream from a client that never reads (a small receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {address}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def read_to_end(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # closed by the server, abruptly
    except TimeoutError:
        chunks.append(b"<not closed>")
    sock.close()
    return b"".join(chunks)


def test_streams_nobody_reads_and_events_nobody_comes_for_give_their_memory_back(
    server: Server, scene
) -> None:
    """Answers joined and never collected, and result streams opened and never read: after the stall time
    the server's RSS is back where it was and it answers the next client. (The cut itself and the ending of
    orphaned events are tested deterministically in test_server_routes.py.)"""
    image, mask = scene
    with server.http("10.0.3.0") as http:
        data = [upload(http, "i.png", image.read_bytes()), upload(http, "m.png", mask.read_bytes()), 8, 1]
        began = time.monotonic()
        warm = http.post("call/describe_region", json={"data": data}).json()["event_id"]
        assert "event: complete" in http.get(f"call/describe_region/{warm}").text
        one = time.monotonic() - began
    before = settled_rss(server)
    sockets = []
    for k in range(4):
        address = f"10.0.3.{1 + k // 2}"
        with server.http(address) as http:
            started = http.post("call/describe_region", json={"data": data})
            assert started.status_code == 200, started.text
            if k % 2:  # half never come back for their answer, some open the stream and never read it
                path = f"/gradio_api/call/describe_region/{started.json()['event_id']}"
                sockets.append(unread_stream(server, path, address))
    time.sleep(STALL_S + 2)
    began = time.monotonic()
    with server.http("10.0.3.9") as http:
        event = http.post("call/describe_region", json={"data": data}).json()["event_id"]
        assert "event: complete" in http.get(f"call/describe_region/{event}", timeout=180).text
    waited = time.monotonic() - began
    after = settled_rss(server, 2.0)
    for sock in sockets:
        sock.close()
    print(
        f"4 abandoned answers: RSS {before / MB:.0f} -> {after / MB:.0f} MB; one answer takes {one:.1f} s, "
        f"the next client waited {waited:.1f} s"
    )
    assert after - before < 100 * MB


def test_a_stalled_body_gets_408_and_unfinished_headers_are_closed(server: Server) -> None:
    body = socket.create_connection(("127.0.0.1", server.port))
    body.sendall(
        b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"data": ['
    )
    headers = socket.create_connection(("127.0.0.1", server.port))
    headers.sendall(b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\n")
    answer = read_to_end(body, timeout_s=STALL_S * 5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body stalled" in answer
    assert read_to_end(headers, timeout_s=STALL_S * 5) == b"", "a connection still in its headers stayed open"


# ---------------------------------------------------------------------- sessions (last: it fills the server)


def test_sessions_cannot_be_flooded_away(server: Server, scene) -> None:
    """Three visitors with work; empty sessions by the hundred cost nothing; one address gets its share of
    sessions; once every place holds an active visitor newcomers are told the demo is full; the three still
    have their objects and are answered."""
    image, mask = scene
    visitors = [server.client(f"10.0.4.{k}") for k in range(1, 4)]
    try:
        for client in visitors:
            client.predict(image=handle_file(image), api_name="/open")
            client.predict(handle_file(mask), 0, api_name="/add_object")
        load = next(d for d in config(server)["dependencies"] if d.get("api_name") == "picker_update")
        opened = event_of(server, "open")
        flood: Counter = Counter()
        with server.http("10.0.5.0") as http:
            for k in range(120):  # page loads with fresh sessions from many addresses: they hold nothing
                body = {"data": [], "fn_index": load["id"], "session_hash": f"empty{k}"}
                response = http.post("queue/join", json=body, headers={"X-Forwarded-For": f"10.0.5.{k}"})
                flood[response.status_code] += 1
        assert flood == Counter({200: 120}), flood
        same = [server.client("10.0.6.1") for _ in range(3)]
        visitors += same  # closed at the end with the others
        for client in same:
            client.predict(image=handle_file(image), api_name="/open")
        with server.http("10.0.6.1") as http:
            file = upload(http, "i.png", image.read_bytes())
            body = {"data": [None, file, None], "fn_index": opened["id"], "session_hash": "same-fourth"}
            fourth = http.post("queue/join", json=body)
        assert fourth.status_code == 429 and "already has 3 open sessions" in fourth.json()["error"]
        newcomers = []
        for k in range(5):
            with server.http(f"10.0.7.{k}") as http:
                body = {"data": [None, file, None], "fn_index": opened["id"], "session_hash": f"new{k}"}
                newcomers.append(http.post("queue/join", json=body))
        assert all(r.status_code == 503 for r in newcomers), [r.text for r in newcomers]
        assert f"all {MAX_SESSIONS} places are taken" in newcomers[0].json()["error"]
        for client in visitors[:3]:
            assert client.predict("What is <object1>?", 4, 1, api_name="/ask")
    finally:
        for client in visitors:
            client.close()
