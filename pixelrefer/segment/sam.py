"""SAM 2.1 behind the project's segmenter interface, through transformers' `Sam2Model` and `Sam2VideoModel`.

Weights come from the official `facebook/sam2.1-hiera-*` repositories (or a local folder) via
`pixelrefer.runtime.hub`, so caching and offline mode behave like the chat model's. SAM runs on one device:
the GPU with the most free memory when there is one (the chat model usually fills another), else the CPU.
Its weights stay float32 (SAM 2.1 is small; its official code runs float32 weights under bfloat16 autocast),
computing under bfloat16 autocast on GPUs of compute capability >= 8.0 and in float32 elsewhere; the prompts'
coordinates are encoded in float32 whatever the compute dtype, since bfloat16 keeps 8 bits of a click's
position (a 1024-pixel side moves by up to 4 pixels). Inputs are prepared by transformers' SAM 2 processors.

Tracking keeps memory bounded for long clips: frames are resized for the model only when the model asks
for them (a couple at a time), and the inference session's per-frame outputs are trimmed to the window
SAM 2 actually reads back (its memory bank and object pointers) as propagation moves on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    Sam2ImageProcessor,
    Sam2Model,
    Sam2VideoConfig,
    Sam2VideoInferenceSession,
    Sam2VideoModel,
    Sam2VideoProcessor,
    Sam2VideoVideoProcessor,
)
from transformers.models.sam2.modeling_sam2 import Sam2ImageSegmentationOutput
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoSegmentationOutput

from ..media.masks import ObjectId, clean_mask
from ..runtime.devices import GpuInfo, PlacementError, freest_gpu, resolve_dtype, visible_gpus
from ..runtime.errors import InputError
from ..runtime.hub import resolve_source
from ..runtime.pause import PausePoints
from .base import Progress, Prompt, Segmenter, SegmentResult, Tracks, rank_candidates

__all__ = [
    "EMBEDDING_CACHE_IMAGES",
    "SAM_SIZES",
    "FrameStore",
    "Sam2Segmenter",
    "SamPlacement",
    "TrackStats",
    "sam21_config",
    "sam_placement",
    "sam_processor",
]

SAM_SIZES = {
    "tiny": "facebook/sam2.1-hiera-tiny",
    "small": "facebook/sam2.1-hiera-small",
    "base-plus": "facebook/sam2.1-hiera-base-plus",
    "large": "facebook/sam2.1-hiera-large",
}

_WEIGHT_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]

EMBEDDING_CACHE_IMAGES = 8
"""Pictures whose SAM image features are kept (about 16 MB each at 1024 px in float32)."""

# Hiera trunk shapes of the four official SAM 2.1 checkpoints (Meta's sam2.1_hiera_{t,s,b+,l}.yaml).
_HIERA = {
    "tiny": dict(
        dims=[96, 192, 384, 768], heads=[1, 2, 4, 8], blocks=[1, 2, 7, 2], glob=[5, 7, 9], bkg=[7, 7]
    ),
    "small": dict(
        dims=[96, 192, 384, 768], heads=[1, 2, 4, 8], blocks=[1, 2, 11, 2], glob=[7, 10, 13], bkg=[7, 7]
    ),
    "base-plus": dict(
        dims=[112, 224, 448, 896], heads=[2, 4, 8, 16], blocks=[2, 3, 16, 3], glob=[12, 16, 20], bkg=[14, 14]
    ),
    "large": dict(
        dims=[144, 288, 576, 1152],
        heads=[2, 4, 8, 16],
        blocks=[2, 6, 36, 4],
        glob=[23, 33, 43],
        bkg=[7, 7],
        windows=[8, 4, 16, 8],
    ),
}


@dataclass(frozen=True)
class SamPlacement:
    """The single device SAM runs on, the dtype of its weights and the dtype it computes in (autocast)."""

    device: str
    dtype: torch.dtype
    compute: torch.dtype | None = None
    """None: the weights' dtype."""

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype if self.compute is None else self.compute

    def autocast(self) -> contextlib.AbstractContextManager:
        """The compute dtype's autocast (nothing when SAM computes in float32)."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.compute_dtype)


@dataclass(frozen=True)
class TrackStats:
    """What the last tracking run held at its peak: evidence that memory stayed bounded."""

    steps: int
    frames_prepared: int
    peak_frames_held: int
    peak_outputs_held: int


def sam_placement(
    device: str = "auto", dtype: str | torch.dtype = "auto", *, gpus: list[GpuInfo] | None = None
) -> SamPlacement:
    """`auto`: the visible GPU with the most free memory, else the CPU. dtype `auto`: float32 weights,
    computing under bfloat16 autocast on GPUs of compute capability >= 8.0 and in float32 below (float16
    is not what SAM 2.1 was trained for); an explicit dtype is the weights' and the compute dtype."""
    gpus = visible_gpus() if gpus is None else gpus
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        freest = freest_gpu(gpus)
        chosen = f"cuda:{freest.index}" if freest is not None else "cpu"
    elif wanted == "cpu":
        chosen = "cpu"
    elif wanted.startswith("cuda"):
        if not gpus:
            raise PlacementError(f"device '{device}' was asked for but no CUDA GPU is visible; use cpu")
        index = gpus[0].index
        if ":" in wanted:
            try:
                index = int(wanted.split(":", 1)[1])
            except ValueError as exc:
                raise PlacementError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N") from exc
        if index not in [gpu.index for gpu in gpus]:
            raise PlacementError(f"GPU {index} is not visible (visible: {[gpu.index for gpu in gpus]})")
        chosen = f"cuda:{index}"
    else:
        raise PlacementError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N")
    if dtype != "auto":
        return SamPlacement(chosen, resolve_dtype(dtype, (chosen,), gpus))
    used = [g for g in gpus if f"cuda:{g.index}" == chosen]
    compute = torch.bfloat16 if used and used[0].capability >= (8, 0) else torch.float32
    return SamPlacement(chosen, torch.float32, compute)


