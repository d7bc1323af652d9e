"""The Hypercorn and Quart internals quart_app/edge/server_internals.py replaces:
these fail first when an upgrade moves them."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from quart.asgi import ASGIHTTPConnection


def test_hypercorn_is_in_the_range_connections_was_built_for() -> None:
    major, minor = (int(x) for x in version("hypercorn").split(".")[:2])
    assert (major, minor) == (0, 18), "re-check connections.py against this Hypercorn"


def test_hypercorn_internals_connections_replaces_are_still_there() -> None:
    # worker_serve builds a TCPServer per connection from its module's name.
    assert "TCPServer(app, loop, config, context" in inspect.getsource(hypercorn_run.worker_serve)
    for method in ("run", "_read_data", "protocol_send", "_close"):
        assert method in TCPServer.__dict__, method
    init = inspect.getsource(TCPServer.__init__)
    for attribute in ("self.reader", "self.writer", "self.send_lock", "self.context"):
        assert attribute in init, attribute
    assert "self.protocol =" in inspect.getsource(ProtocolWrapper.__init__)
    assert "self.connection" in inspect.getsource(H11Protocol.__init__)
    # The Quart __call__ BackPressureHTTPConnection re-states.
    call = inspect.getsource(ASGIHTTPConnection.__call__)
    assert "self.handle_messages(request, receive)" in call
    assert "self.handle_request(request, send)" in call
    assert "return_when=asyncio.FIRST_COMPLETED" in call
