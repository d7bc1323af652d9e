"""Memory a serving process keeps for its whole life."""

from __future__ import annotations

import gc

from quart import Quart


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
