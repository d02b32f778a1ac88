"""What one running app shares between visitors: its settings, the loaded model, the segmenter.

When the chosen checkpoint cannot be had (no network, no token, not cached) the app does not fail: it
runs an offline preview on tiny random checkpoints that this package builds itself (the same
`from_pretrained` and chat code; answers are meaningless) and, when SAM 2.1 is missing too, the classical
segmenter. `banner` says so and what to do.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import psutil
import torch

from ..chat.background import Background
from ..chat.gate import Gate
from ..chat.limits import ChatLimits
from ..chat.warmup import Warmer
from ..media.limits import MediaLimits
from ..model.inference import PixelRefer
from ..model.loading import estimate_weight_bytes, plan_checkpoint
from ..model.synthetic import RELEASES, TINY, build_checkpoint, config_for
from ..runtime.allocator import tune_for_server
from ..runtime.devices import GIB, GpuInfo, PlacementError, cuda_diagnosis, plan_loading, visible_gpus
from ..runtime.errors import InputError
from ..runtime.hub import WeightsUnavailable
from ..runtime.redact import scrub
from ..segment.base import Segmenter
from ..segment.build import load_segmenter
from .budget import MemoryBudget, default_limits, sam_holdings
from .clients import HttpLimits
from .flags import add_model_flags
from .prefetch import EmbeddingPrefetcher
from .zerogpu import environment_says_zero_gpu
from .zerogpu_calls import ModelCalls, calls_for

__all__ = ["APP_MEDIA_LIMITS", "AppSettings", "ModelChoice", "Service", "SwitchRefused", "DEFAULT_MODEL"]

_log = logging.getLogger(__name__)

DEFAULT_MODEL = "Alibaba-DAMO-Academy/PixelRefer-2B"
PREVIEW_LABEL = "offline preview"


APP_MEDIA_LIMITS = MediaLimits(max_upload_mb=50.0, max_duration_s=30.0, max_frames=16)
"""A public demo's uploads: smaller and shorter than the library allows, so one visitor cannot hold the queue."""


_OPTIONAL_LIMITS = {"generation_timeout_s"}
"""Limits that can be switched off ("none")."""


def _limit_value(name: str, text: str, default: object) -> object:
    """A limit from the command line or the environment, typed like its default."""
    if name in _OPTIONAL_LIMITS and text.strip().lower() in {"none", "off"}:
        return None
    if isinstance(default, int) and not isinstance(default, bool):
        return int(float(text))
    return float(text)


