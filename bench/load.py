"""Many visitors at once against the app in offline preview: answers, cross-talk, busy visitors, latency, memory.

Starts `python app.py` (offline preview: tiny random PixelRefer, GrabCut) as a subprocess on a free port and
drives it with `gradio_client`, one client (one server session) per visitor, each with its own generated
image and objects (`/open`, `/add_object` x2, `/ask`, greedy decoding):

1. every visitor alone, one after the other: the reference answers;
2. `--rounds` rounds of all visitors at once: every answer must equal its reference (greedy decoding makes
   that exact; any difference is cross-talk between sessions), with `/ask` latency;
3. a flood of `--queue-size` + `--extra` visitors asking long answers at the same moment: those beyond the
   queue bound must get Gradio's busy message ("Queue is full"), none may hang.

Between rounds the clients are closed and the server's memory and what is left of the visitors is read:
sessions and caches must be freed. Gradio keeps a closed tab's state for an hour (so a reload finds it);
the server runs with `GRADIO_IS_E2E_TEST=1`, Gradio's switch that makes that one second, so the bench can
watch it. `--in-process` serves the app from the bench's own process instead, where the live workspaces,
chat sessions and Gradio's per-session records can be counted (the RSS then includes the clients).
Nothing is asserted here (tests/test_load.py runs a small version with assertions).

    python bench/load.py                       # 16 visitors, 3 rounds, queue of 16 (+8 in the flood)
    python bench/load.py --in-process          # the same, counting live workspaces and chat sessions
    python bench/load.py --sessions 32 --rounds 5 --queue-size 8
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.app_process import RunningApp, free_port  # noqa: E402

BUSY = "Queue is full"
"""Gradio's words to a visitor who arrives when the queue is full."""


@dataclass(frozen=True)
class Visitor:
    """One visitor's own picture, two objects and question."""

    index: int
    image: Path
    masks: tuple[Path, Path]
    question: str


@dataclass(frozen=True)
class Visit:
    """What a visitor got: the answer (or the error message), and how long `/ask` and the whole visit took."""

    index: int
    answer: str | None
    error: str | None
    ask_s: float
    total_s: float


def make_visitors(folder: Path, count: int) -> list[Visitor]:
    """`count` visitors, each with a different random picture and differently placed objects."""
    folder.mkdir(parents=True, exist_ok=True)
    visitors = []
    for index in range(count):
        rng = np.random.default_rng(1000 + index)
        height, width = 64 + 8 * (index % 4), 96 + 8 * (index % 5)
        image = folder / f"visitor_{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image)
        masks = []
        for number in range(2):
            mask = np.zeros((height, width), np.uint8)
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[top : top + 10 + number * 8, left : left + 12 + index % 7] = 255
            path = folder / f"visitor_{index:03d}_object_{number + 1}.png"
            Image.fromarray(mask).save(path)
            masks.append(path)
        question = ["How do <object1> and <object2> relate?", "What is <object2> next to <object1>?"][
            index % 2
        ]
        visitors.append(Visitor(index, image, (masks[0], masks[1]), question))
    return visitors


