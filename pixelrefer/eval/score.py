"""`eval score`: one entry point that reads a predictions file and hands it to its benchmark's scorer.

Each benchmark family has its own module (choice, similarity, caption, judge) that follows the official
PixelRefer scorer for extraction rules, prompts and arithmetic; this module only reads rows, keeps the
last answer per item, and shapes the result (the paper's table as text, JSON with the raw numbers and a
score per item for the gallery). One rule for every family: rows without a prediction (errors) are not
scored, and the table says how many there were, so a half-finished run never passes for a finished one.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import InputError

__all__ = [
    "BENCHMARKS",
    "Prediction",
    "ScoreOptions",
    "ScoreResult",
    "read_predictions",
    "score_file",
    "score_predictions",
]


@dataclass(frozen=True)
class Prediction:
    """One item's answer and the benchmark's reference fields, as a scorer needs them."""

    id: str
    text: str | None
    reference: dict[str, Any]
    error: str | None = None
    index: int = 0
    benchmark: str | None = None


@dataclass
class ScoreOptions:
    """What a scorer may need beyond the predictions (judge endpoint, reference files, model folders)."""

    judge_url: str | None = None
    judge_model: str | None = None
    judge_key: str | None = None
    judge_retries: int = 5
    judge_workers: int = 4
    judge_timeout_s: float = 120.0
    judge_cache: Path | None = None
    similarity_model: Path | None = None
    corenlp_dir: Path | None = None
    refl4_gt: Path | None = None
    dlc_dir: Path | None = None
    dlc_default_prediction: str | None = None
    ferret_dir: Path | None = None


@dataclass
class ScoreResult:
    """A benchmark's numbers: `metrics` as the official scorer computes them, `table` as the paper shows them."""

    benchmark: str
    metrics: dict[str, Any]
    table: str
    per_item: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    scored: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)
    predictions: str = ""

    def to_json(self) -> dict[str, Any]:
        """The `--json` file: the metrics at top level, then counts, notes and the per-item scores."""
        return {
            "benchmark": self.benchmark,
            "predictions": self.predictions,
            **self.metrics,
            "counts": {"rows": self.rows, "scored": self.scored, "errors": self.errors},
            "notes": self.notes,
            "per_item": self.per_item,
        }

    def text(self) -> str:
        """The table, then one line of counts and the notes."""
        lines = [self.table, f"scored {self.scored} of {self.rows} items"]
        if self.errors:
            lines[-1] += (
                f" ({self.errors} without a prediction, not scored: the numbers cover answered items)"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _row_prediction(row: dict[str, Any], number: int) -> Prediction:
    """A prediction row (ours: `prediction` + `reference`; or the official scripts' flat `pred` rows)."""
    raw_id = row.get("id", row.get("question_id", number))
    text = row.get("prediction", row.get("pred"))
    error = row.get("error") or None
    if text is not None and not isinstance(text, str):
        raise InputError(f"row {number + 1}: the prediction must be text, got {type(text).__name__}")
    reference = row.get("reference")
    if not isinstance(reference, dict):
        reference = {k: v for k, v in row.items() if k not in ("prediction", "pred")}
    index = row.get("index", number)
    return Prediction(
        id=str(raw_id),
        text=None if error else text,
        reference=reference,
        error=str(error) if error else None,
        index=int(index) if isinstance(index, int) else number,
        benchmark=row.get("benchmark"),
    )


def read_predictions(path: str | Path) -> tuple[list[Prediction], int]:
    """Rows of a JSONL predictions file, the last answer per item kept (an error row never hides an answer),
    and how many lines were not JSON objects (a line cut by an interrupted run is skipped, as `eval run`
    skips it when resuming)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no predictions file at {path}")
    kept: dict[str, Prediction] = {}
    unreadable = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                unreadable += 1
                continue
            prediction = _row_prediction(row, number)
            earlier = kept.get(prediction.id)
            if earlier is None or prediction.text is not None or earlier.text is None:
                kept[prediction.id] = prediction
    if not kept:
        raise InputError(f"{path.name} holds no prediction rows")
    return sorted(kept.values(), key=lambda p: p.index), unreadable


Scorer = Callable[[list[Prediction], ScoreOptions], ScoreResult]

# benchmark -> (module of this package, function); imported on use, so scoring one family never loads
# another's dependencies (sentence-transformers, Java, an HTTP client).
_SCORERS: dict[str, tuple[str, str]] = {
    "videorefer-q": ("score_choice", "score_videorefer_q"),
    "lvis": ("score_similarity", "score_category"),
    "paco": ("score_similarity", "score_category"),
    "vg": ("score_caption", "score_captions"),
    "hcstvg": ("score_caption", "score_captions"),
    "refl4": ("score_judge", "score_refl4"),
    "refl4-clair": ("score_judge", "score_clair"),
    "videorefer-d": ("score_judge", "score_videorefer_d"),
    "dlc": ("score_judge", "score_dlc"),
    "ferret": ("score_judge", "score_ferret"),
}


def _scorer(benchmark: str) -> Scorer:
    if benchmark not in _SCORERS:
        raise InputError(f"unknown benchmark {benchmark!r}; one of: {', '.join(BENCHMARKS)}")
    module, function = _SCORERS[benchmark]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


BENCHMARKS = (
    "videorefer-q",
    "videorefer-d",
    "lvis",
    "paco",
    "dlc",
    "ferret",
    "vg",
    "refl4",
    "refl4-clair",
    "hcstvg",
)


def score_predictions(
    benchmark: str, predictions: list[Prediction], options: ScoreOptions | None = None
) -> ScoreResult:
    """Score `predictions` with the benchmark's scorer; counts rows and errors the same way for all."""
    scorer = _scorer(benchmark)
    others = sorted({p.benchmark for p in predictions if p.benchmark and p.benchmark != benchmark})
    if others:
        raise InputError(f"these predictions are for {', '.join(others)}, not {benchmark}")
    answered = [p for p in predictions if p.text is not None]
    if not answered:
        raise InputError("no row has a prediction: nothing to score")
    result = scorer(answered, options or ScoreOptions())
    result.benchmark = benchmark
    result.rows = len(predictions)
    result.scored = len(answered)
    result.errors = len(predictions) - len(answered)
    return result


def score_file(benchmark: str, path: str | Path, options: ScoreOptions | None = None) -> ScoreResult:
    """Read `path` and score it (what `eval score` does); the result names the file, for the gallery."""
    predictions, unreadable = read_predictions(path)
    result = score_predictions(benchmark, predictions, options)
    result.predictions = str(Path(path).resolve())
    if unreadable:
        result.notes.append(f"{unreadable} lines of {Path(path).name} were not JSON rows and were skipped")
    return result
