"""`python -m pixelrefer eval run` end to end on the shared fixture checkpoints (full and Lite), then
`eval score`: prediction rows, the official records, provenance and the refused resume, `--check`.

Predictions are checked against the model called by hand with the official call (frames, masks and
prompt built here from the fixture clip, not by the eval code), so the readers' masks and the prompt are
what reaches the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrefer.cli import main
from pixelrefer.eval.rows import read_rows
from pixelrefer.media.video import load_frame_folder
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.model.inference import PixelRefer, Video

from . import eval_data as data
from .conftest import fixtures_root

FULL = fixtures_root() / "pixelrefer-tiny" / "checkpoint"
LITE = fixtures_root() / "pixelrefer-lite-tiny" / "checkpoint"
TOKENS = 5
QUESTION_0 = (
    "What is the relationship between <object0><region> and <object1><region>? (A) near (B) far (C) touching "
    "(D) none. Answer with the option's letter from the given choices directly."
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-run")
    return {
        "root": root,
        "media": data.media_root(root / "media"),
        "q": data.videorefer_q(root / "q.json"),
        "q-all": data.videorefer_q(root / "q-all.json", allframe=True),
    }


def run(bench: dict[str, Path], out: Path, *extra: str, model: Path = FULL, file: str = "q") -> int:
    return main(
        [
            "eval",
            "run",
            "videorefer-q",
            "--annotations",
            str(bench[file]),
            "--media-root",
            str(bench["media"]),
            "--model",
            str(model),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-new-tokens",
            str(TOKENS),
            *extra,
        ]
    )


def frame(index: int) -> np.ndarray:
    return np.asarray(Image.open(data.CLIP / "frames" / f"frame_{index:03d}.png").convert("RGB"))


@pytest.fixture(scope="module")
def full_run(bench: dict[str, Path]) -> Path:
    out = bench["root"] / "full" / "q.jsonl"
    assert run(bench, out, "--record-template") == 0
    return out


def test_rows_carry_reference_prompt_prediction_and_provenance(full_run: Path) -> None:
    rows = list(read_rows(full_run))
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    first = rows[0]
    assert first["benchmark"] == "videorefer-q" and first["index"] == 0 and first["error"] is None
    assert first["reference"]["Answer"] == "(B) far" and first["reference"]["type"] == "Relationship"
    assert first["prompt"] == QUESTION_0
    assert first["finish_reason"] in ("eos", "length") and first["seconds"] > 0
    # Three frames sampled at 1 fps from the 3-fps folder, then both objects' 32 region tokens.
    assert first["template"].startswith("<|im_start|>user\nTime 0.3s:<image>x")
    assert "between <object0>[<REGION>x32] and <object1>[<REGION>x32]?" in first["template"]
    provenance = first["provenance"]
    assert provenance["model"] == str(FULL) and provenance["variant"] == "full"
    assert provenance["dtype"] == "float32" and provenance["engine"] == "transformers"
    assert provenance["quantization"] == "none" and provenance["settings"]["max_new_tokens"] == TOKENS
    assert provenance["annotations"]["file"] == "q.json" and len(provenance["annotations"]["sha256"]) == 64
    assert provenance["package_version"] and provenance["revision"] is None
    assert all(r["provenance"] == provenance for r in rows)


def test_prediction_is_the_official_call_made_by_hand(full_run: Path) -> None:
    model = PixelRefer.from_pretrained(str(FULL), device="cpu", dtype="float32")
    clip = load_frame_folder(data.CLIP / "frames", fps=1.0, max_frames=768)
    video = Video(list(clip.frames), list(clip.timestamps), {5: frame(5)}, 3.0)
    result = model.generate(
        regions=[{5: data.clip_mask(0, 5)}, {5: data.clip_mask(1, 5)}],
        instruction=QUESTION_0,
        video=video,
        settings=GenerationSettings(max_new_tokens=TOKENS),
    )
    assert next(iter(read_rows(full_run)))["prediction"] == result.text


def test_official_records_are_what_the_official_script_writes(full_run: Path) -> None:
    official = full_run.with_name("q_0.json")
    records = [json.loads(line) for line in official.read_text().splitlines()]
    rows = list(read_rows(full_run))
    assert [list(r) for r in records] == [["video", "Answer", "pred", "type"]] * 3
    assert [r["pred"] for r in records] == [r["prediction"] for r in rows]
    assert records[1] == {
        "video": "clip_b.mp4",
        "Answer": "(A) down",
        "pred": rows[1]["prediction"],
        "type": "Future Prediction",
    }


def test_resume_skips_answered_items_and_refuses_other_settings(
    bench: dict[str, Path], full_run: Path, capsys: pytest.CaptureFixture
) -> None:
    out = full_run.with_name("resume.jsonl")
    shutil.copy(full_run, out)
    capsys.readouterr()
    assert run(bench, out, "--record-template") == 0
    assert "0 answered, 0 errors, 3 already done" in capsys.readouterr().err
    before = out.read_text()
    assert run(bench, out, "--max-new-tokens", "3", "--seed", "7") == 1
    message = capsys.readouterr().err
    assert "holds answers of another run" in message
    assert "settings.max_new_tokens: 5 -> 3" in message and "settings.seed: 1234 -> 7" in message
    assert "--force" in message and out.read_text() == before
    assert run(bench, out, "--max-new-tokens", "3", "--force") == 0
    assert len(list(read_rows(out))) == 3  # answered ids are still skipped; --force only allows the mix


def test_lite_uses_every_annotated_mask_and_the_cap(
    bench: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    out = bench["root"] / "lite" / "q.jsonl"
    argv = ("--record-template", "--masks-per-object", "2", "--shard", "0/3")
    assert run(bench, out, *argv, model=LITE, file="q-all") == 0
    rows = list(read_rows(out))
    assert [r["id"] for r in rows] == ["0"]  # shard 0 of 3: items 0, 3, 6, ...
    assert rows[0]["provenance"]["variant"] == "lite"
    assert rows[0]["provenance"]["objects"] == {"masks_per_object": 2, "max_region_tokens": None}
    # Object masks on frames 1 and 7 of the 3-fps folder (5 dropped by the cap), no frame tokens.
    assert "<object0>[Time 0.3:<REGION>x32,Time 2.3:<REGION>x32]" in rows[0]["template"]
    assert "<image>" not in rows[0]["template"]
    model = PixelRefer.from_pretrained(str(LITE), device="cpu", dtype="float32")
    video = Video([], [], {1: frame(1), 7: frame(7)}, 3.0)
    result = model.generate(
        regions=[{f: data.clip_mask(k, f) for f in (1, 7)} for k in (0, 1)],
        instruction=QUESTION_0,
        video=video,
        settings=GenerationSettings(max_new_tokens=TOKENS),
    )
    assert rows[0]["prediction"] == result.text


def test_eval_score_reads_the_rows(full_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", "score", "videorefer-q", str(full_run), "--json", "-"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["counts"]["rows"] == 3 and scored["counts"]["errors"] == 0


def test_check_reads_no_weights_and_reports_problems(
    bench: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_only = tmp_path / "ckpt"
    config_only.mkdir()
    shutil.copy(FULL / "config.json", config_only)  # no weights: --check must not load a model
    records = json.loads(bench["q"].read_text())
    records[1]["video"] = "missing.mp4"
    broken = tmp_path / "q.json"
    broken.write_text(json.dumps(records))
    argv = ["eval", "run", "videorefer-q", "--annotations", str(broken), "--media-root", str(bench["media"])]
    argv += ["--model", str(config_only), "--out", str(tmp_path / "o.jsonl"), "--check"]
    capsys.readouterr()
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "item 1: the video missing.mp4 is not under" in err and "2 items ready, 1 with problems" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert main([*argv, "--limit", "1"]) == 0  # the first item only: the broken one is not looked at
    assert "1 items ready, 0 with problems" in capsys.readouterr().err


def test_sampling_flags_without_sample_are_refused(bench: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert run(bench, tmp_path / "o.jsonl", "--temperature", "0.7") == 1
    assert "--temperature only applies when sampling: add --sample" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_bad_item_is_an_error_row_left_out_of_the_official_records(
    bench: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = json.loads(bench["q"].read_text())
    records[0]["annotation"][1]["5"]["segmentation"]["size"] = [10, 10]  # not the frame's size
    broken = tmp_path / "q.json"
    broken.write_text(json.dumps(records))
    out = tmp_path / "q.jsonl"
    capsys.readouterr()
    assert run({**bench, "q": broken}, out) == 3
    err = capsys.readouterr().err
    assert "item 0: the mask is 10x10 but its frame is 176x132" in err
    assert "1 items with errors left out" in err
    rows = {r["id"]: r for r in read_rows(out)}
    assert rows["0"]["finish_reason"] == "error" and rows["0"]["prediction"] == ""
    assert "10x10" in rows["0"]["error"] and rows["1"]["error"] is None
    official = [json.loads(line) for line in out.with_name("q_0.json").read_text().splitlines()]
    assert [r["video"] for r in official] == ["clip_b.mp4", "clip_a"]


# Each reader once through a model (refl4 and lvis read as refl4-clair and paco do; their prompts are pinned
# in test_eval_prompts.py).
CASES = [
    ("videorefer-d", "d", FULL),
    ("hcstvg", "hcstvg", FULL),
    ("hcstvg", "hcstvg-lite", LITE),
    ("paco", "lvis", LITE),
    ("dlc", "dlc", FULL),
    ("ferret", "ferret", LITE),
    ("vg", "vg", FULL),
    ("refl4-clair", "refl4", FULL),
]


@pytest.fixture(scope="module")
def models() -> dict[Path, PixelRefer]:
    return {
        path: PixelRefer.from_pretrained(str(path), device="cpu", dtype="float32") for path in (FULL, LITE)
    }


@pytest.mark.parametrize(("name", "file", "checkpoint"), CASES)
def test_every_benchmark_runs_through_the_model_into_official_records(
    name: str,
    file: str,
    checkpoint: Path,
    models: dict[Path, PixelRefer],
    tmp_path: Path,
    bench: dict[str, Path],
) -> None:
    from pixelrefer.eval.benchmarks import read_benchmark
    from pixelrefer.eval.provenance import provenance
    from pixelrefer.eval.rows import OFFICIAL_KEYS
    from pixelrefer.eval.run import plan_items, run_eval, write_official

    writers = {
        "d": data.videorefer_d,
        "hcstvg": data.hcstvg_full,
        "hcstvg-lite": data.hcstvg_lite,
        "lvis": lambda p: data.osprey(p, ("cat", "dog:ear", "bird")),
        "dlc": data.dlc,
        "ferret": data.ferret,
        "vg": data.vg,
        "refl4": data.refl4,
    }
    annotations = writers[file](tmp_path / f"{file}.json")
    model = models[checkpoint]
    root = bench["media"] / "dlc" if name == "dlc" else bench["media"]
    plans = plan_items(read_benchmark(name, annotations), name, model.variant, root)
    assert plans and all(not p.problem for p in plans)
    settings = GenerationSettings(max_new_tokens=3)
    record = provenance(
        benchmark=name,
        annotations=annotations,
        model=str(checkpoint),
        revision=None,
        variant=model.variant,
        dtype="float32",
        engine="transformers",
        quantization="none",
        settings=settings,
        masks_per_object=None,
        max_region_tokens=None,
    )
    out = tmp_path / "p.jsonl"
    summary = run_eval(model, name, plans, out, provenance=record, settings=settings, progress=None)
    assert (summary.answered, summary.failed) == (len(plans), 0)
    written, left_out = write_official(out, tmp_path / "p_0.json")
    records = [json.loads(line) for line in (tmp_path / "p_0.json").read_text().splitlines()]
    assert (written, left_out) == (len(plans), 0)
    assert all(tuple(r) == OFFICIAL_KEYS[name] for r in records)
    rows = sorted(read_rows(out), key=lambda r: r["index"])
    assert [r["pred"] for r in records] == [r["prediction"] for r in rows]
    assert all(r["prompt"] == p.prompt for r, p in zip(rows, plans, strict=True))