def connect(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def prepare(client, visitor: Visitor) -> None:
    """Open the visitor's picture and mark both objects."""
    from gradio_client import handle_file

    client.predict(image=handle_file(visitor.image), api_name="/open")
    for number, mask in enumerate(visitor.masks, start=1):
        tag = client.predict(handle_file(mask), 0, api_name="/add_object")
        if tag != f"<object{number}>":
            raise RuntimeError(f"visitor {visitor.index}: object {number} came back as {tag!r}")


def visit(url: str, visitor: Visitor, tokens: int, start: threading.Barrier | None = None) -> Visit:
    """One whole visit in its own session: open, mark, ask; the client is closed at the end."""
    began = time.perf_counter()
    client = connect(url)
    try:
        prepare(client, visitor)
        if start is not None:
            start.wait()
        asked = time.perf_counter()
        try:
            answer = client.predict(visitor.question, tokens, 1234, api_name="/ask")
            error = None
        except Exception as exc:  # a busy message or a failure: reported, never raised
            answer, error = None, f"{type(exc).__name__}: {exc}"
        return Visit(visitor.index, answer, error, time.perf_counter() - asked, time.perf_counter() - began)
    finally:
        client.close()


def alone(url: str, visitors: list[Visitor], tokens: int) -> dict[int, str]:
    """The reference answers: every visitor on their own, one after the other."""
    references = {}
    for visitor in visitors:
        result = visit(url, visitor, tokens)
        if result.answer is None:
            raise RuntimeError(f"visitor {visitor.index} alone got no answer: {result.error}")
        references[visitor.index] = result.answer
    return references


def together(url: str, visitors: list[Visitor], tokens: int, timeout_s: float = 600) -> list[Visit]:
    """All visitors at once (each prepares, then all ask at the same moment)."""
    start = threading.Barrier(len(visitors))
    results: list[Visit | None] = [None] * len(visitors)

    def run(position: int, visitor: Visitor) -> None:
        try:
            results[position] = visit(url, visitor, tokens, start)
        except Exception as exc:
            start.abort()
            results[position] = Visit(visitor.index, None, f"{type(exc).__name__}: {exc}", 0.0, 0.0)

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in enumerate(visitors)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        r or Visit(v.index, None, "hung: no answer before the timeout", 0.0, 0.0)
        for r, v in zip(results, visitors, strict=True)
    ]


@dataclass(frozen=True)
class Flood:
    """A flood's outcome: answered, told the queue is full, failed otherwise, still waiting at the end."""

    answered: int
    busy: int
    failed: list[str]
    hung: int
    busy_message: str


def flood(url: str, visitors: list[Visitor], tokens: int, timeout_s: float = 300) -> Flood:
    """Every visitor prepared, then every `/ask` submitted at the same moment, for long answers."""
    clients = [connect(url) for _ in visitors]
    try:
        for client, visitor in zip(clients, visitors, strict=True):
            prepare(client, visitor)
        jobs = [
            c.submit(v.question, tokens, 1234, api_name="/ask")
            for c, v in zip(clients, visitors, strict=True)
        ]
        answered, busy, failed, hung, message = 0, 0, [], 0, ""
        deadline = time.monotonic() + timeout_s
        for job in jobs:
            try:
                job.result(timeout=max(0.1, deadline - time.monotonic()))
                answered += 1
            except TimeoutError:
                hung += 1
            except Exception as exc:
                if BUSY in str(exc):
                    busy, message = busy + 1, str(exc)
                else:
                    failed.append(f"{type(exc).__name__}: {exc}")
        return Flood(answered, busy, failed, hung, message)
    finally:
        for client in clients:
            client.close()


@dataclass(frozen=True)
class Mixed:
    """A mixed crowd: askers answered, told busy, failed or hung; cross-talk among them; markers told busy."""

    answered: int
    busy: int
    failed: list[str]
    hung: int
    crossed: int
    markers: int
    markers_busy: int
    markers_failed: list[str]


def mixed(
    url: str, askers: list[Visitor], markers: list[Visitor], tokens: int, references: dict[int, str],
    timeout_s: float = 300,
) -> Mixed:  # fmt: skip
    """Every asker prepared and every `/ask` submitted at once; while those answers are queued, the markers
    open their pictures and mark their objects, which must never be told the queue is full."""
    clients = [connect(url) for _ in askers]
    try:
        for client, visitor in zip(clients, askers, strict=True):
            prepare(client, visitor)
        jobs = [
            c.submit(v.question, tokens, 1234, api_name="/ask") for c, v in zip(clients, askers, strict=True)
        ]
        marker_busy, marker_failed = 0, []
        for visitor in markers:
            marker = connect(url)
            try:
                prepare(marker, visitor)
            except Exception as exc:
                if BUSY in str(exc):
                    marker_busy += 1
                else:
                    marker_failed.append(f"{type(exc).__name__}: {exc}")
            finally:
                marker.close()
        answered, busy, failed, hung, crossed = 0, 0, [], 0, 0
        deadline = time.monotonic() + timeout_s
        for job, visitor in zip(jobs, askers, strict=True):
            try:
                answer = job.result(timeout=max(0.1, deadline - time.monotonic()))
                answered += 1
                crossed += int(visitor.index in references and answer != references[visitor.index])
            except TimeoutError:
                hung += 1
            except Exception as exc:
                if BUSY in str(exc):
                    busy += 1
                else:
                    failed.append(f"{type(exc).__name__}: {exc}")
        return Mixed(answered, busy, failed, hung, crossed, len(markers), marker_busy, marker_failed)
    finally:
        for client in clients:
            client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def check_round(visits: list[Visit], references: dict[int, str]) -> tuple[int, int, list[str]]:
    """(answered, cross-talk, errors): cross-talk is an answer that differs from the same request alone."""
    answered = [v for v in visits if v.answer is not None]
    crossed = [v for v in answered if v.answer != references[v.index]]
    return len(answered), len(crossed), [v.error for v in visits if v.error]


