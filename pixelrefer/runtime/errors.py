"""The two kinds of trouble the whole package tells apart: the caller's input is wrong, or work was stopped.

`InputError` is what a visitor, an API client or a CLI user may read: its message names the problem in their
terms. Anything else escaping a handler is a bug, shown as a generic apology and logged with its traceback.
`Stopped` is the common base of every "the work was ended on purpose" signal (cancel, stop, time budget).
"""

from __future__ import annotations


class InputError(ValueError):
    """The caller's input cannot be used; the message is written for them and is safe to show."""


class Stopped(Exception):
    """Work ended on purpose before it finished (a cancel, a stop, a time budget)."""
