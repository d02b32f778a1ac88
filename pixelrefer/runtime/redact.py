"""Scrubbing messages before a visitor sees them: no server paths, no access tokens.

Errors are written for whoever runs the code, so they may name a checkpoint folder, a temporary upload or
the token in a URL. A public page must show none of that: `scrub` keeps a path's base name (which is what
the visitor uploaded, or the name of the model folder) and masks Hugging Face tokens. It is applied where
messages leave the server (the app's error handler, the banner); logs keep the full text.
"""

from __future__ import annotations

import re

__all__ = ["scrub"]

_TOKEN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{8,}")
"""Hugging Face access tokens (`hf_` and 30-odd letters and digits); `HF_HUB_OFFLINE` and `hf_hub` are not."""

_PART = r"[^\s/'\"`<>|()\[\],;]"
_POSIX_PATH = re.compile(
    rf"(?<![\w.:/~\\<-])(?:(?:~|\.{{1,2}})/(?:{_PART}+/)*{_PART}*|/(?:{_PART}+/)+{_PART}*)"
)
"""A path: ~/, ./ or ../ and what follows, or an absolute path of at least two components (`/etc/passwd`,
not an API route such as `/open`); never a slash inside a word, a URL, a fraction or a closing tag."""

_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\s\\'\"`<>|()\[\],;]+\\)*[^\s\\'\"`<>|()\[\],;]*")


def _base_name(match: re.Match[str]) -> str:
    """The last non-empty component of a matched path, keeping a sentence's trailing full stop or colon."""
    text = match.group(0)
    parts = [part for part in re.split(r"[\\/]", text) if part and part not in {"~", ".", ".."}]
    return parts[-1] if parts else text


def scrub(message: str) -> str:
    """`message` with every absolute path replaced by its base name and every `hf_...` token by `hf_***`."""
    text = _TOKEN.sub("hf_***", message)
    text = _WINDOWS_PATH.sub(_base_name, text)
    return _POSIX_PATH.sub(_base_name, text)
