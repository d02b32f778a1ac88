"""Precompute while marking: the first question's time to first token, warm vs cold, and what a pending
warm-up costs another visitor's answer. Nothing is asserted.

Warm: the objects are marked, the background worker (`pixelrefer.chat.warmup.Warmer`, the app's) finishes
the session's warm-up, then the first question is asked. Cold: the same question right after marking,
with no warm-up. Both on the same medium random-weight checkpoint as bench_chat (both variants, an image
with 3 objects and a clip with 2), greedy; the ids of warm and cold answers are compared too.

Interference: visitor A's answer (a cold first question, then a follow-up) timed while visitor B's
warm-up is running in the worker (started just before A asks; it pauses at its next layer) and while
the worker is idle, interleaved; printed as pending/idle ratios (goal: within 10 %).

    python bench/bench_warm.py                     # CPU, both variants
    python bench/bench_warm.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_chat import SHAPES, image_session, session_question, video_session  # noqa: E402

from pixelrefer import ChatSession, GenerationSettings, PixelRefer  # noqa: E402
from pixelrefer.chat.gate import Gate  # noqa: E402
from pixelrefer.chat.warmup import Warmer  # noqa: E402
from pixelrefer.model.synthetic import build_checkpoint  # noqa: E402

SCENARIOS = [("image, 3 objects", "image"), ("clip, 2 objects", "video")]
FOLLOW_UP = "Where is it in the picture, and what color is it?"


def make(model: PixelRefer, kind: str, gate: Gate) -> ChatSession:
    session = image_session(model, 3, True) if kind == "image" else video_session(model, True)
    session.gate = gate
    return session


def ask(session: ChatSession, question: str, tokens: int) -> tuple[float, float, list[int]]:
    """(time to first token, whole answer, ids), measured from the call as the app makes it."""
    began = time.perf_counter()
    first = None

    def first_text(_: str) -> None:
        nonlocal first
        first = first if first is not None else time.perf_counter() - began

    exchange = session.final(session.ask(question, GenerationSettings(max_new_tokens=tokens)), first_text)
    ttft = exchange.timings.get("first_token_s", first)

    return ttft, time.perf_counter() - began, exchange.answer_ids


def warm_vs_cold(model: PixelRefer, kind: str, args: argparse.Namespace) -> dict:
    gate = Gate()
    warmer = Warmer(gate)
    cold, warm, warm_up, same = [], [], [], True
    try:
        for _ in range(args.repeats):
            session = make(model, kind, gate)
            ttft, _, cold_ids = ask(session, session_question(session), args.tokens)
            cold.append(ttft)
            session.close()

            session = make(model, kind, gate)
            warmer.schedule("visitor", session)
            warmer.wait()
            report = warmer.report("visitor")
            warm_up.append(report.seconds)
            ttft, _, warm_ids = ask(session, session_question(session), args.tokens)
            warm.append(ttft)
            same = same and warm_ids == cold_ids and report.stored
            session.close()
    finally:
        warmer.close()
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "warm_up": statistics.median(warm_up),
        "same": same,
    }


def interference(model: PixelRefer, kind: str, args: argparse.Namespace) -> dict:
    """Visitor A's answers with visitor B's warm-up running vs with the worker idle, interleaved."""
    gate = Gate()
    warmer = Warmer(gate)
    times: dict[str, dict[str, list[float]]] = {
        mode: {"first": [], "follow": []} for mode in ("idle", "pending")
    }
    paused = []
    try:
        for round_ in range(2 * args.repeats):
            mode = "pending" if round_ % 2 else "idle"
            visitor_a = make(model, kind, gate)
            for turn, question in (("first", session_question(visitor_a)), ("follow", FOLLOW_UP)):
                visitor_b = make(model, kind, gate)  # just marked: its warm-up has everything to compute
                if mode == "pending":
                    warmer.schedule("b", visitor_b)
                    time.sleep(args.head_start)
                _, total, _ = ask(visitor_a, question, args.tokens)
                times[mode][turn].append(total)
                warmer.wait()
                if mode == "pending":
                    paused.append(warmer.report("b").paused_s)
                visitor_b.close()
            visitor_a.close()
    finally:
        warmer.close()
    out = {
        f"{mode}_{turn}": statistics.median(v) for mode, turns in times.items() for turn, v in turns.items()
    }
    out["paused"] = statistics.median(paused) if paused else 0.0
    return out


def run_variant(variant: str, args: argparse.Namespace) -> list[str]:
    folder = Path(args.work_dir) / f"{args.shape}-{variant}"
    if not (folder / "config.json").exists():
        began = time.perf_counter()
        build_checkpoint(folder, variant=variant, shape=SHAPES[args.shape])
        print(f"# built {folder} in {time.perf_counter() - began:.1f} s", flush=True)
    model = PixelRefer.from_pretrained(str(folder), device=args.device, dtype=args.dtype)
    params = sum(p.numel() for p in model.model.parameters()) / 1e6
    print(f"# {variant}: {params:.0f}M parameters, dtype {model.dtype}", flush=True)
    warmup_session = image_session(model, 1, True)
    ask(warmup_session, "Warm up <object1>.", 2)
    warmup_session.close()
    rows = []
    for name, kind in SCENARIOS:
        result = warm_vs_cold(model, kind, args)
        rows.append(
            f"{variant:7} {name:17} {result['cold']:9.3f} {result['warm']:9.3f} "
            f"{result['warm'] / result['cold']:7.3f} {result['warm_up']:9.3f} {str(result['same']):>9}"
        )
        print(rows[-1], flush=True)
    for name, kind in SCENARIOS[: 1 if args.quick else None]:
        result = interference(model, kind, args)
        rows.append(
            f"{variant:7} {name:17} A's answers: first {result['idle_first']:.3f} s idle, "
            f"{result['pending_first']:.3f} s pending ({result['pending_first'] / result['idle_first']:.3f}x); "
            f"follow-up {result['idle_follow']:.3f} s idle, {result['pending_follow']:.3f} s pending "
            f"({result['pending_follow'] / result['idle_follow']:.3f}x); B paused {result['paused']:.2f} s"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--variant", choices=["full", "lite", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head-start", type=float, default=0.3, help="s B's warm-up runs before A asks")
    parser.add_argument("--quick", action="store_true", help="interference on the image scenario only")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "pixelrefer-bench-warm"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(
        f"# bench_warm: shape={args.shape} device={args.device} dtype={args.dtype} threads={args.threads} "
        f"new_tokens={args.tokens} repeats={args.repeats} torch={torch.__version__}",
        flush=True,
    )
    rows = []
    for variant in ["full", "lite"] if args.variant == "both" else [args.variant]:
        rows += run_variant(variant, args)
    print()
    print(
        f"{'variant':7} {'scenario':17} {'cold TTFT':>9} {'warm TTFT':>9} {'ratio':>7} {'warm-up':>9} {'same ids':>9}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
