"""The Host header: a malformed one is a 400 problem in every configuration;
with QUART_APP_ALLOWED_HOSTS, so is any host not listed. Nothing is stored
and no URL is built from a refused Host."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart, Response
from werkzeug.datastructures import Headers

from devtools.malformed_hosts import MALFORMED
from devtools.quart_client import as_http_connection, as_quart_client
from devtools.stored import count_rows, temp_files
from quart_app import create_app
from quart_app.config import ConfigError
from quart_app.db.models import User

USER = {"name": "Ada", "email": "ada@example.com"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUART_APP_ALLOWED_HOSTS", "files.example.com/"),
        ("QUART_APP_ALLOWED_HOSTS", "files.example.com:0"),
        ("QUART_APP_ALLOWED_HOSTS", "ex*ample.com"),
        ("QUART_APP_ALLOWED_HOSTS", "https://files.example.com"),
    ],
)
def test_a_bad_allowed_hosts_value_stops_startup(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        create_app()


async def post_user(app: Quart, host: str) -> Response:
    # No cookie jar: it would parse the Host as part of a URL and fail on
    # some of the malformed ones before the test sees the answer.
    client = app.test_client(use_cookies=False)
    return await client.post("/users", json=USER, headers={"Host": host})


@pytest.fixture(params=["defaults", "allowed hosts", "public url"])
async def any_config(
    request: pytest.FixtureRequest, overrides: dict[str, Any]
) -> AsyncIterator[Quart]:
    extra = {
        "defaults": {},
        "allowed hosts": {"ALLOWED_HOSTS": "*.example.com, evil.example"},
        "public url": {"PUBLIC_URL": "https://files.example.com"},
    }[request.param]
    application = create_app({**overrides, **extra})
    async with application.test_app():
        yield application


@pytest.mark.parametrize("host", MALFORMED)
async def test_a_malformed_host_is_a_400_problem_in_every_configuration(
    any_config: Quart, host: str
) -> None:
    response = await post_user(any_config, host)
    assert response.status_code == 400, await response.get_data()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Location" not in response.headers
    problem = json.loads(await response.get_data())
    assert problem["type"] == "urn:quart-app:problem:invalid-host"
    assert problem["status"] == 400 and problem["title"] and problem["detail"]
    assert await count_rows(any_config, User) == 0


async def test_two_host_fields_are_a_400_problem(app: Quart) -> None:
    client = as_quart_client(app.test_client())
    async with as_http_connection(
        client.request(
            "/healthz",
            method="GET",
            headers=Headers([("Host", "a.example"), ("Host", "b.example")]),
        )
    ) as connection:
        await connection.send_complete()
        body = await connection.receive()
    assert connection.status_code == 400
    assert connection.headers is not None
    assert "Connection" not in connection.headers  # a GET: no body to refuse
    assert json.loads(body)["type"] == "urn:quart-app:problem:invalid-host"


async def test_without_allowed_hosts_a_well_formed_host_is_echoed(app: Quart) -> None:
    response = await post_user(app, "anything.example:8080")
    assert response.status_code == 201
    assert response.headers["Location"] == "http://anything.example:8080/users/1"


async def test_http_1_0_without_host_uses_the_servers_own_address(app: Quart) -> None:
    client = as_quart_client(app.test_client())
    response = await client.post(
        "/users",
        json=USER,
        headers={"Host": ""},
        http_version="1.0",
        scope_base={"server": ("10.1.2.3", 8000)},
    )
    assert response.status_code == 201
    assert response.headers["Location"] == "http://10.1.2.3:8000/users/1"


@pytest.fixture
async def guarded(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**overrides, "ALLOWED_HOSTS": "files.example.com, *.example.org"})
    async with application.test_app():
        yield application


@pytest.mark.parametrize("host", ["evil.example", "files.example.com.evil", "example.org"])
async def test_a_host_not_allowed_is_a_400_problem_and_stores_nothing(
    guarded: Quart, host: str
) -> None:
    response = await post_user(guarded, host)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "Location" not in response.headers
    problem = json.loads(await response.get_data())
    assert problem["type"] == "urn:quart-app:problem:host-not-allowed"
    assert await count_rows(guarded, User) == 0


async def test_a_refused_host_carries_the_request_id(guarded: Quart) -> None:
    client = as_quart_client(guarded.test_client())
    response = await client.get("/healthz", headers={"Host": "evil.example", "X-Request-ID": "r1"})
    assert response.status_code == 400
    assert response.headers["X-Request-ID"] == "r1"


@pytest.mark.parametrize("host", ["files.example.com", "files.example.com:8443", "a.example.org"])
async def test_an_allowed_host_is_served(guarded: Quart, host: str) -> None:
    response = await post_user(guarded, host)
    assert response.status_code == 201
    assert response.headers["Location"] == f"http://{host}/users/1"


async def test_an_upload_to_a_refused_host_is_not_read_and_leaves_nothing(
    guarded: Quart, overrides: dict[str, Any]
) -> None:
    client = as_quart_client(guarded.test_client())
    async with as_http_connection(
        client.request(
            "/files/a.bin",
            method="PUT",
            headers={"Host": "evil.example", "Content-Length": str(5 * 2**20)},
        )
    ) as connection:
        body = await connection.receive()  # no body sent: answered from the head
    assert connection.status_code == 400
    assert json.loads(body)["type"] == "urn:quart-app:problem:host-not-allowed"
    assert temp_files(overrides["STORAGE_DIR"]) == []
