"""``X-Content-Type-Options: nosniff`` on every JSON answer.

A browser that sniffs may take JSON holding markup (a file name, a user's
name, a problem's detail) for HTML and run it. Set once, where every
response passes, for successes and problems alike, whatever view or error
handler made them. Downloads set it themselves, whatever their type.
"""

from __future__ import annotations

from quart import Quart, Response


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def init_app(app: Quart) -> None:
    @app.after_request
    async def _nosniff(response: Response) -> Response:
        if is_json(response.mimetype or ""):
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response
