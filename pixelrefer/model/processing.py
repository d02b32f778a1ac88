"""From an instruction to token ids: instruction pieces, the official chat template, token expansion.

An instruction is a sequence of pieces: text, references to objects, and the place of the image or
clip. User text is only ever encoded as text (special-token parsing disabled), so a typed `<|im_end|>`,
`<image>` or `<REGION>` is inert. The official string syntax (`<region>` placeholders and an optional
`<image>` / `<video>` tag) is parsed into pieces by `parse_instruction`.

The rendering reproduces the official DEFAULT_CHAT_TEMPLATE token for token: every piece of template
text between two special tokens is encoded as one chunk, exactly as the official tokenizer splits the
rendered string at its special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..runtime.errors import InputError
from .config import Variant

__all__ = [
    "MEDIA",
    "MediaSlot",
    "ObjectRef",
    "ObjectSlots",
    "Piece",
    "PromptTokens",
    "Turn",
    "frame_keep_mask",
    "parse_instruction",
    "render_prompt",
]

Modality = Literal["image", "video"]


@dataclass(frozen=True)
class ObjectRef:
    """Where object `index` (0-based, in the order the masks were given) is spliced in."""

    index: int


@dataclass(frozen=True)
class _MediaTag:
    def __repr__(self) -> str:
        return "MEDIA"


MEDIA = _MediaTag()
"""Where the image or clip goes (the official `<image>` / `<video>` tag). Ignored by Lite."""

Piece = str | ObjectRef | _MediaTag


@dataclass(frozen=True)
class Turn:
    """One message. User turns hold pieces; assistant turns hold the token ids the model generated."""

    role: Literal["user", "assistant"]
    pieces: tuple[Piece, ...] = ()
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class MediaSlot:
    """How many `<image>` tokens each image or frame takes, and the frames' timestamps (video)."""

    modality: Modality
    tokens_per_frame: tuple[int, ...]
    timestamps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ObjectSlots:
    """The `<REGION>` runs of one object: (timestamp or None, count) per mask, in mask order."""

    runs: tuple[tuple[float | None, int], ...]


@dataclass
class PromptTokens:
    """The token ids handed to the model (before frame-token pruning) and where the splice goes.

    Positions are recorded while rendering, never found by scanning ids, so nothing typed by a user can
    move them. `object_order` is the object index of each `<REGION>` run, in prompt order.
    """

    input_ids: list[int]
    media_positions: list[int] = field(default_factory=list)
    region_positions: list[int] = field(default_factory=list)
    object_order: list[int] = field(default_factory=list)


_REGION = re.compile(r"<region>")


def parse_instruction(text: str, n_objects: int, modality: Modality) -> tuple[Piece, ...]:
    """Read the official string syntax: each `<region>` is the next object, the modality tag the media.

    Anything else (`<region0>`, `<object1>`, `<REGION>`, a tag of the other modality) stays plain text.
    """
    tag = "<image>" if modality == "image" else "<video>"
    placeholders = len(_REGION.findall(text))
    if placeholders != n_objects:
        raise InputError(
            f"The instruction has {placeholders} <region> placeholder(s) but {n_objects} object(s) were given"
        )
    pieces: list[Piece] = []
    counter = 0
    for chunk_index, chunk in enumerate(text.split(tag)):
        if chunk_index:
            pieces.append(MEDIA)
        parts = _REGION.split(chunk)
        for part_index, part in enumerate(parts):
            if part_index:
                pieces.append(ObjectRef(counter))
                counter += 1
            if part:
                pieces.append(part)
    return tuple(pieces)


def _content_items(pieces: Sequence[Piece], keep_media: bool) -> list[Piece]:
    """Split at the media tag and strip each text chunk, as the official message conversion does."""
    chunks: list[list[Piece]] = [[]]
    for piece in pieces:
        if piece is MEDIA:
            chunks.append([])
        else:
            chunks[-1].append(piece)
    items: list[Piece] = []
    for index, chunk in enumerate(chunks):
        if index and keep_media:
            items.append(MEDIA)
        merged: list[Piece] = []
        for piece in chunk:
            if isinstance(piece, str) and merged and isinstance(merged[-1], str):
                merged[-1] += piece
            else:
                merged.append(piece)
        if merged and isinstance(merged[0], str):
            merged[0] = merged[0].lstrip()
        if merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1].rstrip()
        items.extend(p for p in merged if not (isinstance(p, str) and not p))
    return items


