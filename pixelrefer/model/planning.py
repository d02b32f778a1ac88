"""Prompt planning: everything a request needs before any network runs, checked and computed once.

`Planner.prepare` takes the media, one entry per object (a mask for an image, masks by frame index for a
clip) and an instruction or a whole conversation, and returns `Prepared`: the token ids, the preprocessed
pixels of the media, and per object its crops, cell permutations and token slots. Every mistake in the
input is refused here, as an `InputError`, before any compute; the object masks are checked against the
crop budget before the media or any crop is preprocessed.

Media flow, as in the official code: the full model sees the image (or the sampled frames) as `<image>`
tokens and each object as `<REGION>` tokens; Lite sees only object tokens, into which the frame's
context was infused. Frames that carry masks ("annotated" frames) need not be among the sampled ones.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..media.images import ImageInput, load_image
from ..media.masks import fit_mask
from ..media.sampling import frame_time
from ..runtime.errors import InputError
from .cache import content_key
from .config import PixelReferConfig, Variant
from .objects import OBJECT_BUDGET, ObjectCrop, check_crop, crop_plan, global_view, plan_crop
from .processing import (
    MediaSlot,
    ObjectSlots,
    Piece,
    PromptTokens,
    SpecialIds,
    Turn,
    frame_keep_mask,
    parse_instruction,
    render_prompt,
)
from .vision import ProcessedImages, preprocess_images

__all__ = ["Instruction", "MaskInput", "Planner", "Prepared", "PromptRecord", "Region", "Video", "frame_mask"]

MaskInput = np.ndarray | torch.Tensor
Region = MaskInput | Mapping[int, MaskInput]
Instruction = str | Sequence[Piece]
Masks = list[tuple[int, np.ndarray]]
"""One object's non-empty masks as (frame index, bool mask), in frame order."""


@dataclass
class Video:
    """A clip as the model takes it.

    `frames` are the sampled frames the full model sees, with their `timestamps` (seconds). `annotated`
    holds the frames that carry masks, by clip frame index, and `fps` is the clip's native rate: an
    annotated frame `i` is at `i / fps` (Lite's `Time t:` labels).
    """

    frames: Sequence[np.ndarray]
    timestamps: Sequence[float]
    annotated: Mapping[int, np.ndarray]
    fps: float


@dataclass
class _Media:
    modality: Literal["image", "video"]
    frames: list[np.ndarray]
    timestamps: list[float] | None
    annotated: dict[int, np.ndarray]
    fps: float | None


@dataclass
class ObjectPlan:
    """One object as the encoder takes it: its crops, their pixels and cell orders, its prompt slots."""

    frames: list[int]
    crops: list[ObjectCrop]
    pixels: ProcessedImages
    permutations: list[torch.Tensor | None]
    slots: ObjectSlots
    global_pixels: ProcessedImages | None = None
    local_pixels: ProcessedImages | None = None
    key: str = ""


@dataclass
class MediaPlan:
    """The image or the sampled frames as the encoder takes them (None for Lite, which sees no media)."""

    pixels: ProcessedImages
    tokens_per_frame: list[int]
    keep: torch.Tensor | None
    key: str


@dataclass
class Prepared:
    """Everything computed before any network runs: token ids, preprocessed pixels, object plans."""

    variant: Variant
    prompt: PromptTokens
    media: MediaPlan | None
    objects: list[ObjectPlan]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt.input_ids

    @property
    def lm_length(self) -> int:
        """Positions the LLM sees after frame-token pruning."""
        dropped = 0 if self.media is None or self.media.keep is None else int((~self.media.keep).sum())
        return len(self.prompt.input_ids) - dropped

    def record(self) -> PromptRecord:
        """What is worth keeping once the prompt has been encoded: everything but the pixels."""
        return PromptRecord(list(self.input_ids), self.lm_length, tuple(o.key for o in self.objects))


@dataclass(frozen=True)
class PromptRecord:
    """A prepared prompt without its pixels, as a chat session keeps it after an answer: its token ids, the
    positions the LLM saw and its objects' cache keys. The pixels are most of a `Prepared` (68 MB for 16
    frames at 1080p) and are not needed once encoded; a session that kept them held memory no budget saw."""

    input_ids: list[int]
    lm_length: int
    object_keys: tuple[str, ...]


