"""A visitor's work found again after a reload: workspaces held by a browser token, not by one Gradio session.

Gradio keeps a value per session (one page load), so a reloaded tab starts a new session and, alone, an empty
page. The page keeps a token in the browser (`gr.BrowserState`: localStorage, encrypted with a secret made
when the server starts, so a restart invalidates every token) and shows it at every page load; the server
keeps the workspace under the token's SHA-256 digest and hands it to the new session, the old session's
state is emptied (so a reload counts once against the per-client and server-wide session caps). The token is
32 random bytes: it cannot be guessed, and one the server does not know (forged, expired, from before a
restart) gets a fresh, empty workspace; it is as secret as a session cookie.

One workspace is written by one tab at a time. A second tab of the same browser shares the token, so it takes
the work over (the page shows it there) and the first tab's next action is refused with a message that says
where the work went and how to take it back (reload). Nothing is written by two tabs unnoticed.

A workspace idle for `ttl_s` (the documented session lifetime) is closed, its caches and files deleted, even
if the tab that held it was closed and Gradio would keep its session for an hour.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradio.context import LocalContext

from ..runtime.errors import InputError
from .workspace import Workspace

__all__ = ["MovedAway", "Visitors", "TOKEN_PATTERN_LENGTH"]

TOKEN_BYTES = 32
TOKEN_PATTERN_LENGTH = 43
"""Length of a token as `secrets.token_urlsafe(32)` writes it; anything else is not looked up."""
_REMEMBERED = 4096
"""Sessions remembered as waiting for their first workspace, or as having lost theirs to another tab."""


class MovedAway(InputError):
    """This tab's work is now shown by another tab (or this tab was reloaded elsewhere)."""

    def __init__(self) -> None:
        super().__init__(
            "Your work is open in another tab of this browser (or this page was reloaded there); "
            "reload this page to continue here."
        )


@dataclass
class _Visit:
    ws: Workspace
    session: str
    """The Gradio session (page load) that shows and writes the workspace now."""
    used: float
    """When it was last attached or acted on (`time.time()`)."""


def current_session() -> str | None:
    """The Gradio session of the event being handled (None outside an event, e.g. a test calling a handler)."""
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or None


