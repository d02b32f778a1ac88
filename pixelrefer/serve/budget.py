"""One memory budget for all visitors, per device: what every visitor holds, in bytes, where it is held.

Each visitor's workspace keeps its media (frames and the canvas's display copy), its masks (marked and
tracked), and the chat's caches: the vision features and object tokens (`FeatureCache`) and the KV cache of
the conversation so far (`PrefixCache`). SAM's image embeddings are kept by the segmenter for every visitor
(a few pictures, by content), so they count as one shared pool. Sizes are measured from the objects
themselves (an array's buffer, a tensor's storage, each counted once however many views share it), on the
device that holds them: `cpu` or `cuda:N`.

The server has a budget per device (RAM, and each GPU): by default the memory free once the model and the
segmenter are loaded, minus headroom for the computations themselves (activations, decoding, uploads in
flight). Before a visitor's action whose size is known in advance (new media, tracking, an answer) the
budget is asked for room. When there is none, caches that can be recomputed are dropped: first those of the
visitors idle the longest, then SAM's shared embeddings, then the visitor's own; only then is the action
refused, with a message saying what to do (`ServerFull`, an `InputError`, so every caller shows it). After
the action the real sizes are measured again. An allocator that still runs out of memory (CUDA's
`OutOfMemoryError`, a failed CPU allocation) is caught the same way: caches freed, the same message.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import torch

from ..media.images import check_image_file
from ..media.limits import MediaLimits
from ..media.video import probe_video
from ..runtime.devices import GIB
from ..runtime.errors import InputError

if TYPE_CHECKING:
    from ..chat.session import ChatSession
    from ..segment.base import Segmenter
    from .workspace import Workspace

__all__ = [
    "FULL_MESSAGE",
    "KINDS",
    "MemoryBudget",
    "ServerFull",
    "budgeted",
    "clip_bytes",
    "default_limits",
    "holdings",
    "image_bytes",
    "is_out_of_memory",
    "kv_bytes_per_token",
    "need_answer",
    "need_clip",
    "need_image",
    "need_tracking",
]

_log = logging.getLogger(__name__)

FULL_MESSAGE = "The server is full right now: try a shorter clip or a smaller picture, or again in a minute."
"""What a visitor reads when their action does not fit: the only thing they can change is the input's size
or the time they try again."""

KINDS = ("media", "masks", "sam", "features", "object tokens", "kv")
"""What a visitor's bytes are, in the order the benchmark prints them. "features" are the vision tower's
outputs for the media, "object tokens" the object tokenizer's; a running server only tells them apart when
asked for detail (`holdings(ws, detail=True)`), since both are one cache to drop."""

RECOMPUTABLE = ("features", "object tokens", "kv", "display")
"""What may be dropped to make room: a later answer (or the canvas) computes it again."""

HEADROOM_FRACTION = 0.15
"""Of a device's total memory, kept out of the budget for the computations themselves."""

MIN_HEADROOM = 1 * GIB


class ServerFull(InputError):
    """The action needs more memory than the server has free, even after dropping every cache it could."""


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocator's failure: CUDA's `OutOfMemoryError`, Python's `MemoryError`, or torch's CPU allocator."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# ---------------------------------------------------------------------- measuring


class _Tally:
    """Bytes by device and kind, each buffer counted once (views and shared references are not new memory)."""

    def __init__(self) -> None:
        self.bytes: dict[str, Counter[str]] = {}
        self._seen: set[int] = set()

    def add(self, kind: str, value: object) -> None:
        if isinstance(value, np.ndarray):
            owner = value
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            buffer = owner.base if owner.base is not None else owner
            size = len(buffer) if isinstance(buffer, bytes | bytearray) else owner.nbytes
            if isinstance(buffer, memoryview):
                size = buffer.nbytes
            self._count(id(buffer), "cpu", kind, size)
        elif isinstance(value, torch.Tensor):
            if value.device.type == "meta":
                return
            storage = value.untyped_storage()
            self._count(storage.data_ptr() or id(value), str(value.device), kind, storage.nbytes())
        elif isinstance(value, Mapping):
            for item in value.values():
                self.add(kind, item)
        elif isinstance(value, list | tuple):
            for item in value:
                self.add(kind, item)
        elif value is not None and hasattr(value, "keys") and hasattr(value, "values"):
            # a DynamicCache layer: keys and values tensors
            self.add(kind, value.keys)
            self.add(kind, value.values)

    def _count(self, key: int, device: str, kind: str, size: int) -> None:
        if key in self._seen or size <= 0:
            return
        self._seen.add(key)
        self.bytes.setdefault(device, Counter())[kind] += size


