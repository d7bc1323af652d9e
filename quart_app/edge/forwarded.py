"""Forwarded / X-Forwarded-* from the proxies in QUART_APP_TRUSTED_PROXIES.

Behind a TLS-terminating proxy the app sees ``http`` and the proxy's
upstream Host, so every URL it builds says ``http://backend``. The proxy
says what the client used in ``Forwarded`` (RFC 7239) or
``X-Forwarded-For/-Proto/-Host``; anyone else can send the same headers, so
they are honoured only when the TCP peer (``scope["client"]``) is a trusted
proxy.

Not Hypercorn's ``ProxyFixMiddleware``: it trusts a number of hops, not
addresses, so a client that reaches Hypercorn directly (a second listener,
a misrouted port, the pod network) sets its own scheme and Host, and it
takes the entry ``trusted_hops`` from the right, even when that entry is
the address of yet another proxy of ours. Here the peer must be trusted;
then the hops are walked from the right while they too are trusted
proxies, and the first one that is not (the client), with the scheme and
host the outermost trusted proxy recorded, is what the app sees:

- ``Forwarded``: the element whose ``for`` is the first untrusted address
  gives ``for``, ``proto`` and ``host``.
- ``X-Forwarded-*``: the first untrusted address in ``X-Forwarded-For``,
  found after n entries, is the client; ``X-Forwarded-Proto`` and
  ``-Host`` give their n-th value from the right (each proxy appends one,
  as Werkzeug's ProxyFix reads them), or are ignored if they have fewer.

A proxy passes on what the client sent unless told otherwise, so a proxy
that sets one family and not the other would let the client pick the
other. When a trusted peer sends both families, neither is honoured:
configure the proxy to set one and clear the other (deploy/nginx.conf
clears ``Forwarded``). The Host taken from the headers is checked like any
Host, by host_guard.py, which runs inside this middleware.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart import Quart

from quart_app.config import ENV_PREFIX, ConfigError, Settings
from quart_app.edge.hosts import parse_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = {"http": ("http", "ws"), "https": ("https", "wss")}


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """Comma-separated IP addresses and CIDR networks. Names are
        refused (no DNS at request time), and so are networks with host
        bits set (``10.0.0.1/8`` is most likely a typo)."""
        networks = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError as error:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network: {error}"
                ) from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)


def parse_address(node: str | None) -> Address | None:
    """The IP in a ``for`` node or X-Forwarded-For entry: ``192.0.2.1``,
    ``192.0.2.1:4711``, ``2001:db8::1``, ``[2001:db8::1]:4711``; None for
    ``unknown``, obfuscated names and anything else."""
    if not node:
        return None
    text = node.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_quoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings (RFC 7230 quoted-string)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def forwarded_elements(values: Iterable[str]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` fields as one list of elements, left to right;
    parameter names lower case, values unquoted."""
    elements = []
    for field in values:
        for element in _split_quoted(field, ","):
            pairs: dict[str, str] = {}
            for pair in _split_quoted(element, ";"):
                name, sep, value = pair.partition("=")
                if sep:
                    pairs.setdefault(name.strip().lower(), _unquote(value))
            elements.append(pairs)
    return elements


def _list(values: Iterable[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",")]


@dataclass(frozen=True)
class Hop:
    """What the outermost trusted proxy saw: the client, scheme and host."""

    client: str | None
    scheme: str | None
    host: str | None


def resolve(headers: dict[bytes, list[str]], proxies: TrustedProxies) -> Hop | None:
    """The client's hop from a trusted peer's forwarding headers; None when
    there are none, or both families (see the module docstring)."""
    forwarded = headers.get(b"forwarded")
    x_names = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    has_x = any(name in headers for name in x_names)
    if forwarded and has_x:
        return None
    if forwarded:
        elements = forwarded_elements(forwarded)
        if not elements:
            return None
        chosen = elements[-1]
        for element in reversed(elements):
            chosen = element
            if not proxies.trusts(parse_address(element.get("for"))):
                break
        return Hop(chosen.get("for"), chosen.get("proto"), chosen.get("host"))
    if not has_x:
        return None
    addresses = _list(headers.get(b"x-forwarded-for", []))
    client, depth = None, 0
    for entry in reversed(addresses):
        client, depth = entry, depth + 1
        if not proxies.trusts(parse_address(entry)):
            break
    depth = max(depth, 1)  # no X-Forwarded-For: the peer's own values
    protos = _list(headers.get(b"x-forwarded-proto", []))
    hosts = _list(headers.get(b"x-forwarded-host", []))
    return Hop(
        client,
        protos[-depth] if len(protos) >= depth else None,
        hosts[-depth] if len(hosts) >= depth else None,
    )


def apply(scope: Any, hop: Hop) -> Any:
    """A copy of ``scope`` with the hop's client, scheme and host. A scheme
    other than http/https is ignored; a malformed host is passed on for
    host_guard.py to refuse."""
    scope = dict(scope)
    client = parse_address(hop.client)
    if client is not None:
        scope["client"] = (str(client), 0)
    scheme = SCHEMES.get((hop.scheme or "").lower())
    if scheme is not None:
        scope["scheme"] = scheme[0] if scope["type"] == "http" else scheme[1]
    if hop.host:
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"host"]
        scope["headers"] = [*headers, (b"host", hop.host.encode("latin-1"))]
        host = parse_host(hop.host)
        if host is not None:
            port = host.effective_port(scope["scheme"])
            scope["server"] = (host.name.strip("[]"), port)
    return scope


_NAMES = frozenset((b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))


class TrustedProxyMiddleware:
    """Outermost: the access log and everything inside see the client's
    address, scheme and Host when the peer is a trusted proxy."""

    def __init__(self, app: Any, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            if peer and self.proxies.trusts(parse_address(peer[0])):
                headers: dict[bytes, list[str]] = {}
                for name, value in scope["headers"]:
                    lowered = name.lower()
                    if lowered in _NAMES:
                        headers.setdefault(lowered, []).append(value.decode("latin-1"))
                hop = resolve(headers, self.proxies)
                if hop is not None:
                    scope = apply(scope, hop)
        await self.app(scope, receive, send)


def init_app(app: Quart, settings: Settings) -> None:
    """Outermost middleware, when any proxy is trusted."""
    try:
        proxies = TrustedProxies.parse(settings.TRUSTED_PROXIES)
    except ValueError as error:
        raise ConfigError(f"{ENV_PREFIX}TRUSTED_PROXIES has an invalid value: {error}") from None
    if proxies:
        app.asgi_app = TrustedProxyMiddleware(app.asgi_app, proxies)  # type: ignore[method-assign]
