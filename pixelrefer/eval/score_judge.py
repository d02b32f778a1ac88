"""The judged benchmarks: VideoRefer-Bench-D, DLC-Bench, Ferret-Bench reasoning, Ref-L4 (CLAIR and condensed).

Prompts, message layout and reply parsing follow the official scorers in PixelRefer's `evaluation/` folder
(`videorefer_bench_d/`, `dam/eval.py`, `ferret_bench/`, `clair/clair.py`, `refl4/gpt.py`); the texts below
are those benchmarks' judge prompts, which must be sent unchanged for numbers comparable with the paper's.
Where the official scripts break or do something they evidently do not mean, this module says so at the
spot and `docs/eval-scoring.md` lists it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..runtime.errors import InputError
from .judge import Judge
from .score import Prediction, ScoreOptions, ScoreResult
from .score_caption import caption_result

__all__ = [
    "clair_score",
    "dlc_choice",
    "ferret_pair",
    "score_clair",
    "score_dlc",
    "score_ferret",
    "score_refl4",
    "score_videorefer_d",
    "videorefer_d_scores",
]


def _judge(options: ScoreOptions) -> Judge:
    if not options.judge_url:
        raise InputError("this benchmark is scored by an LLM judge: give --judge-url and --judge-model")
    return Judge(
        options.judge_url,
        options.judge_model or "",
        key=options.judge_key,
        retries=options.judge_retries,
        timeout_s=options.judge_timeout_s,
        cache=options.judge_cache,
        workers=options.judge_workers,
    )


def _text_message(role: str, text: str) -> dict[str, Any]:
    """A message whose content is one text part, as the official scripts send the user turn."""
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _answer(prediction: Prediction) -> str:
    answer = prediction.reference.get("Answer")
    if not isinstance(answer, str):
        raise InputError(f"item {prediction.id}: this benchmark needs the reference 'Answer' (text)")
    return answer


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{what}: no file at {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: {path.name} is not JSON ({exc.msg})") from None


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{what}: no file at {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{what}: {path.name} line {number + 1} is not JSON") from None
    return rows


# --- VideoRefer-Bench-D ------------------------------------------------------------------------------

VIDEOREFER_D_SYSTEM = """\
You are an advanced intelligent chatbot specialized in evaluating the factual accuracy of generative outputs related to object-based video descriptions.
Your primary task is to meticulously compare the predicted answer with the correct answer and assess their factual consistency. To accomplish this, you will evaluate the descriptions across four key dimensions:
1. Subject Correspondence: Assess whether the subject of the input description accurately matches the subject indicated in the ground truth description.
2. Appearance Description: Evaluate the accuracy of the appearance details, including color, shape, size, texture, and any other relevant visual attributes.
3. Temporal Description: Analyze whether the depiction of the object's motion aligns with the actual movements described in the correct answer.
4. Hallucination Detection: Identify any discrepancies by determining if the description includes facts, actions, or elements that do not exist in reality, such as imaginative interpretations or incorrect inferences.
Please assign a score for each of these four dimensions, using an integer from 0 to 5, where 5 indicates a perfect match and 0 signifies no relevance at all. Accompany your assessments with brief explanations to clarify your scoring rationale.
### OUTPUT FORMAT(EXAMPLE)
1. Subject Correspondence: 5\\nExplanation:\u00a0xxx
2. Appearance Description: 4\\nExplanation:\u00a0xxx
3. Temporal Description: 5\\nExplanation:\u00a0xxx
4. Hallucination Detection: 3\\nExplanation:\u00a0xxx"""
"""The official system.txt, byte for byte: its "\\n" are a backslash and an n, and a no-break space
(U+00A0) follows each "Explanation:", as in the file."""

VIDEOREFER_D_DIMENSIONS = (
    "Subject Correspondence",
    "Appearance Description",
    "Temporal Description",
    "Hallucination Detection",
)
_D_SCORE = re.compile(r"\d+\.\s+(.*?):\s+([\d.]+)")


def videorefer_d_scores(reply: str) -> dict[str, float] | None:
    """Every "N. Name: score" of a judge reply; None where a score does not read as a number (as official)."""
    try:
        return {name: float(score) for name, score in _D_SCORE.findall(reply)}
    except ValueError:
        return None


def score_videorefer_d(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Mean of each dimension over the items the judge scored on it; overall = mean of the four means."""
    judge = _judge(options)

    def ask(prediction: Prediction) -> str:
        text = f"##Correct answer: {_answer(prediction)}\n##Predicted answer: {prediction.text}\n"
        return judge.ask([{"role": "system", "content": VIDEOREFER_D_SYSTEM}, _text_message("user", text)])

    replies = judge.map(ask, predictions)
    per_item: dict[str, Any] = {}
    sums = dict.fromkeys(VIDEOREFER_D_DIMENSIONS, 0.0)
    counts = dict.fromkeys(VIDEOREFER_D_DIMENSIONS, 0)
    unread = 0
    for prediction, reply in zip(predictions, replies, strict=True):
        scores = videorefer_d_scores(reply)
        found = {d: scores[d] for d in VIDEOREFER_D_DIMENSIONS if scores and d in scores}
        unread += len(found) < len(VIDEOREFER_D_DIMENSIONS)
        for dimension, value in found.items():
            sums[dimension] += value
            counts[dimension] += 1
        mean = sum(found.values()) / len(found) if found else None
        per_item[prediction.id] = {"score": mean, **found, "judge": reply}
    missing = [d for d in VIDEOREFER_D_DIMENSIONS if not counts[d]]
    if missing:
        raise InputError(f"the judge's replies never scored {', '.join(missing)}: check --judge-model")
    per_dimension = {d: sums[d] / counts[d] for d in VIDEOREFER_D_DIMENSIONS}
    overall = sum(per_dimension.values()) / len(per_dimension)
    short = ("SC", "AD", "TD", "HD", "Avg")
    values = [*per_dimension.values(), overall]
    table = "\n".join(
        [
            "VideoRefer-Bench-D: judge scores (0-5)",
            "  ".join(f"{s:>5}" for s in short),
            "  ".join(f"{v:5.2f}" for v in values),
        ]
    )
    notes = (
        [f"{unread} judge replies lacked a dimension and count only in the ones they gave"] if unread else []
    )
    return ScoreResult(
        benchmark="",
        metrics={"overall": overall, "per_type": per_dimension, "judged_per_type": counts},
        table=table,
        per_item=per_item,
        notes=notes,
    )