def _exact_positions(model: torch.nn.Module) -> torch.nn.Module:
    """Encode prompt and image positions in float32 outside autocast, whatever the compute dtype: the
    random-Fourier features multiply coordinates in [-1, 1] by a Gaussian matrix and take sin/cos of
    2*pi times that, so bfloat16's 8-bit mantissa would move a click by pixels."""
    for module in model.modules():
        if isinstance(getattr(module, "positional_embedding", None), torch.Tensor) and hasattr(
            module, "forward"
        ):
            module.float()
            module.forward = _in_float32(module.forward)
    return model


def _in_float32(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def exact(coordinates: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(coordinates.device.type, enabled=False):
            return forward(coordinates.float(), *args, **kwargs)

    return exact


def sam21_config(size: str, *, image_size: int = 1024) -> Sam2VideoConfig:
    """The configuration of an official SAM 2.1 checkpoint (`tiny`, `small`, `base-plus`, `large`).

    Used to build random-weight models of the real shapes, e.g. for benchmarks without downloads.
    """
    if size not in _HIERA:
        raise InputError(f"Unknown SAM 2.1 size '{size}': use one of {', '.join(_HIERA)}")
    spec = _HIERA[size]
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": spec["dims"][0],
        "num_attention_heads": spec["heads"][0],
        "embed_dim_per_stage": spec["dims"],
        "num_attention_heads_per_stage": spec["heads"],
        "blocks_per_stage": spec["blocks"],
        "global_attention_blocks": spec["glob"],
        "window_positional_embedding_background_size": spec["bkg"],
        "window_size_per_stage": spec.get("windows", [8, 4, 14, 7]),
        "image_size": [image_size, image_size],
    }
    stride = [image_size // 4, image_size // 8, image_size // 16]
    return Sam2VideoConfig(
        vision_config={
            "backbone_config": backbone,
            "backbone_channel_list": list(reversed(spec["dims"])),
            "backbone_feature_sizes": [[s, s] for s in stride],
        },
        prompt_encoder_config={"image_size": image_size},
        image_size=image_size,
        memory_attention_rope_feat_sizes=[stride[2], stride[2]],
    )


def sam_processor(image_size: int) -> Sam2VideoProcessor:
    """transformers' SAM 2 processor for a model of this input size (the official files differ only in size)."""
    size = {"height": image_size, "width": image_size}
    mask_size = {"height": image_size // 4, "width": image_size // 4}
    return Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size=mask_size),
        video_processor=Sam2VideoVideoProcessor(size=size),
        target_size=image_size,
    )


class FrameStore(Mapping[int, torch.Tensor]):
    """The clip as the inference session sees it: frames are prepared when asked for, and only the last
    `capacity` are kept, so a long clip never sits in memory at model resolution."""

    def __init__(
        self, frames: Sequence[np.ndarray], prepare: Callable[[np.ndarray], torch.Tensor], capacity: int = 2
    ) -> None:
        self._frames = frames
        self._prepare = prepare
        self._capacity = capacity
        self._held: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.prepared = 0
        self.peak_held = 0

    def __getitem__(self, index: int) -> torch.Tensor:
        if index in self._held:
            self._held.move_to_end(index)
            return self._held[index]
        if not 0 <= index < len(self._frames):
            raise KeyError(index)
        tensor = self._prepare(self._frames[index])
        self.prepared += 1
        self._held[index] = tensor
        while len(self._held) > self._capacity:
            self._held.popitem(last=False)
        self.peak_held = max(self.peak_held, len(self._held))
        return tensor

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._frames)))


