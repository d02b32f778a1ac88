"""What one visitor holds, in bytes, at the releases' real sizes: the numbers behind the memory budget.

Builds PixelRefer-2B (full and Lite) with the release shapes (`pixelrefer.model.synthetic.RELEASE_2B`,
random weights) in bfloat16 on the CPU, one tensor at a time in the target dtype (no float32 copy ever
exists), and a randomly initialised SAM 2.1 tiny of the real shape (1024 px). Then, through the app's own
`Workspace`, two visitors:

- an image (1920x1440, the largest the app keeps at a 4:3 ratio) with 3 objects, each marked by a SAM click;
- a 16-frame 1920x1080 clip (the app's frame cap at the longest side it keeps) with 4 objects marked by SAM
  clicks on the first frame and tracked through every frame (the tracked masks stand in for SAM 2.1's
  tracking output: one frame-sized mask per object and frame, which is what tracking stores; random SAM
  weights would track nothing meaningful, and the bytes do not depend on the masks' content),

measured by `pixelrefer.serve.budget.holdings` (each buffer once, on the device that holds it) after the
warm-up and after two questions, split by kind: media (frames and the canvas copy), masks, SAM (image
embeddings of the clicked pictures), features (the vision tower's output for the media), object tokens,
KV (the prompt prefix's cache and its rows).

PixelRefer-7B is not built here (the machine is shared; its bfloat16 weights alone are 15 GB): its rows are
derived from the 2B measurement and the configs' shapes: features, object tokens and the KV prefix's rows
scale with the LLM's hidden size (3584 / 1536); the KV cache with layers x kv heads x head dim (28 x 4 x 128
vs 28 x 2 x 128); media, masks and SAM do not change. Derived rows say so.

    python bench/visitor_memory.py                 # 2B full and Lite, image and clip (an hour on 2 busy cores)
    python bench/visitor_memory.py --variants lite --media image
    python bench/visitor_memory.py --layers 2      # quick check: 2 LLM and 2 vision layers, KV scaled up
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pixelrefer.media.video import Clip  # noqa: E402
from pixelrefer.model.generation import GenerationSettings  # noqa: E402
from pixelrefer.model.inference import PixelRefer  # noqa: E402
from pixelrefer.model.loading import estimate_weight_bytes, load_checkpoint  # noqa: E402
from pixelrefer.model.modeling import PixelReferForCausalLM  # noqa: E402
from pixelrefer.model.synthetic import RELEASE_2B, RELEASE_7B, TINY, build_checkpoint, config_for  # noqa: E402
from pixelrefer.model.vision import vision_config_from_dict  # noqa: E402
from pixelrefer.segment.sam import Sam2Segmenter, SamPlacement, sam21_config  # noqa: E402
from pixelrefer.serve.budget import KINDS, holdings, kv_bytes_per_token, sam_holdings  # noqa: E402
from pixelrefer.serve.service import AppSettings, Service  # noqa: E402
from pixelrefer.serve.workspace import Workspace  # noqa: E402

MB = 1e6
GB = 1e9
DTYPE = torch.bfloat16
IMAGE_SIZE = (1440, 1920)
CLIP_SIZE = (1080, 1920)
CLIP_FRAMES = 16
QUESTIONS = ("What is <object1> doing next to <object2>?", "And <object3>: what colour is it?")


def release_model(variant: str, shape, folder: Path, layers: int | None) -> PixelRefer:
    """A release-shaped PixelRefer in bfloat16, built in place one tensor at a time (random N(0, 0.02)).

    The tokenizer, processor and generation settings come from a tiny checkpoint of the same variant (the
    processor is the same for every size; the tokenizer's ids fit the release vocabulary)."""
    tiny = load_checkpoint(str(build_checkpoint(folder / f"tiny-{variant}", variant=variant, shape=TINY)))
    ids = {
        t: tiny.tokenizer.convert_tokens_to_ids(t)
        for t in ["<|endoftext|>", "<|im_end|>", "<image>", "<REGION>"]
    }
    if layers is not None:
        shape = dataclasses.replace(
            shape, num_hidden_layers=layers, vision_layers=layers, max_window_layers=layers
        )
    config = config_for(variant, shape, token_ids=ids)
    if isinstance(config.vision_config, dict):
        config.vision_config = vision_config_from_dict(config.vision_config)
    config.preprocessor = tiny.config.preprocessor
    config._attn_implementation = config.vision_config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)  # every parameter is allocated in bfloat16 as the model is built
    try:
        generator = torch.Generator().manual_seed(0)
        model = PixelReferForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, shape.init_std, generator=generator)
                elif "norm" in name:
                    param.fill_(1.0)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    loaded = dataclasses.replace(
        tiny, model=model, config=config, dtype=DTYPE, source=f"synthetic-release-{variant}"
    )
    return PixelRefer(loaded)


