"""The prediction row: what `eval run` writes (one JSON object per line) and `eval score` reads.

One row per benchmark item, in the annotation file's order within a shard:

    {"schema": "pixelrefer.eval/1",
     "benchmark": "videorefer-q",          # a name of BENCHMARKS
     "id": "12",                           # stable item id within the benchmark (see each reader)
     "index": 12,                          # position of the item in the official scripts' item order
     "reference": {...},                   # the benchmark's reference fields, keys as in the official records
     "prompt": "...",                      # the instruction string sent, official `<region>` syntax
     "template": "...",                    # only with --record-template: the rendered chat template
     "prediction": "...",                  # the model's answer ("" when error is set)
     "finish_reason": "eos",               # eos | length | timeout | error
     "error": null,                        # or the reason the item could not be answered
     "seconds": 1.234,                     # wall time of this item (reading media included)
     "provenance": {...}}                  # the run's provenance, identical on every row of a run

`reference` holds the fields the official inference scripts copy into their records (their key names:
"Answer", "type", "video", "image", "region_num", "question_id", "category", "id") plus the item's
own question data where there is one ("Question", "options" for VideoRefer-Bench-Q; "text" for Ferret).

`provenance` keys (`provenance.py`): benchmark, annotations (the file's name and SHA-256), model,
revision, variant, dtype, engine, quantization, settings (max_new_tokens, do_sample, temperature, top_p,
seed), objects (masks_per_object, max_region_tokens), package_version. Resuming a run whose provenance
differs is refused.

`official_record(row)` gives the record the official inference script of that benchmark writes, so the
official scorers read our predictions unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..runtime.jsonl import read_jsonl

__all__ = [
    "FINISH_REASONS",
    "OFFICIAL_KEYS",
    "SCHEMA",
    "official_record",
    "read_rows",
]

SCHEMA = "pixelrefer.eval/1"
FINISH_REASONS = ("eos", "length", "timeout", "error")

OFFICIAL_KEYS: dict[str, tuple[str, ...]] = {
    "videorefer-q": ("video", "Answer", "pred", "type"),
    "videorefer-d": ("video", "Answer", "pred"),
    "hcstvg": ("video", "Answer", "pred"),
    "lvis": ("image", "Answer", "pred", "region_num"),
    "paco": ("image", "Answer", "pred", "region_num"),
    "vg": ("image", "Answer", "pred"),
    "refl4": ("image", "Answer", "pred"),
    "refl4-clair": ("image", "Answer", "pred"),
    "dlc": ("id", "image", "pred"),
    "ferret": ("question_id", "image", "pred", "category"),
}
"""The keys (in order) of each official inference script's output record; "pred" is the prediction."""


def official_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The official script's record for one of our rows (the prediction under "pred")."""
    reference = row.get("reference") or {}
    record: dict[str, Any] = {}
    for key in OFFICIAL_KEYS[row["benchmark"]]:
        record[key] = row.get("prediction", "") if key == "pred" else reference.get(key)
    return record


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete row of a predictions file (a line cut by an interrupted run is skipped)."""
    return (row for row in read_jsonl(path) if row.get("schema") == SCHEMA)
