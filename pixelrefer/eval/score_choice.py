"""Multiple-choice letter accuracy (VideoRefer-Bench-Q), with the official scorer's extraction rules.

The letter of a reference is the one in "(X)"; the letter of a prediction is the first "(X)", else the
first "X)", else the first character once full stops are removed. Letters compare case-insensitively.
Accuracy is counted per question type and over all questions (micro average), as the official
`eval_videorefer_q_bench.py` does.
"""

from __future__ import annotations

import re

from ..runtime.errors import InputError
from .score import Prediction, ScoreOptions, ScoreResult

__all__ = ["choice_letter", "reference_letter", "score_videorefer_q"]

_PARENS = re.compile(r"\(([A-Z])\)")
_CLOSING = re.compile(r"([A-Z])\)")

# The paper's row order (Basic, Sequential, Relationship, Reasoning, Future); other types follow as met.
_ORDER = ("basic", "sequential", "relationship", "reasoning", "future")


def _rank(kind: str) -> int:
    lowered = kind.lower()
    return next((i for i, start in enumerate(_ORDER) if lowered.startswith(start)), len(_ORDER))


def reference_letter(answer: str) -> str:
    """The letter of a reference answer such as "(B) The man in white"; the text itself when it has none."""
    match = _PARENS.search(answer)
    return match.group(1) if match else answer


def choice_letter(prediction: str) -> str:
    """The letter a prediction chose; "" for a prediction that is empty once full stops are removed.

    The official scorer fails on such a prediction (it takes character 0 of an empty string); here it is
    simply a wrong answer.
    """
    for pattern in (_PARENS, _CLOSING):
        match = pattern.search(prediction)
        if match:
            return match.group(1)
    bare = prediction.replace(".", "")
    return bare[0] if bare else ""


def score_videorefer_q(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Per-type and overall accuracy (fractions in JSON, percentages in the table)."""
    totals: dict[str, int] = {}
    right: dict[str, int] = {}
    per_item: dict[str, dict] = {}
    for prediction in predictions:
        answer, kind = prediction.reference.get("Answer"), prediction.reference.get("type")
        if not isinstance(answer, str) or not isinstance(kind, str):
            raise InputError(
                f"item {prediction.id}: a videorefer-q row needs the reference 'Answer' and 'type'"
            )
        chosen, wanted = choice_letter(prediction.text or ""), reference_letter(answer)
        correct = chosen.lower() == wanted.lower()
        totals[kind] = totals.get(kind, 0) + 1
        right[kind] = right.get(kind, 0) + int(correct)
        per_item[prediction.id] = {"score": float(correct), "chosen": chosen, "answer": wanted}
    order = sorted(totals, key=_rank)  # stable: unknown types keep the order they were met in
    per_type = {t: right[t] / totals[t] for t in order}
    overall = sum(right.values()) / sum(totals.values())
    width = max(len(t) for t in [*order, "Average"])
    lines = [
        "VideoRefer-Bench-Q: accuracy per question type",
        f"{'type'.ljust(width)}  questions  right  accuracy",
    ]
    for kind, count, hits in [
        *((t, totals[t], right[t]) for t in order),
        ("Average", sum(totals.values()), sum(right.values())),
    ]:
        lines.append(f"{kind.ljust(width)}  {count:9d}  {hits:5d}  {100 * hits / count:7.1f}%")
    table = "\n".join(lines)
    return ScoreResult(
        benchmark="videorefer-q",
        metrics={
            "overall": overall,
            "per_type": per_type,
            "counts_per_type": {t: {"all": totals[t], "right": right[t]} for t in order},
        },
        table=table,
        per_item=per_item,
    )
