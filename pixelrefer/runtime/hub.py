"""Where weights come from: a local folder or a Hugging Face hub id, with one clear error when neither works.

Every loader in the package (PixelRefer checkpoints, the VL3-SigLIP-NaViT configs, SAM 2.1) resolves its
source here, so offline mode, tokens and the cache behave the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

__all__ = ["WeightsUnavailable", "is_hub_id", "is_offline", "resolve_source"]


class WeightsUnavailable(RuntimeError):
    """A source could not be turned into local files: the message says which source and what to do."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"Cannot load '{source}': {reason}")


def is_offline() -> bool:
    """True when the environment forbids hub access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def is_hub_id(source: str) -> bool:
    """Shaped like `owner/name` (and not a relative or home path)."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def resolve_source(
    source: str | os.PathLike,
    *,
    allow_patterns: Sequence[str] | None = None,
    base_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path:
    """Return a local folder holding `source`.

    A path that exists is used as is (a relative path is taken from `base_dir` when given, else from the
    working directory). Anything else shaped like `owner/name` is fetched through the Hugging Face cache;
    `HF_HUB_OFFLINE` and `HF_TOKEN` are honoured by huggingface_hub itself. Failures become one
    `WeightsUnavailable` naming the source and the fix.
    """
    text = os.fspath(source)
    given = Path(text).expanduser()
    # A relative name inside a checkpoint means that checkpoint's folder, never the working directory.
    candidates = [Path(base_dir) / given] if base_dir is not None and not given.is_absolute() else [given]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
        if path.exists():
            raise WeightsUnavailable(text, "it is a file, not a folder; pass the checkpoint folder")
    if not is_hub_id(text):
        raise WeightsUnavailable(text, "no such folder, and it is not a hub id of the form 'owner/name'")
    offline = is_offline()
    try:
        return Path(
            snapshot_download(
                text,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
                local_files_only=offline,
                token=token or os.environ.get("HF_TOKEN") or None,
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        if offline:
            raise WeightsUnavailable(
                text,
                "offline mode (HF_HUB_OFFLINE=1) and it is not in the Hugging Face cache; "
                "download it once with network access, or pass a local folder",
            ) from exc
        raise WeightsUnavailable(
            text,
            "the hub could not be reached and it is not cached; check the network or pass a local folder",
        ) from exc
    except GatedRepoError as exc:
        raise WeightsUnavailable(
            text, "the repository is gated; set HF_TOKEN to a token with access"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightsUnavailable(
            text, "no such repository on the hub (or it is private: set HF_TOKEN)"
        ) from exc
    except HFValidationError as exc:
        raise WeightsUnavailable(text, "not a valid hub id") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailable(
            text,
            "the hub could not be reached and it is not cached; check the network or pass a local folder",
        ) from exc
