"""Provenance of a run: what it records, what counts as a difference, and the refusal naming it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pixelrefer.eval.provenance import differences, package_version, provenance, revision_of
from pixelrefer.eval.rows import SCHEMA, official_record
from pixelrefer.eval.run import check_resume
from pixelrefer.model.generation import GenerationSettings
from pixelrefer.runtime.errors import InputError


def record(annotations: Path, **changes) -> dict:
    fields = dict(
        benchmark="lvis",
        annotations=annotations,
        model="Alibaba-DAMO-Academy/PixelRefer-2B",
        revision=None,
        variant="full",
        dtype="bfloat16",
        engine="transformers",
        quantization="none",
        settings=GenerationSettings(max_new_tokens=64),
        masks_per_object=None,
        max_region_tokens=None,
    )
    fields.update(changes)
    return provenance(**fields)


def test_the_record_names_model_settings_and_the_annotation_files_digest(tmp_path: Path) -> None:
    annotations = tmp_path / "lvis.json"
    annotations.write_text("[]")
    made = record(annotations)
    assert made["annotations"] == {"file": "lvis.json", "sha256": hashlib.sha256(b"[]").hexdigest()}
    assert made["settings"] == {
        "max_new_tokens": 64,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "seed": 1234,
    }
    assert made["objects"] == {"masks_per_object": None, "max_region_tokens": None}
    assert made["package_version"] == package_version() != "unknown"


def test_revision_comes_from_the_hub_cache_path() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert revision_of(f"/home/u/.cache/huggingface/hub/models--A--B/snapshots/{sha}") == sha
    assert revision_of(f"C:\\hub\\snapshots\\{sha}\\") == sha
    assert revision_of("/data/my-checkpoint") is None and revision_of(None) is None


def test_differences_name_each_field_and_skip_what_is_not_known_before_loading(tmp_path: Path) -> None:
    annotations = tmp_path / "lvis.json"
    annotations.write_text("[]")
    earlier = record(annotations)
    now = record(annotations, model="./other", settings=GenerationSettings(max_new_tokens=32, seed=1))
    assert differences(earlier, now) == [
        "model: 'Alibaba-DAMO-Academy/PixelRefer-2B' -> './other'",
        "settings.max_new_tokens: 64 -> 32",
        "settings.seed: 1234 -> 1",
    ]
    before_loading = record(annotations, dtype=None, variant=None)
    assert differences(earlier, before_loading, known_only=True) == []
    assert differences(earlier, before_loading) == ["dtype: 'bfloat16' -> None", "variant: 'full' -> None"]


def test_a_changed_annotation_file_or_engine_refuses_the_resume(tmp_path: Path) -> None:
    annotations = tmp_path / "lvis.json"
    annotations.write_text("[]")
    earlier = record(annotations)
    out = tmp_path / "p.jsonl"
    row = {"schema": SCHEMA, "benchmark": "lvis", "id": "0", "index": 0, "provenance": earlier}
    out.write_text(json.dumps(row) + "\n")
    check_resume(out, earlier)  # the same run: fine
    annotations.write_text("[ ]")
    with pytest.raises(InputError, match=r"annotations\.sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        check_resume(out, record(annotations))
    with pytest.raises(InputError, match="engine: 'transformers' -> 'vllm'"):
        check_resume(out, {**earlier, "engine": "vllm"})


def test_official_record_keys_in_the_official_order() -> None:
    row = {
        "benchmark": "ferret",
        "prediction": "It holds cups.",
        "reference": {"question_id": 3, "image": "a.jpg", "category": "reason", "text": "What is <region>?"},
    }
    assert list(official_record(row).items()) == [
        ("question_id", 3),
        ("image", "a.jpg"),
        ("pred", "It holds cups."),
        ("category", "reason"),
    ]
