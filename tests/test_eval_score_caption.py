"""Caption metrics (vg, hcstvg) through pycocoevalcap, pinned to the official pipeline's numbers.

The pinned numbers are those of PixelRefer's `captioning/change2eval_format.py` + `eval_cococap.py` run
unchanged on these rows (outside this repository), except SPICE: it needs Stanford CoreNLP 3.6.0's jars,
which no package index here carries, so that run replaced pycocoevalcap's Spice with a no-op and SPICE is
left out of the comparison. One module-scoped scoring run: Java starts four times (about 5 s in all).
"""

from __future__ import annotations

import json
import shutil

import pytest

from pixelrefer.eval.score import score_file
from pixelrefer.eval.score_caption import coco_inputs
from pixelrefer.runtime.errors import InputError

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java: bash .ci/java")

# (Answer, prediction): punctuation the PTB tokenizer drops, case, an exact match, a long prediction that
# the official cut at 100 words, a miss.
CAPTIONS = [
    ("man wearing a red shirt", "A man in a red shirt, walking."),
    ("a small white dog", "white dog on the grass"),
    ("tall glass building in the city", "the tall building"),
    ("black cat sitting on a chair", "black cat sitting on a chair"),
    ("blue car parked on the street", "a blue car " + " ".join(["parked"] * 120)),
    ("green tree", "a person riding a bike"),
]
# The official pipeline's `_metrics.json` for CAPTIONS (SPICE not run).
CAPTIONS_OFFICIAL = {
    "Bleu_1": 0.14285714285600906,
    "Bleu_2": 0.1091089451171086,
    "Bleu_3": 0.08557016531061003,
    "Bleu_4": 0.06459012916803239,
    "METEOR": 0.20352204103875782,
    "ROUGE_L": 0.4379130043700246,
    "CIDEr": 2.7890528256285805,
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    path = tmp_path_factory.mktemp("vg") / "vg.jsonl"
    with path.open("w") as handle:
        for i, (answer, prediction) in enumerate(CAPTIONS):
            row = {
                "schema": "pixelrefer.eval/1",
                "benchmark": "vg",
                "id": f"r{i}",
                "index": i,
                "reference": {"image": "x.jpg", "Answer": answer},
                "prediction": prediction,
                "error": None,
            }
            handle.write(json.dumps(row) + "\n")
    return score_file("vg", path)


def test_caption_metrics_equal_the_official_pipeline(scored):
    assert set(scored.metrics["overall"]) == set(CAPTIONS_OFFICIAL)
    for name, value in CAPTIONS_OFFICIAL.items():
        assert scored.metrics["overall"][name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert scored.metrics["spice"] is False


def test_table_says_spice_was_not_run(scored):
    assert "SPICE: not run" in scored.table
    assert scored.table.splitlines()[1].split()[-1] == "SPICE"
    assert f"{100 * CAPTIONS_OFFICIAL['CIDEr']:.1f}" in scored.table


def test_per_item_scores_for_the_gallery(scored):
    assert set(scored.per_item) == {f"r{i}" for i in range(len(CAPTIONS))}
    exact = scored.per_item["r3"]
    assert exact["Bleu_1"] == pytest.approx(1.0) and exact["ROUGE_L"] == pytest.approx(1.0)
    assert scored.per_item["r5"]["Bleu_1"] < 0.2
    assert scored.per_item["r0"]["score"] == scored.per_item["r0"]["CIDEr"]


def test_inputs_are_the_official_files():
    gts, res = coco_inputs(["a " * 150, "b"], [["x"], ["y", "z"]])
    assert list(gts) == ["0", "1"] and [c["caption"] for c in gts["1"]] == ["y", "z"]
    assert len(res["0"][0]["caption"].split(" ")) == 100  # the first 100 space-separated words


def test_spice_needs_both_corenlp_jars(tmp_path):
    from pixelrefer.eval.score import ScoreOptions

    path = tmp_path / "vg.jsonl"
    path.write_text(json.dumps({"id": "0", "Answer": "a dog", "pred": "a dog"}) + "\n")
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    with pytest.raises(InputError, match="lacks stanford-corenlp-3.6.0-models.jar"):
        score_file("vg", path, ScoreOptions(corenlp_dir=tmp_path))


def test_spice_runs_the_official_command_from_a_folder_with_the_jars(tmp_path, monkeypatch):
    """The SPICE plumbing with a stand-in `java` (the real CoreNLP jars are not available here): the jar
    folder it runs in, the official command line, and how its output becomes the score."""
    from pixelrefer.eval import score_caption

    corenlp = tmp_path / "corenlp"
    corenlp.mkdir()
    for jar in score_caption.CORENLP_JARS:
        (corenlp / jar).write_bytes(b"jar")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "java"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "assert args[:4] == ['-jar', '-Xmx8G', 'spice-1.0.jar', 'in.json'], args\n"
        "assert args[4] == '-cache' and args[6:] == ['-out', 'out.json', '-subset', '-silent'], args\n"
        "assert os.path.isfile('spice-1.0.jar')\n"
        "assert open('lib/stanford-corenlp-3.6.0-models.jar').read() == 'jar'\n"
        "items = json.load(open('in.json'))\n"
        "scores = {'0': 0.5, '1': None}\n"
        "json.dump([{'image_id': i['image_id'], 'scores': {'All': {'f': scores[i['image_id']]}}} for i in items],\n"
        "          open('out.json', 'w'))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    average, items = score_caption._spice(
        {"0": ["a dog"], "1": ["a cat"]}, {"0": ["dog"], "1": ["cat"]}, corenlp
    )
    assert items[0] == 0.5 and items[1] != items[1]  # None becomes NaN, as pycocoevalcap's float_convert
    assert average != average  # and the mean of a NaN is NaN, as the official np.mean
