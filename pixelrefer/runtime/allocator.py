"""The C allocator of a server process: freed memory goes back to the system.

A server holds many large buffers (a 1080p frame is 6 MB, a visitor's clip 16 of them) that come and go with
visitors. With glibc's defaults a freed buffer of that size often stays in the process: the threshold above
which a buffer gets its own mapping rises to the size of the last one freed, so later frames are carved from
the heap, whose holes are not given back; and each thread may get its own heap (up to 8 per core). The
memory budget (`pixelrefer.serve.budget`) then counts less than the process holds. Here buffers of
`MAP_THRESHOLD` bytes and more always get their own mapping (returned on free), and at most `ARENAS` heaps
are used. Settings the operator made through glibc's environment variables (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`) are kept. Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["ARENAS", "MAP_THRESHOLD", "tune_for_server"]

_log = logging.getLogger(__name__)

ARENAS = 2
"""glibc's heaps; two kept the app's memory flattest under bench/load.py (see the Dockerfile's note)."""

MAP_THRESHOLD = 1 << 20
"""Buffers of this size and more are mapped on their own, so freeing them returns them to the system."""

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_for_server() -> dict[str, int]:
    """Apply `ARENAS` and `MAP_THRESHOLD` where the environment did not set them; what was applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    applied = {}
    for variable, option, value in (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENAS),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MAP_THRESHOLD),
    ):
        if variable not in os.environ and mallopt(ctypes.c_int(option), ctypes.c_int(value)) == 1:
            applied[variable] = value
    _log.debug("Allocator settings applied: %s", applied)
    return applied