class _Ids:
    """Accumulates template text and special ids; text runs are encoded as single chunks."""

    def __init__(self, encode) -> None:
        self._encode = encode
        self.ids: list[int] = []
        self.positions: dict[str, list[int]] = {"media": [], "region": []}
        self._text: list[str] = []

    def text(self, value: str) -> None:
        self._text.append(value)

    def special(self, token_id: int, count: int = 1, kind: str | None = None) -> None:
        self._flush()
        if kind is not None:
            self.positions[kind].extend(range(len(self.ids), len(self.ids) + count))
        self.ids.extend([token_id] * count)

    def raw(self, token_ids: Sequence[int]) -> None:
        self._flush()
        self.ids.extend(token_ids)

    def _flush(self) -> None:
        if self._text:
            joined = "".join(self._text)
            self._text = []
            if joined:
                self.ids.extend(self._encode(joined))

    def done(self) -> list[int]:
        self._flush()
        return self.ids


def _time(value: float) -> str:
    return str(round(value, 1))


@dataclass(frozen=True)
class SpecialIds:
    im_start: int
    im_end: int
    image: int
    region: int


def render_prompt(
    turns: Sequence[Turn],
    *,
    variant: Variant,
    media: MediaSlot,
    objects: Sequence[ObjectSlots],
    specials: SpecialIds,
    encode,
) -> PromptTokens:
    """Token ids of a conversation ending with the assistant generation prompt.

    The full model gets the media in the first user turn that has a MEDIA piece, or, when none has one,
    at the start of the first user turn (the official auto-insertion). Lite gets no media tokens.
    `encode(text) -> list[int]` must encode plain text with special-token parsing disabled.
    """
    if not turns or turns[-1].role != "user":
        raise InputError("The conversation must end with a user turn")
    keep_media = variant == "full"
    has_tag = any(MEDIA in turn.pieces for turn in turns if turn.role == "user")
    out = _Ids(encode)
    order: list[int] = []
    media_placed = False
    for turn_index, turn in enumerate(turns):
        out.special(specials.im_start)
        out.text(f"{turn.role}\n")
        if turn.role == "assistant":
            out.raw(turn.token_ids)
        else:
            pieces = list(turn.pieces)
            if keep_media and not has_tag and turn_index == 0:
                pieces.insert(0, MEDIA)
            for item in _content_items(pieces, keep_media):
                if item is MEDIA:
                    if media_placed:
                        raise InputError("The media can appear only once in a conversation")
                    media_placed = True
                    _render_media(out, media, specials)
                elif isinstance(item, ObjectRef):
                    if not 0 <= item.index < len(objects):
                        raise InputError(
                            f"The instruction refers to object {item.index + 1}, which does not exist"
                        )
                    order.append(item.index)
                    _render_object(out, objects[item.index], specials)
                else:
                    out.text(item)
        out.special(specials.im_end)
        out.text("\n")
    out.special(specials.im_start)
    out.text("assistant\n")
    ids = out.done()
    return PromptTokens(ids, out.positions["media"], out.positions["region"], order)


def _render_media(out: _Ids, media: MediaSlot, specials: SpecialIds) -> None:
    if media.modality == "image":
        out.special(specials.image, media.tokens_per_frame[0], kind="media")
        out.text("\n")
        return
    last = len(media.tokens_per_frame) - 1
    for index, count in enumerate(media.tokens_per_frame):
        if media.timestamps is not None:
            out.text(f"Time {_time(media.timestamps[index])}s:")
        out.special(specials.image, count, kind="media")
        out.text("," if index < last else "\n")


def _render_object(out: _Ids, slots: ObjectSlots, specials: SpecialIds) -> None:
    out.text("[")
    for index, (timestamp, count) in enumerate(slots.runs):
        if index:
            out.text(",")
        if timestamp is not None:
            out.text(f"Time {_time(timestamp)}:")
        out.special(specials.region, count, kind="region")
    out.text("]")


def frame_keep_mask(frames: Sequence[torch.Tensor], merge: int, threshold: float = 0.1) -> torch.Tensor:
    """Differential frame pruning of the full model's video tokens (spec §3.4).

    `frames` are the processor's patch rows per frame (merge-blocked order, in the model's pixel dtype).
    A merged token of a later frame is kept when its pixels changed by more than `threshold` (mean
    absolute difference x 255) from the previous frame; the first frame keeps everything, and a frame
    with nothing left keeps its first token. Returns one bool per merged token, frames concatenated.
    """
    if len(frames) == 1:
        return torch.ones(frames[0].shape[0] // merge**2, dtype=torch.bool)
    stacked = torch.stack(list(frames)).view(len(frames), frames[0].shape[0] // merge**2, -1)
    diff = torch.abs(stacked[1:] - stacked[:-1]).mean(dim=-1) * 255
    diff = torch.cat([torch.full_like(diff[0:1], threshold + 1), diff], dim=0)
    keep = diff > threshold
    empty = torch.nonzero(keep.sum(dim=1) < 1)[:, 0]
    keep[empty, :1] = True
    return keep.flatten()
