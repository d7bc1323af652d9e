"""Quart's test client and its raw connections, typed as what they are.

Quart declares ``app.test_client()`` as its ``TestClientProtocol`` and
``client.request()`` as ``TestHTTPConnectionProtocol``, which has no
``status_code`` or ``headers``; the objects are a ``QuartClient`` and a
``TestHTTPConnection`` (Quart's ``test_client_class`` and
``http_connection_class``). These narrow the declared types once, checked
at run time, where a cast at every call would check nothing."""

from __future__ import annotations

from quart.testing import QuartClient
from quart.testing.connections import TestHTTPConnection
from quart.typing import TestClientProtocol, TestHTTPConnectionProtocol


def as_quart_client(client: TestClientProtocol) -> QuartClient:
    assert isinstance(client, QuartClient), type(client)
    return client


def as_http_connection(connection: TestHTTPConnectionProtocol) -> TestHTTPConnection:
    assert isinstance(connection, TestHTTPConnection), type(connection)
    return connection