def _object_keys(session: ChatSession) -> set[str]:
    """The cache keys of the object tokens of the session's current objects (only for a detailed split)."""
    if session.last_prompt is not None:
        return set(session.last_prompt.object_keys)
    plan = session.warm_plan()
    if plan is None:
        return set()
    try:
        prepared = session.model.prepare(turns=plan.turns, regions=plan.regions, seed=plan.seed, **plan.media)
    except ValueError:
        return set()
    return set(prepared.record().object_keys)


def holdings(ws: Workspace, *, detail: bool = False) -> dict[str, dict[str, int]]:
    """What `ws` holds, {device: {kind: bytes}}, measured from the objects themselves.

    Kinds are `KINDS` (SAM's embeddings are shared and counted by `MemoryBudget.shared`) plus "display" (the
    canvas's copy of the frame, recomputable). Without `detail` the object tokens count as "features".
    """
    tally = _Tally()
    session = ws.session
    tally.add("media", ws.image)
    if ws.clip is not None:
        tally.add("media", ws.clip.frames)
    if session is not None:
        tally.add("media", session.frames)
    if ws._shown is not None:
        tally.add("display", ws._shown[1])
    draft = ws.draft
    tally.add("masks", draft.result.mask if draft.result is not None else None)
    tally.add("masks", [draft.prompt.mask, _array_or_none(draft.prompt.scribble)])
    for prompts in ws.marks.values():
        tally.add("masks", [[p.mask, _array_or_none(p.scribble)] for p in prompts.values()])
    if session is not None:
        tally.add("masks", [obj.masks for obj in list(session.objects)])
        objects = _object_keys(session) if detail else set()
        for key, value in session.feature_cache.entries():
            tally.add("object tokens" if key in objects else "features", value)
        prefix = session.prefix_cache
        cache = prefix.cache
        if cache is not None:
            tally.add("kv", list(cache.layers))
        tally.add("kv", prefix.rows)
    return {device: dict(kinds) for device, kinds in tally.bytes.items()}


def _array_or_none(value: object) -> np.ndarray | None:
    return value if isinstance(value, np.ndarray) else None


def sam_holdings(segmenter: Segmenter | None) -> dict[str, int]:
    """Bytes of SAM's shared image embeddings by device (the segmenter keeps a few pictures' worth)."""
    if segmenter is None:  # not loaded yet
        return {}
    tally = _Tally()
    tally.add("sam", segmenter.kept_embeddings())
    return {device: kinds["sam"] for device, kinds in tally.bytes.items()}


