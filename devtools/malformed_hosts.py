"""Host header values that are not well formed: the parser refuses each one
(tests/unit) and the app answers each with a 400 problem (tests/app)."""

from __future__ import annotations

MALFORMED = [
    "evil.example/@x",
    "evil.example/path",
    "user@evil.example",
    "evil example",
    " ",
    "",
    "evil.example:99999",
    "evil.example:0",
    "evil.example:080",
    "evil.example:",
    "evil.example:http",
    "evil..example",
    ".evil.example",
    "[::1",
    "[not:an:ip]",
    "évil.example",
    "evil.example\t",
]
