"""`python -m pixelrefer chat|batch|report|engine`: ask from the command line, answer a file of items, show them.

`chat` asks one question; `batch` answers a JSONL file of items (see `pixelrefer.batch`) into a JSONL
file, resumably, and `report` turns answers into an HTML gallery; `engine` runs the vLLM server that
`--engine vllm --engine-url` connects to.

Inputs are read and checked before the model loads (loading takes seconds to minutes); every failure
ends with one line on stderr and a non-zero exit, never a traceback; library logging stays off the
terminal, and with `--json` stdout holds exactly one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from .eval.cli import add_eval_parser, run_eval_command
from .runtime.errors import InputError
from .serve.flags import add_generation_flags, add_model_flags, settings_from_flags

__all__ = ["main"]

_VIDEO_MASK = re.compile(r"^(?:(?P<object>\d+)@)?(?P<frame>\d+):(?P<path>.+)$")

EPILOG = """\
masks:
  image:  --mask PATH                  one per object, in object order (<object1>, <object2>, ...)
  video:  --mask FRAME:PATH            a new object, masked on clip frame FRAME (0-based index)
          --mask K@FRAME:PATH          object K (1-based) masked on FRAME; repeat for several frames
  A mask is a PNG (or any image) of the frame's size; non-zero (or, for 8-bit images, >= 128) is inside.

examples:
  python -m pixelrefer chat --model Alibaba-DAMO-Academy/PixelRefer-2B --image cat.jpg \\
      --mask cat.png "What is <object1> doing?"
  python -m pixelrefer chat --model ./ckpt --video clip.mp4 --mask 12:a.png --mask 2@30:b.png \\
      --json "How do <object1> and <object2> relate?"
"""


class CliError(InputError):
    """A problem with the command line or its inputs; printed as one line."""


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line too."""

    def error(self, message: str) -> None:
        raise CliError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pixelrefer", description="PixelRefer region chat.")
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser(
        "chat",
        help="ask one question about marked objects",
        description="Ask one question about marked objects in an image or a clip; the answer streams to stdout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(chat)
    media = chat.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file")
    media.add_argument("--video", help="video file or folder of frames")
    chat.add_argument("--mask", action="append", required=True, help="object mask (see below); repeat")
    add_generation_flags(chat)
    chat.add_argument("--json", action="store_true", help='print one {"text", "token_ids", "timings"} object')
    chat.add_argument("question", help="the question; refer to objects as <object1>, <object2>, ...")
    _batch_parsers(commands)
    add_eval_parser(commands)
    commands.add_parser("serve", help="an OpenAI-compatible region chat server (docs/openai-api.md)")
    return parser


def _batch_parsers(commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="answer a JSONL file of items (media, masks, questions) into a JSONL file",
        description="Answer every item of ITEMS into OUT (resumable: answered items are skipped on restart; "
        "a bad item becomes an error row). Items are described in pixelrefer/batch.py and examples/batch/.",
    )
    batch.add_argument("items", help="JSONL file, one item per line")
    batch.add_argument("--out", required=True, help="JSONL answers (appended to)")
    add_model_flags(batch)
    batch.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    batch.add_argument(
        "--engine-url", default="", help="a running vLLM server (else --engine vllm starts one)"
    )
    batch.add_argument(
        "--workers", type=int, default=None, help="items at once (default: what the engine takes)"
    )
    batch.add_argument(
        "--shard", default="0/1", help="K/N: every N-th item from the K-th (one process per GPU)"
    )
    add_generation_flags(batch)
    batch.add_argument("--report", default="", help="also write the HTML gallery here")
    batch.add_argument("--check", action="store_true", help="only check the items (no model is loaded)")
    batch.add_argument("--force", action="store_true", help="append to OUT even if another run wrote it")
    report = commands.add_parser("report", help="an HTML gallery of batch answers, models side by side")
    report.add_argument("items", help="the items file the answers are for")
    report.add_argument("answers", nargs="+", help="answers files, one column each (e.g. full and Lite)")
    report.add_argument("--out", required=True, help="HTML file to write")
    report.add_argument("--title", action="append", default=None, help="column titles, in order")
    engine = commands.add_parser(
        "engine",
        help="export the checkpoint's LLM and run a vLLM server for it (for --engine-url)",
        description="Runs in the foreground until interrupted; prints the URL to pass as --engine-url.",
    )
    add_model_flags(engine)
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8000)
    engine.add_argument("--max-num-seqs", type=int, default=16, help="answers decoded at once")
    engine.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="GPUs to split the LLM over (untested)"
    )
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of the GPU")


