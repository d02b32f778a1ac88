"""`PixelRefer`: load a checkpoint, then ask about objects in an image or a clip.

The model is stateless: every call takes the media, one entry per object (a mask for an image, masks by
frame index for a clip) and an instruction, and returns text and token ids. A chat session passes in a
`FeatureCache` and a `PrefixCache` to reuse work across turns; results are the same with or without them.

Media flow, as in the official code: the full model sees the image (or the sampled frames) as `<image>`
tokens and each object as `<REGION>` tokens; Lite sees only object tokens, into which the frame's
context was infused. Frames that carry masks ("annotated" frames) need not be among the sampled ones.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..engines.base import DecodeEngine, DecodeRequest
from ..engines.transformers_engine import TransformersEngine
from ..media.images import ImageInput, load_image
from ..media.masks import fit_mask
from ..runtime.errors import InputError
from .cache import FeatureCache, PrefixCache, content_key
from .config import PixelReferConfig, Variant
from .generation import GenerationSettings, GenerationTimeout, TextStream, eos_token_ids
from .loading import Loaded, Quantization, load_checkpoint
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

__all__ = ["Chunk", "Embedded", "GenerationResult", "PixelRefer", "Prepared", "Video", "frame_mask"]

MaskInput = np.ndarray | torch.Tensor
Region = MaskInput | Mapping[int, MaskInput]
Instruction = str | Sequence[Piece]


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
class _ObjectPlan:
    frames: list[int]
    crops: list[ObjectCrop]
    pixels: ProcessedImages
    permutations: list[torch.Tensor | None]
    slots: ObjectSlots
    global_pixels: ProcessedImages | None = None
    local_pixels: ProcessedImages | None = None
    key: str = ""


@dataclass
class _MediaPlan:
    pixels: ProcessedImages
    tokens_per_frame: list[int]
    keep: torch.Tensor | None
    key: str


@dataclass
class Prepared:
    """Everything computed before any network runs: token ids, preprocessed pixels, object plans."""

    variant: Variant
    prompt: PromptTokens
    media: _MediaPlan | None
    objects: list[_ObjectPlan]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt.input_ids

    @property
    def lm_length(self) -> int:
        """Positions the LLM sees after frame-token pruning."""
        dropped = 0 if self.media is None or self.media.keep is None else int((~self.media.keep).sum())
        return len(self.prompt.input_ids) - dropped


@dataclass
class Embedded:
    """The LLM input: `inputs_embeds` (1, L, D), and the rows written at `<REGION>` positions."""

    inputs_embeds: torch.Tensor
    lm_input_ids: torch.Tensor
    region_rows: torch.Tensor


@dataclass
class GenerationResult:
    """Generated text (added tokens removed) and ids; an eos id, when generation ended on one, is last."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "length", "stopped", "timeout"]
    input_ids: list[int]
    first_logits: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Chunk:
    """A streamed text increment; the last chunk of a stream also carries the full result."""

    text: str
    result: GenerationResult | None = None


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


