"""`PixelRefer`: load a checkpoint, then ask about objects in an image or a clip.

The model is stateless: every call takes the media, one entry per object (a mask for an image, masks by
frame index for a clip) and an instruction, and returns text and token ids. A chat session passes in a
`FeatureCache` and a `PrefixCache` to reuse work across turns; results are the same with or without them.

A request goes through three jobs, each in its own module: planning (`planning.Planner`: check the input,
encode the text, plan crops and token slots), encoding (`encoding.Encoder`: the vision tower and the
object tokenizer, spliced into the prompt's embeddings), and decoding (an `engine.DecodeEngine`, in this
process by default). This module loads the checkpoint, wires the three together and streams the answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..media.images import ImageInput
from .cache import FeatureCache, PrefixCache
from .config import PixelReferConfig, Variant
from .encoding import Embedded, Encoder
from .engine import DecodeEngine, DecodeRequest, TransformersEngine
from .generation import GenerationSettings, GenerationTimeout, TextStream, eos_token_ids
from .loading import Loaded, Quantization, load_checkpoint
from .planning import Instruction, Planner, Prepared, Region, Video, frame_mask
from .processing import SpecialIds, Turn

__all__ = ["Chunk", "Embedded", "GenerationResult", "PixelRefer", "Prepared", "Video", "frame_mask"]

FinishReason = Literal["eos", "length", "stopped", "timeout"]


@dataclass
class GenerationResult:
    """Generated text (added tokens removed) and ids; an eos id, when generation ended on one, is last."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    input_ids: list[int]
    first_logits: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Chunk:
    """A streamed text increment; the last chunk of a stream also carries the full result."""

    text: str
    result: GenerationResult | None = None


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
        self.planner = Planner(self.tokenizer, self.processor, self.config, self.source, self.dtype)
        self.encoder = Encoder(self.model, self.variant, self.dtype, self.config.hidden_size)
        self.eos_ids = eos_token_ids(self.generation_config, self.tokenizer)
        self.lock = threading.Lock()
        """Held while the model computes in this process: encoding, and the in-process engine's decoding."""
        self.engine: DecodeEngine = TransformersEngine(self.model, self.generation_config, self.lock)
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

    @property
    def device(self) -> torch.device:
        """Where the token embeddings live (inputs go there)."""
        return self.model.model.embed_tokens.weight.device

    # ------------------------------------------------------------------ planning (`planning.Planner`)

    @property
    def specials(self) -> SpecialIds:
        return self.planner.specials

    @property
    def max_object_pixels(self) -> int:
        """The largest crop one object's mask may need (see `objects.OBJECT_BUDGET`); settable."""
        return self.planner.max_object_pixels

    @max_object_pixels.setter
    def max_object_pixels(self, value: int) -> None:
        self.planner.max_object_pixels = value

    def encode_text(self, text: str) -> list[int]:
        """Plain-text ids, never an added token's (`Planner.encode_text`)."""
        return self.planner.encode_text(text)

    def check_object_mask(self, mask: np.ndarray, what: str = "The object") -> None:
        """Refuse a mask whose crop would exceed `max_object_pixels` (`Planner.check_object_mask`)."""
        self.planner.check_object_mask(mask, what)

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
        return self.planner.prepare(
            regions=regions, instruction=instruction, turns=turns, image=image, video=video, seed=seed
        )

    # ------------------------------------------------------------------ encoding (`encoding.Encoder`)

    def embed(self, prepared: Prepared, cache: FeatureCache | None = None) -> Embedded:
        """Run the vision tower and the object tokenizer (or take their results from `cache`) and splice."""
        return self.encoder.embed(prepared, cache)

    def logits(self, embedded: Embedded) -> torch.Tensor:
        """Next-token logits at the last position from one forward pass without a cache."""
        return self.encoder.logits(embedded)

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
        with self.lock:  # only encoding holds it here: the engine decides how many answers decode at once
            mark = time.perf_counter()
            embedded = self.embed(prepared, cache)
            timings["encode_s"] = time.perf_counter() - mark
        request = DecodeRequest(
            embedded.inputs_embeds,
            settings,
            self.eos_ids,
            prefix=prefix,
            stop=stop,
            deadline=time.monotonic() + timeout_s if timeout_s else None,
            keep_first_logits=return_logits,
        )
        yield from self._decode(request, prepared, timings, start)

    def _decode(
        self, request: DecodeRequest, prepared: Prepared, timings: dict[str, float], start: float
    ) -> Iterator[Chunk]:
        """The engine's tokens as text increments, then the result (timings counted from `start`)."""
        text = TextStream(self.tokenizer)
        ids: list[int] = []

        first_logits = None
        timed_out = False
        mark = time.perf_counter()
        steps = self.engine.decode(request)
        try:
            for step in steps:
                if not ids:
                    timings["first_token_s"] = time.perf_counter() - start
                ids.append(step.token_id)
                first_logits = step.logits if step.logits is not None else first_logits
                piece = text.push(step.token_id)
                if piece:
                    yield Chunk(piece)
        except GenerationTimeout:
            timed_out = True
        finally:
            steps.close()
        timings["decode_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - start
        prefix = request.prefix
        timings["reused_prefix_rows"] = float(prefix.reused_rows) if prefix is not None else 0.0
        tail = text.flush()
        result = GenerationResult(
            text=text.text_of(ids).strip(),
            token_ids=ids,
            finish_reason=self._finish_reason(ids, timed_out, request.stop, request.settings),
            input_ids=list(prepared.input_ids),
            first_logits=first_logits,
            timings=timings,
        )
        yield Chunk(tail, result)

    def _finish_reason(
        self, ids: list[int], timed_out: bool, stop: threading.Event | None, settings: GenerationSettings
    ) -> FinishReason:
        if timed_out:
            return "timeout"
        if ids and ids[-1] in self.eos_ids:
            return "eos"
        if stop is not None and stop.is_set() and len(ids) < settings.max_new_tokens:
            return "stopped"
        return "length"

    def generate(self, **kwargs) -> GenerationResult:
        """Like `stream`, returning only the final result."""
        result = None
        for chunk in self.stream(**kwargs):
            result = chunk.result
        assert result is not None
        return result