def frame_mask(
    mask: MaskInput, shape: tuple[int, int], label: str, *, source_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A mask in any accepted format (tensors too) as bool, fitted to its frame by `masks.fit_mask`."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    return fit_mask(array, shape, source_shape=source_shape, what=label)


class Planner:
    """Turns a request into `Prepared` with the checkpoint's tokenizer, image processor and config."""

    def __init__(
        self, tokenizer: Any, processor: Any, config: PixelReferConfig, source: str, dtype: torch.dtype
    ) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.config = config
        self.variant: Variant = config.variant
        self.source = source
        self.dtype = dtype
        """The weights' dtype: a clip's frame-token pruning compares frames in it, as the model sees them."""
        self.specials = self._special_ids()
        self.max_object_pixels = OBJECT_BUDGET * config.max_pixels
        """The largest crop one object's mask may need (see `objects.OBJECT_BUDGET`); settable."""

    def prepare(
        self,
        *,
        regions: Sequence[Region],
        instruction: Instruction | None = None,
        turns: Sequence[Turn] | None = None,
        image: ImageInput | None = None,
        video: Video | None = None,
        seed: int = 1234,
    ) -> Prepared:
        """Check and preprocess everything (no network runs): token ids, pixels, object crops.

        Give either `instruction` (the official string syntax, or pieces) or a whole conversation as
        `turns`. Errors in the input are raised here as `InputError`, before any compute.
        """
        media = self._media(image, video)
        objects = self._objects(media, regions)
        for number, masks in enumerate(objects, start=1):
            for _, mask in masks:
                self.check_object_mask(mask, f"Object {number}")
        if (instruction is None) == (turns is None):
            raise InputError("Give exactly one of instruction= or turns=")
        if turns is None:
            pieces = (
                parse_instruction(instruction, len(objects), media.modality)
                if isinstance(instruction, str)
                else tuple(instruction)
            )
            turns = [Turn("user", pieces)]
        media_plan = self._plan_media(media)
        object_plans = self._plan_objects(media, objects, seed)
        slot = MediaSlot(
            media.modality,
            tuple(media_plan.tokens_per_frame) if media_plan else (),
            tuple(media.timestamps) if media.timestamps is not None else None,
        )
        prompt = render_prompt(
            turns,
            variant=self.variant,
            media=slot,
            objects=[p.slots for p in object_plans],
            specials=self.specials,
            encode=self.encode_text,
        )
        unused = sorted(set(range(len(object_plans))) - set(prompt.object_order))
        if unused:
            raise InputError(f"The instruction never refers to object {unused[0] + 1}")
        return Prepared(self.variant, prompt, media_plan, object_plans)

    def check_object_mask(self, mask: np.ndarray, what: str = "The object") -> None:
        """Refuse a non-empty bool mask whose crop would exceed `max_object_pixels`, from its box and area
        alone (a few far-apart specks would otherwise need gigabytes); a chat checks each mask it is given."""
        check_crop(crop_plan(mask, self.variant, self.config.mask_num), self.max_object_pixels, what)

    # ------------------------------------------------------------------ text

    def encode_text(self, text: str) -> list[int]:
        """Plain-text ids: no added token can come from what a visitor types. `split_special_tokens` keeps
        special ones (`<|im_end|>`, `<image>`) as text, but Qwen2.5's non-special added tokens
        (`<tool_call>`, `<|fim_prefix|>`, ...) would still match; a text holding one is encoded by the BPE
        model alone, which gives the same ids as the tokenizer for any text without them."""
        if not any(token in text for token in self._matched_added_tokens):
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        backend = self.tokenizer.backend_tokenizer
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
        words = (
            backend.pre_tokenizer.pre_tokenize_str(normalized)
            if backend.pre_tokenizer
            else [(normalized, None)]
        )
        return [token.id for word, _ in words for token in backend.model.tokenize(word)]

    @functools.cached_property
    def _matched_added_tokens(self) -> tuple[str, ...]:
        """The added tokens the tokenizer matches inside text even with `split_special_tokens`."""
        return tuple(t.content for t in self.tokenizer.added_tokens_decoder.values() if not t.special)

    def _special_ids(self) -> SpecialIds:
        vocab = self.tokenizer.get_vocab()
        names = {"im_start": "<|im_start|>", "im_end": "<|im_end|>", "image": "<image>", "region": "<REGION>"}
        missing = [token for token in names.values() if token not in vocab]
        if missing:
            raise InputError(f"The tokenizer lacks the tokens {', '.join(missing)}")
        return SpecialIds(**{key: vocab[token] for key, token in names.items()})

    # ------------------------------------------------------------------ checking the input

    def _media(self, image: ImageInput | None, video: Video | None) -> _Media:
        if (image is None) == (video is None):
            raise InputError("Give exactly one of image= or video=")
        if image is not None:
            frame = load_image(image)
            return _Media("image", [frame], None, {0: frame}, None)
        assert video is not None
        if len(video.frames) != len(video.timestamps):
            raise InputError("A video needs one timestamp per frame")
        if self.variant == "full" and not video.frames:
            raise InputError("The clip has no frames")
        if not video.fps or video.fps <= 0:
            raise InputError("A video needs its native frame rate (fps)")
        frames = [load_image(f) for f in video.frames]
        annotated = {int(i): load_image(f) for i, f in video.annotated.items()}
        return _Media("video", frames, [float(t) for t in video.timestamps], annotated, float(video.fps))

    def _objects(self, media: _Media, regions: Sequence[Region]) -> list[Masks]:
        return [self._object(media, region, number) for number, region in enumerate(regions, start=1)]

    def _object(self, media: _Media, region: Region, number: int) -> Masks:
        """One object's masks, each fitted to its frame; empty ones dropped, an empty object refused."""
        if isinstance(region, Mapping):
            by_frame = dict(region)
        elif media.modality == "image":
            by_frame = {0: region}
        else:
            raise InputError(f"Object {number}: in a video, give its masks as {{frame index: mask}}")
        masks = []
        for frame_index in sorted(by_frame):
            if frame_index not in media.annotated:
                where = "the image" if media.modality == "image" else "the annotated frames"
                raise InputError(f"Object {number} has a mask on frame {frame_index}, which {where} lack")
            frame = media.annotated[frame_index]
            mask = frame_mask(by_frame[frame_index], frame.shape[:2], f"The mask of object {number}")
            if mask.any():
                masks.append((frame_index, mask))
        if not masks:
            raise InputError(f"Object {number} has no pixels: its mask is empty")
        if self.variant == "full" and len(masks) > 1:
            raise InputError(
                f"Object {number} has masks on {len(masks)} frames; the full model takes one mask per object"
            )
        return masks

    # ------------------------------------------------------------------ planning

    def _plan_media(self, media: _Media) -> MediaPlan | None:
        if self.variant == "lite":
            return None
        merge = self.config.spatial_merge_size
        downsampling = 1 if media.modality == "image" else merge
        pixels = preprocess_images(
            self.processor,
            media.frames,
            downsampling=downsampling,
            max_pixels=self.config.max_pixels,
            merge_size=merge,
        )
        per_frame = [int(t * h * w) // downsampling**2 for t, h, w in pixels.grid_thw.tolist()]
        keep = None
        if media.modality == "video":
            keep = frame_keep_mask([rows.to(self.dtype) for rows in pixels.split()], downsampling)
        key = content_key("media", self.source, *media.frames, downsampling, pixels.grid_thw)
        return MediaPlan(pixels, per_frame, keep, key)

    def _preprocess_crops(self, images: list[np.ndarray], shared_by: int) -> ProcessedImages:
        """Object images go through the tower at stride 1, sharing the budget among all masks of the call."""
        return preprocess_images(
            self.processor,
            images,
            downsampling=1,
            max_pixels=self.config.max_pixels,
            merge_size=self.config.spatial_merge_size,
            shared_by=shared_by,
        )

    def _plan_objects(self, media: _Media, objects: list[Masks], seed: int) -> list[ObjectPlan]:
        """Plans in object order; one generator draws every object's cell permutation, as the official code."""
        n_masks = sum(len(masks) for masks in objects)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        first_local: dict[int, np.ndarray] = {}
        return [
            self._plan_object(media, masks, number, n_masks, generator, first_local)
            for number, masks in enumerate(objects, start=1)
        ]

    def _plan_object(
        self,
        media: _Media,
        masks: Masks,
        number: int,
        n_masks: int,
        generator: torch.Generator,
        first_local: dict[int, np.ndarray],
    ) -> ObjectPlan:
        """One object's crops (Lite: with the frame's local and global views), pixels, permutations, slots.

        Lite's local view of a frame is the first object's on it (`first_local`), as the official code."""
        k = self.config.mask_num
        crops = [plan_crop(media.annotated[f], m, self.variant, k) for f, m in masks]
        for (frame_index, _), crop in zip(masks, crops, strict=True):
            if crop.n_cells == 0:
                raise InputError("An object is too thin to cover any cell of its crop grid")
            if self.variant == "lite":
                crop.local_view = first_local.setdefault(frame_index, crop.local_view)
                crop.global_view = global_view(media.annotated[frame_index])
        permutations = [
            torch.randperm(c.n_cells, generator=generator) if c.n_cells > k else None for c in crops
        ]
        frames = [f for f, _ in masks]
        try:
            pixels = self._preprocess_crops([c.crop for c in crops], n_masks)
        except InputError as exc:
            # The crop around a long, thin object is scaled up, past what the vision encoder takes.
            raise InputError(f"Object {number} is too long and thin to be encoded: {exc}") from exc
        if media.modality == "video" and self.variant == "lite":
            runs = tuple((frame_time(f, media.fps), k) for f in frames)
        else:
            runs = tuple((None, c.n_tokens) for c in crops)
        plan = ObjectPlan(frames, crops, pixels, permutations, ObjectSlots(runs))
        if self.variant == "lite":
            plan.global_pixels = self._preprocess_crops([c.global_view for c in crops], n_masks)
            plan.local_pixels = self._preprocess_crops([c.local_view for c in crops], n_masks)
        plan.key = self._object_key(plan)
        return plan

    def _object_key(self, plan: ObjectPlan) -> str:
        """The feature-cache key of an object's tokens: everything they are computed from."""
        crops = plan.crops
        return content_key(
            "object",
            self.source,
            self.variant,
            plan.pixels.pixel_values,
            plan.pixels.grid_thw,
            *[c.grid_mask for c in crops],
            *[(c.box, c.frame_size) for c in crops],
            *[p if p is not None else "all" for p in plan.permutations],
            *(
                (plan.global_pixels.pixel_values, plan.local_pixels.pixel_values)
                if self.variant == "lite"
                else ()
            ),
        )
