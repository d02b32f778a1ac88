"""`python -m pixelrefer chat ...`: ask one question about marked objects from the command line.

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
from pathlib import Path

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


class CliError(Exception):
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
    chat.add_argument("--model", required=True, help="checkpoint folder or hub id")
    media = chat.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file")
    media.add_argument("--video", help="video file or folder of frames")
    chat.add_argument("--mask", action="append", required=True, help="object mask (see below); repeat")
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--seed", type=int, default=1234)
    chat.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--top-p", type=float, default=None)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto")
    chat.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])
    chat.add_argument("--json", action="store_true", help='print one {"text", "token_ids", "timings"} object')
    chat.add_argument("question", help="the question; refer to objects as <object1>, <object2>, ...")
    return parser


def _existing(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise CliError(f"{what} not found: {path}")
    return resolved


def _fit(mask, shape: tuple[int, int], path: str, *, resize: bool):
    """A mask of the frame's size; a clip's frames may have been shrunk, so its masks follow (nearest)."""
    import cv2
    import numpy as np

    if not mask.any():
        raise CliError(f"mask {path}: the mask is empty: mark at least one pixel")
    if mask.shape == tuple(shape):
        return mask
    same_ratio = abs(mask.shape[0] * shape[1] - mask.shape[1] * shape[0]) <= max(mask.shape)
    if resize and same_ratio:
        return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    raise CliError(
        f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its frame is {shape[1]}x{shape[0]} (width x height)"
    )


def _read_inputs(args: argparse.Namespace):
    """Media, masks by object and the session's frames, all read before any model is loaded."""
    from .images import ImageError, load_image
    from .limits import MediaRejected
    from .masks import to_bool_mask

    def mask_at(path: str) -> object:
        try:
            return to_bool_mask(load_image(_existing(path, "mask")))
        except (ImageError, ValueError) as exc:
            raise CliError(f"mask {path}: {exc}") from exc

    try:
        if args.image:
            image = load_image(_existing(args.image, "image"))
            objects = [{0: _fit(mask_at(path), image.shape[:2], path, resize=False)} for path in args.mask]
            return {"image": image}, objects
        from .video import load_clip, load_frame_folder, read_frames

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
        mask = _fit(mask_at(match["path"]), frame_shape, match["path"], resize=True)
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
            from .video import probe_video

            count = probe_video(source).n_frames
            if max(missing) >= count:
                raise CliError(f"a mask is on frame {max(missing)}, but the clip has frames 0-{count - 1}")
            try:
                extra = dict(zip(missing, read_frames(source, missing), strict=True))
            except (MediaRejected, OSError) as exc:
                raise CliError(str(exc)) from exc
    return {"clip": clip, "extra_frames": extra}, [objects[n] for n in sorted(objects)]


def _chat(args: argparse.Namespace) -> int:
    from .chat import parse_question
    from .limits import ChatLimits

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
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    from .chat import ChatSession
    from .generation import GenerationSettings
    from .inference import PixelRefer

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
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        exchange = None
        for reply in session.ask(args.question, settings):
            if not args.json and reply.delta:
                out.write(reply.delta)
                out.flush()
            exchange = reply.exchange or exchange
    assert exchange is not None
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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
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
        return _chat(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
