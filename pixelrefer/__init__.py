"""PixelRefer region chat: the model, the chat session, segmentation and video IO.

Names are imported on first use, so `import pixelrefer` (and the CLI's argument checking) stays fast and
quiet until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureCache": "cache",
    "PrefixCache": "cache",
    "ChatLimits": "limits",
    "ChatObject": "chat",
    "ChatSession": "chat",
    "Exchange": "chat",
    "Reply": "chat",
    "PixelReferConfig": "config",
    "PixelReferLiteConfig": "config",
    "GpuInfo": "devices",
    "Placement": "devices",
    "PlacementError": "devices",
    "plan_placement": "devices",
    "GenerationSettings": "generation",
    "GenerationTimeout": "generation",
    "WeightsUnavailable": "hub",
    "ImageError": "images",
    "load_image": "images",
    "Chunk": "inference",
    "Embedded": "inference",
    "GenerationResult": "inference",
    "PixelRefer": "inference",
    "Prepared": "inference",
    "Video": "inference",
    "LimitExceeded": "limits",
    "MediaLimits": "limits",
    "MediaRejected": "limits",
    "MEDIA": "processing",
    "ObjectRef": "processing",
    "Turn": "processing",
    "FrameSample": "sampling",
    "sample_frames": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pixelrefer' has no attribute {name!r}")