def release_sam(folder: Path) -> Sam2Segmenter:
    """SAM 2.1 tiny at its real shape (1024 px input), random weights, in bfloat16."""
    target = folder / "sam21-tiny"
    if not (target / "config.json").exists():
        from transformers import Sam2VideoModel

        torch.manual_seed(0)
        Sam2VideoModel(sam21_config("tiny")).save_pretrained(target)
    return Sam2Segmenter(target, placement=SamPlacement("cpu", DTYPE), label="tiny (random, real shape)")


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like frame: smooth gradients and noise (no content matters for bytes; noise keeps the clip's
    frames distinct so none is pruned as a repeat)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)], -1)
    return (base + rng.integers(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)


def object_mask(height: int, width: int, number: int, shift: int = 0) -> np.ndarray:
    """Object `number`: an ellipse of about 5% of the frame, moved by `shift` px per frame."""
    ys, xs = np.mgrid[0:height, 0:width]
    cy = height * (0.25 + 0.2 * (number % 3))
    cx = width * (0.2 + 0.2 * number) + shift
    return ((ys - cy) / (height * 0.12)) ** 2 + ((xs - cx) / (width * 0.1)) ** 2 <= 1


def mark(ws: Workspace, mask: np.ndarray, frame_index: int) -> None:
    """A SAM click at the object's centre (SAM encodes the picture and keeps its embeddings), kept as the
    object; the random SAM's own mask is replaced by the object's (the same bytes, a predictable shape)."""
    ys, xs = np.nonzero(mask)
    ws.click(float(xs.mean()), float(ys.mean()), "positive")
    ws.add_mask(mask, frame_index)
    ws.clear_marks()


def measure(ws: Workspace, service: Service) -> dict[str, dict[str, int]]:
    """{device: {kind: bytes}} of the visitor, SAM's embeddings included, the prefix rows split out."""
    held = holdings(ws, detail=True)
    for device, size in sam_holdings(service.segmenter).items():
        held.setdefault(device, {})["sam"] = size
    rows = ws.session.prefix_cache.rows if ws.session is not None else None
    if rows is not None:
        held["cpu"]["kv rows"] = rows.untyped_storage().nbytes()
    return held


def by_kind(held: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for kinds in held.values():
        for kind, size in kinds.items():
            total[kind] = total.get(kind, 0) + size
    total["media"] = total.get("media", 0) + total.pop("display", 0)
    return total


def visit(service: Service, media: str, tokens: int) -> dict[str, dict[str, int]]:
    """One visitor through the app's workspace; their holdings after the warm-up and after two questions."""
    ws = Workspace(service)
    results = {}
    try:
        if media == "image":
            height, width = IMAGE_SIZE
            ws.open_image(scene(height, width, 0))
            ws.canvas()
            for number in range(3):
                mark(ws, object_mask(height, width, number), 0)
        else:
            height, width = CLIP_SIZE
            frames = tuple(scene(height, width, k) for k in range(CLIP_FRAMES))
            ws.clip = Clip(
                frames, tuple(range(CLIP_FRAMES)), tuple(float(k) for k in range(CLIP_FRAMES)), 1.0, "file"
            )
            ws.session = None
            _open_clip(ws)
            ws.canvas()
            for number in range(4):
                mark(ws, object_mask(height, width, number), 0)
            for obj in ws.session.objects:
                number = obj.id - 1
                tracked = {k: object_mask(height, width, number, shift=12 * k) for k in range(CLIP_FRAMES)}
                ws.session.replace_object(obj.id, tracked, marked_frames=obj.marked_frames)
            ws.tracked = True
            ws._warm()
        began = time.perf_counter()
        service.warmer.wait()
        report = service.warmer.report(ws)
        warm_s = time.perf_counter() - began
        results["after warm-up"] = measure(ws, service)
        answered = []
        for question in QUESTIONS:
            asked = time.perf_counter()
            final = None
            for reply in ws.ask(question, GenerationSettings(max_new_tokens=tokens)):
                final = reply.exchange or final
            answered.append((len(final.answer_ids), time.perf_counter() - asked))
            service.warmer.wait()
        results["after two questions"] = measure(ws, service)
        prompt = ws.session.prefix_cache.rows
        print(
            f"#   {media}: warm-up {warm_s:.0f} s ({report.reason or 'stored'}), answers "
            + ", ".join(f"{n} tokens in {s:.0f} s" for n, s in answered)
            + f"; prefix rows kept {0 if prompt is None else len(prompt)}",
            flush=True,
        )
    finally:
        ws.close()
        service.segmenter.forget_embeddings()
    return results


def _open_clip(ws: Workspace) -> None:
    """`Workspace.open_video` after the file is read (the bench makes its frames itself, no encoder)."""
    from pixelrefer.chat.session import ChatSession

    ws.notes = ()
    ws.session = ChatSession(ws._model(), clip=ws.clip, limits=ws.service.settings.chat)
    ws._warm()


def derive_7b(kinds: dict[str, int], variant: str) -> dict[str, int]:
    """7B's bytes from 2B's: hidden-size kinds x 3584/1536, the KV cache x (layers x kv heads x head dim)."""
    small, large = RELEASE_2B, RELEASE_7B
    hidden = large.hidden_size / small.hidden_size
    kv = kv_bytes_per_token(config_for(variant, large), DTYPE) / kv_bytes_per_token(
        config_for(variant, small), DTYPE
    )
    rows = kinds.get("kv rows", 0)
    out = dict(kinds)
    out["features"] = round(kinds.get("features", 0) * hidden)
    out["object tokens"] = round(kinds.get("object tokens", 0) * hidden)
    out["kv"] = round((kinds.get("kv", 0) - rows) * kv + rows * hidden)
    out["kv rows"] = round(rows * hidden)
    return out


def gpu_side(kinds: dict[str, int]) -> int:
    """What a visitor holds on the GPU when the model runs there: SAM, features, object tokens, KV."""
    return sum(kinds.get(k, 0) for k in ("sam", "features", "object tokens", "kv"))


def ram_side(kinds: dict[str, int]) -> int:
    """What stays in RAM on a GPU server: media and masks."""
    return kinds.get("media", 0) + kinds.get("masks", 0)


def fits(total_gb: float, fixed_bytes: int, per_visitor: int) -> int:
    """Visitors that fit a device: its size minus the headroom the budget keeps (15%, at least 1 GiB) and
    what is loaded once (weights), divided by one visitor's bytes."""
    total = total_gb * GB
    room = total - max(0.15 * total, 2**30) - fixed_bytes
    return max(0, int(room // per_visitor)) if per_visitor else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["full", "lite"], choices=["full", "lite"])
    parser.add_argument("--media", nargs="+", default=["image", "clip"], choices=["image", "clip"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer (default 64)")
    parser.add_argument(
        "--layers", type=int, default=None, help="build only this many LLM and vision layers (quick check)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, psutil.cpu_count() or 1))
    folder = Path(tempfile.mkdtemp(prefix="pixelrefer-visitor-memory-"))
    print(
        f"# bench/visitor_memory.py: bytes one visitor holds, bfloat16, CPU ({psutil.cpu_count()} cores); "
        f"image {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} with 3 objects, clip {CLIP_FRAMES}x{CLIP_SIZE[1]}x{CLIP_SIZE[0]} "
        f"with 4 tracked objects; {args.tokens} new tokens per answer"
        + (f"; ONLY {args.layers} LLM/vision layers, KV scaled to 28" if args.layers else ""),
        flush=True,
    )
    sam = release_sam(folder)
    rows: list[tuple[str, str, str, dict[str, int], str]] = []
    for variant in args.variants:
        began = time.perf_counter()
        model = release_model(variant, RELEASE_2B, folder, args.layers)
        weights = sum(p.numel() * p.element_size() for p in model.model.parameters())
        print(
            f"# built {variant} 2B in {time.perf_counter() - began:.0f} s: weights {weights / GB:.2f} GB; "
            f"RSS {psutil.Process().memory_info().rss / GB:.1f} GB",
            flush=True,
        )
        settings = dataclasses.replace(AppSettings(), device="cpu", sam2="tiny", preview_dir=folder)
        service = Service(settings)
        service.model, service.segmenter = model, sam
        for media in args.media:
            for stage, held in visit(service, media, args.tokens).items():
                kinds = by_kind(held)
                if args.layers:
                    scale = RELEASE_2B.num_hidden_layers / args.layers
                    rows_bytes = kinds.get("kv rows", 0)
                    kinds["kv"] = round((kinds.get("kv", 0) - rows_bytes) * scale + rows_bytes)
                rows.append((variant, media, stage, kinds, "measured"))
                rows.append((variant, media, stage, derive_7b(kinds, variant), "derived"))
        service.warmer.close()
        del service, model
        gc.collect()

    print()
    print("| release | media | stage | " + " | ".join(KINDS) + " | total MB | on GPU MB | in RAM MB | how |")
    print("|---|---|---|" + "---|" * len(KINDS) + "---|---|---|---|")
    order = sorted(rows, key=lambda r: (r[4] != "measured", r[0], r[1] != "image", r[2] != "after warm-up"))
    for variant, media, stage, kinds, how in order:
        size = "2B" if how == "measured" else "7B"
        name = f"PixelRefer{'-Lite' if variant == 'lite' else ''}-{size}"
        cells = " | ".join(f"{kinds.get(k, 0) / MB:,.1f}" for k in KINDS)
        total = sum(kinds.get(k, 0) for k in KINDS)
        print(
            f"| {name} | {media} | {stage} | {cells} | {total / MB:,.1f} | {gpu_side(kinds) / MB:,.1f} | "
            f"{ram_side(kinds) / MB:,.1f} | {how} |"
        )
    print()
    print("KV includes the prefix's rows (the embeddings it was computed from, for prefix matching).")
    print()
    print("Visitors that fit (the heaviest visitor: the clip after two questions; GPU: 15% headroom, weights")
    print("and SAM 2.1 tiny loaded once; RAM: media and masks, 15% headroom and 1.5 GB for the process):")
    print()
    print("| release | GPU MB / visitor | 24 GB GPU | 80 GB GPU | RAM MB / visitor | 32 GB RAM |")
    print("|---|---|---|---|---|---|")
    sam_weights = sum(p.numel() * p.element_size() for p in sam.image_model.parameters())
    for variant, media, stage, kinds, how in order:
        if media != "clip" or stage != "after two questions":
            continue
        size = "2B" if how == "measured" else "7B"
        shape = RELEASE_2B if size == "2B" else RELEASE_7B
        weights = estimate_weight_bytes(config_for(variant, shape), DTYPE, None) + 2 * sam_weights
        gpu, ram = gpu_side(kinds), ram_side(kinds)
        name = f"PixelRefer{'-Lite' if variant == 'lite' else ''}-{size}"
        print(
            f"| {name} | {gpu / MB:,.0f} | {fits(24, weights, gpu)} | {fits(80, weights, gpu)} | "
            f"{ram / MB:,.0f} | {fits(32, int(1.5 * GB), ram)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
