"""A soak: many visitors holding the largest media while another client floods, hogs and hoards.

Starts `python app.py` (offline preview: tiny random PixelRefer, GrabCut) as a subprocess on a free port, the
way `bench/load.py` does (its `AppProcess`), behind one declared proxy (`--trusted-proxies 1`), so that
each visitor can come from its own address (`X-Forwarded-For`), as visitors of a Space do. Then:

1. set-up (not counted): `--visitors` visitors (default 64; the app gets `--max-sessions` one more, the last
   place for the second client's chat below), each from its own address, open the largest clip the app
   keeps (16 sampled frames at 1920x1080) and add `--objects` frame-sized masks through the named API
   (`/open`, `/add_object`; default 16, the most a visitor may mark: the public API's stand-in for tracked
   objects, one full-frame mask each); then the second client opens the chat it will leave unread;
2. load for `--minutes` (default 10): the visitors keep asking (`/ask`, a few at a time), while a second
   client, from one other address, in parallel
   - floods new sessions (`/open` from fresh sessions, as fast as it can),
   - hogs the model queue (`/describe_region` from several threads at once),
   - sends blobs (20 MB uploads it never uses, and Gradio's `component_server` blob route),
   - leaves streams unread (asks, then opens the event stream and never reads it);
3. at the end, every visitor asks about its last object: an answer means its work is intact; "Call /open
   first" or an unknown object means it was lost.

It prints the server's RSS over time (with the `--ram-budget-gb` it ran under), how many of each kind of
request were answered, told busy (queue or place limits, the memory budget) or refused (HTTP 4xx), and how
many visitors lost their work (must be 0). Nothing is asserted.

    python bench/soak.py                               # 64 visitors, 10 minutes
    python bench/soak.py --minutes 1 --visitors 8      # a short check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import AppProcess  # noqa: E402

CLIP_SIZE = (1920, 1080)
CLIP_SECONDS = 17
"""Long enough that sampling at 1 fps reaches the app's 16-frame cap."""
BUSY_WORDS = (
    "Queue is full",
    "full right now",
    "wait for",
    "Too many",
    "already has",
    "try again",
)
"""Words of the answers that mean "not now": Gradio's full queue, the per-client and per-visitor caps, the
demo's places and the memory budget."""


def write_clip(folder: Path) -> Path:
    """The largest clip the app keeps: 1920x1080, 2 fps for `CLIP_SECONDS` s (16 frames sampled at 1 fps)."""
    from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter

    width, height = CLIP_SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)], -1).astype(np.uint8)
    path = folder / "largest.mp4"
    with FFMPEG_VideoWriter(str(path), CLIP_SIZE, 2, codec="libx264", ffmpeg_params=["-crf", "28"]) as out:
        for t in range(2 * CLIP_SECONDS):
            frame = base.copy()
            frame[300:700, 200 + 20 * t : 600 + 20 * t] = (220, 40, 40)
            out.write_frame(frame)
    return path


def write_masks(folder: Path, count: int) -> list[Path]:
    """`count` frame-sized masks (PNG), each a different rectangle."""
    width, height = CLIP_SIZE
    paths = []
    for number in range(count):
        mask = np.zeros((height, width), np.uint8)
        top, left = 60 + 50 * (number % 8), 80 + 100 * number
        mask[top : top + 300, left : left + 240] = 255
        path = folder / f"mask_{number:02d}.png"
        Image.fromarray(mask).save(path)
        paths.append(path)
    return paths


def write_small(folder: Path) -> tuple[Path, Path]:
    """A small picture and its mask, for the flood and the queue hog."""
    rng = np.random.default_rng(7)
    image = folder / "small.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 30:90] = 255
    Image.fromarray(mask).save(folder / "small_mask.png")
    return image, folder / "small_mask.png"


def client(url: str, address: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, headers={"X-Forwarded-For": address})


