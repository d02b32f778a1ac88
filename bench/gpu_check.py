"""One command for the first minutes on a real GPU: build, measure and delete each release-shaped checkpoint.

For each of PixelRefer-2B, -Lite-2B, -7B and -Lite-7B (random weights of the release shapes, written in
bfloat16 like the releases, one at a time, deleted after): load time; time to first token for a 640x480
image with one object and for a 16-frame clip with two; decode tokens/s and its share of the bound set by
reading the weights once per token at the memory bandwidth a device-to-device copy measures in this run;
peak GPU memory and what one visitor (its feature and KV caches) adds; aggregate tokens/s of 1, 4 and 16
concurrent answers on the in-process engine. Then SAM 2.1 tiny's image-embedding and prompt-decoder
latency. It prints one table and writes JSON; nothing is asserted. A piece that is missing or fails (a
package, memory, time) is recorded as skipped with the reason, and the run goes on.

    python bench/gpu_check.py                       # on the GPU machine (docs/gpu.md: wheels, goals)
    python bench/gpu_check.py --dry-run             # tiny shapes on the CPU, seconds (the test suite runs it)

The answers are meaningless (random weights): only sizes and times matter. The goals (docs/gpu.md) are
printed beside the figures, as information.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SKIPPED: list[str] = []
"""What did not run, and why (printed and written)."""
SKIPPED_OWNER: dict = {}
"""The results of the whole run (their `skipped` is the list above)."""

if importlib.util.find_spec("cv2") is None:
    # OpenCV's wheel alone is 63 MB, over the wheels budget; the chat path only resizes with it. The
    # stand-in does those resizes with torch and refuses everything else (docs/gpu.md).
    sys.path.insert(0, str(HERE / "standins"))
    SKIPPED.append("opencv: not installed; bench/standins/cv2.py resizes with torch instead (CPU side only)")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pixelrefer.model.cache import FeatureCache, PrefixCache  # noqa: E402
from pixelrefer.model.generation import GenerationSettings  # noqa: E402
from pixelrefer.model.inference import PixelRefer, Video  # noqa: E402
from pixelrefer.model.loading import estimate_weight_bytes  # noqa: E402
from pixelrefer.model.synthetic import RELEASE_2B, RELEASE_7B, TINY, build_checkpoint, config_for  # noqa: E402
from pixelrefer.runtime.devices import GIB, cuda_diagnosis  # noqa: E402

RELEASES = [
    ("PixelRefer-2B", "full", RELEASE_2B),
    ("PixelRefer-Lite-2B", "lite", RELEASE_2B),
    ("PixelRefer-7B", "full", RELEASE_7B),
    ("PixelRefer-Lite-7B", "lite", RELEASE_7B),
]
GOALS = {
    "first_token_ms": ("first token, 640x480 + 1 object, 2B bf16", "<=", 150.0),
    "bound_share": ("decode tokens/s / bandwidth bound", ">=", 0.60),
    "lite_2b_peak_gib": ("Lite-2B peak GPU memory (GiB; 5 GB)", "<=", round(5.0 * 1e9 / GIB, 2)),
    "visitors_16x": ("16 visitors' tokens/s / 1 visitor's", ">=", 8.0),
}
IMAGE_QUESTION = "<image>\nThere is <region>. What is it doing?"
VIDEO_QUESTION = "<video>\nThere are <region> and <region>. How do they move?"


class Run:
    """Sizes of one run: the real one, or the dry run's tiny shapes on the CPU."""

    def __init__(self, dry: bool, device: str) -> None:
        self.dry = dry
        self.device = device
        self.cuda = device.startswith("cuda")
        self.width, self.height = (64, 48) if dry else (640, 480)
        self.frames = 2 if dry else 16
        self.decode_tokens = 4 if dry else 64
        self.concurrency = (1, 2) if dry else (1, 4, 16)
        self.concurrent_tokens = 2 if dry else 32
        self.repeats = 1 if dry else 3
        self.copy_bytes = (8 << 20) if dry else (1 << 30)
        self.dtype = "float32" if dry else "auto"
        # The dry run: one full and one Lite release at the fixtures' sizes (the 7B code path is the same).
        self.releases = (
            [(f"{name} (tiny)", variant, TINY) for name, variant, _ in RELEASES[:2]] if dry else RELEASES
        )

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated(self.device) if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def attempt(record: dict, key: str, work: Callable[[], object]) -> object | None:
    """Run one measurement; a failure is written under `key` as skipped, never raised."""
    try:
        value = work()
    except Exception as exc:  # out of memory, a missing package, a kernel the card lacks: say it, go on
        text = " ".join(str(exc).split()) or "(no message: a package transformers needs is missing?)"
        reason = f"{type(exc).__name__}: {text[:300]}"
        if record is not SKIPPED_OWNER:  # the run's own pieces are listed in SKIPPED only
            record.setdefault("skipped", {})[key] = reason
        SKIPPED.append(f"{record.get('name', 'run')} / {key}: {reason}")
        if os.environ.get("PIXELREFER_GPU_CHECK_TRACE"):
            traceback.print_exc()
        return None
    record[key] = value
    return value


