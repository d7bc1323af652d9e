"""Canaries for quart_app/edge/server_internals.py: the Quart, Hypercorn and
h11 internals it relies on. They fail first when an upgrade moves one, and
name what to re-check."""

from __future__ import annotations

import asyncio
import inspect
import sys
from importlib.metadata import version
from typing import Any

import h11
import pytest
from h11._readers import ContentLengthReader
from h11._state import EVENT_TRIGGERED_TRANSITIONS
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from quart import Quart
from quart.asgi import ASGIHTTPConnection
from quart.wrappers import Request
from quart.wrappers.request import Body
from werkzeug.routing import Map, Rule

from quart_app.edge.bodies import BoundedBody
from quart_app.edge.server_internals import LazyBuilderRule


def test_hypercorn_is_in_the_range_connections_was_built_for() -> None:
    major, minor = (int(x) for x in version("hypercorn").split(".")[:2])
    assert (major, minor) == (0, 18), "re-check edge/server_internals.py against this Hypercorn"


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


def test_h11_is_in_the_range_http1_bodies_were_built_for() -> None:
    major, minor = (int(x) for x in version("h11").split(".")[:2])
    assert (major, minor) == (0, 16), "re-check HTTP1Protocol.handle against this h11"


def test_h11_internals_http1_bodies_pass_are_still_there() -> None:
    """HTTP1Protocol hands a body read to the stream itself and counts it
    off the ContentLengthReader's ``_remaining``: that must still be all
    h11's next_event would have done with such a Data event."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n")
    assert isinstance(connection.next_event(), h11.Request)
    reader = connection._reader
    assert type(reader) is ContentLengthReader
    assert reader._remaining == 9
    assert not connection._receive_buffer
    assert connection.client_is_waiting_for_100_continue is False
    # A Data event leaves the client in SEND_BODY; only the end moves it.
    assert EVENT_TRIGGERED_TRANSITIONS[h11.CLIENT][h11.SEND_BODY] == {
        h11.Data: h11.SEND_BODY,
        h11.EndOfMessage: h11.DONE,
    }
    assert "self._remaining -= len(data)" in inspect.getsource(ContentLengthReader.__call__)
    reader._remaining -= 4  # what HTTP1Protocol does with a read of 4 bytes
    connection.receive_data(b"56789")
    event = connection.next_event()
    assert isinstance(event, h11.Data) and bytes(event.data) == b"56789"
    assert isinstance(connection.next_event(), h11.EndOfMessage)
    assert connection.their_state is h11.DONE
    # ...and what Hypercorn does with that Data event, which the override
    # does in its place.
    handle = inspect.getsource(H11Protocol.handle)
    assert "self.connection.receive_data(event.data)" in handle
    events = inspect.getsource(H11Protocol._handle_events)
    assert "await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))" in events
    assert "they_are_waiting_for_100_continue" in events


def test_asyncio_stream_reader_internals_whole_reads_uses_are_still_there() -> None:
    """WholeReadsStreamReader (server_internals) keeps a read beside
    StreamReader's buffer and drives its pause and wake-ups itself."""
    assert sys.version_info[:2] in ((3, 11), (3, 12)), "re-check WholeReadsStreamReader"
    for method in ("_wakeup_waiter", "_wait_for_data", "_maybe_resume_transport", "feed_data"):
        assert method in asyncio.StreamReader.__dict__, method
    init = inspect.getsource(asyncio.StreamReader.__init__)
    attributes = ("_limit", "_buffer", "_eof", "_exception", "_transport", "_paused", "_waiter")
    for attribute in attributes:
        assert f"self.{attribute} =" in init, attribute
    feed = inspect.getsource(asyncio.StreamReader.feed_data)
    assert "self._buffer.extend(data)" in feed
    assert "len(self._buffer) > 2 * self._limit" in feed
    assert "self._transport.pause_reading()" in feed