def _enabled(text: str | int) -> bool:
    """An on/off environment variable: 1, true, yes or on enable it."""
    return str(text).strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class AppSettings:
    """Everything an operator can set, from the command line or (for a Space) environment variables.

    The limits are `media` (uploads), `chat` (conversations), `max_new_tokens` (the longest answer; it
    overrides `chat.max_new_tokens`, so the two are one setting), `concurrency` and `queue_size` (the model
    queue), `max_sessions` and `session_ttl_s` (visitor workspaces kept in memory), `ram_budget_gb` and
    `gpu_budget_gb` (the memory all visitors may hold; None: what is free once the model is loaded, minus
    headroom, see `pixelrefer.serve.budget`). Each has a flag and an
    environment variable (`--max-objects` / `PIXELREFER_MAX_OBJECTS`); docs/limits.md lists them.
    What a visitor could otherwise do to everyone is off unless the operator enables it: switching the model
    (`--allow-model-switch`) and Gradio's traffic dashboard (`--monitoring`).
    """

    model: str = DEFAULT_MODEL
    quantization: str = "none"
    dtype: str = "auto"
    device: str = "auto"
    sam2: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1
    queue_size: int = 16
    engine: str = "transformers"
    engine_url: str = ""
    preview_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "pixelrefer" / "preview")
    media: MediaLimits = field(default_factory=lambda: APP_MEDIA_LIMITS)
    chat: ChatLimits = field(default_factory=ChatLimits)
    max_new_tokens: int = 512
    max_sessions: int = 48
    """Visitors holding a workspace at once: the heaviest (a 16-frame 1920 px clip, 4 tracked objects) of the
    default PixelRefer-2B all keep their caches on a 24 GB GPU (docs/limits.md, Memory budget)."""
    ram_budget_gb: float | None = None
    gpu_budget_gb: float | None = None
    session_ttl_s: float = 1800.0
    allow_model_switch: bool = False
    monitoring: bool = False
    sam_prefetch: bool = True
    """Compute SAM's image embedding of the picture on screen before the first click (`serve.prefetch`)."""
    zero_gpu: bool = False
    """Run as on a ZeroGPU Space even where the environment does not say so (docs/hosting.md, ZeroGPU)."""
    http: HttpLimits = field(default_factory=HttpLimits)
    """The HTTP layer's per-client caps and timeouts (`pixelrefer.serve.clients`, docs/limits.md)."""

    def __post_init__(self) -> None:
        if self.chat.max_new_tokens != self.max_new_tokens:
            object.__setattr__(self, "chat", replace(self.chat, max_new_tokens=self.max_new_tokens))

    @classmethod
    def parse(cls, argv: list[str] | None = None, env: dict[str, str] | None = None) -> AppSettings:
        """`python app.py [--model ...]`; each flag falls back to PIXELREFER_<NAME> and then the default."""
        env = dict(os.environ if env is None else env)
        base = cls()

        def default(name: str, fallback: str | int) -> str | int:
            for key in (
                f"PIXELREFER_{name.upper()}",
                {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT"}.get(name, ""),
            ):
                if key and env.get(key):
                    return env[key]
            return fallback

        parser = argparse.ArgumentParser(prog="app.py", description="PixelRefer region chat (Gradio app).")
        add_model_flags(parser, lambda name, _: str(default(name, getattr(base, name))))
        parser.add_argument(
            "--sam2",
            default=default("sam2", base.sam2),
            help="tiny, small, base-plus, large, grabcut or a folder",
        )
        parser.add_argument("--host", default=default("host", base.host))
        parser.add_argument("--port", type=int, default=int(default("port", base.port)))
        parser.add_argument("--concurrency", type=int, default=int(default("concurrency", base.concurrency)))
        parser.add_argument("--queue-size", type=int, default=int(default("queue_size", base.queue_size)))
        parser.add_argument(
            "--engine",
            default=default("engine", base.engine),
            choices=["transformers", "vllm"],
            help="what decodes: in-process transformers (one answer at a time) or a vLLM server (many at once)",
        )
        parser.add_argument(
            "--engine-url",
            default=default("engine_url", base.engine_url),
            help="a running vLLM server (`python -m pixelrefer engine`); without it --engine vllm starts one",
        )
        parser.add_argument(
            "--zero-gpu",
            action="store_true",
            default=_enabled(default("zero_gpu", "")),
            help="every model call as one ZeroGPU call (on by itself on a ZeroGPU Space; docs/hosting.md)",
        )
        parser.add_argument(
            "--no-sam-prefetch",
            dest="sam_prefetch",
            action="store_false",
            default=_enabled(default("sam_prefetch", "1")),
            help="do not compute SAM's embedding of the picture on screen before the first click",
        )
        operator = parser.add_argument_group("what visitors may do (off unless the operator enables it)")
        operator.add_argument(
            "--allow-model-switch",
            action="store_true",
            default=_enabled(default("allow_model_switch", "")),
            help="let visitors load another checkpoint for everyone from the Model panel",
        )
        operator.add_argument(
            "--monitoring",
            action="store_true",
            default=_enabled(default("monitoring", "")),
            help="serve Gradio's /monitoring dashboard and summary",
        )
        HttpLimits.add_arguments(parser, default)
        limits = parser.add_argument_group("limits (see docs/limits.md)")
        for name, where in (("ram", "RAM"), ("gpu", "each GPU")):
            limits.add_argument(
                f"--{name}-budget-gb",
                default=str(default(f"{name}_budget_gb", "auto")),
                metavar="GB",
                help=f"memory all visitors together may hold in {where} (docs/limits.md, Memory budget); "
                "default auto: what is free once the model is loaded, minus headroom",
            )
        groups = {"media": base.media, "chat": base.chat, "": base}
        flags: dict[str, tuple[str, str]] = {}
        for group, holder in groups.items():
            names = (
                [f.name for f in fields(holder)]
                if group
                else ["max_new_tokens", "max_sessions", "session_ttl_s"]
            )
            for name in names:
                if group == "chat" and name == "max_new_tokens":
                    continue  # one setting: AppSettings.max_new_tokens
                fallback = getattr(holder, name)
                dest = f"{group}__{name}" if group else name
                flags[dest] = (group, name)
                limits.add_argument(
                    f"--{name.replace('_', '-')}",
                    dest=dest,
                    default=str(default(name, "none" if fallback is None else fallback)),
                    metavar="N",
                    help=f"default {fallback}",
                )
        args = parser.parse_args(argv)
        values: dict[str, dict[str, object]] = {"media": {}, "chat": {}, "": {}}
        for dest, (group, name) in flags.items():
            fallback = getattr(groups[group], name)
            try:
                value = _limit_value(name, getattr(args, dest), fallback)
            except ValueError:
                parser.error(f"--{name.replace('_', '-')} must be a number, got {getattr(args, dest)!r}")
            if value is not None and not value > 0:
                parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, dest)!r}")
            values[group][name] = value
        return replace(
            base,
            model=args.model,
            quantization=args.quantization,
            dtype=args.dtype,
            device=args.device,
            sam2=args.sam2,
            host=args.host,
            port=args.port,
            concurrency=max(1, args.concurrency),
            queue_size=max(1, args.queue_size),
            engine=args.engine,
            engine_url=args.engine_url,
            allow_model_switch=args.allow_model_switch,
            monitoring=args.monitoring,
            zero_gpu=args.zero_gpu,
            sam_prefetch=args.sam_prefetch,
            http=HttpLimits.from_args(args, parser),
            ram_budget_gb=_budget_gb(parser, "--ram-budget-gb", args.ram_budget_gb),
            gpu_budget_gb=_budget_gb(parser, "--gpu-budget-gb", args.gpu_budget_gb),
            media=replace(base.media, **values["media"]),
            chat=replace(base.chat, **values["chat"], max_new_tokens=values[""]["max_new_tokens"]),
            **values[""],
        )