# --- Ref-L4 CLAIR ------------------------------------------------------------------------------------

CLAIR_PROMPT = """\
You are trying to tell if a candidate set of captions is describing the same image as a reference set of captions.
Candidate set:
{candidate_statements}
Reference set:
{target_statements}
On a precise scale from 0 to 100, how likely is it that the candidate set is \
describing the same image as the reference set? (JSON format, with a key "score", \
value between 0 and 100, and a key "reason" with a string value.)
"""
_CLAIR_TRIES = 5
_NUMBER = re.compile(r"\d*\.?\d+")
_REASON = re.compile(r"(?i)reason.*")


def clair_score(reply: str) -> tuple[float, str] | None:
    """(score 0-100, reason) from a CLAIR reply, official rules: the first {...} as JSON, else the first
    number (x100 when below 1); None when the reply holds no number (the judge is asked again)."""
    try:
        data = json.loads("{" + reply.split("{")[1].split("}")[0] + "}")
        return float(data["score"]), str(data.get("reason", "Unknown"))
    except Exception:  # the official catches everything here and falls back to the first number
        numbers = _NUMBER.findall(reply)
        if not numbers:
            return None
        score = float(numbers[0])
        if score < 1:
            score *= 100
        reasons = _REASON.findall(reply)
        reason = reasons[0].strip()[len("reason") :].replace(":", "").strip() if reasons else "Unknown"
        return score, reason