def _existing(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CliError(f"{what} not found: {path}")
    return resolved


def _fit(mask, shape: tuple[int, int], path: str, source_shape: tuple[int, int] | None = None):
    """A mask of its frame's size, by the library's one rule (`pixelrefer.media.masks.fit_mask`)."""
    from .media.masks import fit_mask

    if not mask.any():
        raise CliError(f"mask {path}: the mask is empty: mark at least one pixel")
    try:
        return fit_mask(mask, shape, source_shape=source_shape, what=f"mask {path}")
    except InputError as exc:
        raise CliError(str(exc)) from exc


def _read_inputs(args: argparse.Namespace):
    """Media, masks by object and the session's frames, all read before any model is loaded."""
    from .media.images import ImageError, load_image
    from .media.limits import MediaRejected
    from .media.masks import to_bool_mask

    def mask_at(path: str) -> object:
        try:
            return to_bool_mask(load_image(_existing(path, "mask")))
        except InputError as exc:
            raise CliError(f"mask {path}: {exc}") from exc

    try:
        if args.image:
            image = load_image(_existing(args.image, "image"))
            objects = [{0: _fit(mask_at(path), image.shape[:2], path)} for path in args.mask]
            return {"image": image}, objects
        from .media.video import load_clip, load_frame_folder, read_frames

        source = _existing(args.video, "video")
        clip = load_frame_folder(source) if source.is_dir() else load_clip(source)
    except (ImageError, MediaRejected) as exc:
        raise CliError(str(exc)) from exc
    frame_shape = clip.frames[0].shape[:2]
    objects: dict[int, dict[int, object]] = {}
    for spec in args.mask:
        match = _VIDEO_MASK.match(spec)
        if not match:
            raise CliError(f"video masks are FRAME:PATH or K@FRAME:PATH; got {spec!r}")
        number = int(match["object"]) if match["object"] else len(objects) + 1
        if number < 1:
            raise CliError(f"object numbers start at 1; got {spec!r}")
        mask = _fit(mask_at(match["path"]), frame_shape, match["path"], clip.source_shape)

        objects.setdefault(number, {})[int(match["frame"])] = mask
    if sorted(objects) != list(range(1, len(objects) + 1)):
        raise CliError(f"objects must be numbered 1..{len(objects)} without gaps; got {sorted(objects)}")
    frames = {f for masks in objects.values() for f in masks}
    missing = sorted(frames - set(clip.indices))
    extra = {}
    if missing:
        if source.is_dir():
            names = sorted(p.name for p in source.iterdir())
            if max(missing) >= len(names):
                raise CliError(f"the folder has {len(names)} frames; a mask is on frame {max(missing)}")
            extra = {f: load_image(source / names[f]) for f in missing}
        else:
            from .media.video import probe_video

            count = probe_video(source).n_frames
            if max(missing) >= count:
                raise CliError(f"a mask is on frame {max(missing)}, but the clip has frames 0-{count - 1}")
            try:
                extra = dict(zip(missing, read_frames(source, missing), strict=True))
            except (MediaRejected, OSError) as exc:
                raise CliError(str(exc)) from exc
    return {"clip": clip, "extra_frames": extra}, [objects[n] for n in sorted(objects)]


def _chat(args: argparse.Namespace) -> int:
    from .chat.limits import ChatLimits
    from .chat.session import parse_question

    if args.max_new_tokens < 1:
        raise CliError("--max-new-tokens must be at least 1")
    media, objects = _read_inputs(args)
    if not args.question.strip():
        raise CliError("The question is empty: type a question about the marked objects")
    limits = ChatLimits()
    try:
        parse_question(args.question, list(range(1, len(objects) + 1)))
        limits.check_question(args.question.strip())
        limits.check_object_count(len(objects) - 1)
        limits.check_new_tokens(args.max_new_tokens)
        settings = settings_from_flags(args)
    except InputError as exc:
        raise CliError(str(exc)) from exc

    from .chat.session import ChatSession
    from .model.inference import PixelRefer

    out = sys.stdout
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = PixelRefer.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, quantization=args.quantization
        )
        load_s = time.perf_counter() - start
        session = ChatSession(model, **media, limits=limits)
        for masks in objects:
            session.add_object(masks, marked_frames=list(masks))
        exchange = session.final(session.ask(args.question, settings), None if args.json else _printer(out))

    if args.json:
        timings = {"load_s": round(load_s, 4), **{k: round(v, 4) for k, v in exchange.timings.items()}}
        out.write(
            json.dumps({"text": exchange.answer, "token_ids": exchange.answer_ids, "timings": timings}) + "\n"
        )
    else:
        out.write("\n")
    if exchange.finish_reason == "timeout":
        budget = limits.generation_timeout_s
        print(f"note: the answer was cut off by its time budget of {budget:g} s", file=sys.stderr)
    return 0


