"""bfloat16 vs float32 on the CPU, same run, on a medium random checkpoint (about bench_chat's size).

Per variant: one image with 3 objects, time to first token and decode tokens/s in each dtype (interleaved,
median of --repeats), printed with the bf16/fp32 ratio, the distinct greedy ids (a check that the
checkpoint's init gives varied output) and whether the greedy ids agree. Also prints the vision tower's
attention calls on a 768-frame clip with and without frame batching. Nothing is asserted.

    python bench/bench_dtype.py                 # BENCH shape, 2 threads
    python bench/bench_dtype.py --tokens 8 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelrefer import GenerationSettings, PixelRefer  # noqa: E402
from pixelrefer.model.synthetic import BENCH, build_checkpoint  # noqa: E402
from pixelrefer.runtime.devices import cpu_bf16_features  # noqa: E402


def scene() -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    masks = []
    for k in range(3):
        mask = np.zeros((480, 640), bool)
        mask[48 + 120 * k : 144 + 120 * k, 64 + 128 * k : 192 + 128 * k] = True
        masks.append(mask)
    return image, masks


def run(model: PixelRefer, tokens: int) -> tuple[float, float, list[int]]:
    image, masks = scene()
    result = model.generate(
        image=image,
        regions=masks,
        instruction="<image>\nHow do <region>, <region> and <region> relate?",
        settings=GenerationSettings(max_new_tokens=tokens),
    )
    ttft = result.timings["first_token_s"]
    rest = result.timings["total_s"] - ttft
    return ttft, (len(result.token_ids) - 1) / rest if rest > 0 else float("nan"), result.token_ids


def attention_calls(frames: int, layers: int) -> tuple[int, int]:
    from transformers import VideoLlama3VisionConfig, VideoLlama3VisionModel

    from pixelrefer.model.vision import ProcessedImages, VisionTower

    config = VideoLlama3VisionConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
                                     num_attention_heads=16, patch_size=14)  # fmt: skip
    config._attn_implementation = "sdpa"
    grid = torch.tensor([[1, 4, 4]] * frames)
    clip = ProcessedImages(torch.randn(16 * frames, 588), grid, torch.full((frames,), 2))
    counts = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        counts[-1] += 1
        return sdpa(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counted
    try:
        with torch.inference_mode():
            counts.append(0)
            VideoLlama3VisionModel(config)(clip.pixel_values, clip.grid_thw, clip.merge_sizes)
            counts.append(0)
            VisionTower(config)(clip)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="full,lite")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"CPU native bf16 features: {cpu_bf16_features() or 'none'}; torch {torch.__version__}")
    before, after = attention_calls(768, 27)
    print(f"vision attention calls, 768-frame clip, 27 layers: {before} per-frame, {after} batched")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            start = time.perf_counter()
            folder = build_checkpoint(Path(tmp) / variant, variant=variant, shape=BENCH, seed=0)
            print(f"[{variant}] built BENCH checkpoint in {time.perf_counter() - start:.0f} s")
            models = {
                d: PixelRefer.from_pretrained(str(folder), device="cpu", dtype=d)
                for d in ("float32", "bfloat16")
            }
            timings: dict[str, list[tuple[float, float]]] = {d: [] for d in models}
            ids: dict[str, list[int]] = {}
            run(models["bfloat16"], 2)  # warm-up both
            run(models["float32"], 2)
            for _ in range(args.repeats):
                for dtype, model in models.items():
                    ttft, rate, ids[dtype] = run(model, args.tokens)
                    timings[dtype].append((ttft, rate))
            summary = {
                d: (statistics.median(t for t, _ in v), statistics.median(r for _, r in v))
                for d, v in timings.items()
            }
            (f_ttft, f_rate), (b_ttft, b_rate) = summary["float32"], summary["bfloat16"]
            print(
                f"[{variant}] first token fp32 {f_ttft:.2f} s, bf16 {b_ttft:.2f} s (bf16/fp32 {b_ttft / f_ttft:.2f}x); "
                f"decode fp32 {f_rate:.1f} tok/s, bf16 {b_rate:.1f} tok/s (bf16/fp32 {b_rate / f_rate:.2f}x)"
            )
            print(
                f"[{variant}] greedy ids equal: {ids['float32'] == ids['bfloat16']}; distinct ids fp32 "
                f"{len(set(ids['float32']))}/{len(ids['float32'])}, bf16 {len(set(ids['bfloat16']))}/{len(ids['bfloat16'])}"
            )
            del models


if __name__ == "__main__":
    main()
