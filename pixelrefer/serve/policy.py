"""What a visitor or an API client is told when a handler fails: one rule, one wrapper.

The caller's own mistakes (`pixelrefer.runtime.errors.InputError`) are shown with their message, scrubbed of
server paths and tokens; running out of memory frees what the service can and says so; anything else is a
bug, logged with its traceback and shown as a short apology that names no detail. A numpy or torch
`ValueError` is such a bug: only `InputError` carries a message written for the caller.

The named API raises the result as a `gr.Error` (the client gets it as an error); the page shows it as a toast
and leaves every output as it was (or as `restore` says), so no component is left in Gradio's error state.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..runtime.errors import InputError
from ..runtime.redact import scrub
from ..segment.base import TrackingCancelled
from .service import Service

__all__ = ["SHOWN", "Policy", "guard"]

_log = logging.getLogger("pixelrefer.app")

SHOWN: tuple[type[BaseException], ...] = (InputError, TrackingCancelled)
"""Exceptions whose message the caller may read: the caller's input is wrong, or the visitor cancelled the
tracking (its message says what was kept)."""

OUT_OF_MEMORY = "The server ran out of memory for this request; try a smaller clip or fewer tokens."


def guard(fn: Callable, settle: Callable[[BaseException, tuple], Any]) -> Callable:
    """`fn` (a plain function or a generator function) with every exception it raises given to
    `settle(exc, args)`; a plain `fn` returns, and a streaming one yields, what `settle` returns."""

    if not inspect.isgeneratorfunction(inspect.unwrap(fn)):

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                return settle(exc, args)

        return plain

    @functools.wraps(fn)
    def streaming(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except Exception as exc:
            yield settle(exc, args)

    return streaming


class Policy:
    """The error rule for one service (running out of memory asks it to free what it can)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def explain(self, exc: BaseException) -> gr.Error:
        """What the caller is told about a problem: the library's own message, or a short apology."""
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, SHOWN):
            return gr.Error(scrub(str(exc)), print_exception=False)
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            self.service.release_memory()
            return gr.Error(OUT_OF_MEMORY)
        _log.error("Unexpected error in an event", exc_info=exc)
        return gr.Error(f"Something went wrong ({type(exc).__name__}); please try again.")

    def for_api(self, fn: Callable) -> Callable:
        """For the named API: a problem is raised as a `gr.Error` with what `explain` says."""

        def settle(exc: BaseException, args: tuple):
            shown = self.explain(exc)
            if shown is exc:
                raise exc
            raise shown from exc

        return guard(fn, settle)

    def for_page(self, restore: Callable[..., Any] | None = None) -> Callable[[Callable], Callable]:
        """For the page's own events: a problem becomes a toast (its tags escaped, so `<object9>` shows) and
        every output keeps its last good value. An event whose input the browser already changed (an upload)
        gives `restore(*args, message=...)` instead of no change."""

        def settle(exc: BaseException, args: tuple):
            message = self.explain(exc).message
            gr.Warning(html.escape(message))
            return gr.skip() if restore is None else restore(*args, message=message)

        return lambda fn: guard(fn, settle)
