"""`python -m pixelrefer eval score BENCHMARK PREDICTIONS.jsonl [--json OUT]`: the flags and the run.

`add_score_parser` adds the `score` subcommand to the `eval` command's subparsers (the eval CLI module
calls it); the parsed namespace carries `score_handler`, which prints the paper's table and writes the
JSON. Every failure the user can fix is an `InputError`, printed as one line by the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.errors import InputError
from .score import BENCHMARKS, ScoreOptions, score_file

__all__ = ["add_score_parser", "run_score"]

_HELP = """\
families:
  videorefer-q                  multiple-choice accuracy per question type (official extraction rules)
  lvis, paco                    similarity (all-MiniLM-L6-v2) and semantic IoU; needs requirements-eval.txt
  vg, hcstvg                    BLEU, METEOR, ROUGE-L, CIDEr (pycocoevalcap, Java); SPICE with --corenlp-dir
  refl4                         judge condenses long answers, then the caption metrics (--refl4-gt FILE)
  videorefer-d, dlc, ferret,    LLM judge at --judge-url (OpenAI-compatible) with --judge-model; the key
  refl4-clair                   comes from PIXELREFER_JUDGE_KEY, OPENAI_API_KEY or API_KEY
"""


def add_score_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `score` under the `eval` command's subparsers; returns the new parser."""
    score = commands.add_parser(
        "score",
        help="score a predictions file the way the benchmark's official scorer does",
        description="Print the paper's table for BENCHMARK and, with --json, write the numbers.",
        epilog=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("benchmark", choices=BENCHMARKS, metavar="BENCHMARK", help=", ".join(BENCHMARKS))
    score.add_argument("predictions", help="the JSONL file `eval run` wrote (or official-format rows)")
    score.add_argument(
        "--json", default="", help="write the metrics, counts and per-item scores here ('-': stdout)"
    )
    judge = score.add_argument_group("LLM judge (videorefer-d, dlc, ferret, refl4, refl4-clair)")
    judge.add_argument("--judge-url", default="", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    judge.add_argument("--judge-model", default="", help="the judge model's name (the paper: GPT-4 / GPT-4o)")
    judge.add_argument("--judge-retries", type=int, default=5, help="retries of a failed call (default 5)")
    judge.add_argument("--judge-workers", type=int, default=4, help="calls in flight at once (default 4)")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per call (default 120)")
    judge.add_argument(
        "--judge-cache", default="", help="JSONL of judge replies to reuse (default: PREDICTIONS.judge.jsonl)"
    )
    files = score.add_argument_group("reference files and models")
    files.add_argument(
        "--similarity-model", default="", help="all-MiniLM-L6-v2 folder (default: the package's)"
    )
    files.add_argument(
        "--corenlp-dir", default="", help="folder with Stanford CoreNLP 3.6.0's jars, for SPICE"
    )
    files.add_argument("--refl4-gt", default="", help="refl4_gt.json, the condensed Ref-L4 references")
    files.add_argument("--dlc-dir", default="", help="DLC-Bench folder (qa.json, class_names.json)")
    files.add_argument("--dlc-default-prediction", default=None, help="text for DLC objects left unanswered")
    files.add_argument("--ferret-dir", default="", help="ml-ferret's ferret_gpt4_data folder")
    score.set_defaults(score_handler=run_score)
    return score


def _path(value: str) -> Path | None:
    return Path(value).expanduser() if value else None


def options_from(args: argparse.Namespace) -> ScoreOptions:
    """The scorer options a parsed `eval score` command line asks for."""
    if args.judge_retries < 0 or args.judge_workers < 1 or args.judge_timeout <= 0:
        raise InputError("--judge-retries must be >= 0, --judge-workers >= 1 and --judge-timeout > 0")
    cache = _path(args.judge_cache) or Path(args.predictions).with_suffix(".judge.jsonl")
    return ScoreOptions(
        judge_url=args.judge_url or None,
        judge_model=args.judge_model or None,
        judge_retries=args.judge_retries,
        judge_workers=args.judge_workers,
        judge_timeout_s=args.judge_timeout,
        judge_cache=cache,
        similarity_model=_path(args.similarity_model),
        corenlp_dir=_path(args.corenlp_dir),
        refl4_gt=_path(args.refl4_gt),
        dlc_dir=_path(args.dlc_dir),
        dlc_default_prediction=args.dlc_default_prediction,
        ferret_dir=_path(args.ferret_dir),
    )


def run_score(args: argparse.Namespace) -> int:
    """Score, print the table (to stderr when the JSON goes to stdout), write the JSON; exit status 0."""
    result = score_file(args.benchmark, args.predictions, options_from(args))
    document = json.dumps(result.to_json(), indent=2, ensure_ascii=False, allow_nan=True)
    if args.json == "-":
        print(result.text(), file=sys.stderr)
        print(document)
        return 0
    print(result.text())
    if args.json:
        out = Path(args.json).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0
