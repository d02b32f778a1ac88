"""Who is asking, and how much of the server one of them may hold: the per-client caps and the fair share.

A client is the address that connected, or, behind proxies the operator declares (`--trusted-proxies N`, as
on Spaces), the address the N-th proxy from the end wrote into `X-Forwarded-For`: each proxy appends the
address it was reached from, so only the last N entries are trustworthy; a client can write anything in
front of them. uvicorn's own `X-Forwarded-For` rewriting is switched off (`own_forwarded_for`) so that this
is the one rule.

A visitor is one Gradio session (`session_hash`). The caps, all counted when a request arrives, before any
handler runs:

- requests in flight per client (open streams and slow uploads included);
- sessions per client that hold a workspace, and, across everyone, `max_sessions` of them: a newcomer is told
  the demo is full instead of anyone active being dropped (sessions holding nothing are never counted and
  are pruned before Gradio's own eviction could reach anyone's workspace);
- waiting model events per visitor and per client (the stateless `/describe_region` included: it is counted
  by client), and waiting events of any kind per client, so one client never fills the queue for others.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["HttpLimits", "Ledger", "client_of", "own_forwarded_for"]


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the server; each has a flag and a PIXELREFER_<NAME> variable."""

    trusted_proxies: int = 0
    """Proxies in front of the app that append to X-Forwarded-For (1 on a Hugging Face Space)."""
    requests_per_client: int = 32
    """HTTP requests one client may have open at once (a page uses about five)."""
    sessions_per_client: int = 8
    """Sessions holding a workspace per client (browser tabs, API sessions)."""
    waiting_per_visitor: int = 2
    """Model events one session may have waiting."""
    waiting_per_client: int = 4
    """Model events one client may have waiting (below the queue size, so it cannot fill the queue)."""
    queued_per_client: int = 16
    """Events of any kind one client may have waiting."""
    stream_stall_s: float = 30.0
    """An event stream the client does not read for this long is cut and its buffers freed."""
    body_stall_s: float = 15.0
    """A request body (or its headers) that sends nothing for this long is refused."""
    editor_layers: int = 2
    """Layers one brush (ImageEditor) value may carry; the page sends one."""
    editor_pixels: int = 12_600_000
    """Pixels of all images of one brush value together (background, layers, composite), from their headers."""
    upload_files: int = 4
    """Files per upload request (the page sends one at a time)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, default: Callable[[str, Any], Any]) -> None:
        """The flags of these limits (`--trusted-proxies N`, ...), falling back to `default(name, value)`."""
        group = parser.add_argument_group("HTTP layer (see docs/limits.md)")
        base = cls()
        for f in fields(cls):
            fallback = getattr(base, f.name)
            group.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f"http__{f.name}",
                type=type(fallback),
                default=type(fallback)(default(f.name, fallback)),
                metavar="N",
                help=f"default {fallback}",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> HttpLimits:
        values = {f.name: getattr(args, f"http__{f.name}") for f in fields(cls)}
        for name, value in values.items():
            if value < 0 or (value == 0 and name != "trusted_proxies"):
                parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
        return cls(**values)


def own_forwarded_for() -> None:
    """Switch uvicorn's X-Forwarded-For rewriting off (it trusts 127.0.0.1 by default), so `client_of` sees
    the connecting address and applies `--trusted-proxies` itself."""
    os.environ["FORWARDED_ALLOW_IPS"] = ""


def client_of(scope: Mapping[str, Any], trusted_proxies: int) -> str:
    """The client a request counts against: the peer, or the address the trusted proxies recorded."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if trusted_proxies <= 0:
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops += [hop.strip() for hop in value.decode("latin-1").split(",")]
    if len(hops) < trusted_proxies:
        return peer
    claimed = hops[-trusted_proxies]
    try:
        return str(ipaddress.ip_address(claimed.strip("[]")))
    except ValueError:
        return peer


