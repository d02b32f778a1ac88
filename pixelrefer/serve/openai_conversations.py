"""API conversations: a request's media and regions made into a `ChatSession`, and the sessions kept between
requests so that a follow-up reuses the features, object tokens and KV prefix of the turns before it.

The protocol is stateless: each request carries the whole conversation. A finished answer's session is
kept under a key that only the next request of the same conversation, from the same client, produces
(`ChatRequest.key`: the client, the media, the regions and every message so far, the new answer included),
so one client's cache never serves another and an edited history never meets a stale cache. When no session
matches (another client, an evicted one, a restarted server), the conversation is rebuilt from the request:
earlier answers become history turns whose ids are their text encoded as the model reads it, so the answer
is what the model gives to that text (a kept session holds the ids it generated, which is the same
conversation the library's `ChatSession` would have).

Clips: frame indices in `regions` are the decoded file's frames at its native rate (0 = the first frame);
the model sees the frames the app samples (`load_clip` with the server's limits), and masks on frames it
does not sample are decoded from the file beside them, as the CLI and batch do.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..chat.session import ChatLimits, ChatSession, Exchange, parse_question
from ..media.images import load_image, shrink_image
from ..media.limits import MediaLimits
from ..media.masks import fit_mask
from ..media.video import load_clip, probe_video, read_frames
from ..model.generation import GenerationSettings
from ..model.inference import PixelRefer
from ..runtime.errors import InputError
from .openai_regions import alpha_mask, read_regions
from .openai_request import ChatRequest, MediaPart, RequestRefused, data_url_bytes, is_remote

__all__ = ["ConversationStore", "MediaAccess", "open_session", "session_bytes"]

_log = logging.getLogger(__name__)

_OBJECT_TAG = re.compile(r"<object(\d+)>")
"""The client's names for the objects in an earlier answer, read back as the model's labels (`<region0>`)."""


@dataclass(frozen=True)
class MediaAccess:
    """How media reach the server: data URLs always; http(s) URLs only when the operator allows them."""

    limits: MediaLimits
    allow_remote: bool = False
    remote_timeout_s: float = 20.0


def _fetch(url: str, access: MediaAccess, param: str) -> bytes:
    """A remote file, read up to the upload limit (the operator enabled `--allow-remote-media`)."""
    import httpx

    limit = int(access.limits.max_upload_mb * 1e6)
    try:
        with (
            httpx.Client(timeout=access.remote_timeout_s, follow_redirects=True, max_redirects=3) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise RequestRefused(f"Fetching {param} answered HTTP {response.status_code}", param=param)
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise RequestRefused(
                        f"{param} is over {access.limits.max_upload_mb:g} MB, the upload limit", param=param
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise RequestRefused(f"{param} could not be fetched ({type(exc).__name__})", param=param) from None
    return b"".join(chunks)


def _media_bytes(part: MediaPart, access: MediaAccess) -> bytes:
    what = "The picture" if part.kind == "image" else "The clip"
    if is_remote(part.url):
        if not access.allow_remote:
            raise RequestRefused(
                f"{what} is a remote URL; this server does not fetch URLs (that would be a request made by "
                "the server). Send the file as a data URL, or start the server with --allow-remote-media.",
                param=part.param,
            )
        return _fetch(part.url, access, part.param)
    _, data = data_url_bytes(
        part.url, max_bytes=int(access.limits.max_upload_mb * 1e6), what=what, param=part.param
    )
    return data


def _image_session(
    model: PixelRefer, request: ChatRequest, data: bytes, access: MediaAccess, chat: ChatLimits
) -> ChatSession:
    picture = load_image(data, limits=access.limits)
    shape = picture.shape[:2]
    if request.regions is not None:
        objects = read_regions(
            request.regions,
            video=False,
            shape=shape,
            max_objects=chat.max_objects,
            limits=access.limits,
        )
    else:
        alpha = alpha_mask(data)
        if alpha is None:
            raise RequestRefused(
                "No objects: give regions (one COCO RLE or PNG mask per object), or send an RGBA picture "
                "whose alpha channel marks <object1>",
                param="regions",
            )
        objects = [{0: alpha}]
    held = shrink_image(picture, access.limits.max_side)
    session = ChatSession(model, image=held, limits=chat)
    for number, masks in enumerate(objects):
        what = f"regions[{number}]"
        session.add_object({0: fit_mask(masks[0], held.shape[:2], source_shape=shape, what=what)})
    return session


def _clip_session(
    model: PixelRefer, request: ChatRequest, data: bytes, access: MediaAccess, chat: ChatLimits
) -> tuple[ChatSession, tuple[str, ...]]:
    if request.regions is None:
        raise RequestRefused(
            "A clip's objects need regions: one {frame index: mask} per object", param="regions"
        )
    with tempfile.TemporaryDirectory(prefix="pixelrefer-api-") as folder:
        path = Path(folder) / "clip"
        path.write_bytes(data)
        info = probe_video(path, access.limits)
        objects = read_regions(
            request.regions,
            video=True,
            shape=(info.height, info.width),
            max_objects=chat.max_objects,
            limits=access.limits,
        )
        clip = load_clip(path, access.limits)
        kept = info.n_frames
        if info.duration > access.limits.max_duration_s:
            kept = min(kept, max(1, int(access.limits.max_duration_s * info.fps)))
        marked = sorted({f for masks in objects for f in masks})
        if marked[-1] >= kept:
            cut = (
                f" (the server keeps the first {access.limits.max_duration_s:g} s)"
                if kept < info.n_frames
                else ""
            )
            raise RequestRefused(
                f"regions: a mask is on frame {marked[-1]}, but the clip has frames 0-{kept - 1}{cut}",
                param="regions",
            )
        extra = sorted(set(marked) - set(clip.indices))
        if len(extra) > access.limits.max_frames:
            raise RequestRefused(
                f"regions: masks lie on {len(extra)} frames the model does not sample; the limit is "
                f"{access.limits.max_frames}",
                param="regions",
            )
        frames = dict(zip(extra, read_frames(path, extra, size=clip.size), strict=True)) if extra else {}
    session = ChatSession(model, clip=clip, extra_frames=frames, limits=chat)
    held = clip.frames[0].shape[:2]
    for number, masks in enumerate(objects):
        what = f"regions[{number}]"
        fitted = {f: fit_mask(m, held, source_shape=clip.source_shape, what=what) for f, m in masks.items()}
        session.add_object(fitted)
    return session, clip.notes


def _restore_history(session: ChatSession, request: ChatRequest, settings: GenerationSettings) -> None:
    """Earlier questions and answers of the request, as the session's history (answers re-encoded)."""
    ids = [obj.id for obj in session.objects]
    labels = session.labels()
    for index, (question, answer) in enumerate(zip(request.questions, request.answers, strict=False)):
        try:
            session.limits.check_question(question)
            pieces = parse_question(question, ids)
        except InputError as exc:
            raise RequestRefused(f"messages[{2 * index}]: {exc}", param=f"messages[{2 * index}]") from None
        text = _OBJECT_TAG.sub(lambda m: labels.get(int(m.group(1)), m.group(0)), answer)
        answer_ids = session.model.encode_text(text.strip())
        session.history.append(Exchange("ask", question, pieces, answer_ids, answer, "eos", settings))


