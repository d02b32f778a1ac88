"""What a chat keeps between turns: encoded features by content, and the LLM's KV cache by prefix.

Both are owned by the caller (a chat session), never by the model, and both are bounded and freed
with `clear()`. Keys are content hashes of exactly what a network consumes, so a changed input can
never hit a stale entry and an unchanged one is never recomputed.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

__all__ = ["FeatureCache", "PrefixCache", "content_key"]


def content_key(*parts: object) -> str:
    """A digest of arrays, tensors and plain values, in order."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous()
            digest.update(f"T{part.dtype}{tuple(part.shape)}".encode())
            digest.update(part.view(torch.uint8).numpy().tobytes() if part.numel() else b"")
        elif isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            digest.update(f"A{part.dtype}{part.shape}".encode())
            digest.update(part.tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return digest.hexdigest()


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class FeatureCache:
    """A least-recently-used store of encoded features, bounded in bytes.

    Locked, because the precompute worker (`pixelrefer.chat.warmup`) reads and fills it from its own thread.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def get(self, key: str) -> object | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: object) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self.nbytes -= _nbytes(self._items.pop(key))
            self._items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= _nbytes(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def entries(self) -> list[tuple[str, object]]:
        """The (key, value) pairs now, copied under the lock (the warm-up fills the cache from its thread)."""
        with self._lock:
            return list(self._items.items())

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class PrefixCache:
    """The KV cache of every row fed to the LLM so far, reused by the next prompt that starts the same way.

    Rows are compared as embeddings, so anything that changes a row (an edited object, another image)
    invalidates the cache from that row on, and nothing else does.
    """

    cache: DynamicCache | None = None
    rows: torch.Tensor | None = None
    reused_rows: int = 0

    def clear(self) -> None:
        self.cache = None
        self.rows = None
        self.reused_rows = 0

    def take(self, embeds: torch.Tensor) -> tuple[DynamicCache, int]:
        """A cache holding the longest common prefix of the stored rows and `embeds` (1, L, D)."""
        if self.cache is None or self.rows is None:
            self.reused_rows = 0
            return DynamicCache(), 0
        new = embeds[0]
        limit = min(len(self.rows), len(new) - 1)
        same = (self.rows[:limit] == new[:limit].to(self.rows.device)).all(dim=-1)
        differs = torch.nonzero(~same)
        common = int(differs[0, 0]) if len(differs) else limit
        if common == 0:
            self.clear()
            return DynamicCache(), 0
        self.cache.crop(common - self.cache.get_seq_length())
        self.rows = self.rows[:common]
        self.reused_rows = common
        return self.cache, common

    def store(self, cache: DynamicCache, rows: torch.Tensor) -> None:
        self.cache = cache
        self.rows = rows

    def copy(self) -> PrefixCache:
        """An independent copy (new tensors), which a background prefill can extend while this one is used."""
        if self.cache is None or self.rows is None:
            return PrefixCache()
        cache = DynamicCache()
        for index, layer in enumerate(self.cache.layers):
            cache.update(layer.keys.clone(), layer.values.clone(), index)
        return PrefixCache(cache, self.rows.clone())

    def fill(self, lm: torch.nn.Module, embeds: torch.Tensor) -> int:
        """Run `lm` over the rows of `embeds` (1, L, D) not already cached and keep them; returns how many ran.

        This is the KV-prefix step of a warm-up: the same forward as the first step of `decode`, without
        the logits, so the next prompt that starts with these rows only prefills its own.
        """
        cache, start = self.take(embeds)
        with torch.inference_mode():
            lm.model(inputs_embeds=embeds[:, start:], cache=cache, use_cache=True)
        self.store(cache, embeds[0, : cache.get_seq_length()].clone())
        return len(embeds[0]) - start

    @property
    def nbytes(self) -> int:
        if self.cache is None:
            return 0
        total = 0
        for layer in self.cache.layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total + (self.rows.numel() * self.rows.element_size() if self.rows is not None else 0)
