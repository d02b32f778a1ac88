"""Click-to-mask latency and propagation speed of the segmenters, per SAM 2.1 size. Nothing is asserted.

Each SAM 2.1 size is built with random weights at the official shapes (`sam21_config`, 1024 px input),
saved and loaded through the same path as the real checkpoints, so timings match the real models (weights
only change the numbers in the masks). GrabCut, the classical fallback, is timed alongside.

Timed per segmenter: loading; the first click on a new image (image encoder + mask decoder); a refining
click on the same image (mask decoder only: the image features are reused); and tracking one object
marked on the first of `--frames` frames (frames per second over the whole run).

    python bench/bench_segment.py                          # CPU: tiny and small
    python bench/bench_segment.py --sizes tiny small base-plus large --device cuda
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Sam2VideoModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelrefer.segment.base import Prompt, Segmenter  # noqa: E402
from pixelrefer.segment.grabcut import GrabCutSegmenter  # noqa: E402
from pixelrefer.segment.sam import SAM_SIZES, Sam2Segmenter, sam21_config, sam_placement  # noqa: E402


def clip(count: int, width: int, height: int) -> list[np.ndarray]:
    """A textured background with a red disc moving across it."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), np.uint8))[:height, :width]
    rows, cols = np.ogrid[:height, :width]
    frames = []
    for t in range(count):
        frame = background.copy()
        disc = (rows - height // 2) ** 2 + (cols - width // 4 - 8 * t) ** 2 < (height // 6) ** 2
        frame[disc] = (210, 40, 40)
        frames.append(frame)
    return frames


def time_segmenter(segmenter: Segmenter, frames: list[np.ndarray], repeats: int) -> dict[str, float]:
    height, width = frames[0].shape[:2]
    click = Prompt(points=[(width // 4, height // 2)])
    firsts, refines = [], []
    for k in range(repeats):
        image = frames[k % len(frames)].copy()
        image[0, 0] = k  # a new picture each time, so the first click pays for the image encoder
        start = time.perf_counter()
        segmenter.segment_image(image, click)
        firsts.append(time.perf_counter() - start)
        start = time.perf_counter()
        segmenter.segment_image(image, click.with_point(width - 5, 5, positive=False))
        refines.append(time.perf_counter() - start)
    steps = []
    start = time.perf_counter()
    segmenter.track(frames, {1: {0: click}}, progress=lambda done, total: steps.append(done))
    elapsed = time.perf_counter() - start
    return {
        "first": statistics.median(firsts),
        "refine": statistics.median(refines),
        "track_fps": len(frames) / elapsed,
        "step_s": elapsed / len(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SAM_SIZES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--frames", type=int, default=8, help="frames to track through")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3, help="clicks timed per segmenter (median shown)")
    args = parser.parse_args()

    # Random weights make denormal floats, which real checkpoints do not; flushing them keeps CPU timings honest.
    torch.set_flush_denormal(True)
    placement = sam_placement(args.device, args.dtype)
    frames = clip(args.frames, args.width, args.height)
    device = torch.cuda.get_device_name(placement.device) if placement.device.startswith("cuda") else "cpu"
    print(
        f"device: {device} ({placement.device}), dtype {str(placement.dtype).removeprefix('torch.')}, "
        f"torch threads {torch.get_num_threads()}, frames {args.width}x{args.height}, {args.frames} tracked"
    )
    rows = []
    classical = GrabCutSegmenter()
    rows.append(("GrabCut (classical)", "-", 0.0, time_segmenter(classical, frames, args.repeats)))
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            model = Sam2VideoModel(sam21_config(size))
            params = sum(p.numel() for p in model.parameters()) / 1e6
            model.save_pretrained(folder)
            del model
            start = time.perf_counter()
            segmenter = Sam2Segmenter(folder, placement=placement, label=size)
            tracker = segmenter.video_model  # loaded now, so the timed tracking run does not pay for it
            load = time.perf_counter() - start
            rows.append(
                (f"SAM 2.1 {size}", f"{params:.1f}M", load, time_segmenter(segmenter, frames, args.repeats))
            )
            del segmenter, tracker
        if placement.device.startswith("cuda"):
            torch.cuda.empty_cache()

    header = (
        f"| {'segmenter':<20} | params | load s | first click s | refine click s | track frames/s | s/step |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, params, load, timing in rows:
        print(
            f"| {name:<20} | {params:>6} | {load:>6.2f} | {timing['first']:>13.3f} | {timing['refine']:>14.3f} "
            f"| {timing['track_fps']:>14.2f} | {timing['step_s']:>6.3f} |"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