def open_session(
    model: PixelRefer, request: ChatRequest, access: MediaAccess, chat: ChatLimits
) -> tuple[ChatSession, tuple[str, ...]]:
    """A session for the request's media and objects with its earlier turns as history; notes say what
    was cut from a clip. Refusals are `InputError`s naming the field."""
    data = _media_bytes(request.media, access)
    if request.media.kind == "image":
        session, notes = _image_session(model, request, data, access, chat), ()
    else:
        session, notes = _clip_session(model, request, data, access, chat)
    try:
        _restore_history(session, request, request.settings)
    except BaseException:
        session.close()
        raise
    return session, notes


def session_bytes(session: ChatSession) -> int:
    """What a kept conversation holds in memory: its frames, masks and caches (features, tokens, KV)."""
    frames = sum(frame.nbytes for frame in session.frames.values())
    masks = sum(mask.nbytes for obj in session.objects for mask in obj.masks.values())
    return frames + masks + session.cache_bytes


@dataclass
class _Kept:
    session: ChatSession
    client: str
    notes: tuple[str, ...]
    nbytes: int
    used: float = field(default_factory=time.monotonic)


class ConversationStore:
    """Finished conversations by key, least recently used first out, bounded in count, bytes and age.

    A client keeps at most `per_client` of them, so one client's traffic cannot push everyone else's out.
    A session is taken out while a request continues it (two requests never share one) and put back under
    its new key when the answer is done.
    """

    def __init__(
        self, *, max_entries: int, max_bytes: int, ttl_s: float, per_client: int | None = None
    ) -> None:
        self.max_entries = max(0, int(max_entries))
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self.per_client = max(1, per_client if per_client is not None else self.max_entries // 4)
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(kept.nbytes for kept in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def take(self, key: str) -> tuple[ChatSession, tuple[str, ...]] | None:
        """The session kept under `key`, removed from the store (None when there is none)."""
        with self._lock:
            self._expire()
            kept = self._entries.pop(key, None)
            if kept is None:
                self.misses += 1
                return None
            self.hits += 1
            return kept.session, kept.notes

    def put(self, key: str, session: ChatSession, client: str, notes: tuple[str, ...] = ()) -> None:
        """Keep a finished conversation; evicts the oldest ones over the bounds (closing their sessions)."""
        nbytes = session_bytes(session)
        dropped: list[ChatSession] = []
        with self._lock:
            self._expire()
            if self.max_entries == 0 or nbytes > self.max_bytes:
                dropped.append(session)
            else:
                previous = self._entries.pop(key, None)
                if previous is not None:
                    dropped.append(previous.session)
                self._entries[key] = _Kept(session, client, notes, nbytes)
                dropped += self._evict(client)
        self._close(dropped)

    def clear(self) -> None:
        with self._lock:
            dropped = [kept.session for kept in self._entries.values()]
            self._entries.clear()
        self._close(dropped)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, kept in self._entries.items() if now - kept.used > self.ttl_s]:
            self._entries.pop(key).session.close()

    def _evict(self, client: str) -> list[ChatSession]:
        dropped = []
        own = [k for k, kept in self._entries.items() if kept.client == client]
        for key in own[: max(0, len(own) - self.per_client)]:
            dropped.append(self._entries.pop(key).session)
        total = sum(kept.nbytes for kept in self._entries.values())
        while self._entries and (len(self._entries) > self.max_entries or total > self.max_bytes):
            _, kept = self._entries.popitem(last=False)
            total -= kept.nbytes
            dropped.append(kept.session)
        return dropped

    @staticmethod
    def _close(sessions: Iterable[ChatSession]) -> None:
        for session in sessions:
            with contextlib.suppress(Exception):
                session.close()