class PixelRefer:
    """A loaded PixelRefer model (full or Lite) with its tokenizer and processor.

    Use `PixelRefer.from_pretrained(...)`, then `generate(...)` or `stream(...)`.
    """

    def __init__(self, loaded: Loaded) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.processor = loaded.processor
        self.config: PixelReferConfig = loaded.config
        self.generation_config = loaded.generation_config
        self.variant: Variant = loaded.config.variant
        self.dtype = loaded.dtype
        self.placement = loaded.placement
        self.quantization = loaded.quantization
        self.source = loaded.source
        self.folder = loaded.folder
        self.specials = self._special_ids()
        self.eos_ids = eos_token_ids(self.generation_config, self.tokenizer)
        self.max_object_pixels = OBJECT_BUDGET * self.config.max_pixels
        """The largest crop one object's mask may need (see `objects.OBJECT_BUDGET`); settable."""
        self._lock = threading.Lock()
        self.engine: DecodeEngine = TransformersEngine(self.model, self.generation_config, self._lock)
        """What decodes the LLM input (`pixelrefer.engines.build_engine` makes others); encoding stays here."""

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        quantization: Quantization | Literal["none"] = None,
        attn_implementation: str = "sdpa",
        token: str | None = None,
        encoder_only: bool = False,
    ) -> PixelRefer:
        """Load a local folder or a hub id (`Alibaba-DAMO-Academy/PixelRefer-2B`, `-7B`, `PixelRefer-Lite-2B`, `-Lite-7B`).

        `device`: auto (all visible GPUs, else CPU), cpu, cuda, cuda:N. `dtype`: auto (bf16 on GPUs of
        compute capability >= 8 and on CPUs with native bf16, else fp32; see `devices.plan_loading`),
        float32, float16, bfloat16.
        `quantization`: None/"none", "8bit" or "4bit" (bitsandbytes, LLM only).
        `encoder_only`: no decoder layers, for a model whose answers a vLLM engine decodes (`load_checkpoint`).
        """
        return cls(
            load_checkpoint(
                source,
                device=device,
                dtype=dtype,
                quantization=None if quantization == "none" else quantization,
                attn_implementation=attn_implementation,
                token=token,
                encoder_only=encoder_only,
            )
        )

    # ------------------------------------------------------------------ setup

    def _special_ids(self) -> SpecialIds:
        vocab = self.tokenizer.get_vocab()
        names = {"im_start": "<|im_start|>", "im_end": "<|im_end|>", "image": "<image>", "region": "<REGION>"}
        missing = [token for token in names.values() if token not in vocab]
        if missing:
            raise InputError(f"The tokenizer lacks the tokens {', '.join(missing)}")
        return SpecialIds(**{key: vocab[token] for key, token in names.items()})

    @property
    def device(self) -> torch.device:
        """Where the token embeddings live (inputs go there)."""
        return self.model.model.embed_tokens.weight.device

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

    # ------------------------------------------------------------------ inputs

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

    def _objects(self, media: _Media, regions: Sequence[Region]) -> list[list[tuple[int, np.ndarray]]]:
        objects = []
        for number, region in enumerate(regions, start=1):
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
            objects.append(masks)
        return objects

    def _plan_media(self, media: _Media) -> _MediaPlan | None:
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
        return _MediaPlan(pixels, per_frame, keep, key)

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

    def check_object_mask(self, mask: np.ndarray, what: str = "The object") -> None:
        """Refuse a non-empty bool mask whose crop would exceed `max_object_pixels`, from its box and area
        alone (a few far-apart specks would otherwise need gigabytes); a chat checks each mask it is given."""
        check_crop(crop_plan(mask, self.variant, self.config.mask_num), self.max_object_pixels, what)

    def _check_object_plans(self, objects: list[list[tuple[int, np.ndarray]]]) -> None:
        """Every mask checked before the media or any object is preprocessed."""
        for number, masks in enumerate(objects, start=1):
            for _, mask in masks:
                self.check_object_mask(mask, f"Object {number}")

    def _plan_objects(
        self, media: _Media, objects: list[list[tuple[int, np.ndarray]]], seed: int
    ) -> list[_ObjectPlan]:
        k = self.config.mask_num
        n_masks = sum(len(masks) for masks in objects)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        first_local: dict[int, np.ndarray] = {}
        plans = []
        for number, masks in enumerate(objects, start=1):
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
                runs = tuple((f / media.fps, k) for f in frames)
            else:
                runs = tuple((None, c.n_tokens) for c in crops)
            plan = _ObjectPlan(frames, crops, pixels, permutations, ObjectSlots(runs))
            if self.variant == "lite":
                plan.global_pixels = self._preprocess_crops([c.global_view for c in crops], n_masks)
                plan.local_pixels = self._preprocess_crops([c.local_view for c in crops], n_masks)
            plan.key = content_key(
                "object",
                self.source,
                self.variant,
                plan.pixels.pixel_values,
                plan.pixels.grid_thw,
                *[c.grid_mask for c in crops],
                *[(c.box, c.frame_size) for c in crops],
                *[p if p is not None else "all" for p in permutations],
                *(
                    (plan.global_pixels.pixel_values, plan.local_pixels.pixel_values)
                    if self.variant == "lite"
                    else ()
                ),
            )
            plans.append(plan)
        return plans

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
        `turns`. Errors in the input are raised here as ValueError, before any compute.
        """
        media = self._media(image, video)
        objects = self._objects(media, regions)
        self._check_object_plans(objects)
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

    # ------------------------------------------------------------------ networks

    def _encode_media(self, plan: _MediaPlan, cache: FeatureCache | None) -> torch.Tensor:
        cached = cache.get(plan.key) if cache is not None else None
        if cached is not None:
            return cached
        with torch.inference_mode():
            features = self.model.projector(self.model.vision_tower(plan.pixels))
        if cache is not None:
            cache.put(plan.key, features)
        return features

    def _encode_object(self, plan: _ObjectPlan, cache: FeatureCache | None) -> torch.Tensor:
        cached = cache.get(plan.key) if cache is not None else None
        if cached is not None:
            return cached
        tower, tokenizer = self.model.vision_tower, self.model.object_tokenizer
        lite = self.variant == "lite"
        device = tokenizer.pos_linear.weight.device
        # As the official Lite code: the tower runs in the weights' dtype, and only the object tokenizer
        # (pooling, k-means, OCI, projection) under bfloat16 autocast.
        autocast = lite and self.dtype == torch.bfloat16
        with torch.inference_mode():
            features = tower(plan.pixels, round_to_bfloat16=lite).to(device)
            if lite:
                local = tower(plan.local_pixels, round_to_bfloat16=True).to(device)
                global_ = tower(plan.global_pixels, round_to_bfloat16=True).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                grids = plan.pixels.grid_thw.tolist()
                pooled = []
                for rows, (_, h, w), crop, permutation in zip(
                    features.split([h * w for _, h, w in grids]),
                    grids,
                    plan.crops,
                    plan.permutations,
                    strict=True,
                ):
                    pooled.append(tokenizer.pool(rows.view(h, w, -1), crop, permutation))
                if lite:
                    n = len(pooled)
                    vectors = tokenizer.infuse(
                        torch.stack(pooled),
                        local.view(n, -1, local.shape[-1]),
                        global_.view(n, -1, global_.shape[-1]),
                    ).reshape(-1, local.shape[-1])
                else:
                    vectors = torch.cat(pooled)
                rows = tokenizer.project(vectors)
        if cache is not None:
            cache.put(plan.key, rows)
        return rows

    def embed(self, prepared: Prepared, cache: FeatureCache | None = None) -> Embedded:
        """Run the vision tower and the object tokenizer (or take their results from `cache`) and splice."""
        prompt = prepared.prompt
        ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        is_media = torch.zeros(len(ids), dtype=torch.bool)
        is_media[prompt.media_positions] = True
        is_region = torch.zeros(len(ids), dtype=torch.bool)
        is_region[prompt.region_positions] = True
        media_rows = None
        if prepared.media is not None and prompt.media_positions:
            media_rows = self._encode_media(prepared.media, cache)
            if prepared.media.keep is not None:
                keep_rows = torch.ones(len(ids), dtype=torch.bool)
                keep_rows[is_media] = prepared.media.keep
                media_rows = media_rows[prepared.media.keep.to(media_rows.device)]
                ids, is_media, is_region = ids[keep_rows], is_media[keep_rows], is_region[keep_rows]
        object_rows = [self._encode_object(plan, cache) for plan in prepared.objects]
        region_rows = (
            torch.cat([object_rows[i] for i in prompt.object_order])
            if prompt.object_order
            else torch.zeros(0, self.config.hidden_size)
        )
        embed_tokens = self.model.model.embed_tokens
        with torch.inference_mode():
            lookup = torch.where(is_media | is_region, torch.zeros_like(ids), ids)
            embeds = embed_tokens(lookup.to(embed_tokens.weight.device)).clone()
            if media_rows is not None:
                embeds[is_media.to(embeds.device)] = media_rows.to(embeds)
            if int(is_region.sum()) != len(region_rows):
                raise RuntimeError("Internal error: object token count does not match the prompt")
            embeds[is_region.to(embeds.device)] = region_rows.to(embeds)
        return Embedded(embeds.unsqueeze(0), ids, region_rows)

    def logits(self, embedded: Embedded) -> torch.Tensor:
        """Next-token logits at the last position from one forward pass without a cache."""
        with torch.inference_mode():
            out = self.model(inputs_embeds=embedded.inputs_embeds, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float().cpu()

    # ------------------------------------------------------------------ generation

    def stream(
        self,
        *,
        regions: Sequence[Region] = (),
        instruction: Instruction | None = None,
        turns: Sequence[Turn] | None = None,
        image: ImageInput | None = None,
        video: Video | None = None,
        settings: GenerationSettings | None = None,
        cache: FeatureCache | None = None,
        prefix: PrefixCache | None = None,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
        return_logits: bool = False,
        prepared: Prepared | None = None,
    ) -> Iterator[Chunk]:
        """Generate, yielding text increments; the last chunk carries the `GenerationResult`.

        Decoding ends at an eos token, after `max_new_tokens`, when `stop` is set, or once `timeout_s`
        has passed (`finish_reason` "timeout", the text so far kept).
        """
        settings = settings or GenerationSettings()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(
                regions=regions,
                instruction=instruction,
                turns=turns,
                image=image,
                video=video,
                seed=settings.seed,
            )
        timings["prepare_s"] = time.perf_counter() - start
        with self._lock:
            mark = time.perf_counter()
            embedded = self.embed(prepared, cache)
            timings["encode_s"] = time.perf_counter() - mark
        # Only encoding holds the model lock: the engine decides how many answers decode at once.
        text = TextStream(self.tokenizer)
        ids: list[int] = []
        first_logits = None
        mark = time.perf_counter()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        timed_out = False
        steps = self.engine.decode(
            DecodeRequest(
                embedded.inputs_embeds,
                settings,
                self.eos_ids,
                prefix=prefix,
                stop=stop,
                deadline=deadline,
                keep_first_logits=return_logits,
            )
        )
        try:
            for step in steps:
                if not ids:
                    timings["first_token_s"] = time.perf_counter() - start
                ids.append(step.token_id)
                if step.logits is not None:
                    first_logits = step.logits
                piece = text.push(step.token_id)
                if piece:
                    yield Chunk(piece)
        except GenerationTimeout:
            timed_out = True
        finally:
            steps.close()
        timings["decode_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - start
        timings["reused_prefix_rows"] = float(prefix.reused_rows) if prefix is not None else 0.0
        if timed_out:
            reason: Literal["eos", "length", "stopped", "timeout"] = "timeout"
        elif ids and ids[-1] in self.eos_ids:
            reason = "eos"
        elif stop is not None and stop.is_set() and len(ids) < settings.max_new_tokens:
            reason = "stopped"
        else:
            reason = "length"
        tail = text.flush()
        result = GenerationResult(
            text=text.text_of(ids).strip(),
            token_ids=ids,
            finish_reason=reason,
            input_ids=list(prepared.input_ids),
            first_logits=first_logits,
            timings=timings,
        )
        yield Chunk(tail, result)

    def generate(self, **kwargs) -> GenerationResult:
        """Like `stream`, returning only the final result."""
        result = None
        for chunk in self.stream(**kwargs):
            result = chunk.result
        assert result is not None
        return result
