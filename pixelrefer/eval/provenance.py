"""What produced a run's predictions, recorded on every row, and the refusal to mix runs in one file.

A predictions file holds one run: appending rows made with another model, dtype, engine, setting or
annotation file would make its score meaningless without a word. `differences` names what differs;
`refuse_mixed` refuses to resume on any difference, for `eval run` and `batch` alike, unless told to mix
(`--force`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.generation import GenerationSettings
from ..runtime.errors import InputError

if TYPE_CHECKING:
    from ..model.inference import PixelRefer

__all__ = [
    "differences",
    "file_digest",
    "loaded_fields",
    "model_provenance",
    "package_version",
    "provenance",
    "refuse_mixed",
    "requested_fields",
    "revision_of",
]


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


def loaded_fields(model: PixelRefer) -> dict[str, Any]:
    """The provenance fields known once the model has loaded: its hub revision, variant and dtype."""
    return {
        "revision": revision_of(model.folder),
        "variant": model.variant,
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def requested_fields(dtype: str, variant: str | None = None) -> dict[str, Any]:
    """The same fields before loading: what the command line asked for ("auto" dtype: not known yet)."""
    return {"revision": None, "variant": variant, "dtype": None if dtype == "auto" else dtype}


def model_provenance(
    *,
    model: str,
    revision: str | None,
    variant: str | None,
    dtype: str | None,
    engine: str,
    quantization: str | None,
    settings: GenerationSettings,
) -> dict[str, Any]:
    """What answered (`variant` and `dtype` are None until the model has loaded): `batch` records this."""
    return {
        "model": model,
        "revision": revision,
        "variant": variant,
        "dtype": dtype,
        "engine": engine,
        "quantization": quantization or "none",
        "settings": asdict(settings),
        "package_version": package_version(),
    }


def provenance(
    *,
    benchmark: str,
    annotations: str | Path,
    masks_per_object: int | None,
    max_region_tokens: int | None,
    **answered: Any,
) -> dict[str, Any]:
    """An `eval run`'s provenance: the benchmark, its annotation file's digest, `model_provenance(**answered)`
    and Lite's mask choice."""
    return {
        "benchmark": benchmark,
        "annotations": {"file": Path(annotations).name, "sha256": file_digest(annotations)},
        **model_provenance(**answered),
        "objects": {"masks_per_object": masks_per_object, "max_region_tokens": max_region_tokens},
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


def refuse_mixed(
    earlier: Iterable[Mapping[str, Any]], now: Mapping[str, Any], name: str, *, known_only: bool = False
) -> None:
    """InputError naming what differs when any `earlier` provenance (of the rows already in the file
    `name`) is not `now`'s: appending would mix two runs in one file."""
    seen: list[Mapping[str, Any]] = []
    for record in earlier:
        if record in seen:
            continue
        seen.append(record)
        diff = differences(record, now, known_only=known_only)
        if diff:
            raise InputError(
                f"{name} holds answers of another run ({'; '.join(diff)}); use another --out, "
                "or --force to add these to it"
            )