@dataclass
class Tally:
    """Outcomes by kind of request: answered, busy (told to wait), refused (HTTP 4xx), failed (anything else)."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts.setdefault(kind, Counter())[outcome] += 1
            if detail and outcome != "answered":
                self.examples.setdefault(f"{kind}/{outcome}", detail[:160])

    def call(self, kind: str, fn, *args, **kwargs) -> object | None:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.failed(kind, exc)
            return None
        self.note(kind, "answered")
        return result

    def failed(self, kind: str, exc: Exception) -> None:
        """A request that raised: busy when it was told to wait (the words, or HTTP 429/503), refused on any
        other 4xx, failed otherwise."""
        text = f"{type(exc).__name__}: {exc}"
        if any(word in text for word in BUSY_WORDS) or re.search(r"\b(429|503)\b", text):
            self.note(kind, "busy", text)
        else:
            self.note(kind, "refused" if re.search(r"\b4\d\d\b", text) else "failed", text)


@dataclass
class Visitor:
    address: str
    client: object
    last_tag: str = ""


def set_up(url: str, count: int, clip: Path, masks: list[Path]) -> tuple[list[Visitor], float]:
    """Every visitor opens the clip and marks its objects, from its own address; seconds taken."""
    from gradio_client import handle_file

    began = time.perf_counter()
    visitors = []
    for index in range(count):
        address = f"10.1.{index // 250}.{index % 250 + 1}"
        visitor = Visitor(address, client(url, address))
        summary = visitor.client.predict(video=handle_file(clip), api_name="/open")
        frames = json.loads(summary)["frames"]
        for number, mask in enumerate(masks):
            frame = frames[number % len(frames)]
            visitor.last_tag = visitor.client.predict(handle_file(mask), frame, api_name="/add_object")
        visitors.append(visitor)
    return visitors, time.perf_counter() - began


class Attacker:
    """The second client: one address, four ways to take the server from the others."""

    def __init__(self, url: str, small: tuple[Path, Path], tally: Tally, stop: threading.Event) -> None:
        self.url, self.small, self.tally, self.stop = url, small, tally, stop
        self.address = "10.66.6.6"
        self.headers = {"X-Forwarded-For": self.address}
        self.unread: list[httpx.Response] = []
        self.own = None
        """The session whose answers are left unread (`set_up_unread`)."""
        self.http = httpx.Client(base_url=url, headers=self.headers, timeout=30)

    def flood_sessions(self) -> None:
        from gradio_client import handle_file

        kept: list = []  # the flood's sessions stay open, as a flood's would
        while not self.stop.is_set():
            try:
                fresh = client(self.url, self.address)
            except Exception as exc:
                self.tally.failed("flood: new session", exc)
                self.stop.wait(0.2)
                continue
            opened = handle_file(self.small[0])
            self.tally.call("flood: new session", fresh.predict, image=opened, api_name="/open")
            kept.append(fresh)
            if len(kept) > 200:
                kept.pop(0).close()
        for fresh in kept:
            fresh.close()

    def hog_queue(self) -> None:
        from gradio_client import handle_file

        hog = client(self.url, self.address)
        while not self.stop.is_set():
            self.tally.call(
                "hog: /describe_region",
                hog.predict,
                handle_file(self.small[0]),
                handle_file(self.small[1]),
                64,
                1,
                api_name="/describe_region",
            )

    def send_blobs(self) -> None:
        blob = os.urandom(20 * 2**20)
        while not self.stop.is_set():
            try:
                response = self.http.post("gradio_api/upload", files={"files": ("blob.bin", blob)})
                self.tally.note("blobs: 20 MB upload", _outcome(response.status_code), response.text)
                response = self.http.post(
                    "gradio_api/component_server",
                    json={
                        "component_id": 1,
                        "fn_name": "accept_blobs",
                        "data": {"index": 100000000},
                        "session_hash": uuid.uuid4().hex,
                    },
                )
                self.tally.note("blobs: component_server", _outcome(response.status_code), response.text)
            except httpx.HTTPError as exc:
                self.tally.note("blobs: 20 MB upload", "failed", f"{type(exc).__name__}: {exc}")
            time.sleep(0.5)

    def set_up_unread(self) -> None:
        """Before the load (not counted): the session whose answers the client will leave unread, with an
        object to ask about; under load its own flood holds the client's share and it would never get in."""
        from gradio_client import handle_file

        self.own = client(self.url, self.address)
        self.own.predict(image=handle_file(self.small[0]), api_name="/open")
        self.own.predict(handle_file(self.small[1]), 0, api_name="/add_object")

    def leave_streams_unread(self, fn_index: int) -> None:
        """Join /ask events of a session with long answers and open their event streams without reading."""
        own = self.own
        while not self.stop.is_set():
            body = {
                "data": [None, "What is <object1>?", 512, 1],
                "fn_index": fn_index,
                "session_hash": own.session_hash,
            }
            try:
                joined = self.http.post("gradio_api/queue/join", json=body)
                self.tally.note("unread: /ask stream", _outcome(joined.status_code), joined.text)
                request = self.http.build_request(
                    "GET", "gradio_api/queue/data", params={"session_hash": own.session_hash}
                )
                stream = self.http.send(request, stream=True)  # never read
                self.unread.append(stream)
            except httpx.HTTPError as exc:
                self.tally.note("unread: /ask stream", "failed", f"{type(exc).__name__}: {exc}")
            while len(self.unread) > 16:
                self.unread.pop(0).close()
            self.stop.wait(2)

    def close(self) -> None:
        for stream in self.unread:
            stream.close()
        self.http.close()


def _outcome(status: int) -> str:
    if status < 300:
        return "answered"
    if status in (429, 503):
        return "busy"
    return "refused" if status < 500 else "failed"


