"""PixelRefer region chat: the model, the chat session, segmentation and video IO."""

from .cache import FeatureCache, PrefixCache
from .config import PixelReferConfig, PixelReferLiteConfig
from .devices import GpuInfo, Placement, PlacementError, plan_placement
from .generation import GenerationSettings, GenerationTimeout
from .hub import WeightsUnavailable
from .images import ImageError, load_image
from .inference import Chunk, Embedded, GenerationResult, PixelRefer, Prepared, Video
from .processing import MEDIA, ObjectRef, Turn
from .sampling import FrameSample, sample_frames

__all__ = [
    "MEDIA",
    "Chunk",
    "Embedded",
    "FeatureCache",
    "FrameSample",
    "GenerationResult",
    "GenerationSettings",
    "GenerationTimeout",
    "GpuInfo",
    "ImageError",
    "ObjectRef",
    "PixelRefer",
    "PixelReferConfig",
    "PixelReferLiteConfig",
    "Placement",
    "PlacementError",
    "Prepared",
    "PrefixCache",
    "Turn",
    "Video",
    "WeightsUnavailable",
    "load_image",
    "plan_placement",
    "sample_frames",
]
