"""Host header syntax, and the host names this server answers for.

No ASGI and no Quart here: host_guard.py applies these to requests,
forwarded.py and public_url.py use the same syntax for what they rewrite.

The syntax is Werkzeug's (``werkzeug.sansio.utils.host_is_trusted``: a name
or IPv4 of ``[a-z0-9.-]``, or a bracketed IPv6, then an optional port
1-65535 without a leading zero), because any host Werkzeug rejects becomes
``request.host == ""`` and every absolute URL ``http:///...``. Accepting
exactly what it accepts, and answering 400 for the rest, means a URL built
from an accepted host is always a well-formed one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_HOST = re.compile(
    r"(?P<name>[a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::(?P<port>[1-9][0-9]{0,4}))?",
    re.ASCII | re.IGNORECASE,
)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class Host:
    """A syntactically valid ``host[:port]``; ``name`` is lower case, IPv6
    literals keep their brackets and are compressed (``[::1]``)."""

    name: str
    port: int | None

    def effective_port(self, scheme: str) -> int | None:
        return self.port if self.port is not None else DEFAULT_PORTS.get(scheme)


def parse_host(value: str) -> Host | None:
    """The host in a Host header (or a forwarded one); None when malformed:
    a path, userinfo, spaces, an empty name or label, a bad port."""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    name = match["name"].lower()
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    if name.startswith("["):
        try:
            name = f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return None
    else:
        # One trailing dot (an absolute DNS name) is the same host; empty
        # labels anywhere else are not a host at all.
        labels = name.removesuffix(".").split(".")
        if not all(labels):
            return None
        name = ".".join(labels)
    return Host(name, port)


@dataclass(frozen=True)
class HostPattern:
    """``files.example.com``, ``*.example.com`` (any subdomain, not the
    domain itself), each optionally with ``:port``; no port: any port."""

    name: str
    port: int | None
    subdomains: bool

    def matches(self, host: Host, scheme: str) -> bool:
        if self.port is not None and host.effective_port(scheme) != self.port:
            return False
        if self.subdomains:
            return host.name.endswith("." + self.name)
        return host.name == self.name


@dataclass(frozen=True)
class AllowedHosts:
    """QUART_APP_ALLOWED_HOSTS. No patterns: any (well-formed) host."""

    patterns: tuple[HostPattern, ...]

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        """Comma-separated patterns; ``*`` alone (or nothing) allows any
        host. ValueError names the entry that is not a pattern."""
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
        if "*" in entries:
            return cls(())
        patterns = []
        for entry in entries:
            subdomains = entry.startswith("*.")
            host = parse_host(entry[2:] if subdomains else entry)
            if host is None:
                raise ValueError(
                    f"{entry!r} is not a host name, *.domain or IP literal, with an optional :port"
                )
            patterns.append(HostPattern(host.name, host.port, subdomains))
        return cls(tuple(patterns))

    @property
    def any(self) -> bool:
        return not self.patterns

    def allows(self, host: Host, scheme: str) -> bool:
        return self.any or any(pattern.matches(host, scheme) for pattern in self.patterns)
