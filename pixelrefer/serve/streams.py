"""Slow and silent clients: a stream nobody reads, a body that never ends, headers never finished.

A response is written to the client through uvicorn's `send`, which waits while the socket's buffer is
full. A client that opens an event stream and never reads would hold Gradio's pending messages (every token
of every answer) for as long as it keeps the connection; `stalling_send` gives up after `stall_s` without
progress, which ends the stream the way a disconnect does (Gradio drops its pending messages and stops the
events). `stalling_receive` does the same for a request body that stops arriving. `HeaderWatch` closes
connections that have not finished sending their request headers after `stall_s` (uvicorn waits forever).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BodyStalled", "HeaderWatch", "StreamStalled", "stalling_receive", "stalling_send"]

_log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class StreamStalled(Exception):
    """The client did not read the response for the stall timeout; the response was cut."""


class BodyStalled(Exception):
    """The client stopped sending its request body for the stall timeout."""


def stalling_send(send: Send, stall_s: float) -> Send:
    """`send`, cut (`StreamStalled`) when one message cannot be handed to the socket within `stall_s`."""

    async def send_or_cut(message: Message) -> None:
        try:
            await asyncio.wait_for(send(message), stall_s)
        except TimeoutError:
            raise StreamStalled(f"the client read nothing for {stall_s:g} s") from None

    return send_or_cut


def stalling_receive(receive: Receive, stall_s: float) -> Receive:
    """`receive`, refused (`BodyStalled`) when the next part of the body does not come within `stall_s`.

    Only the body is timed: once it is complete the app may wait on `receive` for a disconnect as long as
    it likes (streaming responses do)."""
    done = False

    async def receive_or_refuse() -> Message:
        nonlocal done
        if done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), stall_s)
        except TimeoutError:
            raise BodyStalled(f"the request body stalled for {stall_s:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        return message

    return receive_or_refuse


class HeaderWatch:
    """Closes connections of a running uvicorn server that started a request and did not finish its headers
    within `stall_s` (a slow-headers client holds a connection and its buffer forever otherwise).

    uvicorn keeps its open connections (protocol objects) in `server.server_state.connections`; one that is
    between requests has a keep-alive timer, one inside a request has a `cycle` whose response is not complete;
    one with neither, seen so for `stall_s`, is still sending headers (or nothing at all) and is closed.
    """

    def __init__(self, server: Any, stall_s: float) -> None:
        self.server = server
        self.stall_s = stall_s
        self.first_seen: dict[int, float] = {}
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixelrefer-header-watch", daemon=True)

    def start(self) -> HeaderWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        period = max(0.2, min(1.0, self.stall_s / 4))
        while not self._stop.wait(period):
            state = getattr(self.server, "server_state", None)
            if state is None:
                continue
            try:
                self.sweep(list(state.connections))
            except Exception:  # a watchdog never takes the server down
                _log.exception("header watch sweep failed")

    def sweep(self, connections: list[Any], loop: asyncio.AbstractEventLoop | None = None) -> int:
        """Close the connections still in their headers past the deadline; how many were closed."""
        now = time.monotonic()
        alive = {id(c) for c in connections}
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in alive}
        closed = 0
        for connection in connections:
            cycle = getattr(connection, "cycle", None)
            waiting = (cycle is None or getattr(cycle, "response_complete", False)) and (
                getattr(connection, "timeout_keep_alive_task", None) is None
            )
            if not waiting:
                self.first_seen.pop(id(connection), None)
                continue
            seen = self.first_seen.setdefault(id(connection), now)
            if now - seen >= self.stall_s:
                transport = getattr(connection, "transport", None)
                loop = getattr(connection, "loop", None) or loop
                if transport is not None:
                    if loop is not None:
                        loop.call_soon_threadsafe(transport.abort)
                    else:
                        transport.abort()
                    closed += 1
                self.first_seen.pop(id(connection), None)
        self.closed += closed
        return closed


class Orphans:
    """Events whose results nobody comes for: a client that joins and never opens the stream (or drops it)
    leaves Gradio keeping every message (each token of each answer) for that session, and the model running
    for nobody. A session with pending messages and no open stream for `stall_s` has its events ended and
    its messages dropped, as Gradio does when a stream is cut."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.open: dict[str, int] = {}
        self.seen: dict[str, float] = {}
        self.swept = 0
        self._next = 0.0

    def opened(self, session_hash: str) -> None:
        self.open[session_hash] = self.open.get(session_hash, 0) + 1
        self.seen[session_hash] = time.monotonic()

    def closed(self, session_hash: str) -> None:
        left = self.open.get(session_hash, 0) - 1
        if left > 0:
            self.open[session_hash] = left
        else:
            self.open.pop(session_hash, None)
        self.seen[session_hash] = time.monotonic()

    def joined(self, session_hash: str) -> None:
        self.seen[session_hash] = time.monotonic()

    async def sweep(self, queue: Any) -> int:
        """End the orphaned sessions' events (at most once a second); how many sessions were ended."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + 1.0
        pending = getattr(queue, "pending_messages_per_session", None)
        if pending is None:
            return 0
        ended = 0
        for session_hash in list(pending.keys()):
            if self.open.get(session_hash):
                continue
            since = self.seen.setdefault(session_hash, now)
            if now - since < self.stall_s:
                continue
            await queue.clean_events(session_hash=session_hash)
            pending.pop(session_hash, None)
            self.seen.pop(session_hash, None)
            ended += 1
        for session_hash in [s for s in self.seen if s not in pending and not self.open.get(s)]:
            if now - self.seen[session_hash] > 10 * self.stall_s:
                del self.seen[session_hash]
        self.swept += ended
        return ended