def _forget_distant(session: Sam2VideoInferenceSession, frame_idx: int, keep: int) -> int:
    """Drop tracked outputs more than `keep` frames away and every full-resolution mask; return what is left.

    SAM 2 reads back at most `num_maskmem` memories and `max_object_pointers_in_encoder` pointers from
    neighbouring tracked frames (plus every marked frame, which is kept); `high_res_masks` is only used
    inside the step that made it.
    """
    held = 0
    for outputs in session.output_dict_per_obj.values():
        for entry in outputs["cond_frame_outputs"].values():
            entry.pop("high_res_masks", None)
        tracked = outputs["non_cond_frame_outputs"]
        for position in list(tracked):
            if abs(position - frame_idx) >= keep:
                del tracked[position]
            else:
                tracked[position].pop("high_res_masks", None)
        held += len(tracked) + len(outputs["cond_frame_outputs"])
    return held


def _image_key(image: np.ndarray) -> str:
    """A picture's identity for the feature cache: its pixels and shape."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


class _Pending:
    """A picture's features being computed: `done` is set once they are kept or the computation gave up."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.waiters = 0


class Sam2Segmenter(Segmenter):
    """SAM 2.1: clicks, boxes and scribbles on images; prompts on any frames tracked through a clip."""

    is_classical = False

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        placement: SamPlacement,
        label: str,
        cached_images: int = EMBEDDING_CACHE_IMAGES,
    ) -> None:
        self.folder = Path(folder)
        self.placement = placement
        self.name = f"SAM 2.1 {label}"
        self.notice = ""
        # Safetensors only: a folder holding pickled .bin weights is refused, never unpickled.
        self.image_model = _exact_positions(
            Sam2Model.from_pretrained(self.folder, dtype=placement.dtype, use_safetensors=True)
            .to(placement.device)
            .eval()
        )
        size = self.image_model.config.prompt_encoder_config.image_size
        self.image_size = int(size[0] if isinstance(size, list | tuple) else size)
        self.processor = sam_processor(self.image_size)
        self.last_track_stats: TrackStats | None = None
        self._video_model: Sam2VideoModel | None = None
        # Image features by picture content, most recently used last: a visitor going back and forth
        # between frames (or several visitors on their own pictures) only pays the image encoder once each.
        self._embedded: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._cached_images = max(1, int(cached_images))
        # Embeddings being computed (by a click or in the background), so a picture is never encoded twice
        # at once: a click on it waits for the computation under way.
        self._pending: dict[str, _Pending] = {}
        self._embed_lock = threading.Lock()
        # Clicks share the cached image features; tracking runs hold GPU memory. Each has its own lock, so
        # a long tracking run does not hold up clicks on another picture.
        self._click_lock = threading.Lock()
        self._track_lock = threading.RLock()

    @classmethod
    def load(cls, spec: str = "tiny", *, placement: SamPlacement | None = None) -> Sam2Segmenter:
        """Load `tiny|small|base-plus|large`, a hub id or a local folder; raises `WeightsUnavailable`."""
        key = spec.strip().lower()
        source = SAM_SIZES.get(key, spec)
        folder = resolve_source(source, allow_patterns=_WEIGHT_FILES)
        label = key if key in SAM_SIZES else Path(source).name
        return cls(folder, placement=placement or sam_placement(), label=label)

    @property
    def video_model(self) -> Sam2VideoModel:
        """The tracking model, loaded from the same checkpoint the first time a clip is tracked."""
        with self._track_lock:
            if self._video_model is None:
                model = Sam2VideoModel.from_pretrained(
                    self.folder, dtype=self.placement.dtype, use_safetensors=True
                )
                self._video_model = _exact_positions(model.to(self.placement.device).eval())
        return self._video_model

    def _to_device(self, tensor: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        """On SAM's device; floating pixels in the weights' dtype, or float32 when `exact` (coordinates)."""
        if tensor.is_floating_point():
            dtype = torch.float32 if exact else self.placement.dtype
            return tensor.to(self.placement.device, dtype=dtype)
        return tensor.to(self.placement.device)

    def _embeddings(self, image: np.ndarray) -> list[torch.Tensor]:
        """Image features, computed once per picture: further clicks on it only run the prompt encoder and
        the light mask decoder. Keyed by the pixels, so a frame seen again is recognised whatever its source.
        When the picture is being encoded already (in the background, `embed_in_background`), the click
        waits for that computation instead of starting a second one."""
        key = _image_key(image)
        while True:
            with self._embed_lock:
                if key in self._embedded:
                    self._embedded.move_to_end(key)
                    return self._embedded[key]
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending()
                    break
                pending.waiters += 1
            pending.done.wait()
            # Stored, or given up (the background job was cancelled before a click wanted it): look again.
        return self._finish(key, pending, lambda: self._encode(image))

    def _encode(self, image: np.ndarray) -> list[torch.Tensor]:
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return self.image_model.get_image_embeddings(self._to_device(pixels))

    def _finish(
        self, key: str, pending: _Pending, compute: Callable[[], list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Run `compute` for `pending` and keep its result; whatever happens, wake whoever waits for it."""
        try:
            embeddings = compute()
            with self._embed_lock:
                self._embedded[key] = embeddings
                while len(self._embedded) > self._cached_images:
                    self._embedded.popitem(last=False)
            return embeddings
        finally:
            with self._embed_lock:
                self._pending.pop(key, None)
            pending.done.set()

    def has_embedding(self, image: np.ndarray) -> bool:
        """Whether the picture's features are kept: a click on it runs only the decoder."""
        key = _image_key(image)
        with self._embed_lock:
            return key in self._embedded

    def kept_embeddings(self) -> list[object]:
        with self._embed_lock:
            return list(self._embedded.values())

    def forget_embeddings(self) -> None:
        with self._embed_lock:
            self._embedded.clear()

    def embedding_bytes(self) -> int:
        """What one picture's features hold (an upper bound in float32; they are the same size for every
        picture, since the processor resizes pictures to the model's input), known before computing any."""
        config = self.image_model.config
        width = int(config.mask_decoder_config.hidden_size)
        sizes = config.vision_config.backbone_feature_sizes
        channels = [width // 8, width // 4, width]  # the decoder's projections of the two finer levels
        return 4 * sum(c * int(h) * int(w) for c, (h, w) in zip(channels, sizes, strict=True))

    def embed_in_background(self, image: np.ndarray, pause: Callable[[Callable[[], bool]], None]) -> bool:
        """Compute and keep the picture's features ahead of the first click; False when they are kept or
        being computed already. Before every torch operation `pause(wanted)` is called: it may block (a
        model event is running) or raise to give up; `wanted()` turns true once a click waits for this very
        computation, which must then go on (the click computes nothing itself)."""
        key = _image_key(image)
        with self._embed_lock:
            if key in self._embedded or key in self._pending:
                return False
            pending = self._pending[key] = _Pending()

        def wanted() -> bool:
            return pending.waiters > 0

        def compute() -> list[torch.Tensor]:
            with PausePoints(lambda: pause(wanted)), torch.inference_mode(), self.placement.autocast():
                return self._encode(image)

        self._finish(key, pending, compute)
        return True

    def _prompt_inputs(self, prompt: Prompt, height: int, width: int) -> tuple[dict[str, torch.Tensor], int]:
        points, labels = prompt.model_points()
        encoded = self.processor(
            original_sizes=[[height, width]],
            input_points=[[[list(p) for p in points]]] if points else None,
            input_labels=[[labels]] if points else None,
            input_boxes=[[list(prompt.box)]] if prompt.box is not None else None,
            return_tensors="pt",
        )
        names = ("input_points", "input_labels", "input_boxes")
        inputs = {name: self._to_device(encoded[name], exact=True) for name in names if name in encoded}
        return inputs, len(points)

    def _candidates(
        self, outputs: Sam2ImageSegmentationOutput, height: int, width: int
    ) -> list[tuple[np.ndarray, float]]:
        masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), [[height, width]])[0][0]
        scores = outputs.iou_scores.float().cpu()[0, 0].tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return [(masks[i].numpy(), float(scores[i])) for i in order]

    def _segment(self, image: np.ndarray, prompt: Prompt) -> SegmentResult:
        height, width = image.shape[:2]
        with self._click_lock, torch.inference_mode(), self.placement.autocast():
            embeddings = self._embeddings(image)
            inputs, n_points = self._prompt_inputs(prompt, height, width)
            several = self.image_model(image_embeddings=embeddings, multimask_output=True, **inputs)
            candidates = self._candidates(several, height, width)
            # One click is ambiguous (part or whole?): SAM's three masks ranked by score answer it. More
            # marks pin the object down, and SAM's single-mask output is then the better answer.
            if n_points != 1 or prompt.box is not None:
                single = self.image_model(image_embeddings=embeddings, multimask_output=False, **inputs)
                candidates = self._candidates(single, height, width) + candidates
        return rank_candidates(candidates, segmenter=self.name, is_classical=False)

    def _prepare_frame(self, frame: np.ndarray) -> torch.Tensor:
        pixels = self.processor.video_processor(videos=[frame[None]], return_tensors="pt")[
            "pixel_values_videos"
        ]
        return pixels[0, 0].to(dtype=self.placement.dtype)

    def _add_marks(
        self, session: Sam2VideoInferenceSession, position: int, object_id: int, prompt: Prompt
    ) -> None:
        if prompt.mask is not None:
            self.processor.add_inputs_to_inference_session(
                session, frame_idx=position, obj_ids=object_id, input_masks=prompt.mask
            )
            return
        points, labels = prompt.model_points()
        self.processor.add_inputs_to_inference_session(
            session,
            frame_idx=position,
            obj_ids=object_id,
            input_points=[[[list(p) for p in points]]] if points else None,
            input_labels=[[labels]] if points else None,
            input_boxes=[[list(prompt.box)]] if prompt.box is not None else None,
        )

    def _frame_masks(
        self, outputs: Sam2VideoSegmentationOutput, height: int, width: int
    ) -> dict[int, np.ndarray]:
        masks = self.processor.post_process_masks([outputs.pred_masks.float().cpu()], [[height, width]])[0]
        return {number: clean_mask(masks[i, 0].numpy()) for i, number in enumerate(outputs.object_ids)}

    def _track(
        self,
        frames: list[np.ndarray],
        prompts: Mapping[ObjectId, Mapping[int, Prompt]],
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Tracks:
        model = self.video_model
        height, width = frames[0].shape[:2]
        count = len(frames)
        store = FrameStore(frames, self._prepare_frame)
        session = Sam2VideoInferenceSession(
            video_height=height,
            video_width=width,
            inference_device=self.placement.device,
            inference_state_device=self.placement.device,
            dtype=self.placement.dtype,
        )
        session.processed_frames = store
        # The session wants integer ids; objects are numbered in the order of their first mark.
        first = {object_id: min(marks) for object_id, marks in prompts.items()}
        ordered = sorted(prompts, key=lambda object_id: first[object_id])
        number = {object_id: n for n, object_id in enumerate(ordered, start=1)}
        marked: dict[int, list[ObjectId]] = {}
        for object_id in ordered:
            for position in prompts[object_id]:
                marked.setdefault(position, []).append(object_id)
        start, last_start = min(first.values()), max(first.values())
        backward = list(range(last_start, -1, -1)) if last_start > 0 else []
        total = len(marked) + (count - start) + len(backward)
        keep = max(model.config.num_maskmem, model.config.max_object_pointers_in_encoder)
        tracks: Tracks = {object_id: {} for object_id in prompts}
        done = 0
        peak = 0

        def step(position: int, reverse: bool) -> dict[int, np.ndarray]:
            nonlocal done, peak
            self._stop_if_cancelled(cancel, done, total)
            outputs = model(inference_session=session, frame_idx=position, reverse=reverse)
            peak = max(peak, _forget_distant(session, position, keep))
            done += 1
            if progress is not None:
                progress(done, total)
            return self._frame_masks(outputs, height, width)

        with self._track_lock, torch.inference_mode(), self.placement.autocast():
            for position in sorted(marked):
                for object_id in marked[position]:
                    self._add_marks(session, position, number[object_id], prompts[object_id][position])
                session.obj_with_new_inputs = [number[object_id] for object_id in marked[position]]
                step(position, reverse=False)
            for reverse, positions in ((False, range(start, count)), (True, backward)):
                # Each pass starts from the marks alone, so it never reads memories of the other direction.
                for outputs in session.output_dict_per_obj.values():
                    outputs["non_cond_frame_outputs"].clear()
                for tracked in session.frames_tracked_per_obj.values():
                    tracked.clear()
                for position in positions:
                    masks = step(position, reverse)
                    for object_id in ordered:
                        if (position < first[object_id]) == reverse:
                            tracks[object_id][position] = masks[number[object_id]]
        self.last_track_stats = TrackStats(done, store.prepared, store.peak_held, peak)
        return tracks