def test_quart_is_in_the_range_streaming_was_built_for() -> None:
    major, minor = (int(x) for x in version("quart").split(".")[:2])
    assert (major, minor) == (0, 22), (
        "re-check edge/server_internals.py against this Quart, then widen"
    )


def test_quart_internals_streaming_replaces_are_still_there() -> None:
    # The receive loop we override, with the signature we override it with.
    params = list(inspect.signature(ASGIHTTPConnection.handle_messages).parameters)
    assert params == ["self", "request", "receive"]
    # Body's interface, which BoundedBody offers in its place.
    for method in ("append", "set_complete", "set_result", "clear", "__aiter__", "__anext__"):
        assert hasattr(Body, method) and hasattr(BoundedBody, method), method
    assert hasattr(Body, "__await__") and hasattr(BoundedBody, "__await__")
    # The hooks create_app plugs them in with.
    assert hasattr(Quart, "asgi_http_class") and hasattr(Quart, "request_class")
    assert hasattr(Request, "body_class")


def test_hypercorn_worker_functions_the_supervisor_starts_are_still_there() -> None:
    # ops/supervisor.py starts them as Hypercorn's run() does, by keyword.
    for worker in (hypercorn_run.asyncio_worker, hypercorn_run.uvloop_worker):
        params = inspect.signature(worker).parameters
        assert list(params) == ["config", "sockets", "shutdown_event"]


def test_hypercorn_worker_serve_that_watch_worker_wraps_is_still_there() -> None:
    # Looked up by name when a worker starts, with these parameters.
    assert "partial(worker_serve, app, config" in inspect.getsource(hypercorn_run.asyncio_worker)
    serve = getattr(hypercorn_run.worker_serve, "__wrapped__", hypercorn_run.worker_serve)
    params = inspect.signature(serve).parameters
    assert list(params)[:2] == ["app", "config"]
    assert params["shutdown_trigger"].kind is inspect.Parameter.KEYWORD_ONLY
    # Without a trigger it waits for these signals, as _signal_trigger does.
    assert '{"SIGINT", "SIGTERM", "SIGBREAK"}' in inspect.getsource(serve)


def test_url_builders_are_compiled_on_first_use_and_build_what_werkzeugs_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rule.compile still makes its builders through _compile_builder, which
    # LazyBuilderRule defers.
    source = inspect.getsource(Rule.compile)
    assert "self._compile_builder(False)" in source and "self._compile_builder(True)" in source
    compiled: list[bool] = []
    original = Rule._compile_builder

    def counted(rule: Rule, append_unknown: bool = True) -> Any:
        compiled.append(append_unknown)
        return original(rule, append_unknown)

    rules = [("/files/<file_id>/content", "content"), ("/rules/<rule>", "rule")]
    plain = Map([Rule(path, endpoint=endpoint) for path, endpoint in rules])
    monkeypatch.setattr(Rule, "_compile_builder", counted)
    lazy = Map([LazyBuilderRule(path, endpoint=endpoint) for path, endpoint in rules])
    lazy_urls, plain_urls = lazy.bind("example.test"), plain.bind("example.test")
    assert compiled == []
    for values in ({"file_id": "a b/ü"}, {"file_id": "x", "limit": 3, "cursor": "é&"}):
        built = lazy_urls.build("content", values, force_external=True)
        assert built == plain_urls.build("content", values, force_external=True)
    assert compiled == [True]  # the unknown-arguments builder, once
    assert lazy_urls.build("content", {"file_id": "x"}, append_unknown=False) == (
        "/files/x/content"
    )
    assert compiled == [True, False]
    # A value named like the builder's own first parameter.
    for values in ({"rule": "r"}, {"rule": "r", "self": "s"}):
        built = lazy_urls.build("rule", values)
        assert built == plain_urls.build("rule", values)
    assert lazy_urls.build("content", {"file_id": "x", "rule": "r"}) == "/files/x/content?rule=r"