def environment(run: Run) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": run.device,
        "dry_run": run.dry,
    }
    import transformers

    info["transformers"] = transformers.__version__
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            driver=_driver(),
        )
    diagnosis = cuda_diagnosis()
    if diagnosis:
        info["cuda_problem"] = diagnosis
    return info


def _driver() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi)"
    import subprocess

    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bandwidth(run: Run) -> float:
    """Bytes per second a device-to-device copy moves (each byte read once and written once)."""
    source = torch.empty(run.copy_bytes, dtype=torch.uint8, device=run.device)
    target = torch.empty_like(source)
    for _ in range(2):
        target.copy_(source)
    run.sync()
    repeats = 10
    began = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    run.sync()
    seconds = time.perf_counter() - began
    del source, target
    return 2 * run.copy_bytes * repeats / seconds


def scene(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def ellipse(width: int, height: int, cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return ((xs / width - cx) ** 2 + (ys / height - cy) ** 2) < r**2


def image_call(run: Run) -> dict:
    return {
        "image": scene(run.width, run.height, 0),
        "regions": [ellipse(run.width, run.height, 0.4, 0.5, 0.2)],
        "instruction": IMAGE_QUESTION,
    }


def video_call(run: Run) -> dict:
    frames = [scene(run.width, run.height, i) for i in range(run.frames)]
    marked = {0: frames[0], run.frames // 2: frames[run.frames // 2]}
    video = Video(frames, [float(i) for i in range(run.frames)], marked, 1.0)
    regions = [
        {0: ellipse(run.width, run.height, 0.3, 0.4, 0.15)},
        {run.frames // 2: ellipse(run.width, run.height, 0.7, 0.6, 0.15)},
    ]
    return {"video": video, "regions": regions, "instruction": VIDEO_QUESTION}


def greedy(tokens: int) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=tokens, do_sample=False, seed=0)


def first_token_ms(run: Run, model: PixelRefer, call: dict) -> float:
    """Median time to the first token (prepare, encode, prefill, one step), after one untimed run."""
    if not run.dry:
        model.generate(settings=greedy(1), **call)
    times = []
    for _ in range(run.repeats):
        run.sync()
        result = model.generate(settings=greedy(1), **call)
        run.sync()
        times.append(result.timings["first_token_s"])
    return round(statistics.median(times) * 1000, 2)


def decode_rate(run: Run, model: PixelRefer) -> float:
    """Tokens per second after the first (eos ignored, so every run decodes the same count)."""
    result = model.generate(settings=greedy(run.decode_tokens), **image_call(run))
    steps = len(result.token_ids) - 1
    return round(steps / max(result.timings["total_s"] - result.timings["first_token_s"], 1e-9), 2)


def decoder_bytes(model: PixelRefer) -> int:
    """The weights read for every generated token: decoder layers, final norm, LM head (the embedding
    matrix when tied; the vision tower and object tokenizer are not read while decoding)."""
    lm = model.model
    seen: set[int] = set()
    total = 0
    for module in (lm.model.layers, lm.model.norm, lm.lm_head):
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel() * param.element_size()
    return total


def visitor(run: Run, model: PixelRefer) -> dict:
    """What one visitor's conversation adds: its feature cache and KV prefix after an answer (kept),
    and the peak above the loaded model while the answer ran."""
    run.free()
    before = run.allocated()
    run.reset_peak()
    cache, prefix = FeatureCache(), PrefixCache()
    model.generate(settings=greedy(16), cache=cache, prefix=prefix, **image_call(run))
    run.sync()
    held = {
        "feature_cache_mib": round(cache.nbytes / 2**20, 2),
        "kv_prefix_mib": round(prefix.nbytes / 2**20, 2),
    }
    if before is not None:
        held["kept_mib"] = round((run.allocated() - before) / 2**20, 1)
        held["peak_added_mib"] = round((run.peak() - before) / 2**20, 1)
    del cache, prefix
    return held


def concurrent(run: Run, model: PixelRefer) -> dict:
    """Aggregate tokens/s of N answers started together (the in-process engine; vLLM cannot travel)."""
    out = {}
    for count in run.concurrency:
        calls = [image_call(run) for _ in range(count)]
        tokens = [0] * count
        errors: list[str] = []

        def answer(i: int, calls=calls, tokens=tokens, errors=errors) -> None:
            try:
                tokens[i] = len(model.generate(settings=greedy(run.concurrent_tokens), **calls[i]).token_ids)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=answer, args=(i,)) for i in range(count)]
        run.sync()
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        run.sync()
        if errors:
            raise RuntimeError(errors[0])
        out[str(count)] = round(sum(tokens) / (time.perf_counter() - began), 2)
    if "1" in out and str(run.concurrency[-1]) in out:
        out["ratio_last_to_1"] = round(out[str(run.concurrency[-1])] / out["1"], 2)
    return out


def release(run: Run, name: str, variant: str, shape, folder: Path, bytes_per_s: float | None) -> dict:
    record: dict = {"name": name}
    began = time.perf_counter()
    built = time.perf_counter()
    build_checkpoint(folder, variant=variant, shape=shape, seed=0, dtype=torch.bfloat16)
    record["build_s"] = round(time.perf_counter() - built, 1)
    run.free()
    run.reset_peak()
    loaded = time.perf_counter()
    model = PixelRefer.from_pretrained(str(folder), device=run.device if run.cuda else "cpu", dtype=run.dtype)
    run.sync()
    record["load_s"] = round(time.perf_counter() - loaded, 2)
    record["dtype"] = str(model.dtype).removeprefix("torch.")
    record["weights_gib"] = round(
        sum(p.numel() * p.element_size() for p in model.model.parameters()) / GIB, 3
    )
    model.eos_ids = set()  # random weights stop anywhere: decode exactly the asked count
    per_token = decoder_bytes(model)
    record["decoder_gib"] = round(per_token / GIB, 3)
    attempt(record, "first_token_image_ms", lambda: first_token_ms(run, model, image_call(run)))
    attempt(record, "first_token_clip_ms", lambda: first_token_ms(run, model, video_call(run)))
    rate = attempt(record, "decode_tokens_s", lambda: decode_rate(run, model))
    if rate and bytes_per_s:
        record["bound_tokens_s"] = round(bytes_per_s / per_token, 2)
        record["bound_share"] = round(rate / record["bound_tokens_s"], 3)
    if run.cuda:
        record["peak_gib"] = round(run.peak() / GIB, 3)
    attempt(record, "visitor", lambda: visitor(run, model))
    attempt(record, "tokens_s_concurrent", lambda: concurrent(run, model))
    model = None  # the next release needs the memory
    run.free()
    record["seconds"] = round(time.perf_counter() - began, 1)
    return record


def sam(run: Run, work: Path) -> dict:
    """SAM 2.1 tiny (random weights, the real shape) as the app runs it: placement, dtype, autocast."""
    from pixelrefer.segment.base import Prompt
    from pixelrefer.segment.sam import Sam2Segmenter, sam21_config, sam_placement
    from tests.sam_builders import build_tiny_sam2

    folder = work / "sam2.1-tiny"
    if run.dry:
        build_tiny_sam2(folder)
    else:
        from transformers import Sam2VideoModel

        torch.manual_seed(0)
        Sam2VideoModel(sam21_config("tiny")).save_pretrained(folder)
    placement = sam_placement(run.device if run.cuda else "cpu")
    segmenter = Sam2Segmenter(folder, placement=placement, label="tiny")
    image = scene(run.width, run.height, 1)
    embed_times, decode_times = [], []
    with torch.inference_mode(), placement.autocast():
        for _ in range(run.repeats + 1):
            segmenter.forget_embeddings()
            run.sync()
            began = time.perf_counter()
            embeddings = segmenter._embeddings(image)
            run.sync()
            embed_times.append(time.perf_counter() - began)
            inputs, _ = segmenter._prompt_inputs(
                Prompt(points=[(run.width // 2, run.height // 2)]), run.height, run.width
            )
            run.sync()
            began = time.perf_counter()
            segmenter.image_model(image_embeddings=embeddings, multimask_output=True, **inputs)
            run.sync()
            decode_times.append(time.perf_counter() - began)
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "device": placement.device,
        "weights": str(placement.dtype).removeprefix("torch."),
        "compute": str(placement.compute_dtype).removeprefix("torch."),
        "image_embedding_ms": round(statistics.median(embed_times[1:]) * 1000, 2),
        "prompt_decoder_ms": round(statistics.median(decode_times[1:]) * 1000, 2),
    }


def goals(results: dict) -> list[tuple[str, str, str]]:
    """Each goal with the figure it is judged on, or why there is none."""
    by_name = {r["name"].split(" ")[0]: r for r in results["releases"]}
    two, lite = by_name.get("PixelRefer-2B", {}), by_name.get("PixelRefer-Lite-2B", {})
    concurrency = two.get("tokens_s_concurrent", {})
    figures = {
        "first_token_ms": two.get("first_token_image_ms"),
        "bound_share": two.get("bound_share"),
        "lite_2b_peak_gib": lite.get("peak_gib"),
        "visitors_16x": concurrency.get("ratio_last_to_1") if "16" in concurrency else None,
    }
    rows = []
    for key, (label, sense, target) in GOALS.items():
        value = figures[key]
        if results["environment"]["dry_run"]:
            rows.append((label, f"{sense} {target:g}", "not judged (dry run: tiny shapes on the CPU)"))
            continue
        if value is None:
            rows.append((label, f"{sense} {target:g}", "not measured"))
            continue
        met = value <= target if sense == "<=" else value >= target
        rows.append((label, f"{sense} {target:g}", f"{value:g} ({'met' if met else 'missed'})"))
    return rows


def table(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"torch {env['torch']} (CUDA build {env['cuda_build']}), transformers {env['transformers']}, "
        f"device {env.get('gpu', env['device'])} {env.get('capability', '')}".rstrip(),
    ]
    if results.get("bandwidth_gb_s"):
        lines.append(f"device-to-device copy: {results['bandwidth_gb_s']} GB/s")
    header = (
        f"{'release':<26}{'dtype':>9}{'load s':>8}{'1st img ms':>11}{'1st clip ms':>12}{'tok/s':>8}"
        f"{'of bound':>9}{'peak GiB':>9}{'visitor MiB':>12}  concurrent tok/s"
    )
    lines += [header, "-" * len(header)]
    for r in results["releases"]:
        visitor_mib = (r.get("visitor") or {}).get(
            "kept_mib", (r.get("visitor") or {}).get("kv_prefix_mib", "-")
        )
        concurrency = r.get("tokens_s_concurrent") or {}
        spread = " / ".join(f"{k}: {v}" for k, v in concurrency.items() if k.isdigit()) or "-"
        share = f"{r['bound_share']:.0%}" if "bound_share" in r else "-"

        def cell(key: str, r=r) -> str:
            return str(r.get(key, "-"))

        lines.append(
            f"{r['name']:<26}{cell('dtype'):>9}{cell('load_s'):>8}{cell('first_token_image_ms'):>11}"
            f"{cell('first_token_clip_ms'):>12}{cell('decode_tokens_s'):>8}{share:>9}{cell('peak_gib'):>9}"
            f"{visitor_mib!s:>12}  {spread}"
        )
    if results.get("sam"):
        s = results["sam"]
        lines.append(
            f"SAM 2.1 tiny on {s['device']} ({s['weights']} weights, {s['compute']} compute): image embedding "
            f"{s['image_embedding_ms']} ms, prompt decoder {s['prompt_decoder_ms']} ms"
        )
    lines.append("goals:")
    lines += [f"  {label}: goal {goal}, measured {value}" for label, goal, value in goals(results)]
    if results["skipped"]:
        lines.append("skipped:")
        lines += [f"  {reason}" for reason in results["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (seconds)")
    parser.add_argument("--device", default="cuda:0", help="the GPU to measure (default cuda:0)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON results file")
    parser.add_argument("--work", default="", help="where checkpoints are written (default: a temp folder)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip releases that would run past this"
    )
    parser.add_argument("--only", nargs="*", default=None, help="release names to run (default: all four)")
    args = parser.parse_args(argv)

    device = "cpu" if args.dry_run else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"CUDA is not available: {cuda_diagnosis() or 'no GPU visible'}; use --dry-run on a CPU",
            file=sys.stderr,
        )
        return 2
    run = Run(args.dry_run, device)
    began = time.perf_counter()
    results = SKIPPED_OWNER
    results.clear()
    results.update(environment=environment(run), releases=[], skipped=SKIPPED)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pixelrefer-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if run.dry:
        torch.set_flush_denormal(True)
    try:
        copy = attempt(results, "bandwidth_bytes_s", lambda: bandwidth(run))
        if copy:
            results["bandwidth_gb_s"] = round(copy / 1e9, 1)
        attempt(results, "sam", lambda: sam(run, work))  # first: seconds, and measured whatever follows
        last: tuple[float, int] | None = None  # seconds and weight bytes of the last release measured
        for name, variant, shape in run.releases:
            if args.only and name.split(" ")[0] not in args.only:
                continue
            size = estimate_weight_bytes(config_for(variant, shape), torch.bfloat16, None)
            elapsed = time.perf_counter() - began
            if last is not None and elapsed + last[0] * size / last[1] > args.budget_s:
                SKIPPED.append(
                    f"{name}: would run past the {args.budget_s:.0f} s budget ({elapsed:.0f} s used)"
                )
                continue
            folder = work / name.split(" ")[0]
            started = time.perf_counter()
            record = {"name": name}
            try:
                record = release(run, name, variant, shape, folder, copy)
            except Exception as exc:  # e.g. out of memory while loading 7B on a small card
                record["skipped"] = {"release": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                SKIPPED.append(f"{name}: {record['skipped']['release']}")
                run.free()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            results["releases"].append(record)
            last = (time.perf_counter() - started, size)
            print(f"  {name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    print(table(results))
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {args.out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
