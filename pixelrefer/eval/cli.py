"""`python -m pixelrefer eval run|score`: the paper's benchmarks through one command.

`eval run BENCHMARK --annotations FILE --media-root DIR --model SOURCE --out PREDICTIONS.jsonl` checks
every item (media, regions, masks, prompt) before the model loads (`--check` stops there), then answers
each item with the official prompt and masks into prediction rows (`rows.py`), resumably, and writes the
official inference script's own records next to them (`--official-out`) for the official scorers.
`eval score` is `score_cli`'s. `pixelrefer.cli` only registers this command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path

from ..runtime.errors import InputError
from ..serve.flags import add_generation_flags, add_model_flags
from .benchmarks import BENCHMARKS
from .score_cli import add_score_parser

__all__ = ["add_eval_parser", "run_eval_command"]

_EPILOG = "\n".join(
    [
        "benchmarks (annotation file -> --media-root):",
        *(f"  {b.name:<13} {b.files}" for b in BENCHMARKS.values()),
        "See docs/eval.md for the prompts, masks and where this differs from the official scripts.",
    ]
)


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """Register `eval` (with `run` and `score`) on the CLI's subcommands."""
    evaluate = commands.add_parser(
        "eval",
        help="run and score the paper's benchmarks (official prompts, masks and scorers)",
        description="Research mode: run a benchmark into prediction rows, or score them.",
    )
    sub = evaluate.add_subparsers(dest="eval_command", required=True)
    run = sub.add_parser(
        "run",
        help="answer a benchmark's items with the official prompts and masks",
        description="Answer every item of a benchmark's annotation file into PREDICTIONS.jsonl (resumable: "
        "answered items are skipped; a file written with another model or settings is refused).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("benchmark", choices=BENCHMARKS, metavar="BENCHMARK", help=", ".join(BENCHMARKS))
    run.add_argument("--annotations", required=True, help="the benchmark's own annotation file")
    run.add_argument(
        "--media-root", required=True, help="folder the annotation's image/video paths are under"
    )
    run.add_argument("--out", required=True, help="prediction rows, JSONL (appended to)")
    run.add_argument(
        "--official-out",
        default="",
        help="the official script's records (default: OUT's stem + _K.json for shard K; score with the "
        "official scorer's --pred-path STEM.json)",
    )
    add_model_flags(run)
    run.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    run.add_argument("--engine-url", default="", help="a running vLLM server (else --engine vllm starts one)")
    run.add_argument(
        "--workers", type=int, default=None, help="items at once (default: what the engine takes)"
    )
    run.add_argument(
        "--shard", default="0/1", help="K/N: every N-th item from the K-th (one process per GPU)"
    )
    run.add_argument(
        "--limit", type=int, default=None, help="only the first N items (of the shard): a quick look"
    )
    add_generation_flags(run)
    run.set_defaults(max_new_tokens=2048)  # the official mm_infer's default
    run.add_argument(
        "--masks-per-object", type=int, default=None, help="Lite: at most N masks per object (default: all)"
    )
    run.add_argument(
        "--max-region-tokens",
        type=int,
        default=None,
        help="Lite: at most N object tokens per item, shared by its objects (default: no limit)",
    )
    run.add_argument("--record-template", action="store_true", help="also record the rendered chat template")
    run.add_argument("--check", action="store_true", help="only check the items (no model is loaded)")
    run.add_argument("--force", action="store_true", help="append to OUT even if it holds another run's rows")
    run.set_defaults(eval_handler=_run)
    add_score_parser(sub)


def run_eval_command(args: argparse.Namespace) -> int:
    """Dispatch `eval run` / `eval score`."""
    if args.eval_command == "score":
        return args.score_handler(args)
    return args.eval_handler(args)


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match[1]) < int(match[2]):
        raise InputError(f"--shard is K/N with 0 <= K < N; got {text!r}")
    return int(match[1]), int(match[2])


