"""Short captions (VG, HC-STVG, Ref-L4): COCO caption metrics through pycocoevalcap, as the official scorer.

The official pipeline (`change2eval_format.py` then `eval_cococap.py`) gives item i the image id "i", keeps
the first 100 space-separated words of each prediction, PTB-tokenises references and predictions, and runs
BLEU-1..4, METEOR, ROUGE-L, CIDEr and SPICE through `COCOEvalCap.evaluate`. Here the same scorer classes run
in the same order on the same dictionaries, with one difference: SPICE needs Stanford CoreNLP 3.6.0's two
jars, which pycocoevalcap downloads on first use and no package index carries, so SPICE runs only when
`--corenlp-dir` holds them; otherwise the table says "SPICE: not run". The tokenizer and METEOR start a Java
runtime (Debian's `default-jre-headless`).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..runtime.errors import InputError
from .score import Prediction, ScoreOptions, ScoreResult

__all__ = ["CORENLP_JARS", "caption_metrics", "coco_inputs", "score_captions"]

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_WORDS_KEPT = 100
_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


def coco_inputs(
    predictions: list[str], references: list[list[str]]
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(gts, res) as `COCOEvalCap.evaluate` builds them from the official `_gt.json`/`_res.json` files."""
    gts: dict[str, list[dict]] = {}
    res: dict[str, list[dict]] = {}
    for i, (prediction, captions) in enumerate(zip(predictions, references, strict=True)):
        key = str(i)
        gts[key] = [{"image_id": key, "id": key, "caption": caption} for caption in captions]
        res[key] = [{"image_id": key, "caption": " ".join(prediction.split(" ")[:_WORDS_KEPT]), "id": i + 1}]
    return gts, res


def _java() -> None:
    if shutil.which("java") is None:
        raise InputError(
            "caption metrics need a Java runtime (pycocoevalcap's tokenizer and METEOR): "
            "apt-get install default-jre-headless"
        )


def _check_corenlp(corenlp_dir: Path) -> None:
    missing = [jar for jar in CORENLP_JARS if not (corenlp_dir / jar).is_file()]
    if missing:
        raise InputError(f"--corenlp-dir {corenlp_dir} lacks {', '.join(missing)} (Stanford CoreNLP 3.6.0)")


def _spice(gts: dict[str, list[str]], res: dict[str, list[str]], corenlp_dir: Path) -> tuple[float, list]:
    """SPICE as pycocoevalcap's `Spice.compute_score`, run from a folder that holds CoreNLP's jars."""
    import numpy as np
    from pycocoevalcap.spice import spice as spice_module

    package = Path(spice_module.__file__).parent
    with tempfile.TemporaryDirectory(prefix="spice-") as folder:
        work = Path(folder)
        (work / "lib").mkdir()
        (work / spice_module.SPICE_JAR).symlink_to(package / spice_module.SPICE_JAR)
        for jar in (package / "lib").iterdir():
            (work / "lib" / jar.name).symlink_to(jar)
        for jar in CORENLP_JARS:
            (work / "lib" / jar).symlink_to((corenlp_dir / jar).resolve())
        keys = sorted(gts)
        (work / "in.json").write_text(
            json.dumps([{"image_id": k, "test": res[k][0], "refs": gts[k]} for k in keys]), encoding="utf-8"
        )
        command = ["java", "-jar", "-Xmx8G", spice_module.SPICE_JAR, "in.json"]
        command += ["-cache", str(work / "cache"), "-out", "out.json", "-subset", "-silent"]
        subprocess.run(command, cwd=work, check=True)
        results = json.loads((work / "out.json").read_text(encoding="utf-8"))

    def number(value: Any) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    by_id = {item["image_id"]: item["scores"] for item in results}
    average = float(np.mean(np.array([number(item["scores"]["All"]["f"]) for item in results])))
    return average, [number(by_id[k]["All"]["f"]) for k in keys]


def caption_metrics(
    predictions: list[str], references: list[list[str]], corenlp_dir: Path | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(corpus metrics, per-item metrics) in `COCOEvalCap`'s names; SPICE only with `corenlp_dir`."""
    _java()
    if corenlp_dir is not None:
        _check_corenlp(Path(corenlp_dir))
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = coco_inputs(predictions, references)
    tokenizer = PTBTokenizer()
    gts_tokens, res_tokens = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    corpus: dict[str, float] = {}
    items: dict[str, list[float]] = {}
    chatter = io.StringIO()  # BLEU prints its counts to stdout, which `--json -` keeps for the JSON alone
    for scorer, names in (
        (Bleu(4), _ORDER[:4]),
        (Meteor(), ("METEOR",)),
        (Rouge(), ("ROUGE_L",)),
        (Cider(), ("CIDEr",)),
    ):
        with contextlib.redirect_stdout(chatter):
            score, scores = scorer.compute_score(gts_tokens, res_tokens)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, value, values in zip(names, score, scores, strict=True):
            corpus[name] = float(value)
            items[name] = [float(v) for v in values]
    if corenlp_dir is not None:
        corpus["SPICE"], items["SPICE"] = _spice(gts_tokens, res_tokens, Path(corenlp_dir))
    return corpus, items


def _references(prediction: Prediction) -> list[str]:
    answer = prediction.reference.get("Answer")
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer):
        return answer
    raise InputError(f"item {prediction.id}: a caption row needs the reference 'Answer' (text)")


def caption_result(
    title: str,
    predictions: list[Prediction],
    texts: list[str],
    references: list[list[str]],
    corenlp_dir: Path | None,
) -> ScoreResult:
    """Run the metrics and shape the table (x100, as the paper) and JSON (fractions, as the official)."""
    corpus, items = caption_metrics(texts, references, corenlp_dir)
    names = [n for n in _ORDER if n in corpus]
    header = [*names] + ([] if "SPICE" in corpus else ["SPICE"])
    values = [f"{100 * corpus[n]:.1f}" for n in names] + ([] if "SPICE" in corpus else ["not run"])
    widths = [max(len(h), len(v)) for h, v in zip(header, values, strict=True)]
    table = [
        f"{title}: COCO caption metrics, x100",
        "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)),
    ]
    if "SPICE" not in corpus:
        table.append("SPICE: not run (needs Stanford CoreNLP 3.6.0's jars: --corenlp-dir DIR)")
    per_item = {
        p.id: {"score": items["CIDEr"][i], **{n: items[n][i] for n in names}}
        for i, p in enumerate(predictions)
    }
    return ScoreResult(
        benchmark="",
        metrics={"overall": corpus, "spice": "SPICE" in corpus},
        table="\n".join(table),
        per_item=per_item,
    )


def score_captions(predictions: list[Prediction], options: ScoreOptions) -> ScoreResult:
    """VG and HC-STVG: each prediction against its row's reference caption."""
    return caption_result(
        "Region captions",
        predictions,
        [p.text or "" for p in predictions],
        [_references(p) for p in predictions],
        options.corenlp_dir,
    )