def _budget_gb(parser: argparse.ArgumentParser, flag: str, text: str) -> float | None:
    """A memory budget in GB, or None for "auto"."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        parser.error(f"{flag} must be a number of GB or auto, got {text!r}")
    if not value > 0:
        parser.error(f"{flag} must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint the picker offers, with its estimated weight memory and whether it fits here."""

    source: str
    label: str
    estimate_gib: float
    fits: bool
    """Offered by the picker (every checkpoint in the preview, which stands in for it)."""
    fits_memory: bool = False
    """Its weights fit this machine's free memory (what the model panel says, preview or not)."""


def _release_estimate(settings: AppSettings, source: str, gpus: list[GpuInfo]) -> float:
    """GiB of `source`'s weights in the dtype the loader would plan here (float32 on GPUs below compute
    8.0 and on CPUs without native bfloat16, so twice the bfloat16 size)."""
    variant, shape = RELEASES[source]
    config = config_for(variant, shape)
    quantization = None if settings.quantization == "none" else settings.quantization

    sizes: dict[torch.dtype, int] = {}

    def weights(dtype: torch.dtype) -> int:  # each estimate builds the model on `meta`: once per dtype
        if dtype not in sizes:
            sizes[dtype] = estimate_weight_bytes(config, dtype, quantization)
        return sizes[dtype]

    quantized = quantization is not None
    try:
        _, dtype = plan_loading(settings.device, settings.dtype, gpus, weights, quantized=quantized)
    except PlacementError:  # it does not fit: the size in the dtype the policy would want
        _, dtype = plan_loading(settings.device, settings.dtype, gpus, lambda _: 0, quantized=quantized)
    return weights(dtype) / GIB


class SwitchRefused(InputError):
    """A visitor asked to switch the model on a server whose operator did not allow it."""


