"""The judged benchmarks against a local stub of an OpenAI-compatible server (127.0.0.1, a free port).

The stub returns canned judgements chosen from the request, can fail the first requests, and records what
it was sent, so these tests check the prompts and message layout, the parsing, retries, the reply cache
and the final numbers (computed by hand in each test). DLC-Bench's `parse_pred` and Ferret's `parse_score`
cases are pinned to the official functions' outputs on the same replies.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pixelrefer.eval import score_judge
from pixelrefer.eval.judge import Judge, JudgeError
from pixelrefer.eval.score import ScoreOptions, score_file
from pixelrefer.eval.score_cli import add_score_parser, run_score
from pixelrefer.eval.score_judge import clair_score, dlc_choice, ferret_pair, videorefer_d_scores
from pixelrefer.runtime.errors import InputError


class Stub:
    """A chat-completions endpoint: `reply(messages) -> text`, failing the first `fail` requests."""

    def __init__(self, reply: Callable[[list[dict]], str], fail: int = 0, status: int = 503) -> None:
        self.reply, self.fail, self.status = reply, fail, status
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if len(stub.requests) <= stub.fail:
                    self.send_response(stub.status)
                    self.end_headers()
                    return
                text = stub.reply(body["messages"])
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs: list[Stub] = []

    def make(reply, **kwargs) -> Stub:
        stubs.append(Stub(reply, **kwargs))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def _rows(path: Path, benchmark: str, rows: list[dict]) -> Path:
    with path.open("w") as handle:
        for i, row in enumerate(rows):
            prediction = row.pop("pred")
            handle.write(
                json.dumps(
                    {
                        "schema": "pixelrefer.eval/1",
                        "benchmark": benchmark,
                        "id": str(row.pop("id", i)),
                        "index": i,
                        "reference": row,
                        "prediction": prediction,
                        "error": None,
                    }
                )
                + "\n"
            )
    return path


def _options(stub: Stub, tmp_path: Path, **kwargs) -> ScoreOptions:
    return ScoreOptions(
        judge_url=stub.url,
        judge_model="judge-x",
        judge_key="k-123",
        judge_cache=tmp_path / "cache.jsonl",
        judge_workers=2,
        **kwargs,
    )


def _user_text(messages: list[dict]) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


# --- VideoRefer-Bench-D ---------------------------------------------------------------------------

D_REPLIES = {
    "a dog runs": "1. Subject Correspondence: 4\nExplanation: close\n2. Appearance Description: 3\nExplanation: x\n"
    "3. Temporal Description: 2\nExplanation: x\n4. Hallucination Detection: 5\nExplanation: x",
    "a cat sits": "1. Subject Correspondence: 2\n2. Appearance Description: 5\n3. Temporal Description: 4\n"
    "4. Hallucination Detection: 1",
    # no temporal score: this item counts in the other three dimensions only (as the official)
    "a bird": "1. Subject Correspondence: 3\n2. Appearance Description: 4\n4. Hallucination Detection: 3",
}


def _d_reply(messages):
    predicted = re.search(r"##Predicted answer: (.*)\n", _user_text(messages)).group(1)
    return D_REPLIES[predicted]


def test_videorefer_d_reply_parsing():
    assert videorefer_d_scores(
        "1. Subject Correspondence: 4\nExplanation: ok\n2. Appearance Description: 3.5"
    ) == {
        "Subject Correspondence": 4.0,
        "Appearance Description": 3.5,
    }
    assert videorefer_d_scores("1. Subject Correspondence: .") is None  # the official drops this reply too
    assert videorefer_d_scores("Subject Correspondence is 5") == {}


def test_videorefer_d_scores_four_dimensions(stub_factory, tmp_path):
    stub = stub_factory(_d_reply)
    path = _rows(tmp_path / "d.jsonl", "videorefer-d", [{"Answer": f"ref {p}", "pred": p} for p in D_REPLIES])
    result = score_file("videorefer-d", path, _options(stub, tmp_path))
    assert result.metrics["per_type"] == {
        "Subject Correspondence": 3.0,
        "Appearance Description": 4.0,
        "Temporal Description": 3.0,
        "Hallucination Detection": 3.0,
    }
    assert result.metrics["overall"] == 3.25
    assert result.metrics["judged_per_type"]["Temporal Description"] == 2
    assert result.per_item["0"]["score"] == 3.5
    first = stub.requests[0]
    assert first["model"] == "judge-x" and "temperature" not in first
    assert first["messages"][0] == {"role": "system", "content": score_judge.VIDEOREFER_D_SYSTEM}
    sent = {_user_text(r["messages"]) for r in stub.requests}
    assert "##Correct answer: ref a dog runs\n##Predicted answer: a dog runs\n" in sent
    assert stub.headers[0]["Authorization"] == "Bearer k-123"
    assert "3.25" in result.table and "1 judge replies lacked a dimension" in result.notes[0]


def test_replies_are_cached_and_reused(stub_factory, tmp_path):
    stub = stub_factory(_d_reply)
    path = _rows(tmp_path / "d.jsonl", "videorefer-d", [{"Answer": "r", "pred": p} for p in D_REPLIES])
    first = score_file("videorefer-d", path, _options(stub, tmp_path))
    asked = len(stub.requests)
    again = score_file("videorefer-d", path, _options(stub, tmp_path))
    assert asked == 3 and len(stub.requests) == 3  # every reply came from the cache
    assert again.metrics == first.metrics
    other = _options(stub, tmp_path)
    other.judge_model = "judge-y"  # another judge is asked afresh
    score_file("videorefer-d", path, other)
    assert len(stub.requests) == 6


# --- retries ----------------------------------------------------------------------------------------


def test_failed_calls_are_retried(stub_factory, tmp_path):
    stub = stub_factory(lambda messages: "fine", fail=2)
    judge = Judge(stub.url, "m", retries=2, pause_s=0.01)
    assert judge.ask([{"role": "user", "content": "hi"}]) == "fine"
    assert judge.calls == 3 and len(stub.requests) == 3


def test_a_judge_that_keeps_failing_stops_with_a_message(stub_factory, tmp_path):
    stub = stub_factory(lambda messages: "never", fail=100)
    judge = Judge(stub.url, "m", retries=1, pause_s=0.01)
    with pytest.raises(JudgeError, match="failed 2 times \\(HTTP 503\\)"):
        judge.ask([{"role": "user", "content": "hi"}])
    refused = stub_factory(lambda messages: "never", fail=100, status=401)
    with pytest.raises(JudgeError, match="refused the request: HTTP 401"):
        Judge(refused.url, "m", retries=5, pause_s=0.01).ask([{"role": "user", "content": "hi"}])
    assert len(refused.requests) == 1  # a refusal is not retried
    with pytest.raises(JudgeError, match="failed 1 times"):
        Judge("http://127.0.0.1:9/v1", "m", retries=0).ask([{"role": "user", "content": "hi"}])
    with pytest.raises(InputError, match="http"):
        Judge("file:///etc/passwd", "m")


def test_judged_benchmarks_need_a_judge(tmp_path):
    path = _rows(tmp_path / "d.jsonl", "videorefer-d", [{"Answer": "r", "pred": "p"}])
    with pytest.raises(InputError, match="--judge-url and --judge-model"):
        score_file("videorefer-d", path)


# --- CLAIR --------------------------------------------------------------------------------------------


def test_clair_parsing_follows_the_official_rules():
    assert clair_score('Sure. {"score": 80, "reason": "same dog"} done') == (80.0, "same dog")
    assert clair_score("score: 0.65, reason: close enough") == (65.0, "close enough")  # below 1: x100
    assert clair_score('{"score": 40}') == (40.0, "Unknown")
    assert clair_score("I cannot tell.") is None


def test_clair_asks_again_until_a_reply_parses(stub_factory, tmp_path):
    answers = {
        "a brown dog": iter(["no idea", "hmm", '{"score": 90, "reason": "r"}']),
        "a cat": iter(["score 30"]),
    }
    stub = stub_factory(
        lambda messages: next(
            answers[re.search(r"Candidate set:\n- (.*)\n", messages[0]["content"]).group(1)]
        )
    )
    path = _rows(
        tmp_path / "c.jsonl",
        "refl4-clair",
        [{"Answer": "a dog on grass", "pred": "a brown dog"}, {"Answer": "a black cat", "pred": "a cat"}],
    )
    result = score_file("refl4-clair", path, _options(stub, tmp_path))
    assert result.metrics["overall"] == pytest.approx((0.9 + 0.3) / 2)
    assert len(stub.requests) == 4
    prompt = stub.requests[0]["messages"][0]["content"]
    assert prompt == score_judge.CLAIR_PROMPT.format(
        candidate_statements=f"- {'a brown dog' if 'brown' in prompt else 'a cat'}\n",
        target_statements=f"- {'a dog on grass' if 'brown' in prompt else 'a black cat'}\n",
    )


# --- Ref-L4: the condensation step ------------------------------------------------------------------


def test_refl4_condenses_long_predictions(stub_factory, tmp_path, monkeypatch):
    stub = stub_factory(lambda messages: "a white washing machine")
    seen = {}

    def metrics(title, predictions, texts, references, corenlp_dir):
        seen.update(texts=texts, references=references)
        from pixelrefer.eval.score import ScoreResult

        return ScoreResult("", {"overall": {}}, title, {p.id: {} for p in predictions})

    monkeypatch.setattr(score_judge, "caption_result", metrics)
    long = "A freestanding white washing machine with a door at the front"
    path = _rows(
        tmp_path / "r.jsonl",
        "refl4",
        [{"Answer": "washer", "pred": long}, {"Answer": "red car", "pred": "a small red car"}],
    )
    result = score_file("refl4", path, _options(stub, tmp_path))
    assert seen["texts"] == ["a white washing machine", "a small red car"]  # five words or fewer: kept
    assert len(stub.requests) == 1
    messages = stub.requests[0]["messages"]
    assert messages[0] == {"role": "system", "content": score_judge.REFL4_CONDENSE}
    assert messages[1] == {"role": "user", "content": [{"type": "text", "text": long}]}
    assert seen["references"] == [["washer"], ["red car"]] and "raw Ref-L4 captions" in result.notes[0]
    assert result.per_item["0"]["condensed"] == "a white washing machine"
    gt = tmp_path / "refl4_gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": "0"}, {"id": "1"}],
                "annotations": [
                    {"image_id": "0", "id": "0", "caption": "a washing machine"},
                    {"image_id": "1", "id": "1", "caption": "a car"},
                ],
            }
        )
    )
    score_file("refl4", path, _options(stub, tmp_path, refl4_gt=gt))
    assert seen["references"] == [["a washing machine"], ["a car"]]
    gt.write_text(json.dumps({"images": [{"id": "0"}], "annotations": []}))
    with pytest.raises(InputError, match="matches them by position"):
        score_file("refl4", path, _options(stub, tmp_path, refl4_gt=gt))


# --- DLC-Bench --------------------------------------------------------------------------------------

# (reply, choices) -> the official dam/eval.py parse_pred's index on the same input.
DLC_PARSE_CASES = [
    ("Yes", ["Yes", "No"], 0),
    ("b", ["Yes", "No"], 1),
    ("A. red", ["red", "blue", "not mentioned"], 0),
    ("C. The color is not mentioned", ["red", "blue", "not mentioned"], 2),
    ("red and blue", ["red", "blue", "not mentioned"], 1),
    ("It is mostly blue", ["red", "blue"], 1),
    ("mention", ["red", "not mentioned"], 1),
    ("d\nsomething", ["w", "x", "y", "z"], 3),
    ("purple", ["red", "blue"], None),
]


@pytest.mark.parametrize(("reply", "choices", "official"), DLC_PARSE_CASES)
def test_dlc_reply_parsing_equals_the_official(reply, choices, official):
    assert dlc_choice(reply, choices) == official


def _dlc_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "DLC-Bench"
    folder.mkdir()
    qa = {
        "1": [
            {
                "question": "What color is it?",
                "choices": [["red", 1], ["blue", -1], ["not mentioned", 0]],
                "type": "positive",
            },
            {"question": "Does it have wings?", "choices": [["yes", -1], ["no", 0]], "type": "negative"},
        ],
        "2": [{"question": "Is it striped?", "choices": [["striped", 1], ["plain", 0]], "type": "positive"}],
    }
    (folder / "qa.json").write_text(json.dumps(qa))
    (folder / "class_names.json").write_text(json.dumps({"1": "car", "2": "zebras"}))
    return folder


def _dlc_reply(messages):
    text = messages[0]["content"]
    if "is a car or an object of a similar type" in text:
        return "Yes"
    if "are zebras or objects of a similar type" in text:
        return "No"  # not recognised: its positive score is capped at 0
    if "What color" in text:
        return "A. red"
    if "wings" in text:
        return "B"
    if "striped" in text:
        return "striped"
    raise AssertionError(text)


def test_dlc_positive_negative_and_recognition(stub_factory, tmp_path):
    stub = stub_factory(_dlc_reply)
    folder = _dlc_dir(tmp_path)
    path = _rows(
        tmp_path / "dlc.jsonl", "dlc", [{"id": "1", "pred": "A red car."}, {"id": "2", "pred": "A horse."}]
    )
    result = score_file("dlc", path, _options(stub, tmp_path, dlc_dir=folder))
    # object 1: pos 1, neg 0; object 2: pos min(0, 1) = 0, no negatives
    assert result.metrics["avg_pos"] == 0.5 and result.metrics["avg_neg"] == 0.0
    assert result.metrics["overall"] == 0.25
    assert result.per_item["2"]["recognised"] is False
    prompt = next(
        r["messages"][0]["content"] for r in stub.requests if "What color" in r["messages"][0]["content"]
    )
    assert prompt == score_judge.DLC_PROMPT.format(
        pred_caption="A red car.", question_text_str="What color is it?\nA. red\nB. blue\nC. not mentioned"
    )
    one = _rows(tmp_path / "one.jsonl", "dlc", [{"id": "1", "pred": "A red car."}])
    with pytest.raises(InputError, match="1 DLC-Bench objects have no prediction"):
        score_file("dlc", one, _options(stub, tmp_path, dlc_dir=folder))
    filled = score_file(
        "dlc", one, _options(stub, tmp_path, dlc_dir=folder, dlc_default_prediction="A horse.")
    )
    assert filled.metrics["overall"] == 0.25 and "default prediction" in filled.notes[0]


# --- Ferret-Bench -----------------------------------------------------------------------------------

# reply -> the official 2.eval_ferret.py parse_score on the same reply ("7, 9" splits into three parts).
FERRET_PARSE_CASES = [
    ("8 6\nAssistant 1 is better", [8.0, 6.0]),
    ("7, 9", [-1, -1]),
    ("7 out of 10", [-1, -1]),
    ("seven six", [-1, -1]),
    ("", [-1, -1]),
]


@pytest.mark.parametrize(("reply", "official"), FERRET_PARSE_CASES)
def test_ferret_reply_parsing_equals_the_official(reply, official):
    assert list(ferret_pair(reply)) == [float(x) for x in official]


def test_ferret_relative_score(stub_factory, tmp_path):
    folder = tmp_path / "ferret_gpt4_data"
    (folder / "refer_reason").mkdir(parents=True)
    (folder / "rule.json").write_text(
        json.dumps({"refer_reason": {"role": "Assistant", "prompt": "Rate both."}})
    )
    lines = {
        "question.jsonl": [
            {"question_id": 0, "image": "a.jpg", "category": "refer_reason", "text": "Why?"},
            {"question_id": 1, "image": "b.jpg", "category": "refer_reason", "text": "How?"},
        ],
        "context.jsonl": [{"image": "a.jpg", "text": "a kitchen"}, {"image": "b.jpg", "text": "a street"}],
        "answer.jsonl": [
            {"question_id": 0, "text": "Because the cup [0.1, 0.2, 0.3, 0.4] is hot."},
            {"question_id": 1, "text": "By bus."},
        ],
    }
    for name, rows in lines.items():
        (folder / "refer_reason" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    stub = stub_factory(lambda messages: "8 10\nok" if "Why?" in _user_text(messages) else "6 6\nok")
    path = _rows(
        tmp_path / "f.jsonl",
        "ferret",
        [{"question_id": 0, "pred": "It is hot."}, {"question_id": 1, "pred": "By bus."}],
    )
    result = score_file("ferret", path, _options(stub, tmp_path, ferret_dir=folder))
    assert result.metrics["overall"] == round(7.0 / 8.0 * 100, 1)  # means (7, 8)
    assert result.metrics["per_type"] == {"refer_reason": 87.5}
    why = next(r for r in stub.requests if "Why?" in _user_text(r["messages"]))
    assert why["messages"][0]["content"] == score_judge.FERRET_SYSTEM
    assert _user_text(why["messages"]) == (
        "[Context]\\a kitchen\n\n[Question]\nWhy?\n\n[Assistant 1]\nIt is hot.\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nBecause the cup is hot.\n\n[End of Assistant 2]\n\n[System]\nRate both.\n\n"
    )


# --- the command line ------------------------------------------------------------------------------


def test_score_command_prints_the_table_and_writes_json(stub_factory, tmp_path, capsys, monkeypatch):
    import argparse

    stub = stub_factory(_d_reply)
    monkeypatch.setenv("PIXELREFER_JUDGE_KEY", "env-key")
    path = _rows(tmp_path / "d.jsonl", "videorefer-d", [{"Answer": "r", "pred": p} for p in D_REPLIES])
    parser = argparse.ArgumentParser()
    add_score_parser(parser.add_subparsers(dest="eval_command"))
    out = tmp_path / "scores.json"
    args = parser.parse_args(
        [
            "score",
            "videorefer-d",
            str(path),
            "--json",
            str(out),
            "--judge-url",
            stub.url,
            "--judge-model",
            "judge-x",
        ]
    )
    assert args.score_handler(args) == 0
    printed = capsys.readouterr().out
    assert "VideoRefer-Bench-D" in printed and "scored 3 of 3 items" in printed
    document = json.loads(out.read_text())
    assert document["overall"] == 3.25 and document["counts"] == {"rows": 3, "scored": 3, "errors": 0}
    assert set(document["per_item"]) == {"0", "1", "2"}
    assert stub.headers[0]["Authorization"] == "Bearer env-key"
    assert (tmp_path / "d.judge.jsonl").is_file()  # the default reply cache sits beside the predictions
    assert "env-key" not in (tmp_path / "d.judge.jsonl").read_text()
    args = parser.parse_args(
        [
            "score",
            "videorefer-d",
            str(path),
            "--json",
            "-",
            "--judge-url",
            stub.url,
            "--judge-model",
            "judge-x",
        ]
    )
    assert run_score(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["overall"] == 3.25 and "VideoRefer-Bench-D" in captured.err
