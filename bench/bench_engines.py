"""Engines side by side: aggregate tokens/s and p50/p95 time to first token for 1, 4 and 16 concurrent
visitors, transformers vs vLLM, same run, same checkpoint; then the batch runner's items/s vs one by one.

    python bench/bench_engines.py                       # CPU: a random checkpoint with head size 32
    python bench/bench_engines.py --model ./PixelRefer-2B --device cuda --dtype bfloat16   # a GPU with vLLM

Each visitor is a chat session on its own image with two objects, asking one question of --tokens new
tokens (eos suppressed by max length only: random weights stop anywhere, so the counts are what came out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelrefer import ChatSession, GenerationSettings, PixelRefer  # noqa: E402
from pixelrefer.batch import run_batch  # noqa: E402
from pixelrefer.engines import build_engine  # noqa: E402
from pixelrefer.media.masks import save_mask_png  # noqa: E402
from pixelrefer.model.synthetic import ModelShape, build_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scenes import disc_mask, textured  # noqa: E402

ENGINE_SHAPE = ModelShape(256, 704, 4, 8, 2, 64, 128, 2, 2)
"""A random CPU checkpoint vLLM's CPU attention takes (head size 32)."""


def visitor(model: PixelRefer, seed: int, settings: GenerationSettings, out: list) -> None:
    session = ChatSession(model, image=textured(96, 128, seed))
    session.add_object(disc_mask(96, 128, (40, 40), 12 + seed % 10))
    session.add_object(disc_mask(96, 128, (60, 90), 14))
    began = time.perf_counter()
    first = None

    def first_text(_: str) -> None:
        nonlocal first
        first = first if first is not None else time.perf_counter() - began

    exchange = session.final(
        session.ask("What is the relationship between <object1> and <object2>?", settings), first_text
    )
    out.append((first if first is not None else time.perf_counter() - began, len(exchange.answer_ids)))


def round_of(model: PixelRefer, visitors: int, settings: GenerationSettings) -> dict:
    results: list = []
    threads = [threading.Thread(target=visitor, args=(model, k, settings, results)) for k in range(visitors)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
    return {
        "visitors": visitors,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": p95,
    }


def batch_items(folder: Path, n: int) -> Path:
    from PIL import Image

    lines = []
    for k in range(n):
        Image.fromarray(textured(96, 128, k)).save(folder / f"img{k}.png")
        save_mask_png(disc_mask(96, 128, (40, 40), 12 + k % 10), folder / f"m{k}.png")
        lines.append(json.dumps({"id": f"i{k}", "image": f"img{k}.png", "objects": [{"mask": f"m{k}.png"}],
                                 "questions": ["What is <object1>?"]}))  # fmt: skip
    path = folder / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="", help="checkpoint (default: a random one built here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--visitors", default="1,4,16")
    parser.add_argument("--batch-items", type=int, default=16)
    parser.add_argument("--engines", default="transformers,vllm")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    source = args.model or str(build_checkpoint(work / "ckpt", variant="full", shape=ENGINE_SHAPE, seed=0))
    model = PixelRefer.from_pretrained(source, device=args.device, dtype=args.dtype)
    default_engine = model.engine
    settings = GenerationSettings(max_new_tokens=args.tokens)
    items = batch_items(work, args.batch_items)
    print(f"checkpoint {Path(source).name}, {args.device} {args.dtype}, {args.tokens} new tokens per answer")
    for name in args.engines.split(","):
        engine = default_engine if name == "transformers" else build_engine(name, model, max_concurrency=16)  # type: ignore[arg-type]
        model.engine = engine
        round_of(model, 1, GenerationSettings(max_new_tokens=4))  # warm-up
        for visitors in [int(v) for v in args.visitors.split(",")]:
            r = round_of(model, visitors, settings)
            print(f"{name:12s} {visitors:3d} visitors: {r['tokens_per_s']:8.1f} tokens/s aggregate, "
                  f"TTFT p50 {r['ttft_p50_s']:.3f} s, p95 {r['ttft_p95_s']:.3f} s", flush=True)  # fmt: skip
        for workers in (1, None):
            out = work / f"{name}-{workers}.jsonl"
            summary = run_batch(model, items, out, settings=settings, workers=workers, progress=None)
            label = "one by one" if workers == 1 else f"{engine.max_concurrency} at once"
            print(
                f"{name:12s} batch of {args.batch_items} items, {label}: {summary.items_per_s:.2f} items/s",
                flush=True,
            )
        if engine is not default_engine:
            engine.close()
        model.engine = default_engine


if __name__ == "__main__":
    main()
