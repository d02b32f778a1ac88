"""What produced a run's predictions, recorded on every row, and the refusal to mix runs in one file.

A predictions file holds one run: appending rows made with another model, dtype, engine, setting or
annotation file would make its score meaningless without a word. `differences` names what differs;
the runner refuses to resume on any difference unless told to mix (`--force`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ..model.generation import GenerationSettings

__all__ = ["differences", "file_digest", "package_version", "provenance", "revision_of"]


def package_version() -> str:
    """This package's version: installed metadata, else the pyproject.toml of a source checkout."""
    try:
        return metadata.version("pixelrefer")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
            if found:
                return found[1]
    return "unknown"


def revision_of(folder: str | Path | None) -> str | None:
    """The hub commit of a checkpoint loaded from the hub cache (`.../snapshots/<sha>/`), else None."""
    if folder is None:
        return None
    found = re.search(r"[\\/]snapshots[\\/]([0-9a-f]{40})(?:[\\/]|$)", str(folder))
    return found[1] if found else None


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (the annotation file a run answered)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(
    *,
    benchmark: str,
    annotations: str | Path,
    model: str,
    revision: str | None,
    variant: str | None,
    dtype: str | None,
    engine: str,
    quantization: str | None,
    settings: GenerationSettings,
    masks_per_object: int | None,
    max_region_tokens: int | None,
) -> dict[str, Any]:
    """The provenance record of a run (`variant` and `dtype` are None until the model has loaded)."""
    return {
        "benchmark": benchmark,
        "annotations": {"file": Path(annotations).name, "sha256": file_digest(annotations)},
        "model": model,
        "revision": revision,
        "variant": variant,
        "dtype": dtype,
        "engine": engine,
        "quantization": quantization or "none",
        "settings": asdict(settings),
        "objects": {"masks_per_object": masks_per_object, "max_region_tokens": max_region_tokens},
        "package_version": package_version(),
    }


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(earlier: Mapping[str, Any], now: Mapping[str, Any], *, known_only: bool = False) -> list[str]:
    """'key: earlier -> now' for every field that differs. With `known_only`, fields still None in `now`
    (not known before the model loads) are not compared."""
    before, after = _flatten(earlier), _flatten(now)
    out = []
    for key in sorted(set(before) | set(after)):
        if known_only and after.get(key) is None and key in ("variant", "dtype", "revision"):
            continue
        if before.get(key) != after.get(key):
            out.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return out