class Full(Exception):
    """A cap is reached: the HTTP status and the message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Ledger:
    """The counts behind the caps: requests in flight per client, the client of each session, and Gradio's
    queues read as they are (so an event that ended, however it ended, is no longer counted)."""

    def __init__(self, limits: HttpLimits, *, max_sessions: int, session_ttl_s: float) -> None:
        self.limits = limits
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
        self.in_flight: Counter[str] = Counter()
        self.session_client: dict[str, str] = {}
        self.joining: Counter[tuple[str, str]] = Counter()
        """Joins accepted but not yet in Gradio's queue, by (client, session): they count as waiting."""

    # ------------------------------------------------------------------ requests in flight

    def enter(self, client: str) -> None:
        if self.in_flight[client] >= self.limits.requests_per_client:
            raise Full(
                429,
                f"Too many open requests from your address (at most {self.limits.requests_per_client}); "
                "close other tabs or wait for your requests to finish.",
            )
        self.in_flight[client] += 1

    def leave(self, client: str) -> None:
        self.in_flight[client] -= 1
        if self.in_flight[client] <= 0:
            del self.in_flight[client]

    # ------------------------------------------------------------------ sessions

    def admit_session(self, blocks, session_hash: str, client: str, creates_workspace: bool) -> None:
        """Refuse a session that would hold a workspace beyond the client's share or the server's places.

        Sessions that hold nothing are pruned (oldest first) whenever Gradio's table fills, so its own
        eviction, which drops the oldest session whatever it holds, never reaches a visitor's workspace.
        """
        holder = blocks.state_holder
        known = session_hash in holder.session_data
        self._prune(blocks)
        if not known:
            self.session_client[session_hash] = client
        if not creates_workspace or _holds_workspace(blocks, holder.session_data.get(session_hash)):
            return
        holding = [s for s, state in list(holder.session_data.items()) if _holds_workspace(blocks, state)]
        mine = sum(1 for s in holding if self.session_client.get(s) == client)
        if mine >= self.limits.sessions_per_client:
            raise Full(
                429,
                f"Your address already has {mine} open sessions (at most {self.limits.sessions_per_client}); "
                "close a tab, or wait for an old one to expire.",
            )
        if len(holding) >= self.max_sessions and not self._free_a_place(blocks, holding):
            raise Full(
                503,
                f"The demo is full right now: all {self.max_sessions} places are taken by active visitors. "
                "Please try again in a few minutes.",
            )

    def _free_a_place(self, blocks, holding: list[str]) -> bool:
        """End the least recently used session that is no longer active (its tab closed, or idle past the
        session lifetime), with its cleanup; False when every place holds an active visitor."""
        holder = blocks.state_holder
        now = datetime.datetime.now()
        idle = datetime.timedelta(seconds=self.session_ttl_s)
        ended = [
            s
            for s in holding
            if not _busy(blocks, s)
            and (
                getattr(holder.session_data.get(s), "is_closed", False)
                or now - holder.time_last_used.get(s, now) > idle
            )
        ]
        if not ended:
            return False
        oldest = min(ended, key=lambda s: holder.time_last_used.get(s, now))
        holder.delete_state(oldest)  # runs the workspace's delete callback: its files go with it
        with holder.lock:
            holder.session_data.pop(oldest, None)
            holder.time_last_used.pop(oldest, None)
        return True

    def _prune(self, blocks) -> None:
        """Forget sessions that hold nothing once Gradio's table is half full, and clients of gone sessions."""
        holder = blocks.state_holder
        if len(holder.session_data) >= max(holder.capacity // 2, 1):
            with holder.lock:
                for session_hash, state in list(holder.session_data.items()):
                    if not _holds_anything(state) and not _busy(blocks, session_hash):
                        holder.session_data.pop(session_hash, None)
                        holder.time_last_used.pop(session_hash, None)
        if len(self.session_client) > 4 * holder.capacity:
            for session_hash in [s for s in self.session_client if s not in holder.session_data]:
                del self.session_client[session_hash]

    # ------------------------------------------------------------------ waiting events

    def check_waiting(self, blocks, fn, session_hash: str, client: str, model_queue: str) -> None:
        """Refuse an event beyond the visitor's or the client's share of the waiting room."""
        waiting_model: Counter[str] = Counter()
        waiting_any: Counter[str] = Counter()
        for concurrency_id, queue in list(blocks._queue.event_queue_per_concurrency_id.items()):
            for event in list(queue.queue):
                owner = self._owner(event)
                waiting_any[owner] += 1
                if concurrency_id == model_queue:
                    waiting_model[owner] += 1
                    waiting_model["session:" + event.session_hash] += 1
        for (owner, session), n in self.joining.items():
            waiting_any[owner] += n
            if session.startswith("model:"):
                waiting_model[owner] += n
                if session[6:]:  # a plain-HTTP call has no session of its own yet
                    waiting_model["session:" + session[6:]] += n
        limits = self.limits
        if waiting_any[client] >= limits.queued_per_client:
            raise Full(
                429,
                f"Your address already has {waiting_any[client]} requests waiting (at most "
                f"{limits.queued_per_client}); wait for them to finish.",
            )
        if fn.concurrency_id != model_queue:
            return
        if session_hash and waiting_model["session:" + session_hash] >= limits.waiting_per_visitor:
            raise Full(
                429,
                f"You already have {limits.waiting_per_visitor} requests waiting for the model; wait for "
                "the answer (or press Stop) before asking again.",
            )
        if waiting_model[client] >= limits.waiting_per_client:
            raise Full(
                429,
                f"Your address already has {waiting_model[client]} requests waiting for the model (at most "
                f"{limits.waiting_per_client}); wait for an answer before sending more.",
            )

    def _owner(self, event) -> str:
        request = getattr(event, "request", None)
        scope = getattr(request, "scope", None)
        if scope is not None:
            return client_of(scope, self.limits.trusted_proxies)
        return self.session_client.get(event.session_hash, "unknown")


def _state_values(state) -> Iterable[Any]:
    return list(getattr(state, "state_data", {}).values()) if state is not None else []


def _holds_anything(state) -> bool:
    """Whether a Gradio session keeps anything that is not a plain value (a workspace, an object)."""
    return any(not isinstance(v, int | float | str | bool | type(None)) for v in _state_values(state))


def _holds_workspace(blocks, state) -> bool:
    """Whether a session keeps a value in one of the page's expiring `gr.State`s (the visitor's workspace)."""
    if state is None:
        return False
    expiring = workspace_states(blocks)
    return any(state.state_data.get(i) is not None for i in expiring)


def workspace_states(blocks) -> set[int]:
    """The ids of the page's `gr.State`s that expire (`time_to_live`): those hold a visitor's workspace."""
    from gradio.components import State

    return {
        i
        for i, block in blocks.blocks.items()
        if isinstance(block, State) and block.time_to_live not in (None, float("inf"))
    }


def _busy(blocks, session_hash: str) -> bool:
    """Whether the session has an event waiting or running (its state must stay)."""
    queue = blocks._queue
    for q in list(queue.event_queue_per_concurrency_id.values()):
        if any(e.session_hash == session_hash for e in list(q.queue)):
            return True
    for job in list(getattr(queue, "active_jobs", []) or []):
        if job and any(e.session_hash == session_hash for e in job):
            return True
    return False
