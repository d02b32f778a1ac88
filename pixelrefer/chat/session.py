"""A multi-turn, streaming chat about the marked objects of one image or clip.

The visitor names objects `<object1>`, `<object2>`, ... (stable ids that survive edits). The model was
trained on the official demo's wording, so each conversation declares its objects that way, with 0-based
labels (`<region0>` in images, `<object0>` in clips), and the labels in the model's answers are mapped
back to the visitor's ids. Nothing the visitor types is ever parsed for `<region>` or special tokens.

Renderings (K objects, labels L0..):
- full model, image: `There is K region in the image: <region0><region>, <region1><region>. ` + question
  (one object: `There is 1 region in the image: <region0> <region>. `); the `<image>` goes first.
- full model, clip: `There is K objects in the video: <object0><region>, ... ` (one: `There is 1 object
  in the video: <object0> <region>. `); the sampled frames go first.
- Lite: no media, `There are K regions in the image: ...` / `There are K objects in the video: ...`
  (one object as above).
- "Describe": the official caption prompts, `Please describe the <region> in the image in detail.`
  (`... in the video in detail.`); Lite: `Please describe the region <region> in the image in detail. Do
  not describe anything else.` and `There is one object in the video: <region>.\\nPlease describe in
  detail the marked object in the video.`

The declaration sits in the first question of the conversation; follow-ups are plain questions, and the
history is sent with real user/assistant roles, assistant turns as the ids the model generated.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from ..media.images import ImageInput, load_image
from ..media.video import Clip
from ..model.cache import FeatureCache, PrefixCache
from ..model.generation import GenerationSettings
from ..model.inference import PixelRefer
from ..model.planning import Prepared, PromptRecord, Video, frame_mask
from ..model.processing import ObjectRef, Piece, Turn
from ..runtime.errors import InputError
from .gate import Gate
from .limits import ChatLimits
from .warmup import WarmPlan, WarmReport, warm_up

__all__ = ["ChatLimits", "ChatObject", "ChatSession", "Exchange", "Reply", "parse_question"]

_OBJECT_TAG = re.compile(r"<object(\d+)>")


@dataclass
class ChatObject:
    """A marked object: masks by clip frame index (images use frame 0), stable id and colour."""

    id: int
    color_index: int
    masks: dict[int, np.ndarray]
    marked_frames: tuple[int, ...] = ()
    name: str = ""

    @property
    def tag(self) -> str:
        return f"<object{self.id}>"


@dataclass(frozen=True)
class _Ref:
    object_id: int


@dataclass
class Exchange:
    """One question and its answer, as kept in the history."""

    kind: Literal["ask", "describe"]
    question: str
    pieces: tuple[str | _Ref, ...]
    answer_ids: list[int]
    answer: str
    finish_reason: str
    settings: GenerationSettings
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Reply:
    """A streamed increment of the answer; the last one has `done` and the finished `exchange`."""

    delta: str
    done: bool = False
    exchange: Exchange | None = None


def parse_question(question: str, known_ids: Sequence[int]) -> tuple[str | _Ref, ...]:
    """Split a question into text and `<objectK>` references; only those tags are special."""
    pieces: list[str | _Ref] = []
    position = 0
    for match in _OBJECT_TAG.finditer(question):
        object_id = int(match.group(1))
        if object_id not in known_ids:
            listed = ", ".join(f"<object{i}>" for i in known_ids) or "none yet"
            raise InputError(f"{match.group(0)} is not a marked object (marked: {listed})")
        if match.start() > position:
            pieces.append(question[position : match.start()])
        pieces.append(_Ref(object_id))
        position = match.end()
    if position < len(question):
        pieces.append(question[position:])
    return tuple(pieces)


class _LabelMapper:
    """Rewrites model labels (`<region0>`, `<object1>`) into visitor tags in streamed text.

    A possible label cut between two increments is held back until it is complete.
    """

    def __init__(self, mapping: dict[str, str]) -> None:
        self._mapping = mapping
        self._pattern = re.compile(
            "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) or "(?!)"
        )
        self._pending = ""

    def _rewrite(self, text: str) -> str:
        return self._pattern.sub(lambda m: self._mapping[m.group(0)], text)

    def push(self, delta: str) -> str:
        text = self._pending + delta
        cut = text.rfind("<")
        if cut != -1 and ">" not in text[cut:] and len(text) - cut <= 12:
            self._pending = text[cut:]
            text = text[:cut]
        else:
            self._pending = ""
        return self._rewrite(text)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._rewrite(text)

    def map(self, text: str) -> str:
        return self._rewrite(text)


class ChatSession:
    """A conversation about the objects of one image or clip, with caches that make follow-ups cheap.

    Give `image=` or `clip=` (a `pixelrefer.media.video.Clip`). Masks of a clip are keyed by clip frame index
    and must lie on sampled frames or on frames passed in `extra_frames`. `caching=False` re-encodes
    everything every turn (the baseline the benchmarks compare against); answers are the same.
    """

    def __init__(
        self,
        model: PixelRefer,
        *,
        image: ImageInput | None = None,
        clip: Clip | None = None,
        extra_frames: Mapping[int, np.ndarray] | None = None,
        limits: ChatLimits | None = None,
        caching: bool = True,
    ) -> None:
        if (image is None) == (clip is None):
            raise InputError("A chat is about exactly one image or one clip")
        self.model = model
        self.limits = limits or ChatLimits()
        self.image = load_image(image) if image is not None else None
        self.clip = clip
        self.frames: dict[int, np.ndarray] = (
            {0: self.image} if self.image is not None else dict(zip(clip.indices, clip.frames, strict=True))
        )
        for index, frame in (extra_frames or {}).items():
            self.frames[int(index)] = load_image(frame)
        self.objects: list[ChatObject] = []
        self.history: list[Exchange] = []
        self.feature_cache = FeatureCache(self.limits.cache_bytes)
        self.prefix_cache = PrefixCache()
        self.caching = caching
        self._next_id = 1
        self._next_color = 0
        self._stop = threading.Event()
        self.last_prompt: PromptRecord | None = None
        """The last answer's prompt, without its pixels (for the memory budget and the API's usage counts)."""
        self.version = 0
        self.version_lock = threading.Lock()
        self.gate: Gate | None = None
        """The app's model-event gate (`Service.gate`): each answer holds it, so background work waits."""

    _LOCAL = ("model", "gate", "_stop", "version_lock", "feature_cache", "prefix_cache", "last_prompt")
    """What a pickled session leaves behind: the model, its locks and its caches (recomputed on demand)."""

    def __getstate__(self) -> dict:
        """The conversation as plain CPU data: media, objects, history. A ZeroGPU call takes it into a worker
        that attaches its own model (`pixelrefer.serve.zerogpu_calls`); the caches are not carried (the
        worker's first answer computes them), so nothing on a GPU crosses a process boundary."""
        return {name: value for name, value in vars(self).items() if name not in self._LOCAL}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self.model = None
        self.gate = None
        self._stop = threading.Event()
        self.version_lock = threading.Lock()
        self.feature_cache = FeatureCache(self.limits.cache_bytes)
        self.prefix_cache = PrefixCache()
        self.last_prompt = None

    def adopt(self, other: ChatSession) -> None:
        """Take the conversation that a copy of this session (a ZeroGPU worker's) ended with."""
        self.history = list(other.history)
        self._changed()

    @property
    def modality(self) -> Literal["image", "video"]:
        return "image" if self.image is not None else "video"

    # ------------------------------------------------------------------ objects

    def _check_masks(self, masks: Mapping[int, np.ndarray] | np.ndarray) -> dict[int, np.ndarray]:
        if not isinstance(masks, Mapping):
            if self.modality == "video":
                raise InputError("In a clip, give an object's masks as {frame index: mask}")
            masks = {0: masks}
        checked = {}
        for index, mask in masks.items():
            if int(index) not in self.frames:
                if self.modality == "image":
                    raise InputError(f"An image has only frame 0; this mask is on frame {index}")
                listed = ", ".join(str(f) for f in sorted(self.frames))
                raise InputError(f"Frame {index} is not one of the clip's sampled frames ({listed})")
            source = self.clip.source_shape if self.clip is not None else None
            binary = frame_mask(mask, self.frames[int(index)].shape[:2], "The mask", source_shape=source)

            if binary.any():
                self.model.check_object_mask(binary, "This object")
                checked[int(index)] = binary
        if not checked:
            raise InputError("The object's mask is empty: mark at least one pixel")
        return checked

    def add_object(
        self,
        masks: Mapping[int, np.ndarray] | np.ndarray,
        *,
        marked_frames: Sequence[int] = (),
        name: str = "",
    ) -> ChatObject:
        """Add an object; it becomes `<objectK>` with the next unused id and colour."""
        self.limits.check_object_count(len(self.objects))
        obj = ChatObject(
            self._next_id, self._next_color, self._check_masks(masks), tuple(marked_frames), name
        )
        self._next_id += 1
        self._next_color += 1
        self.objects.append(obj)
        self._changed()
        return obj

    def replace_object(
        self,
        object_id: int,
        masks: Mapping[int, np.ndarray] | np.ndarray,
        *,
        marked_frames: Sequence[int] = (),
    ) -> ChatObject:
        """New masks for an existing object (same id, colour and place in the conversation)."""
        obj = self.get(object_id)
        obj.masks = self._check_masks(masks)
        obj.marked_frames = tuple(marked_frames)
        self._changed()
        return obj

    def rename_object(self, object_id: int, name: str) -> None:
        self.get(object_id).name = name

    def remove_object(self, object_id: int) -> None:
        """Forget an object. The history is cleared: the labels of later objects shift."""
        obj = self.get(object_id)
        self._changed()
        self.objects.remove(obj)
        self.history.clear()
        self.prefix_cache.clear()

    def _changed(self) -> None:
        """The next prompt changed: a warm-up planned before now stops and stores nothing."""
        with self.version_lock:
            self.version += 1

    def get(self, object_id: int) -> ChatObject:
        for obj in self.objects:
            if obj.id == object_id:
                return obj
        raise InputError(f"<object{object_id}> is not a marked object")

    # ------------------------------------------------------------------ rules

    def model_masks(self, obj: ChatObject) -> dict[int, np.ndarray]:
        """The masks of `obj` the model sees.

        Images: the one mask. Full model, clip: one mask, on the frame the visitor marked (the largest
        if several), else on the frame where the object is largest. Lite, clip: up to
        `masks_per_object` frames (fewer when `max_region_tokens` / 32 per object is smaller), evenly
        spaced over the frames where the object is visible, marked frames always included.
        """
        if self.modality == "image":
            return dict(obj.masks)
        visible = sorted(obj.masks)
        if self.model.variant == "full":
            marked = [f for f in obj.marked_frames if f in obj.masks]
            pool = marked or visible
            best = max(pool, key=lambda f: (int(obj.masks[f].sum()), -f))
            return {best: obj.masks[best]}
        per_object = self.limits.max_region_tokens // (self.model.config.mask_num * max(1, len(self.objects)))
        budget = max(1, min(self.limits.masks_per_object, per_object))
        chosen = [f for f in obj.marked_frames if f in obj.masks][:budget]
        rest = [f for f in visible if f not in chosen]
        room = budget - len(chosen)
        if room > 0 and rest:
            picks = np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int)
            chosen += [rest[i] for i in sorted(set(picks.tolist()))]
        return {f: obj.masks[f] for f in sorted(chosen)}

    def labels(self) -> dict[int, str]:
        """Object id → the 0-based label the model is told."""
        word = "region" if self.modality == "image" else "object"
        return {obj.id: f"<{word}{i}>" for i, obj in enumerate(self.objects)}

    def _declaration(self) -> list[Piece]:
        labels = self.labels()
        count = len(self.objects)
        noun = "region" if self.modality == "image" else "object"
        where = "image" if self.modality == "image" else "video"
        if count == 1:
            only = self.objects[0]
            return [f"There is 1 {noun} in the {where}: {labels[only.id]} ", ObjectRef(0), ". "]
        if self.model.variant == "lite":
            head = f"There are {count} {noun}s in the {where}: "
        else:
            head = f"There is {count} {noun if self.modality == 'image' else 'objects'} in the {where}: "
        pieces: list[Piece] = [head]
        for index, obj in enumerate(self.objects):
            pieces += [labels[obj.id], ObjectRef(index)]
            pieces.append(", " if index < count - 1 else ". ")
        return pieces

    def _describe_pieces(self, index: int) -> list[Piece]:
        where = "image" if self.modality == "image" else "video"
        if self.model.variant == "lite" and where == "image":
            return [
                "Please describe the region ",
                ObjectRef(index),
                " in the image in detail. Do not describe anything else.",
            ]
        if self.model.variant == "lite":
            return [
                "There is one object in the video: ",
                ObjectRef(index),
                ".\nPlease describe in detail the marked object in the video.",
            ]
        return ["Please describe the ", ObjectRef(index), f" in the {where} in detail."]

    def _turns(self, pending: Exchange) -> list[Turn]:
        labels = self.labels()
        position = {obj.id: i for i, obj in enumerate(self.objects)}
        turns: list[Turn] = []
        declared = False
        for exchange in [*self.history, pending]:
            if exchange.kind == "describe":
                target = exchange.pieces[0]
                assert isinstance(target, _Ref)
                pieces: list[Piece] = self._describe_pieces(position[target.object_id])
            else:
                pieces = [] if declared else self._declaration()
                declared = True
                for piece in exchange.pieces:
                    pieces.append(labels[piece.object_id] if isinstance(piece, _Ref) else piece)
            turns.append(Turn("user", tuple(pieces)))
            if exchange is not pending:
                turns.append(Turn("assistant", token_ids=tuple(exchange.answer_ids)))
        return turns

    # ------------------------------------------------------------------ asking

    def _regions(self) -> list[dict[int, np.ndarray]]:
        return [self.model_masks(obj) for obj in self.objects]

    def _media(self, regions: list[dict[int, np.ndarray]]) -> dict:
        if self.image is not None:
            return {"image": self.image}
        assert self.clip is not None
        needed = {f for region in regions for f in region}
        video = Video(
            frames=list(self.clip.frames),
            timestamps=list(self.clip.timestamps),
            annotated={f: self.frames[f] for f in sorted(needed)},
            fps=self.clip.native_fps,
        )
        return {"video": video}

    def prepare(self, exchange: Exchange) -> Prepared:
        """Check the request and build the model input; raises ValueError before any network runs."""
        if not self.objects:
            raise InputError("Mark an object first: the model answers questions about marked objects")
        regions = self._regions()
        prepared = self.model.prepare(
            turns=self._turns(exchange), regions=regions, seed=exchange.settings.seed, **self._media(regions)
        )
        self.check_prompt(prepared, exchange.settings.max_new_tokens)
        return prepared

    def check_prompt(self, prepared: Prepared, max_new_tokens: int) -> None:
        """Refuse a prompt that, with `max_new_tokens` more, breaks the prompt limit or the model's context
        (a warm-up checks its prompt with one new token, the question's own)."""
        context = int(getattr(self.model.config, "max_position_embeddings", 32768))
        self.limits.check_prompt(prepared.lm_length, max_new_tokens, context)

    # ------------------------------------------------------------------ warming up

    def warm_plan(self) -> WarmPlan | None:
        """What the next answer's prompt starts with: the conversation so far and a new question turn
        (declaring the objects when it is the first); None when there is nothing to precompute."""
        if not self.caching or (not self.objects and self.model.variant == "lite"):
            return None
        pending = Exchange("ask", "", (), [], "", "", GenerationSettings())
        turns = self._turns(pending) if self.objects else [Turn("user", ())]
        regions = self._regions()
        return WarmPlan(self.version, turns, regions, self._media(regions), pending.settings.seed)

    def warm(self) -> WarmReport:
        """Precompute now, on this thread, what the next answer needs (features, object tokens, the
        prompt prefix's KV cache) into this session's caches; the answer is the same, only sooner.
        The app runs this in the background instead (`pixelrefer.chat.warmup.Warmer`)."""
        plan = self.warm_plan()
        return warm_up(self, plan) if plan is not None else WarmReport(reason="nothing to precompute")

    def _admit(self, settings: GenerationSettings) -> None:
        """The checks a new answer must pass before anything is computed (limits that do not need the prompt)."""
        self.limits.check_new_tokens(settings.max_new_tokens)
        self.limits.check_history(len(self.history))

    def _run(self, exchange: Exchange) -> Iterator[Reply]:
        with self.gate.event() if self.gate is not None else nullcontext():
            yield from self._answer(exchange)

    def _answer(self, exchange: Exchange) -> Iterator[Reply]:
        self._stop.clear()
        started = time.perf_counter()
        prepared = self.prepare(exchange)
        prepare_s = time.perf_counter() - started
        self.last_prompt = prepared.record()
        mapper = _LabelMapper({label: f"<object{oid}>" for oid, label in self.labels().items()})
        result = None
        for chunk in self.model.stream(
            prepared=prepared,
            settings=exchange.settings,
            cache=self.feature_cache if self.caching else None,
            prefix=self.prefix_cache if self.caching else None,
            stop=self._stop,
            timeout_s=self.limits.generation_timeout_s,
        ):
            result = chunk.result
            text = mapper.push(chunk.text)
            if result is None and text:
                yield Reply(text)
        assert result is not None
        ids = list(result.token_ids)
        if ids and ids[-1] in self.model.eos_ids:
            ids = ids[:-1]
        exchange.answer_ids = ids
        exchange.answer = mapper.map(result.text)
        exchange.finish_reason = result.finish_reason
        exchange.timings = {
            **result.timings,
            "prepare_s": prepare_s,
            "first_token_s": prepare_s + result.timings.get("first_token_s", 0.0),
            "total_s": prepare_s + result.timings["total_s"],
        }
        self.history.append(exchange)
        self._changed()
        yield Reply(text + mapper.flush(), done=True, exchange=exchange)

    def ask(self, question: str, settings: GenerationSettings | None = None) -> Iterator[Reply]:
        """Ask about the objects (`<object1>` ...); yields the answer as it is generated."""
        question = question.strip()
        if not question:
            raise InputError("The question is empty: type a question about the marked objects")
        self.limits.check_question(question)
        pieces = parse_question(question, [obj.id for obj in self.objects])
        settings = settings or GenerationSettings()
        self._admit(settings)
        exchange = Exchange("ask", question, pieces, [], "", "", settings)
        return self._run(exchange)

    def describe(self, object_id: int, settings: GenerationSettings | None = None) -> Iterator[Reply]:
        """The official caption prompt for one object."""
        obj = self.get(object_id)
        settings = settings or GenerationSettings()
        self._admit(settings)
        exchange = Exchange(
            "describe", f"Describe {obj.tag} in detail.", (_Ref(obj.id),), [], "", "", settings
        )
        return self._run(exchange)

    def regenerate(self, settings: GenerationSettings | None = None) -> Iterator[Reply]:
        """Answer the last question again (with new settings, e.g. another seed)."""
        if not self.history:
            raise InputError("There is no answer to regenerate")
        settings = settings or self.history[-1].settings
        self.limits.check_new_tokens(settings.max_new_tokens)
        last = self.history.pop()
        self._changed()
        exchange = replace(last, answer_ids=[], answer="", finish_reason="", settings=settings)
        return self._run(exchange)

    @staticmethod
    def final(replies: Iterable[Reply], on_text: Callable[[str], object] | None = None) -> Exchange:
        """Drain a reply stream (`ask`, `describe`, `regenerate`, or a stream that wraps one) for its finished
        exchange; `on_text` sees each piece of the answer as it comes (a CLI printing it, say)."""
        exchange = None
        for reply in replies:
            if on_text is not None and reply.delta:
                on_text(reply.delta)
            exchange = reply.exchange or exchange
        if exchange is None:
            raise RuntimeError("The reply stream ended without its finished exchange")
        return exchange

    def stop(self) -> None:
        """End the answer being generated (within one decoding step); the session stays usable."""
        self._stop.set()

    def clear(self) -> None:
        """Forget the conversation, keep the objects and the encoded features."""
        self._changed()
        self.history.clear()
        self.prefix_cache.clear()

    def move_to(self, model: PixelRefer) -> ChatSession:
        """A session for another model with the same media and objects (ids and colours kept), no history."""
        moved = ChatSession(model, image=self.image, clip=self.clip, limits=self.limits, caching=self.caching)
        moved.frames = dict(self.frames)
        moved.objects = [replace(obj, masks=dict(obj.masks)) for obj in self.objects]
        moved._next_id, moved._next_color = self._next_id, self._next_color
        moved.gate = self.gate
        self.close()
        return moved

    def close(self) -> None:
        """Free everything the session holds."""
        self.clear()
        self.feature_cache.clear()
        self.objects.clear()
        self.last_prompt = None

    @property
    def cache_bytes(self) -> int:
        return self.feature_cache.nbytes + self.prefix_cache.nbytes

    def transcript(self) -> list[dict]:
        """The conversation with visitor ids, for export."""
        return [
            {
                "kind": e.kind,
                "question": e.question,
                "answer": e.answer,
                "finish_reason": e.finish_reason,
                "seed": e.settings.seed,
                "objects": sorted({p.object_id for p in e.pieces if isinstance(p, _Ref)}),
            }
            for e in self.history
        ]