def score_clair(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Mean CLAIR score (0-1; x100 in the table). References: the row's Answer as one caption."""
    judge = _judge(options)

    def ask(prediction: Prediction) -> tuple[float, str, str]:
        # The official passes the Answer string as the reference *list*, so each character becomes a
        # "- c" line; one caption is what it evidently means.
        prompt = CLAIR_PROMPT.format(
            candidate_statements=f"- {prediction.text}\n", target_statements=f"- {_answer(prediction)}\n"
        )
        reply = ""
        for attempt in range(_CLAIR_TRIES):
            reply = judge.ask([{"role": "user", "content": prompt}], attempt=attempt)
            parsed = clair_score(reply)
            if parsed is not None:
                return parsed[0] / 100, parsed[1], reply
        return 0.0, "Parsing failure", reply

    results = judge.map(ask, predictions)
    per_item = {
        p.id: {"score": s, "reason": r, "judge": j} for p, (s, r, j) in zip(predictions, results, strict=True)
    }
    overall = sum(s for s, _, _ in results) / len(results)
    failures = sum(r == "Parsing failure" for _, r, _ in results)
    return ScoreResult(
        benchmark="",
        metrics={"overall": overall},
        table=f"Ref-L4 CLAIR (x100)\n{100 * overall:6.1f}",
        per_item=per_item,
        notes=[f"{failures} items scored 0: no reply parsed in {_CLAIR_TRIES} tries"] if failures else [],
    )


# --- Ref-L4 (condensed, caption metrics) ------------------------------------------------------------

REFL4_CONDENSE = """
Give you a description of an object, please condense the sentence into a brief phrase that highlights the object\'s category and key characteristics. 
For example:
INPUT: A freestanding, top-loading washing machine with a white exterior. It features a front-loading door with a recessed handle at the top center for opening and closing. The control panel is located on the upper right side of the machine, consisting of several buttons and possibly a display screen.
OUTPUT: a white washing machine
"""  # noqa: W291 (the official prompt has a trailing space after "characteristics.")
_CONDENSE_ABOVE_WORDS = 5


def _refl4_references(
    options: ScoreOptions, predictions: list[Prediction]
) -> tuple[list[list[str]], str | None]:
    if options.refl4_gt is None:
        note = (
            "references are the rows' raw Ref-L4 captions; the paper compares with the GPT-4o-condensed "
            "captions of refl4_gt.json (--refl4-gt FILE)"
        )
        return [[_answer(p)] for p in predictions], note
    data = _read_json(Path(options.refl4_gt), "--refl4-gt")
    try:
        by_image: dict[str, list[str]] = {}
        for annotation in data["annotations"]:
            by_image.setdefault(str(annotation["image_id"]), []).append(str(annotation["caption"]))
        images = [str(image["id"]) for image in data["images"]]
    except (KeyError, TypeError):
        raise InputError("--refl4-gt must be COCO caption JSON (images, annotations)") from None
    if len(images) != len(predictions):
        raise InputError(
            f"--refl4-gt has {len(images)} images but {len(predictions)} items have a prediction: the official "
            "scorer matches them by position, so every item must be answered"
        )
    return [by_image.get(str(i), []) for i in range(len(predictions))], None


def score_refl4(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Predictions of more than five words are condensed by the judge, then COCO caption metrics."""
    judge = _judge(options)

    def condense(prediction: Prediction) -> str:
        text = prediction.text or ""
        if len(text.split(" ")) <= _CONDENSE_ABOVE_WORDS:
            return text
        return judge.ask([{"role": "system", "content": REFL4_CONDENSE}, _text_message("user", text)])

    condensed = judge.map(condense, predictions)
    references, note = _refl4_references(options, predictions)
    result = caption_result("Ref-L4 (condensed)", predictions, condensed, references, options.corenlp_dir)
    for prediction, text in zip(predictions, condensed, strict=True):
        result.per_item[prediction.id]["condensed"] = text
    if note:
        result.notes.append(note)
    return result


# --- DLC-Bench -----------------------------------------------------------------------------------------

DLC_PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""
_LABELS = "abcde"


def dlc_choice(reply: str, choices: list[str]) -> int | None:
    """The choice a judge reply picks, by DLC-Bench's `parse_pred` rules; None when none matches."""
    pred = reply.strip().lower()
    if not pred:
        return None  # the official indexes pred[0] and fails on an empty reply
    inside = []
    for index, choice in enumerate(choices):
        choice = choice.strip().lower()
        if choice == pred or pred == f"{_LABELS[index]}. {choice}" or pred == _LABELS[index]:
            return index
        if choice in pred:
            inside.append((index, pred.index(choice), len(choice)))
    if len(inside) == 1:
        return inside[0][0]
    if pred[0] in _LABELS and len(pred) > 1 and pred[1] == ".":
        return _LABELS.index(pred[0])
    if inside:  # several choices in the reply: the last one, the longest among those starting there
        last = max(position for _, position, _ in inside)
        return max((item for item in inside if item[1] == last), key=lambda item: item[2])[0]
    containing = [(index, len(c.strip())) for index, c in enumerate(choices) if pred in c.strip().lower()]
    if containing:
        return max(containing, key=lambda item: item[1])[0]
    if pred[0] in _LABELS and (len(pred) == 1 or pred[1] == "\n"):
        return _LABELS.index(pred[0])
    return None


@lru_cache(maxsize=1)
def _inflect() -> Any:
    import inflect

    return inflect.engine()


def _recognition_question(class_name: str) -> str:
    engine = _inflect()
    plural = class_name != "bus" and engine.singular_noun(class_name) is not False
    if plural:
        return (
            f"Is it likely that the objects in the description are {class_name} or objects of a similar type? "
            "Again, It does not have to be an exact match."
        )
    return (
        f"Is it likely that the object in the description is {engine.a(class_name)} or an object of a similar "
        "type? Again, It does not have to be an exact match."
    )


def _dlc_prompt(caption: str, question: dict[str, Any]) -> str:
    text = f"{question['question']}\n"
    for index, (choice, _) in enumerate(question["choices"]):
        text += f"{_LABELS[index].upper()}. {choice}\n"
    return DLC_PROMPT.format(pred_caption=caption, question_text_str=text.strip())


def _dlc_item(judge: Judge, caption: str, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """One object's positive/negative scores, the recognition answer capping them at 0 when wrong."""
    replies = [judge.ask([{"role": "user", "content": _dlc_prompt(caption, q)}]).strip() for q in questions]
    recognised: bool | None = None
    positives: list[float] = []
    negatives: list[float] = []
    for question, reply in zip(questions, replies, strict=True):
        choices = [choice for choice, _ in question["choices"]]
        picked = dlc_choice(reply, choices)
        value = question["choices"][picked][1] if picked is not None else 0
        if question["type"] == "recognition":
            # The official raises on a reply that picks neither; here it counts as not recognised.
            recognised = value == "correct"
            continue
        if recognised is False:
            value = min(0, value)
        (positives if question["type"] == "positive" else negatives).append(value)
    if not positives:
        raise InputError("a DLC-Bench object has no positive question: is --dlc-dir the benchmark's folder?")
    return {
        "score": (sum(positives) + sum(negatives)) / (len(positives) + len(negatives)),
        "score_pos": sum(positives) / len(positives),
        "score_neg": sum(negatives) / len(negatives) if negatives else None,
        "recognised": recognised,
        "judge": replies,
    }


def score_dlc(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Average positive and negative scores over DLC-Bench's objects, and their mean (the paper's Avg)."""
    if options.dlc_dir is None:
        raise InputError(
            "dlc scoring needs --dlc-dir: the DLC-Bench folder with qa.json and class_names.json"
        )
    qa = _read_json(Path(options.dlc_dir) / "qa.json", "--dlc-dir")
    names = _read_json(Path(options.dlc_dir) / "class_names.json", "--dlc-dir")
    by_key = {str(p.reference.get("id", p.id)): p.text or "" for p in predictions}
    default = options.dlc_default_prediction
    absent = [str(k) for k in qa if str(k) not in by_key or by_key[str(k)].startswith("Error:")]
    if absent and default is None:
        raise InputError(
            f"{len(absent)} DLC-Bench objects have no prediction (first: {absent[0]}); "
            "answer them or give --dlc-default-prediction TEXT as the official scorer requires"
        )
    judge = _judge(options)
    keys = [str(k) for k in qa]

    def work(key: str) -> dict[str, Any]:
        caption = default if key in absent else by_key[key]
        recognition = {
            "question": _recognition_question(names[key]),
            "choices": [("Yes", "correct"), ("No", "incorrect")],
            "type": "recognition",
        }
        return _dlc_item(judge, caption, [recognition, *qa[key]])

    results = judge.map(work, keys)
    positive = sum(r["score_pos"] for r in results) / len(results)
    valid = [r["score_neg"] for r in results if r["score_neg"] is not None]
    negative = sum(valid) / len(valid) if valid else 0.0
    average = (positive + negative) / 2
    table = "\n".join(
        ["DLC-Bench: judge scores (x100)", f"{'Pos':>6}  {'Neg':>6}  {'Avg':>6}"]
        + [f"{100 * positive:6.1f}  {100 * negative:6.1f}  {100 * average:6.1f}"]
    )
    notes = [f"{len(absent)} objects scored with the default prediction {default!r}"] if absent else []
    return ScoreResult(
        benchmark="",
        metrics={"overall": average, "avg_pos": positive, "avg_neg": negative},
        table=table,
        per_item=dict(zip(keys, results, strict=True)),
        notes=notes,
    )


# --- Ferret-Bench referring reasoning ---------------------------------------------------------------

FERRET_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
_BOX = re.compile(r"\[.*?\]")


def ferret_pair(reply: str) -> tuple[float, float]:
    """(score of our answer, score of GPT-4's) from the reply's first line; (-1, -1) when it does not read."""
    parts = reply.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return (-1.0, -1.0)
    try:
        return (float(parts[0]), float(parts[1]))
    except ValueError:
        return (-1.0, -1.0)


def _without_boxes(answer: str) -> str:
    for match in _BOX.findall(answer):
        answer = answer.replace(" " + match, "")
    return answer


def score_ferret(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """Our answer's judge score relative to GPT-4's reference answer, x100 (Ferret-Bench's relative score)."""
    if options.ferret_dir is None:
        raise InputError(
            "ferret scoring needs --ferret-dir: ml-ferret's ferret_gpt4_data folder "
            "(rule.json and refer_reason/{question,context,answer}.jsonl)"
        )
    folder = Path(options.ferret_dir)
    rules = _read_json(folder / "rule.json", "--ferret-dir")
    part = folder / "refer_reason"
    questions = {q["question_id"]: q for q in _read_jsonl(part / "question.jsonl", "--ferret-dir")}
    contexts = {c["image"]: c for c in _read_jsonl(part / "context.jsonl", "--ferret-dir")}
    answers = {a["question_id"]: a for a in _read_jsonl(part / "answer.jsonl", "--ferret-dir")}
    judge = _judge(options)

    def work(prediction: Prediction) -> dict[str, Any]:
        qid = prediction.reference.get("question_id", prediction.id)
        question = questions.get(qid, questions.get(str(qid)))
        if question is None:
            raise InputError(f"item {prediction.id}: question_id {qid!r} is not in question.jsonl")
        category = question["category"]
        if category not in rules:
            raise InputError(f"rule.json has no rule for the category {category!r}")
        rule = rules[category]
        role = rule["role"]
        reference = _without_boxes(answers[question["question_id"]]["text"])
        content = (
            # The official f-string's "[Context]\{" keeps the backslash: sent as is.
            f"[Context]\\{contexts[question['image']]['text']}\n\n"
            f"[Question]\n{question['text']}\n\n"
            f"[{role} 1]\n{prediction.text}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{reference}\n\n[End of {role} 2]\n\n"
            f"[System]\n{rule['prompt']}\n\n"
        )
        reply = judge.ask([{"role": "system", "content": FERRET_SYSTEM}, _text_message("user", content)])
        pair = ferret_pair(reply)
        return {"score": pair[0], "tuple": list(pair), "category": category, "judge": reply}

    results = judge.map(work, predictions)
    by_category: dict[str, list[list[float]]] = {}
    for result in results:
        by_category.setdefault(result["category"], []).append(result["tuple"])
        by_category.setdefault("all", []).append(result["tuple"])
    relative = {}
    for category, pairs in sorted(by_category.items()):
        means = [round(sum(p[i] for p in pairs) / len(pairs), 3) for i in (0, 1)]
        relative[category] = round(means[0] / means[1] * 100, 1) if means[1] else float("nan")
    unread = sum(r["tuple"] == [-1.0, -1.0] for r in results)
    notes = (
        [f"{unread} judge replies did not read as two scores and count as (-1, -1), as official"]
        if unread
        else []
    )
    return ScoreResult(
        benchmark="",
        metrics={"overall": relative["all"], "per_type": {k: v for k, v in relative.items() if k != "all"}},
        table="Ferret-Bench referring reasoning: score relative to GPT-4 (%)\n" + f"{relative['all']:6.1f}",
        per_item={p.id: r for p, r in zip(predictions, results, strict=True)},
        notes=notes,
    )