def api_index(url: str, name: str) -> int:
    """The fn_index of a named endpoint (for raw queue requests)."""
    config = httpx.get(f"{url}config", timeout=30).json()
    for index, dependency in enumerate(config["dependencies"]):
        if dependency.get("api_name") == name:
            return int(dependency.get("id", index))
    raise RuntimeError(f"no endpoint {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=64, help="visitors holding the largest clip (64)")
    parser.add_argument("--objects", type=int, default=16, help="full-frame masks per visitor (16)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (10)")
    parser.add_argument("--askers", type=int, default=4, help="visitors asking at once during the load (4)")
    parser.add_argument(
        "--ram-budget-gb",
        type=float,
        default=12.0,
        help="the app's --ram-budget-gb: what all visitors may hold in RAM (12; 64 visitors hold about 10)",
    )
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS lines (30)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="pixelrefer-soak-"))
    clip, masks, small = write_clip(folder), write_masks(folder, args.objects), write_small(folder)
    # one place more than the visitors: the second client's chat whose answers it leaves unread
    extra = ["--trusted-proxies", "1", "--max-sessions", str(args.visitors + 1)]
    extra += ["--ram-budget-gb", str(args.ram_budget_gb)]
    print(
        f"# bench/soak.py: app.py in offline preview, {args.visitors} visitors each with a "
        f"{CLIP_SIZE[0]}x{CLIP_SIZE[1]} clip (16 frames) and {args.objects} full-frame masks; "
        f"{args.minutes:g} min of load; app flags: {' '.join(extra)}",
        flush=True,
    )
    app = AppProcess(queue_size=16, concurrency=1, extra=extra)
    tally = Tally()
    stop = threading.Event()
    try:
        started = app.rss_mb()
        print(f"app started in {app.started_s:.1f} s; RSS {started:.0f} MB", flush=True)
        visitors, took = set_up(app.url, args.visitors, clip, masks)
        ready = app.rss_mb()
        print(f"set-up: {len(visitors)} visitors in {took:.0f} s; RSS {ready:.0f} MB", flush=True)
        attacker = Attacker(app.url, small, tally, stop)
        attacker.set_up_unread()
        ask_index = api_index(app.url, "ask")
        jobs = [
            attacker.flood_sessions,
            attacker.hog_queue,
            attacker.hog_queue,
            attacker.send_blobs,
            lambda: attacker.leave_streams_unread(ask_index),
        ]

        def ask_loop(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                visitor = rng.choice(visitors)
                tally.call(
                    "visitors: /ask", visitor.client.predict, "What is <object1>?", 8, 1, api_name="/ask"
                )

        threads = [threading.Thread(target=job, daemon=True) for job in jobs]
        threads += [threading.Thread(target=ask_loop, args=(n,), daemon=True) for n in range(args.askers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        print()
        print(
            "| minute | RSS MB | visitor asks answered | busy | attacker requests answered | busy | refused |"
        )
        print("|---|---|---|---|---|---|---|")
        peak = 0.0
        while time.perf_counter() - began < args.minutes * 60:
            stop.wait(min(args.every, args.minutes * 60 - (time.perf_counter() - began)))
            rss = app.rss_mb()
            peak = max(peak, rss)
            with tally.lock:
                mine = tally.counts.get("visitors: /ask", Counter())
                theirs = sum((c for k, c in tally.counts.items() if not k.startswith("visitors")), Counter())
            print(
                f"| {(time.perf_counter() - began) / 60:.1f} | {rss:,.0f} | {mine['answered']} | {mine['busy']} | "
                f"{theirs['answered']} | {theirs['busy']} | {theirs['refused']} |",
                flush=True,
            )
        stop.set()
        for thread in threads:
            thread.join(60)
        attacker.close()
        lost = []
        for visitor in visitors:
            question = f"What is {visitor.last_tag}?"
            try:
                visitor.client.predict(question, 4, 1, api_name="/ask")
            except Exception as exc:
                lost.append(f"{visitor.address}: {exc}")
        print()
        print("| requests | answered | told busy | refused (4xx) | failed otherwise |")
        print("|---|---|---|---|---|")
        for kind, counts in sorted(tally.counts.items()):
            print(
                f"| {kind} | {counts['answered']} | {counts['busy']} | {counts['refused']} | {counts['failed']} |"
            )
        print()
        for key, text in sorted(tally.examples.items()):
            print(f"- {key}: {text}")
        print()
        end = app.rss_mb()
        print(
            f"RSS at start {started:,.0f} MB, after the set-up {ready:,.0f} MB, peak {max(peak, end):,.0f} MB, at "
            f"the end {end:,.0f} MB (visitors' budget {args.ram_budget_gb:g} GB above what the app held at start); "
            f"visitors who lost their work: {len(lost)} of {len(visitors)}"
            + (f" ({lost[:3]})" if lost else "")
        )
        for visitor in visitors:
            visitor.client.close()
    finally:
        stop.set()
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