# ---------------------------------------------------------------------- the app under test


class AppProcess:
    """`python app.py` in offline preview on a free port, with its own temporary folder.

    From outside, the server's memory is its RSS and a visitor's state shows only as a temporary folder
    (made when a visitor exports or renders an overlay, so API-only visitors may leave none to count).
    """

    def __init__(self, queue_size: int, concurrency: int, extra: Sequence[str] = ()) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pixelrefer-load-"))
        env = {
            "GRADIO_IS_E2E_TEST": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "TMPDIR": str(self.tmp),
            "GRADIO_TEMP_DIR": str(self.tmp / "gradio"),
        }
        flags = ["--queue-size", str(queue_size), "--concurrency", str(concurrency), *extra]
        self.app = RunningApp(flags, self.tmp / "app.log", env=env)
        self.process, self.url, self.started_s = self.app.process, self.app.url, self.app.started_s

    def rss_mb(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 1e6

    def live(self) -> dict[str, int]:
        return {"visitor folders": len(list(self.tmp.glob("pixelrefer-visitor-*")))}

    def stop(self) -> None:
        self.app.stop()


class InProcessApp:
    """`app.py`'s Blocks served from this process, so that its live objects can be counted: workspaces and
    chat sessions (freed by the state's delete callback), and Gradio's own per-session records."""

    def __init__(self, queue_size: int, concurrency: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ["GRADIO_IS_E2E_TEST"] = "1"
        began = time.perf_counter()
        import app
        from pixelrefer.chat.session import ChatSession
        from pixelrefer.serve.service import AppSettings, Service
        from pixelrefer.serve.workspace import Workspace

        self._kinds = {"workspaces": Workspace, "chat sessions": ChatSession}
        settings = replace(AppSettings.parse([]), queue_size=queue_size, concurrency=concurrency)
        self.demo = app.build(Service(settings).start())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.demo.launch(
            server_name="127.0.0.1",
            server_port=self.port,
            prevent_thread_lock=True,
            quiet=True,
            **app.launch_options(settings),
        )
        self.started_s = time.perf_counter() - began

    def rss_mb(self) -> float:
        return psutil.Process().memory_info().rss / 1e6

    def live(self) -> dict[str, int]:
        gc.collect()
        with warnings.catch_warnings():  # some modules warn when merely inspected
            warnings.simplefilter("ignore")
            objects = gc.get_objects()
            counts = {name: sum(isinstance(o, kind) for o in objects) for name, kind in self._kinds.items()}
            counts["workspaces"] = sum(
                isinstance(o, self._kinds["workspaces"]) and o.session is not None for o in objects
            )
        counts["gradio sessions"] = len(self.demo.state_holder.session_data)
        return counts

    def stop(self) -> None:
        self.demo.close()


def settle(app: AppProcess | InProcessApp, timeout_s: float = 30) -> tuple[dict[str, int], float]:
    """Wait until no visitor's workspace is left (closed sessions are freed on the server's clock)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        live = app.live()
        if not any(v for k, v in live.items() if k != "gradio sessions"):
            break
        time.sleep(0.2)
    return app.live(), time.perf_counter() - began


def shown(live: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in live.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=16, help="visitors at once (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all visitors at once (default 3)")
    parser.add_argument(
        "--mixed", type=int, default=32, help="visitors in the mixed round: 3/4 ask, 1/4 only mark (0: none)"
    )
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per answer (default 24)")
    parser.add_argument("--queue-size", type=int, default=16, help="the app's --queue-size (default 16)")
    parser.add_argument("--concurrency", type=int, default=1, help="the app's --concurrency (default 1)")
    parser.add_argument(
        "--extra", type=int, default=8, help="flood visitors beyond the queue size (default 8)"
    )
    parser.add_argument(
        "--flood-tokens", type=int, default=300, help="new tokens per flood answer (default 300)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve the app from this process and count its live workspaces (default: python app.py)",
    )
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="pixelrefer-load-media-"))
    visitors = make_visitors(folder, max(args.sessions, args.queue_size + args.extra, args.mixed * 3 // 4))
    crowd = visitors[: args.sessions]
    how = "served in this process" if args.in_process else "as a subprocess"
    print(
        f"# bench/load.py: app.py in offline preview ({how}), --concurrency {args.concurrency} "
        f"--queue-size {args.queue_size}, {args.sessions} visitors, {args.tokens} new tokens per answer"
    )
    app = (InProcessApp if args.in_process else AppProcess)(args.queue_size, args.concurrency)
    try:
        print(f"app started in {app.started_s:.1f} s on {app.url}; RSS {app.rss_mb():.0f} MB")
        began = time.perf_counter()
        references = alone(app.url, crowd, args.tokens)
        print(
            f"reference answers, each visitor alone: {len(references)} in {time.perf_counter() - began:.1f} s; "
            f"{len(set(references.values()))} distinct"
        )
        left, _ = settle(app)
        print(f"memory before the rounds: RSS {app.rss_mb():.0f} MB; left: {shown(left)}")
        print()
        print(
            "| round | answered / total | cross-talk | /ask p50 s | /ask p95 s | visit p95 s | RSS after MB "
            "| left after the round |"
        )
        print("|---|---|---|---|---|---|---|---|")
        totals = {"answered": 0, "total": 0, "crossed": 0}
        errors: list[str] = []
        for round_number in range(1, args.rounds + 1):
            visits = together(app.url, crowd, args.tokens)
            answered, crossed, failed = check_round(visits, references)
            errors += failed
            left, _ = settle(app)
            asks = [v.ask_s for v in visits if v.answer is not None]
            whole = [v.total_s for v in visits if v.answer is not None]
            print(
                f"| {round_number} | {answered} / {len(visits)} | {crossed} | {percentile(asks, 0.5):.2f} | "
                f"{percentile(asks, 0.95):.2f} | {percentile(whole, 0.95):.2f} | {app.rss_mb():.0f} | {shown(left)} |"
            )
            totals["answered"] += answered
            totals["total"] += len(visits)
            totals["crossed"] += crossed
        print()
        print(
            f"sessions answered: {totals['answered']} / {totals['total']}; cross-talk: {totals['crossed']}"
            + (f"; errors: {errors[:3]}" if errors else "")
        )
        crowd_size = args.queue_size + args.extra
        result = flood(app.url, visitors[:crowd_size], args.flood_tokens)
        print(
            f"flood: {crowd_size} visitors ask at once ({args.flood_tokens} tokens each) against a queue of "
            f'{args.queue_size}: {result.answered} answered, {result.busy} told "{result.busy_message}", '
            f"{len(result.failed)} failed otherwise, {result.hung} hung"
        )
        left, waited = settle(app)
        print(f"after the flood: RSS {app.rss_mb():.0f} MB; left: {shown(left)} ({waited:.1f} s to free)")
        if args.mixed:
            askers = visitors[: args.mixed * 3 // 4]
            markers = make_visitors(folder / "markers", args.mixed)[len(askers) :]
            outcome = mixed(app.url, askers, markers, args.tokens, references)
            print(
                f"mixed round of {args.mixed}: {len(askers)} ask at once, {outcome.markers} only open and mark "
                f"meanwhile; askers: {outcome.answered} answered, {outcome.busy} told busy, "
                f"{len(outcome.failed)} failed otherwise, {outcome.hung} hung, cross-talk {outcome.crossed}; "
                f'markers told "{BUSY}": {outcome.markers_busy}, failed: {len(outcome.markers_failed)}'
                + (
                    f" {outcome.failed[:2] + outcome.markers_failed[:2]}"
                    if outcome.failed or outcome.markers_failed
                    else ""
                )
            )
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
