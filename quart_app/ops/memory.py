"""Memory a serving process keeps for its whole life."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

from quart import Quart

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks this large or larger are mapped and unmapped on their own: a body
# chunk (64-256 KiB) goes back to the system when freed.
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENAS = 2


def bound_the_allocator() -> bool:
    """Keep glibc's allocator from holding on to what an upload used.

    By default glibc raises its mmap threshold each time a large block is
    freed (up to 32 MiB), so the 256 KiB body chunks soon come from the heap,
    which grows and is not given back; and every thread (SQLite's, the file
    writers') may get an arena of its own. Fixed here, a worker's peak during
    a 1 GiB upload fell by 5-6 MiB and its RSS went back to the idle figure
    afterwards (README, "Performance"). Same as MALLOC_MMAP_THRESHOLD_ and
    MALLOC_ARENA_MAX in the environment, without relying on the operator to
    set them. Returns whether it applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    applied &= mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES)
    applied &= mallopt(_M_ARENA_MAX, ARENAS)
    return bool(applied)


def init_app(app: Quart) -> None:
    @app.before_serving
    async def _bound_the_allocator() -> None:
        bound_the_allocator()

    @app.before_serving
    async def _freeze_startup_objects() -> None:
        # Registered last, so it runs after the other startup functions. The
        # objects the imports and the app made live as long as the process;
        # a full collection walked them all every so often under load, which
        # set the p99 (README, "Why the code is shaped this way"). Frozen, the
        # collector never looks at them again.
        gc.collect()
        gc.freeze()
