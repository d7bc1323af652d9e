"""quart_app with the API-key check skipped: the baseline the benchmark
compares the real app with to measure what authentication costs (issue 14
item 10). It lives in bench/ only; nothing in quart_app can turn the check
off.

The real check (``edge.authentication``'s hook) runs once for each
``Authorization`` value this worker has not seen succeed; after that the
request is given the access that value was found to grant, with no parsing,
hashing, cache, failure limit, scope check or access-log note. Views still
find who is asking, as they must to own what they create.

    hypercorn 'bench.unchecked:create_app()'
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from quart import Quart, g, request

import quart_app
from quart_app.services.accounts import Access

CHECK = "_authenticate"


def skip_the_key_check(app: Quart) -> None:
    hooks = app.before_request_funcs[None]
    [found] = [hook for hook in hooks if getattr(hook, "__name__", "") == CHECK]
    check = cast(Callable[[], Awaitable[Any]], found)
    known: dict[str, Access] = {}

    async def _remembered() -> Any:
        header = request.headers.get("Authorization")
        access = known.get(header) if header is not None else None
        if access is not None:
            g.access = access
            return None
        result = await check()
        access = g.get("access")
        if header is not None and access is not None:
            known[header] = access
        return result

    hooks[hooks.index(found)] = _remembered


def create_app() -> Quart:
    app = quart_app.create_app()
    skip_the_key_check(app)
    return app