def _printer(out) -> Callable[[str], None]:
    """Writes each piece of a streamed answer at once."""

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    return write


def _load(args: argparse.Namespace):

    from .model.inference import PixelRefer

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return PixelRefer.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, quantization=args.quantization
        )


def _batch(args: argparse.Namespace) -> int:
    from .batch import Waiting, check_items, check_provenance, run_batch
    from .engines import build_engine
    from .eval.provenance import loaded_fields, model_provenance, requested_fields

    items = _existing(args.items, "items file")
    match = re.fullmatch(r"(\d+)/(\d+)", args.shard)
    if not match or not int(match[1]) < int(match[2]):
        raise CliError(f"--shard is K/N with 0 <= K < N; got {args.shard!r}")
    try:
        settings = settings_from_flags(args)
    except InputError as exc:
        raise CliError(str(exc)) from exc
    shard = (int(match[1]), int(match[2]))

    def record(fields: dict) -> dict:
        return model_provenance(
            model=args.model, engine=args.engine, quantization=args.quantization, settings=settings, **fields
        )

    if not args.force and not args.check:
        try:  # before minutes of loading, what is known
            check_provenance(Path(args.out), record(requested_fields(args.dtype)), known_only=True)
        except InputError as exc:
            raise CliError(str(exc)) from exc
    print(f"checking the items of {items.name}", file=sys.stderr)
    problems = check_items(items, shard, stream=sys.stderr)
    for item_id, problem in problems[:10]:
        print(f"  item {item_id}: {problem}", file=sys.stderr)
    print(f"{len(problems)} items with problems", file=sys.stderr)
    if args.check:
        return 0 if not problems else 3
    with Waiting(f"loading {args.model}"):
        model = _load(args)
    engine = None
    if args.engine == "vllm":
        with Waiting("starting the vLLM engine"):
            model.engine = engine = build_engine("vllm", model, url=args.engine_url)
    try:
        summary = run_batch(
            model,
            items,
            args.out,
            settings=settings,
            workers=args.workers,
            shard=shard,
            provenance=record(loaded_fields(model)),
            force=args.force,
        )
    finally:
        if engine is not None:
            engine.close()
    print(
        f"{summary.answered} answered, {summary.failed} errors, {summary.skipped} already done "
        f"({summary.items_per_s:.2f} items/s) -> {args.out}",
        file=sys.stderr,
    )
    if args.report:
        from .report import write_report

        write_report(items, [args.out], args.report)
        print(f"report: {args.report}", file=sys.stderr)
    return 0 if summary.failed == 0 else 3


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    items = _existing(args.items, "items file")
    answers = [_existing(a, "answers file") for a in args.answers]
    if args.title and len(args.title) != len(answers):
        raise CliError(f"give one --title per answers file ({len(answers)}), or none")
    write_report(items, answers, args.out, titles=args.title)
    print(f"report: {args.out}", file=sys.stderr)
    return 0


def _engine(args: argparse.Namespace) -> int:
    from .engines.vllm_server import serve_checkpoint
    from .model.loading import plan_checkpoint
    from .runtime.devices import visible_gpus

    # Only the config is read: loading the model here would hold GPU memory that vLLM, which sizes its
    # KV cache from the free memory when it starts, needs.
    gpus = visible_gpus(measure_free=False)  # free memory would need a CUDA context in this process
    plan = plan_checkpoint(args.model, device=args.device, dtype=args.dtype, encoder_only=True, gpus=gpus)
    engine = serve_checkpoint(
        plan.folder,
        plan.dtype,
        plan.placement.devices,
        gpus=gpus,
        max_concurrency=args.max_num_seqs,
        server_options={
            "host": args.host,
            "port": args.port,
            "tensor_parallel_size": args.tensor_parallel_size,
            "gpu_memory_utilization": args.gpu_memory_utilization,
        },
    )
    server = engine.server
    print(f"vLLM engine for {args.model}: --engine vllm --engine-url {server.url}", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
    finally:
        server.close()
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # a long-running server: its own flags, and its logs stay on
        from .serve.openai_api import main as serve

        return serve(argv[1:])
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        handlers = {
            "chat": _chat,
            "batch": _batch,
            "report": _report,
            "engine": _engine,
            "eval": run_eval_command,
        }
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
