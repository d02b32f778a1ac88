"""The decode-engine interface, which lives with the model (`pixelrefer.model.engine`) so that the model never
imports an engine; the engines of this package implement it."""

from __future__ import annotations

from ..model.engine import DecodeEngine, DecodeRequest, EngineUnavailable

__all__ = ["DecodeEngine", "DecodeRequest", "EngineUnavailable"]
