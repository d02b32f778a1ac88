"""The flags that choose a model and how it answers, declared once for `app.py` and `python -m pixelrefer`.

`--model`, `--device`, `--dtype` and `--quantization` mean the same wherever they appear (same choices,
same checks); so do `--max-new-tokens`, `--seed`, `--sample`, `--temperature` and `--top-p`, and
`generation_settings` is the one place that turns them (or the page's sliders) into `GenerationSettings`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..runtime.errors import InputError

if TYPE_CHECKING:
    from ..model.generation import GenerationSettings

__all__ = [
    "DTYPES",
    "QUANTIZATIONS",
    "add_generation_flags",
    "add_model_flags",
    "generation_settings",
    "settings_from_flags",
]

DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "8bit", "4bit")


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    default: Callable[[str, str], str] | None = None,
) -> None:
    """`--model`, `--device`, `--dtype`, `--quantization`. With `default(name, fallback)` (the app reads its
    environment) `--model` is optional; without it (the CLI) it is required."""
    if default is None:
        parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
        default = _fallback
    else:
        parser.add_argument("--model", default=default("model", ""), help="checkpoint folder or hub id")
    parser.add_argument("--device", default=default("device", "auto"), help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=default("dtype", "auto"), choices=DTYPES)
    parser.add_argument("--quantization", default=default("quantization", "none"), choices=QUANTIZATIONS)


def _fallback(name: str, value: str) -> str:
    return value


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """`--max-new-tokens`, `--seed`, `--sample`, `--temperature`, `--top-p` (read by `generation_settings`)."""
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)


def generation_settings(
    max_new_tokens: float, sample: bool, temperature: float | None, top_p: float | None, seed: float
) -> GenerationSettings:
    """What a request asks for; temperature and top-p only matter, and are only checked, when sampling."""
    from ..model.generation import GenerationSettings  # torch: only once settings are built, not to parse

    return GenerationSettings(
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(sample),
        temperature=float(temperature) if sample and temperature is not None else None,
        top_p=float(top_p) if sample and top_p is not None else None,
        seed=int(seed),
    )


def settings_from_flags(args: argparse.Namespace) -> GenerationSettings:
    """`generation_settings` from the flags `add_generation_flags` declared. `--temperature` or `--top-p`
    without `--sample` is refused: greedy decoding would ignore them without a word."""
    given = [
        flag
        for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p))
        if value is not None
    ]
    if given and not args.sample:
        verb = "apply" if len(given) > 1 else "applies"
        raise InputError(f"{' and '.join(given)} only {verb} when sampling: add --sample, or leave them out")
    return generation_settings(args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed)
