"""Memory a serving process keeps for its whole life."""

from __future__ import annotations

import gc

from quart import Quart

# glibc's allocator is left at its defaults. Fixing its mmap threshold at
# 128 KiB (so that body chunks went back to the system when freed) saved
# 3-4 MiB of a worker's peak, but every 256 KiB chunk and every copy of one
# was then mapped and faulted in afresh: 1.2 million page faults per 512 MiB
# upload instead of 3,000, and a third of the throughput (README, "Why the
# code is shaped this way").


def init_app(app: Quart) -> None:
    @app.before_serving
    async def _freeze_startup_objects() -> None:
        # Registered last, so it runs after the other startup functions. The
        # objects the imports and the app made live as long as the process;
        # a full collection walked them all every so often under load, which
        # set the p99 (README, "Why the code is shaped this way"). Frozen, the
        # collector never looks at them again.
        gc.collect()
        gc.freeze()
