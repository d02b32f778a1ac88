"""Chat latency with and without the session's caches, on a random-weight checkpoint of real-ish size.

For each scenario (image with 1 and 3 objects, a clip with 2 objects) and variant, two sessions run the
same two-turn conversation: the cached one (feature cache + KV prefix reuse) and the naive one (every
turn re-encodes the media and objects and re-reads the whole prompt). Printed: load time, time to first
token of each turn, decode tokens/s, the follow-up/first-turn ratio, and RSS. Nothing is asserted.

    python bench/bench_chat.py                      # CPU, ~300M-parameter checkpoint, both variants
    python bench/bench_chat.py --shape release-2b --device cuda --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelrefer import ChatSession, GenerationSettings, PixelRefer  # noqa: E402
from pixelrefer.media.video import Clip  # noqa: E402
from pixelrefer.model.synthetic import BENCH, RELEASE_2B, RELEASE_7B, TINY, build_checkpoint  # noqa: E402

SHAPES = {"tiny": TINY, "bench": BENCH, "release-2b": RELEASE_2B, "release-7b": RELEASE_7B}


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """A textured picture with a few flat shapes (only sizes matter for timing)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[height // 4 : height // 2, width // 5 : width // 2] = (200, 40, 40)
    return image


def box_mask(height: int, width: int, top: float, left: float, size: float) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[int(top * height) : int((top + size) * height), int(left * width) : int((left + size) * width)] = (
        True
    )
    return mask


def image_session(model: PixelRefer, objects: int, caching: bool) -> ChatSession:
    image = scene(640, 480, 0)
    session = ChatSession(model, image=image, caching=caching)
    for k in range(objects):
        session.add_object(box_mask(480, 640, 0.1 + 0.25 * k, 0.1 + 0.2 * k, 0.2))
    return session


def video_session(model: PixelRefer, caching: bool) -> ChatSession:
    frames = tuple(scene(320, 240, i) for i in range(8))
    clip = Clip(frames, tuple(range(0, 24, 3)), tuple(float(i) for i in range(8)), 3.0, "file")
    session = ChatSession(model, clip=clip, caching=caching)
    for k in range(2):
        masks = {
            clip.indices[i]: box_mask(240, 320, 0.1 + 0.4 * k, 0.05 + 0.1 * i, 0.3) for i in range(0, 8, 2)
        }
        session.add_object(masks)
    return session


def turn(session: ChatSession, question: str, tokens: int) -> dict:
    exchange = session.final(session.ask(question, GenerationSettings(max_new_tokens=tokens)))
    timings = exchange.timings

    generated = len(exchange.answer_ids)
    decode_time = timings["total_s"] - timings["first_token_s"]
    return {
        "ttft": timings["first_token_s"],
        "tok_s": (generated - 1) / decode_time if generated > 1 and decode_time > 0 else float("nan"),
        "prompt": session.last_prompt.lm_length,
    }


def conversation(make, tokens: int, repeats: int) -> dict:
    first, follow, rates, prompt = [], [], [], 0
    for _ in range(repeats):
        session = make()
        one = turn(session, session_question(session), tokens)
        two = turn(session, "Where is it in the picture, and what color is it?", tokens)
        first.append(one["ttft"])
        follow.append(two["ttft"])
        rates.append(one["tok_s"])
        prompt = two["prompt"]
        session.close()
    return {
        "first": statistics.median(first),
        "follow": statistics.median(follow),
        "tok_s": statistics.median(rates),
        "prompt": prompt,
    }


def session_question(session: ChatSession) -> str:
    tags = " and ".join(obj.tag for obj in session.objects)
    return f"Describe {tags} and how they relate to the rest of the scene."


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SCENARIOS = [
    ("image, 1 object", "image", 1),
    ("image, 3 objects", "image", 3),
    ("video, 2 objects", "video", 2),
]


def make_session(model: PixelRefer, kind: str, objects: int, caching: bool) -> ChatSession:
    return image_session(model, objects, caching) if kind == "image" else video_session(model, caching)


def run_variant(variant: str, shape, args: argparse.Namespace) -> list[str]:
    """Build (once) and load the checkpoint, then time every scenario on both paths."""
    folder = Path(args.work_dir) / f"{args.shape}-{variant}"
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        build_checkpoint(folder, variant=variant, shape=shape, init_std=0.02)
        print(f"# built {folder} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    model = PixelRefer.from_pretrained(str(folder), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.model.parameters()) / 1e6
    print(f"# {variant}: {params:.0f}M parameters, load {load_s:.2f} s, dtype {model.dtype}")
    turn(image_session(model, 1, True), "Warm up <object1>.", 2)
    rows = []
    for name, kind, objects in SCENARIOS:
        for path, caching in (("cached", True), ("naive", False)):
            result = conversation(
                lambda kind=kind, objects=objects, caching=caching: make_session(
                    model, kind, objects, caching
                ),
                args.tokens,
                args.repeats,
            )
            rows.append(
                f"{variant:7} {name:16} {path:6} {result['prompt']:6d} {result['first']:9.3f} "
                f"{result['follow']:9.3f} {result['follow'] / result['first']:7.3f} {result['tok_s']:7.1f} "
                f"{rss_mb():7.0f} {peak_mb():8.0f}"
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
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per turn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "pixelrefer-bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    variants = ["full", "lite"] if args.variant == "both" else [args.variant]
    shape = SHAPES[args.shape]
    print(
        f"# bench_chat: shape={args.shape} device={args.device} dtype={args.dtype} threads={args.threads} "
        f"new_tokens={args.tokens} repeats={args.repeats} torch={torch.__version__}"
    )
    header = (
        f"{'variant':7} {'scenario':16} {'path':6} {'prompt':>6} {'TTFT 1st':>9} {'TTFT 2nd':>9} "
        f"{'2nd/1st':>7} {'tok/s':>7} {'RSS MB':>7} {'peak MB':>8}"
    )
    rows = []
    for variant in variants:
        rows += run_variant(variant, shape, args)
    print()
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