def _digest(token: object) -> str | None:
    if not isinstance(token, str) or len(token) != TOKEN_PATTERN_LENGTH:
        return None
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class Visitors:
    """The page's workspaces by token. `state` is the page's `gr.State` that holds a session's workspace."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self.state_id: int | None = None
        self.blocks: Any = None
        self._lock = threading.RLock()
        self._visits: dict[str, _Visit] = {}
        self._waiting: OrderedDict[str, str] = OrderedDict()
        """Session -> digest of the token it showed or was given at load: the workspaces it makes are held so."""
        self._moved: OrderedDict[str, float] = OrderedDict()
        """Sessions whose workspace another session took over."""
        self._settings: OrderedDict[str, dict] = OrderedDict()
        """Session -> settings changed before it had a workspace, given to its first one (`keep_settings`)."""
        self._sweeper: threading.Thread | None = None

    def serve(self, blocks: Any, state_id: int) -> None:
        """Bind to the built page: its Blocks (for the sessions' states) and the id of the workspace's State."""
        self.blocks, self.state_id = blocks, state_id

    # ------------------------------------------------------------------ the page's events

    def greet(self, token: object, session: str | None) -> tuple[Workspace | None, str]:
        """A page load: the workspace the browser's token names (moved to this session) and the token to keep;
        for an unknown token, no workspace and a new token, which the session's first workspace will be held
        by (`adopt`)."""
        self.sweep()
        digest = _digest(token)
        with self._lock:
            visit = self._visits.get(digest) if digest else None
            if visit is None or session is None:
                token = secrets.token_urlsafe(TOKEN_BYTES)
                if session is not None:
                    _remember(self._waiting, session, _digest(token))
                return None, token
            previous, visit.session, visit.used = visit.session, session, self.clock()
            self._moved.pop(session, None)
            _remember(self._waiting, session, digest)  # a workspace made here later (after ×) is the token's
            if previous != session:
                _remember(self._moved, previous, visit.used)
                self._empty_state(previous, visit.ws)
            return visit.ws, str(token)

    def adopt(self, ws: Workspace) -> None:
        """A workspace just made for the current session: held by the token the session got at load, in place
        of the one the token held before in this session (the canvas's × starts a new workspace; an event
        refused before its workspace was kept makes one that is replaced so)."""
        session = current_session()
        if session is None:
            return
        with self._lock:
            digest = self._waiting.get(session)
            held = self._visits.get(digest) if digest is not None else None
            if digest is not None and (held is None or held.session == session):
                self._visits[digest] = _Visit(ws, session, self.clock())
                self._start_sweeper()
            early = self._settings.pop(session, None)
            if early:
                ws.page_settings = {**early, **getattr(ws, "page_settings", {})}

    def keep_settings(self, ws: object, settings: dict) -> None:
        """Settings the visitor changed (generation, the marking tool), kept with the work so that a reload
        shows them: in `ws`, else in the workspace the current session holds (one made by an event still on
        its way back), else for the session's first workspace. Never a workspace another tab took over."""
        session = current_session()
        with self._lock:
            if not isinstance(ws, Workspace) and session is not None:
                digest = self._waiting.get(session)
                held = self._visits.get(digest) if digest is not None else None
                ws = held.ws if held is not None and held.session == session else None
            if isinstance(ws, Workspace):
                visit = self._visit_of(ws)
                if visit is None or session is None or visit.session == session:
                    ws.page_settings = {**getattr(ws, "page_settings", {}), **settings}
            elif session is not None:
                _remember(self._settings, session, {**self._settings.get(session, {}), **settings})

    def check(self, ws: object) -> None:
        """Before a page event: refuse it when this tab's work moved to another tab; else note the activity."""
        session = current_session()
        if session is None:
            return
        with self._lock:
            visit = self._visit_of(ws) if isinstance(ws, Workspace) else None
            if visit is not None:
                if visit.session != session:
                    raise MovedAway()
                visit.used = self.clock()
            elif session in self._moved:
                raise MovedAway()

    def holds(self, ws: Workspace | None) -> Workspace | None:
        """What the current session's state should hold after an event: `ws`, unless another tab took it."""
        session = current_session()
        if ws is None or session is None:
            return ws
        with self._lock:
            visit = self._visit_of(ws)
            return None if visit is not None and visit.session != session else ws

    def release(self, ws: Workspace | None) -> None:
        """Gradio's delete callback for the state (the session expired or was ended for a newcomer): the
        workspace is closed and its token forgotten. Only the session that holds a workspace keeps it in its
        state (`greet` empties the previous one), so this never closes the work of another tab."""
        if not isinstance(ws, Workspace):
            return
        with self._lock:
            for key in [k for k, v in self._visits.items() if v.ws is ws]:
                del self._visits[key]
        ws.close()

    def sweep(self, now: float | None = None) -> int:
        """Close the workspaces idle for longer than `ttl_s` (their tabs' states emptied); returns how many."""
        now = self.clock() if now is None else now
        with self._lock:
            idle = [(k, v) for k, v in self._visits.items() if now - v.used > self.ttl_s]
            for key, visit in idle:
                del self._visits[key]
                self._empty_state(visit.session, visit.ws)
            for remembered in (self._waiting, self._moved, self._settings):
                while len(remembered) > _REMEMBERED:
                    remembered.popitem(last=False)
        for _, visit in idle:
            visit.ws.close()
        return len(idle)

    def __len__(self) -> int:
        return len(self._visits)

    # ------------------------------------------------------------------ internals

    def _visit_of(self, ws: Workspace) -> _Visit | None:
        return next((v for v in self._visits.values() if v.ws is ws), None)

    def _session_state(self, session: str) -> Any:
        holder = getattr(self.blocks, "state_holder", None)
        return None if holder is None else holder.session_data.get(session)

    def _empty_state(self, session: str, ws: Workspace) -> None:
        """The session no longer holds `ws` (it moved or expired): its state is emptied without a callback."""
        state = self._session_state(session)
        if state is not None and state.state_data.get(self.state_id) is ws:
            state.state_data[self.state_id] = None

    def _start_sweeper(self) -> None:
        """Sweep every minute (or every tenth of the lifetime) while the page is served; the thread holds the
        registry weakly, so a page that is thrown away takes its sweeper with it."""
        if self._sweeper is not None:
            return
        period = max(1.0, min(60.0, self.ttl_s / 10))
        registry = weakref.ref(self)

        def run() -> None:
            while True:
                time.sleep(period)
                visitors = registry()
                if visitors is None:
                    return
                visitors.sweep()
                del visitors

        self._sweeper = threading.Thread(target=run, name="visitor-sweeper", daemon=True)
        self._sweeper.start()


def _remember(table: OrderedDict, key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _REMEMBERED:
        table.popitem(last=False)
