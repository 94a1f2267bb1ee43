"""Inventories against a real HTTP server on 127.0.0.1, serving
Tailscale-shaped and plain JSON answers, refusals, silence and garbage."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from batchctl.model.fleet import Fleet, Machine
from tests.helpers import CliRunner


@dataclass
class Route:
    status: int = 200
    body: bytes = b"{}"
    hang: bool = False


@dataclass
class FakeApi:
    """A real HTTP server whose answers the test sets per path."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, body: Any, status: int = 200) -> None:
        self.routes[path] = Route(
            status, body if isinstance(body, bytes) else json.dumps(body).encode()
        )


@pytest.fixture
def api() -> Iterator[FakeApi]:
    state = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urlparse(self.path).path
            state.requests.append((self.command, self.path, dict(self.headers), body))
            route = state.routes.get(path, Route(404, b"not found"))
            if route.hang:
                state.release.wait(timeout=30)  # the client gives up long before
                return
            self.send_response(route.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


DEVICES = {
    "devices": [
        {
            "hostname": "gpu-box",
            "name": "gpu-box.tail1234.ts.net",
            "addresses": ["100.64.0.1"],
            "os": "linux",
            "tags": ["tag:testfleet", "tag:gpu"],
            "connectedToControl": True,
        },
        {
            "hostname": "mac-mini",
            "name": "mac-mini.tail1234.ts.net",
            "addresses": ["100.64.0.2"],
            "os": "macOS",
            "tags": ["tag:testfleet"],
            "connectedToControl": False,
        },
        {
            "hostname": "laptop",
            "name": "laptop.tail1234.ts.net",
            "addresses": ["100.64.0.3"],
            "os": "windows",
            "tags": [],
            "connectedToControl": True,
        },
        {
            "hostname": "shared",
            "name": "shared.tail1234.ts.net",
            "addresses": ["100.64.0.4"],
            "os": "linux",
            "tags": ["tag:testfleet"],
        },
    ]
}
DEVICES_PATH = "/api/v2/tailnet/example.com/devices"


def fleet_file(workdir: Path, api: FakeApi, inventory: str) -> Path:
    path = workdir / "fleet.yaml"
    path.write_text(
        "machines:\n"
        "  - {name: local, transport: local, tags: [local], slots: 1}\n"
        "  - {name: shared, transport: local, tags: [file-wins], slots: 1}\n"
        f"inventory:\n{inventory}"
    )
    return path


def tailscale(api: FakeApi, extra: str = "") -> str:
    return (
        f"  - {{kind: tailscale, tailnet: example.com, tag: 'tag:testfleet', api_url: '{api.url}', "
        f"user: ci, slots: 2, timeout: 1{', ' + extra if extra else ''}}}\n"
    )


def test_tailscale_devices_become_machines_merged_with_the_file(
    workdir: Path, api: FakeApi, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_API_KEY", "tskey-api-secret")
    api.answer(DEVICES_PATH, DEVICES)
    fleet = fleet_file(workdir, api, tailscale(api))

    result = cli("machines", "--fleet", str(fleet), "--json")

    assert result.code == 0, result.stderr
    machines = {m["name"]: m for m in result.json()["data"]["machines"]}
    assert set(machines) == {"local", "shared", "gpu-box", "mac-mini"}  # laptop lacks the tag
    gpu = machines["gpu-box"]
    assert (gpu["source"], gpu["transport"], gpu["host"], gpu["os"]) == (
        "inventory:tailscale",
        "ssh",
        "gpu-box.tail1234.ts.net",
        "linux",
    )
    assert gpu["tags"] == ["testfleet", "gpu"]
    assert (gpu["slots"], gpu["state"]) == (2, "idle")
    assert (machines["mac-mini"]["os"], machines["mac-mini"]["state"]) == ("darwin", "offline")
    assert (machines["shared"]["source"], machines["shared"]["tags"]) == ("file", ["file-wins"])
    method, path, headers, _ = api.requests[0]
    assert (method, path) == ("GET", DEVICES_PATH + "?fields=all")
    assert headers["Authorization"] == "Bearer tskey-api-secret"
    human = cli("machines", "--fleet", str(fleet))
    assert "inventory:tailscale" in human.stdout
    assert "offline" in human.stdout


def test_tailscale_oauth_client_credentials(
    workdir: Path, api: FakeApi, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_OAUTH_CLIENT_ID", "client-1")
    monkeypatch.setenv("TS_OAUTH_CLIENT_SECRET", "s3cret")
    api.answer("/api/v2/oauth/token", {"access_token": "oauth-token", "token_type": "Bearer"})
    api.answer(DEVICES_PATH, DEVICES)

    result = cli("machines", "--fleet", str(fleet_file(workdir, api, tailscale(api))), "--json")

    assert result.code == 0, result.stderr
    token_request, devices_request = api.requests
    assert token_request[0] == "POST"
    assert parse_qs(token_request[3].decode()) == {
        "client_id": ["client-1"],
        "client_secret": ["s3cret"],
        "grant_type": ["client_credentials"],
    }
    assert devices_request[2]["Authorization"] == "Bearer oauth-token"


def test_plain_http_inventory(workdir: Path, api: FakeApi, cli: CliRunner) -> None:
    api.answer(
        "/fleet.json",
        [
            {"name": "lab-1", "host": "10.9.9.1", "tags": ["linux"], "slots": 3, "online": True},
            {"name": "lab-2", "host": "lab-2.internal", "port": 2222, "extra_field": "ignored"},
        ],
    )
    fleet = fleet_file(workdir, api, f"  - {{kind: http, url: '{api.url}/fleet.json', user: ci}}\n")

    result = cli("machines", "--fleet", str(fleet), "--json")

    assert result.code == 0, result.stderr
    machines = {m["name"]: m for m in result.json()["data"]["machines"]}
    assert (machines["lab-1"]["slots"], machines["lab-1"]["state"]) == (3, "idle")
    assert (machines["lab-2"]["host"], machines["lab-2"]["state"]) == ("lab-2.internal", "unknown")
    assert machines["lab-2"]["source"] == "inventory:http"


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (Route(401, b'{"message": "API token invalid"}'), "refused the credentials (HTTP 401)"),
        (Route(500, b"oops"), "answered HTTP 500"),
        (Route(200, b"<html>not json</html>"), "did not answer with JSON"),
        (Route(200, b'{"devices": "nope"}'), "without a 'devices' list"),
        (Route(hang=True), "no answer from"),
    ],
)
def test_inventory_failures_are_clear_errors(
    workdir: Path,
    api: FakeApi,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    route: Route,
    expected: str,
    state_dir: Path,
) -> None:
    monkeypatch.setenv("TS_API_KEY", "k")
    api.routes[DEVICES_PATH] = route
    fleet = fleet_file(workdir, api, tailscale(api))

    result = cli("machines", "--fleet", str(fleet), "--json")

    assert result.code == 2
    error = result.error()["error"]
    assert error["code"] == "inventory_error"
    assert "inventory tailscale (example.com)" in error["message"]
    assert expected in error["message"]


def test_missing_credentials_are_named(workdir: Path, api: FakeApi, cli: CliRunner) -> None:
    result = cli("machines", "--fleet", str(fleet_file(workdir, api, tailscale(api))))
    assert result.code == 2
    assert "set TS_API_KEY" in result.stderr
    assert api.requests == []


def test_an_unreachable_inventory_is_a_clear_error(
    workdir: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.sshd import free_port

    monkeypatch.setenv("TS_API_KEY", "k")
    dead = FakeApi(port=free_port())
    result = cli("machines", "--fleet", str(fleet_file(workdir, dead, tailscale(dead))))
    assert result.code == 2
    assert "is unreachable" in result.stderr


def test_answers_are_cached_briefly_and_a_failing_api_falls_back_to_them(
    workdir: Path, api: FakeApi, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TS_API_KEY", "k")
    api.answer(DEVICES_PATH, DEVICES)
    cached = fleet_file(workdir, api, tailscale(api, "cache_ttl: 1h"))
    for _ in range(3):
        assert cli("machines", "--fleet", str(cached)).code == 0
    assert len(api.requests) == 1  # status and every worker tick stay off the API

    fresh = fleet_file(workdir, api, tailscale(api, "cache_ttl: 1"))
    assert cli("machines", "--fleet", str(fresh), "--json").code == 0
    api.routes[DEVICES_PATH] = Route(503, b"down")
    from freezegun import freeze_time

    with freeze_time(tick=True) as frozen:
        frozen.tick(5)
        result = cli("machines", "--fleet", str(fresh), "--json")
    assert result.code == 0
    assert "warning" in result.stderr
    states = {m["name"]: m["state"] for m in result.json()["data"]["machines"]}
    assert states["gpu-box"] == "unknown"


def test_offline_machines_receive_no_runs() -> None:
    from batchctl.model.views import machine_state

    offline = Machine(
        name="m", transport="local", tags=("t",), online=False, source="inventory:http"
    )
    assert not offline.dispatchable
    assert machine_state(offline, 0) == "offline"
    fleet = Fleet(machines=(offline,), source="t")
    assert fleet.matching("tag:t") == [offline]
