"""Reading the JSONL files that runs append to (`batch`, `eval run`): a run killed mid-row leaves a cut line,
which readers skip, so that the next run resumes from every complete row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete row (a JSON object) of a JSONL file; a line cut by an interrupted run is skipped."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row