def checkpoint_kind(source: str) -> tuple[str, int]:
    """The checkpoint's variant and object tokens per mask, from its config.json alone (no weights read)."""
    from ..runtime.hub import resolve_source

    folder = resolve_source(source, allow_patterns=["config.json"])
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: config.json cannot be read ({exc})") from exc
    variants = {"pixelrefer_qwen2": "full", "pixelreferlite_qwen2": "lite"}
    if config.get("model_type") not in variants:
        raise InputError(f"{source} is not a PixelRefer checkpoint (model_type {config.get('model_type')!r})")
    return variants[config["model_type"]], int(config.get("mask_num", 32))


def _official_path(args: argparse.Namespace, shard: int) -> Path:
    if args.official_out:
        return Path(args.official_out).expanduser()
    out = Path(args.out).expanduser()
    return out.with_name(f"{out.stem}_{shard}.json")


def _run(args: argparse.Namespace) -> int:
    from ..batch import Waiting
    from ..serve.flags import settings_from_flags
    from .benchmarks import read_benchmark
    from .provenance import loaded_fields, provenance, requested_fields
    from .run import ObjectOptions, check_resume, plan_items, problems_summary, run_eval, write_official

    settings = settings_from_flags(args)
    for flag in ("masks_per_object", "max_region_tokens", "workers", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1")
    index, count = _shard(args.shard)
    annotations = Path(args.annotations).expanduser()
    root = Path(args.media_root).expanduser()
    if not annotations.is_file():
        raise InputError(f"annotation file not found: {args.annotations}")
    if not root.is_dir():
        raise InputError(f"media root is not a folder: {args.media_root}")
    variant, mask_num = checkpoint_kind(args.model)
    if variant == "full" and (args.masks_per_object or args.max_region_tokens):
        print("note: --masks-per-object and --max-region-tokens apply to Lite only", file=sys.stderr)
    options = ObjectOptions(args.masks_per_object, args.max_region_tokens)

    def record(fields: dict) -> dict:
        return provenance(
            benchmark=args.benchmark,
            annotations=annotations,
            model=args.model,
            engine=args.engine,
            quantization=args.quantization,
            settings=settings,
            masks_per_object=options.masks_per_object,
            max_region_tokens=options.max_region_tokens,
            **fields,
        )

    if not args.force and not args.check:
        check_resume(
            args.out, record(requested_fields(args.dtype, variant)), known_only=True
        )  # before minutes of loading, what is known
    try:
        items = read_benchmark(args.benchmark, annotations)[index::count][: args.limit]
    except (ValueError, OSError) as exc:
        raise InputError(f"{annotations.name} is not a {args.benchmark} annotation file: {exc}") from exc
    print(f"checking {len(items)} items of {args.benchmark} ({variant} model)", file=sys.stderr)
    plans = plan_items(items, args.benchmark, variant, root, options, mask_num=mask_num, stream=sys.stderr)
    bad = problems_summary(plans)
    print(f"{len(plans) - bad} items ready, {bad} with problems", file=sys.stderr)
    if args.check:
        return 0 if bad == 0 else 3
    if plans and bad == len(plans):
        raise InputError("no item can be answered (see above); check --media-root and --annotations")

    from ..engines import build_engine
    from ..model.inference import PixelRefer

    with Waiting(f"loading {args.model}"), contextlib.redirect_stdout(io.StringIO()):
        model = PixelRefer.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, quantization=args.quantization
        )
    engine = None
    try:
        if args.engine == "vllm":
            with Waiting("starting the vLLM engine"):
                model.engine = engine = build_engine("vllm", model, url=args.engine_url)
        summary = run_eval(
            model,
            args.benchmark,
            plans,
            args.out,
            provenance=record(loaded_fields(model)),
            settings=settings,
            workers=args.workers,
            record_template=args.record_template,
            force=args.force,
        )
    finally:
        if engine is not None:
            engine.close()
    official = _official_path(args, index)
    written, left_out = write_official(args.out, official)
    print(
        f"{summary.answered} answered, {summary.failed} errors, {summary.skipped} already done "
        f"({summary.seconds:.1f} s) -> {args.out}",
        file=sys.stderr,
    )
    note = f" ({left_out} items with errors left out)" if left_out else ""
    print(f"official records: {written}{note} -> {official}", file=sys.stderr)
    return 0 if summary.failed == 0 else 3