class Service:
    """The shared part of the app: one model at a time (swappable), one segmenter, the preview fallback."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self.gate = Gate()
        """The model events in flight (answers, tracking, clicks): the warm-up waits while any runs."""
        self.background = Background(self.gate)
        """Who computes first in the background: the warm-up or SAM's embedding (`pixelrefer.chat.background`)."""
        self.warmer = Warmer(self.background)
        """Precomputes each workspace's next answer while its visitor marks (`pixelrefer.chat.warmup`)."""
        self.budget = MemoryBudget(
            shared=lambda: sam_holdings(self.segmenter),
            drop_shared=lambda: self.segmenter and self.segmenter.forget_embeddings(),
        )
        """What all visitors hold, per device, against the operator's limits (`pixelrefer.serve.budget`);
        the limits are set by `start()`, once the model is loaded."""
        self.warmer.on_stored = self.budget.after_warm_up
        self.zero_gpu = settings.zero_gpu or environment_says_zero_gpu()
        """ZeroGPU: model work only inside one GPU call per action (`pixelrefer.serve.zerogpu_calls`)."""
        self.calls: ModelCalls = calls_for(self, self.zero_gpu)
        if self.zero_gpu:  # a background thread's model work would compute on ZeroGPU's zeros
            self.warmer.close()
        self.prefetcher = EmbeddingPrefetcher(
            self.background,
            self.budget,
            lambda: self.segmenter,
            enabled=settings.sam_prefetch and not self.zero_gpu,
        )
        """Computes SAM's embedding of each picture shown before its first click (`pixelrefer.serve.prefetch`)."""
        self.model: PixelRefer | None = None
        self.requested = settings.model
        self.segmenter: Segmenter | None = None
        self.preview = False
        self.preview_reason = ""
        self._preview_paths: dict[str, Path] = {}
        self._estimates: dict[str, float] = {}
        self.started_s = 0.0
        self.engine_notice = ""
        self.gpu_notice = cuda_diagnosis()
        """Non-empty when a GPU is there but torch cannot use it (a driver older than its CUDA build)."""
        self._engine = None
        self.generation = 0
        """Counts the model switches, so that every page can tell its panel and banner are out of date."""

    # ------------------------------------------------------------------ loading

    def switch(self, source: str) -> PixelRefer:
        """A visitor's request to serve `source` for everyone: refused unless the operator allowed it.

        Every workspace follows on its next event (`Workspace.sync_model`: objects kept, chat restarted) and
        every page's panel and banner on their next refresh, which `generation` tells is due.
        """
        if not self.settings.allow_model_switch:
            raise SwitchRefused(
                "Switching the model is disabled on this server: whoever runs the app chooses it "
                "(python app.py --model ..., or --allow-model-switch to let visitors switch)."
            )
        before = self.model
        model = self.load(source)
        if model is not before:
            self.generation += 1
        return model

    def start(self) -> Service:
        """Load the configured model (or the preview) and the segmenter."""
        began = time.perf_counter()
        tune_for_server()  # visitors' frames, once freed, go back to the system: RSS follows the budget
        self.load(self.settings.model)
        try:
            self.segmenter = load_segmenter(self.settings.sam2, device=self.settings.device)
        except Exception as exc:  # e.g. a device that is not there: still serve, with the classical one
            _log.exception("Loading the segmenter %s failed; using GrabCut", self.settings.sam2)
            from ..segment.grabcut import GrabCutSegmenter

            self.segmenter = GrabCutSegmenter(
                notice=f"SAM 2.1 '{self.settings.sam2}' could not be loaded ({type(exc).__name__}: {exc}). "
                "Using the classical GrabCut segmenter instead."
            )
        gb = {
            name: None if value is None else int(value * 1e9)
            for name, value in (("ram", self.settings.ram_budget_gb), ("gpu", self.settings.gpu_budget_gb))
        }
        self.budget.limits = default_limits(gb["ram"], gb["gpu"], use_gpus=self.settings.device != "cpu")
        _log.info("Memory budget: %s", self.budget.describe())
        self.started_s = time.perf_counter() - began
        return self

    def _preview_checkpoint(self, variant: str) -> Path:
        if variant not in self._preview_paths:
            folder = self.settings.preview_dir / f"tiny-{variant}"
            if not (folder / "config.json").exists():
                build_checkpoint(folder, variant=variant, shape=TINY, seed=0)
            self._preview_paths[variant] = folder
        return self._preview_paths[variant]

    def load(self, source: str) -> PixelRefer:
        """Make `source` the served model; falls back to the offline preview when it cannot be had.

        Unreachable weights (offline, gated, missing) are the expected reason; a broken checkpoint, a device
        that is not there or too little memory fall back the same way, with the reason in the banner, so a
        Space never crash-loops on start-up and a failed switch never leaves it without a model.
        """
        with self._lock:
            self.requested = source
            if self.model is not None and self.model.source == source:
                return self.model
            self.warmer.drop_all()
            if self.preview and source in RELEASES:
                return self._load_preview(RELEASES[source][0])
            self._unload()
            try:
                self._start_engine(source)
                # With vLLM decoding, the decoder layers would only sit on the GPU beside the server's copy.
                vllm = self._engine is not None
                self.model = PixelRefer.from_pretrained(
                    source,
                    device=self.settings.device,
                    dtype=self.settings.dtype,
                    quantization=self.settings.quantization,
                    **({"encoder_only": True} if vllm else {}),
                )
                if vllm:
                    self.model.engine = self._engine
                self.preview = False
                self.preview_reason = ""
            except WeightsUnavailable as exc:
                return self._fall_back(source, str(exc))
            except Exception as exc:  # any load failure must leave a working app
                _log.exception("Loading %s failed; serving the offline preview", source)
                self.budget.free()
                return self._fall_back(source, f"Cannot load '{source}': {type(exc).__name__}: {exc}")
            return self.model

    def _fall_back(self, source: str, reason: str) -> PixelRefer:
        """Serve the preview of `source`'s variant (full for anything not a release), saying why."""
        self.preview = True
        self.preview_reason = reason.rstrip(".")
        _log.warning(
            "Serving the offline preview (tiny random weights, meaningless answers): %s", scrub(reason)
        )
        variant = RELEASES.get(source, ("full", TINY))[0]
        return self._load_preview(variant)

    def _load_preview(self, variant: str) -> PixelRefer:
        folder = self._preview_checkpoint(variant)
        if self.model is None or self.model.source != str(folder):
            self.model = PixelRefer.from_pretrained(str(folder), device="cpu", dtype="float32")
            self._attach_engine(self.model)
        return self.model

    def _unload(self) -> None:
        """Free the served model (and its engine) before another is planned: free GPU memory is read then,
        and a GPU that cannot hold both models must not fail the switch into the preview.

        Visitors' sessions may still hold the old model (they follow on their next event): its weights are
        released all the same (moved to the meta device), so only the service's reference decides.
        """
        old, self.model = self.model, None
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if old is not None:
            try:
                torch.nn.Module.to(old.model, "meta")
            except (RuntimeError, ValueError, TypeError):  # e.g. a quantized layout: references go anyway
                _log.warning("The old model's weights could not be released at once", exc_info=True)
        self.budget.free()

    def _start_engine(self, source: str) -> None:
        """With `--engine vllm`, start (or reach) the server from the checkpoint's files, before the app
        loads anything: vLLM sizes its KV cache from the GPU memory free when it starts. When it cannot
        serve, answers are decoded in-process and `engine_notice` says why."""
        self.engine_notice = ""
        if self.settings.engine != "vllm":
            return
        from ..engines.vllm_server import serve_checkpoint

        gpus = visible_gpus(measure_free=False)  # no CUDA context in this process before vLLM starts
        plan = plan_checkpoint(
            source, device=self.settings.device, dtype=self.settings.dtype, encoder_only=True, gpus=gpus
        )
        try:
            self._engine = serve_checkpoint(
                plan.folder,
                plan.dtype,
                plan.placement.devices,
                gpus=gpus,
                url=self.settings.engine_url,
                max_concurrency=max(16, self.settings.concurrency),
            )
        except Exception as exc:  # the app keeps serving with the in-process engine
            self._engine_unavailable(exc)

    def _engine_unavailable(self, exc: Exception) -> None:
        _log.exception("The vLLM engine is not available; decoding in-process")
        self.engine_notice = (
            f"The vLLM engine is not available ({type(exc).__name__}: {str(exc).splitlines()[0]}); answers "
            "are decoded in-process, one at a time."
        )

    def _attach_engine(self, model: PixelRefer) -> None:
        """Give `model` the configured decode engine; when vLLM cannot serve, decode in-process and say why."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self.engine_notice = ""
        if self.settings.engine == "transformers":
            return
        from ..engines import build_engine

        try:
            self._engine = build_engine(
                "vllm",
                model,
                url=self.settings.engine_url,
                max_concurrency=max(16, self.settings.concurrency),
            )
            model.engine = self._engine
        except Exception as exc:  # the app keeps serving with the in-process engine
            self._engine_unavailable(exc)

    @property
    def model_concurrency(self) -> int:
        """How many model events run at once: the engine's capacity (vLLM decodes many), at least --concurrency."""
        capacity = self.model.engine.max_concurrency if self.model is not None else 1
        return max(self.settings.concurrency, capacity)

    def close(self) -> None:
        """Stop what the service started (a vLLM server)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def release_memory(self) -> None:
        """After an out-of-memory error: drop every visitor's caches that can be computed again, then what
        Python and the CUDA allocator hold on to (`MemoryBudget.recover`)."""
        self.budget.recover(None)

    # ------------------------------------------------------------------ what the UI shows

    @property
    def banner(self) -> str:
        """Markdown for the top of the page: empty when the real model and SAM 2.1 are serving.

        The reasons come from loaders that name folders and URLs; they are scrubbed of server paths and
        tokens (`pixelrefer.runtime.redact.scrub`) since every visitor reads them.
        """
        lines = []
        if self.preview:
            lines.append(
                f"**Offline preview.** {self.preview_reason}. The answers come from a tiny random model "
                "built on this machine: they are meaningless and only show how the app works. To use "
                "PixelRefer, run with network access (and `HF_TOKEN` if needed) or pass `--model` a "
                "downloaded checkpoint folder."
            )
        if self.segmenter is not None and self.segmenter.notice:
            lines.append(f"**Masks:** {self.segmenter.notice}")
        if self.engine_notice:
            lines.append(f"**Engine:** {self.engine_notice}")
        if self.gpu_notice:
            lines.append(f"**GPU:** {self.gpu_notice}")
        return scrub("\n\n".join(lines))

    def status(self) -> dict[str, str]:
        """Model, variant, devices, dtype, quantization and memory, for the status panel."""
        model = self.model
        if model is None:
            return {"model": "not loaded"}
        if torch.cuda.is_available() and any(d.startswith("cuda") for d in model.placement.devices):
            used = sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())) / GIB
            memory = f"{used:.1f} GiB on GPU"
        else:
            memory = f"{psutil.Process().memory_info().rss / GIB:.1f} GiB process memory"
        return {
            "model": f"{self.display_name} ({PREVIEW_LABEL}: tiny random weights)"
            if self.preview
            else self.display_name,
            "variant": "PixelRefer-Lite (object-only)"
            if model.variant == "lite"
            else "PixelRefer (vision-object)",
            "devices": ", ".join(model.placement.devices),
            "dtype": model.placement.dtype_note or str(model.dtype).removeprefix("torch."),
            "quantization": model.quantization or "none",
            "memory": memory,
            "engine": model.engine.name,
            "segmenter": self.segmenter.name if self.segmenter else "none",
        }

    @property
    def display_name(self) -> str:
        """The served checkpoint as visitors see it: a hub id, or only a local folder's name (no server paths)."""
        source = self.requested
        return (
            source
            if source in RELEASES or not os.path.isabs(os.path.expanduser(source))
            else Path(source).name
        )

    def available_bytes(self) -> int:
        """Memory a new model could use: free GPU memory when GPUs are used, else available RAM."""
        gpus = visible_gpus() if self.settings.device != "cpu" else []
        if gpus:
            return sum(g.free_bytes for g in gpus)
        return int(psutil.virtual_memory().available)

    def choices(self) -> list[ModelChoice]:
        """The four released checkpoints with their estimated size; only those that fit are offered."""
        gpus = visible_gpus() if self.settings.device != "cpu" else []
        available = self.available_bytes() / GIB
        current = self.model.source if self.model is not None else ""
        out = []
        for source in RELEASES:
            if source not in self._estimates:
                self._estimates[source] = _release_estimate(self.settings, source, gpus)
            estimate = self._estimates[source]
            fits_memory = estimate * 1.15 <= available or source == current
            name = source.split("/", 1)[1]
            note = f"~{estimate:.1f} GiB" + ("; the preview stands in here" if self.preview else "")
            out.append(
                ModelChoice(source, f"{name} ({note})", estimate, self.preview or fits_memory, fits_memory)
            )
        return out