def _total(held: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {device: sum(kinds.values()) for device, kinds in held.items()}


# ---------------------------------------------------------------------- sizes known in advance


def image_bytes(source: object, limits: MediaLimits, display_side: int) -> int:
    """What an image will hold once opened (the frame, shrunk to `max_side`, and the canvas copy when it is
    larger than `display_side`), from its header or shape: nothing is decoded. 0 when the size cannot be
    told (the opening then says why)."""
    try:
        if isinstance(source, np.ndarray | torch.Tensor):
            height, width = source.shape[:2]
        elif hasattr(source, "size") and isinstance(source.size, tuple):  # a PIL image
            width, height = source.size
        else:
            width, height = check_image_file(source, limits)
    except (ValueError, OSError):
        return 0
    scale = min(1.0, limits.max_side / max(width, height, 1))
    width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width * height * 3 + _display_bytes(width, height, display_side)


def clip_bytes(path: str | Path, limits: MediaLimits, display_side: int) -> int:
    """An upper bound of what a clip will hold once opened (at most `max_frames` frames at the decoded size,
    and the canvas copy), from the file's metadata: nothing is decoded. 0 when the file cannot be probed."""
    try:
        info = probe_video(path, limits)
    except (ValueError, OSError):
        return 0
    width, height = limits.fit_size(info.width, info.height)
    frames = max(1, min(limits.max_frames, info.n_frames))
    return width * height * 3 * frames + _display_bytes(width, height, display_side)


def _display_bytes(width: int, height: int, display_side: int) -> int:
    """The canvas's copy of a frame: none when the frame fits `display_side`, else the shrunk copy."""
    if max(width, height) <= display_side:
        return 0
    scale = display_side / max(width, height)
    return round(width * scale) * round(height * scale) * 3


def kv_bytes_per_token(config: object, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token costs: 2 (keys, values) x layers x kv heads x head dim x element size."""
    text = getattr(config, "text_config", None) or config
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or int(text.hidden_size) // heads)
    return (
        2 * int(text.num_hidden_layers) * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()
    )


# ---------------------------------------------------------------------- the budget


def default_limits(
    ram_bytes: int | None = None, gpu_bytes: int | None = None, *, use_gpus: bool = True
) -> dict[str, int]:
    """{device: bytes}: RAM and every visible GPU, each the memory free now minus headroom (the larger of
    `HEADROOM_FRACTION` of the device and `MIN_HEADROOM`) unless the operator set it. Called once the model
    and the segmenter are loaded, so what they take is not counted again."""
    memory = psutil.virtual_memory()
    headroom = max(MIN_HEADROOM, int(HEADROOM_FRACTION * memory.total))
    limits = {"cpu": ram_bytes if ram_bytes is not None else max(0, int(memory.available) - headroom)}
    if use_gpus and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            headroom = max(MIN_HEADROOM, int(HEADROOM_FRACTION * total))
            limits[f"cuda:{index}"] = gpu_bytes if gpu_bytes is not None else max(0, int(free) - headroom)
    return limits


@dataclass
class _Visitor:
    ref: weakref.ref
    last_active: float = field(default_factory=time.monotonic)
    busy: int = 0


def _mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MB"


class MemoryBudget:
    """The visitors' memory, per device, against the operator's limits (see the module's docstring).

    `limits` maps a device ("cpu", "cuda:0") to the bytes visitors may hold there; a device without a limit
    is not bounded. Workspaces register themselves (weakly: a visitor dropped by the web server without
    being closed costs nothing here). `shared` gives the bytes kept for every visitor (SAM's embeddings)
    and `drop_shared` frees them.
    """

    def __init__(
        self,
        limits: Mapping[str, int] | None = None,
        *,
        shared: Callable[[], Mapping[str, int]] | None = None,
        drop_shared: Callable[[], None] | None = None,
    ) -> None:
        self.limits: dict[str, int] = dict(limits or {})
        self._shared = shared
        self._drop_shared = drop_shared
        self._visitors: dict[int, _Visitor] = {}
        self._lock = threading.RLock()
        self.refusals = 0
        self.dropped = 0
        """Caches dropped to make room, counted per visitor and time (for the status and the soak bench)."""

    # ------------------------------------------------------------------ visitors

    def register(self, ws: Workspace) -> None:
        """Count `ws` from now on (its holdings are measured when needed)."""
        key = id(ws)
        with self._lock:
            entry = self._visitors.get(key)
            if entry is None or entry.ref() is not ws:
                self._visitors[key] = _Visitor(weakref.ref(ws, lambda _, key=key: self._forget(key)))

    def forget(self, ws: Workspace) -> None:
        """Stop counting `ws` (it closed)."""
        self._forget(id(ws))

    def _forget(self, key: int) -> None:
        with self._lock:
            self._visitors.pop(key, None)

    def visitors(self) -> list[Workspace]:
        with self._lock:
            live = [entry.ref() for entry in self._visitors.values()]
        return [ws for ws in live if ws is not None]

    def touch(self, ws: Workspace) -> None:
        """`ws` acted now: it is the last to lose its caches."""
        self.register(ws)
        with self._lock:
            self._visitors[id(ws)].last_active = time.monotonic()

    # ------------------------------------------------------------------ measuring

    def usage(self) -> dict[str, int]:
        """Bytes held on each device: every visitor's holdings and the shared caches."""
        total: Counter[str] = Counter()
        for ws in self.visitors():
            total.update(_total(holdings(ws)))
        if self._shared is not None:
            total.update(self._shared())
        return dict(total)

    def free_bytes(self, device: str) -> int | None:
        """Room left on `device` (None when it has no limit)."""
        limit = self.limits.get(device)
        return None if limit is None else limit - self.usage().get(device, 0)

    # ------------------------------------------------------------------ making room

    def admit(self, ws: Workspace | None, need: Mapping[str, int], what: str = "This") -> None:
        """Make room for `need` more bytes per device, or raise `ServerFull`: idle visitors' caches go first
        (least recently active first), then the shared SAM embeddings, then `ws`'s own caches."""
        with self._lock:
            for device, extra in need.items():
                limit = self.limits.get(device)
                if limit is None or extra <= 0:
                    continue
                over = self.usage().get(device, 0) + extra - limit
                if over > 0:
                    self._shed(device, over, keep=ws)
                    over = self.usage().get(device, 0) + extra - limit
                if over > 0:
                    self.refusals += 1
                    where = "memory" if device == "cpu" else f"GPU memory ({device})"
                    _log.warning(
                        "Refused an action needing %s of %s: %s over the budget",
                        _mib(extra),
                        where,
                        _mib(over),
                    )
                    raise ServerFull(f"{FULL_MESSAGE} ({what} needs {_mib(extra)} of {where}.)")

    def _shed(self, device: str, amount: int, *, keep: Workspace | None) -> int:
        """Drop recomputable caches holding memory on `device` until `amount` bytes are freed; the freed bytes."""
        freed = 0
        with self._lock:
            entries = sorted(
                ((e.last_active, e) for e in self._visitors.values() if e.ref() is not None),
                key=lambda pair: pair[0],
            )
        idle = [e.ref() for _, e in entries if e.busy == 0 and e.ref() is not keep]
        for ws in idle:
            if freed >= amount:
                return freed
            freed += self._drop_caches(ws, device)
        if freed < amount and self._shared is not None and self._drop_shared is not None:
            before = self._shared().get(device, 0)
            if before:
                self._drop_shared()
                freed += before - self._shared().get(device, 0)
        if freed < amount and keep is not None:
            freed += self._drop_caches(keep, device)
        return freed

    def _drop_caches(self, ws: Workspace | None, device: str) -> int:
        """Free `ws`'s recomputable caches (features, object tokens, KV, the display copy); bytes freed on
        `device`."""
        if ws is None:
            return 0
        before = _total(holdings(ws)).get(device, 0)
        ws.drop_caches()
        after = _total(holdings(ws)).get(device, 0)
        if before > after:
            self.dropped += 1
        return before - after

    def settle(self, ws: Workspace | None = None) -> None:
        """After an action or a warm-up: if any device is over its limit (caches grew), drop caches (idle
        visitors', the shared ones, then `ws`'s) until it is not. Never refuses: what was done is done."""
        with self._lock:
            usage = self.usage()
            for device, limit in self.limits.items():
                over = usage.get(device, 0) - limit
                if over > 0:
                    self._shed(device, over, keep=ws)

    def after_warm_up(self, session: ChatSession) -> None:
        """`Warmer.on_stored`: a warm-up stored features and a KV prefix; keep the budget."""
        owner = next((ws for ws in self.visitors() if ws.session is session), None)
        self.settle(owner)

    # ------------------------------------------------------------------ actions

    @contextlib.contextmanager
    def action(
        self, ws: Workspace, need: Mapping[str, int] | None = None, what: str = "This"
    ) -> Iterator[None]:
        """One visitor action: room for `need` made first (or `ServerFull`), the visitor marked busy (its caches
        are not dropped for others meanwhile), an allocator's out-of-memory turned into `ServerFull` after
        freeing, the budget settled afterwards."""
        self.touch(ws)
        entry = self._visitors[id(ws)]
        if need:
            self.admit(ws, need, what)
        with self._lock:
            entry.busy += 1
        try:
            yield
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.recover(ws)
            raise ServerFull(FULL_MESSAGE) from exc
        finally:
            with self._lock:
                entry.busy -= 1
                entry.last_active = time.monotonic()
                done = entry.busy == 0
            if done:
                self.settle(ws)

    def stream(
        self, ws: Workspace, replies: Iterable[Any], need: Mapping[str, int] | None = None
    ) -> Iterator[Any]:
        """`action` around a streamed answer: the room is made when the stream starts."""
        with self.action(ws, need, "This answer"):
            yield from replies

    def recover(self, ws: Workspace | None) -> None:
        """After an allocator ran out of memory: counted as a refusal, logged, and everything is freed (`free`)."""
        self.refusals += 1
        _log.warning("Out of memory during a visitor's action; caches dropped")
        self.free(ws)

    def free(self, ws: Workspace | None = None) -> None:
        """Every idle visitor's caches, the shared ones and `ws`'s own are dropped, and Python and the CUDA
        allocator give back what they hold (after an out-of-memory error, or before another model is planned)."""
        for device in {*self.limits, "cpu", *self.usage()}:
            self._shed(device, 1 << 62, keep=ws)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> str:
        """One line for logs and the status panel."""
        usage = self.usage()
        parts = [
            f"{device}: {_mib(usage.get(device, 0))} of {_mib(limit)}"
            for device, limit in sorted(self.limits.items())
        ]
        return f"visitors' memory ({len(self.visitors())} visitors): " + ", ".join(parts)


# ---------------------------------------------------------------------- the workspace's actions


Need = Callable[..., Mapping[str, int] | None]


def budgeted(need: Need | None = None, what: str = "This") -> Callable[[Callable], Callable]:
    """A `Workspace` method as one budgeted action (`MemoryBudget.action`): `need(ws, *args, **kwargs)` gives
    the bytes per device it will add, known before anything is allocated. A method that returns a stream
    (an answer) is budgeted for as long as it streams."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
            budget: MemoryBudget = ws.service.budget
            with budget.action(ws, need(ws, *args, **kwargs) if need else None, what):
                result = method(ws, *args, **kwargs)
            if isinstance(result, Iterator):
                return budget.stream(ws, result)
            return result

        return run

    return wrap


def _net(ws: Workspace, device: str, size: int) -> dict[str, int]:
    """`size` new bytes on `device` for something that replaces all `ws` holds there (new media)."""
    return {device: size - _total(holdings(ws)).get(device, 0)}


def need_image(ws: Workspace, source: object, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Opening an image: its frame and display copy, in place of what the visitor held."""
    from .workspace import DISPLAY_SIDE

    return _net(ws, "cpu", image_bytes(source, ws.service.settings.media, DISPLAY_SIDE))


def need_clip(ws: Workspace, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Opening a clip: its frames (an upper bound from the file's metadata), in place of what was held."""
    from .workspace import DISPLAY_SIDE

    return _net(ws, "cpu", clip_bytes(path, ws.service.settings.media, DISPLAY_SIDE))


def need_tracking(ws: Workspace, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Tracking: one mask per object and sampled frame (a byte per pixel)."""
    if ws.clip is None or ws.session is None:
        return {}
    height, width = ws.clip.frames[0].shape[:2]
    return {"cpu": len(ws.session.objects) * len(ws.clip) * height * width}


def need_answer(ws: Workspace, *args: Any, **kwargs: Any) -> dict[str, int]:
    """An answer, on the model's device: the KV cache and embedding rows of its new tokens, and, when the
    prompt's are not cached (never computed, or dropped for room), of the whole prompt: its last measured
    length, else the longest a prompt may be (`ChatLimits.max_prompt_tokens`)."""
    settings = kwargs.get("settings") or next((a for a in args if hasattr(a, "max_new_tokens")), None)
    session = ws.session
    if session is None or settings is None:
        return {}
    model = session.model
    rows = int(settings.max_new_tokens)
    if session.prefix_cache.rows is None:
        known = session.last_prompt.lm_length if session.last_prompt is not None else None
        rows += known or session.limits.max_prompt_tokens
    text = getattr(model.config, "text_config", None) or model.config
    per_row = kv_bytes_per_token(model.config, model.dtype) + int(text.hidden_size) * _element_size(
        model.dtype
    )
    return {str(model.device): rows * per_row}


def _element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()
