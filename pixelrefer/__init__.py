"""PixelRefer region chat: the model, the chat session, segmentation and video IO.

Names are imported on first use, so `import pixelrefer` (and the CLI's argument checking) stays fast and
quiet until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureCache": "model.cache",
    "PrefixCache": "model.cache",
    "ChatLimits": "chat.limits",
    "ChatObject": "chat.session",
    "ChatSession": "chat.session",
    "Exchange": "chat.session",
    "Reply": "chat.session",
    "PixelReferConfig": "model.config",
    "PixelReferLiteConfig": "model.config",
    "GpuInfo": "runtime.devices",
    "Placement": "runtime.devices",
    "PlacementError": "runtime.devices",
    "plan_placement": "runtime.devices",
    "GenerationSettings": "model.generation",
    "GenerationTimeout": "model.generation",
    "WeightsUnavailable": "runtime.hub",
    "InputError": "runtime.errors",
    "Stopped": "runtime.errors",
    "ImageError": "media.images",
    "load_image": "media.images",
    "Chunk": "model.inference",
    "Embedded": "model.encoding",
    "GenerationResult": "model.inference",
    "PixelRefer": "model.inference",
    "Prepared": "model.planning",
    "PromptRecord": "model.planning",
    "Video": "model.planning",
    "LimitExceeded": "media.limits",
    "MediaLimits": "media.limits",
    "MediaRejected": "media.limits",
    "MEDIA": "model.processing",
    "ObjectRef": "model.processing",
    "Turn": "model.processing",
    "FrameSample": "media.sampling",
    "sample_frames": "media.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pixelrefer' has no attribute {name!r}")
