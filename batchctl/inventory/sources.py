"""Inventory clients: the Tailscale devices API and a plain JSON list, via httpx.

Each returns raw machine records (dicts the Machine model validates), or
raises InventoryError with a message that names the inventory and says what
went wrong: refused credentials, no answer, unreachable, not JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from batchctl.model.errors import InvalidFleet
from batchctl.model.fleet import InventorySpec

TAILSCALE_OS = {"linux": "linux", "macos": "darwin", "darwin": "darwin", "windows": "windows"}


class InventoryError(InvalidFleet):
    code = "inventory_error"


def _get_json(client: httpx.Client, spec: InventorySpec, url: str, **kwargs: Any) -> Any:
    try:
        response = client.get(url, timeout=spec.timeout, **kwargs)
    except httpx.TimeoutException:
        raise InventoryError(f"{spec.label}: no answer from {url} within {spec.timeout}s") from None
    except httpx.HTTPError as exc:
        raise InventoryError(f"{spec.label}: {url} is unreachable: {exc}") from None
    return _json_body(spec, url, response)


def _json_body(spec: InventorySpec, url: str, response: httpx.Response) -> Any:
    if response.status_code in (401, 403):
        raise InventoryError(
            f"{spec.label}: {url} refused the credentials (HTTP {response.status_code})"
        )
    if response.status_code >= 400:
        raise InventoryError(f"{spec.label}: {url} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise InventoryError(f"{spec.label}: {url} did not answer with JSON") from None


def tailscale_token(client: httpx.Client, spec: InventorySpec, env: Mapping[str, str]) -> str:
    """An API access token ($TS_API_KEY), or one obtained with OAuth client
    credentials ($TS_OAUTH_CLIENT_ID and $TS_OAUTH_CLIENT_SECRET)."""
    if env.get("TS_API_KEY"):
        return env["TS_API_KEY"]
    client_id, secret = env.get("TS_OAUTH_CLIENT_ID"), env.get("TS_OAUTH_CLIENT_SECRET")
    if not (client_id and secret):
        raise InventoryError(
            f"{spec.label}: no credentials; set TS_API_KEY, or TS_OAUTH_CLIENT_ID and "
            "TS_OAUTH_CLIENT_SECRET"
        )
    url = f"{spec.api_url.rstrip('/')}/api/v2/oauth/token"
    try:
        response = client.post(
            url,
            data={
                "client_id": client_id,
                "client_secret": secret,
                "grant_type": "client_credentials",
            },
            timeout=spec.timeout,
        )
    except httpx.TimeoutException:
        raise InventoryError(f"{spec.label}: no answer from {url} within {spec.timeout}s") from None
    except httpx.HTTPError as exc:
        raise InventoryError(f"{spec.label}: {url} is unreachable: {exc}") from None
    body = _json_body(spec, url, response)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise InventoryError(f"{spec.label}: {url} gave no access_token")
    return token


def tailscale_machines(
    client: httpx.Client, spec: InventorySpec, env: Mapping[str, str]
) -> list[dict[str, Any]]:
    token = tailscale_token(client, spec, env)
    url = f"{spec.api_url.rstrip('/')}/api/v2/tailnet/{spec.tailnet}/devices"
    body = _get_json(
        client, spec, url, params={"fields": "all"}, headers={"Authorization": f"Bearer {token}"}
    )
    devices = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(devices, list):
        raise InventoryError(f"{spec.label}: {url} answered without a 'devices' list")
    machines = []
    for device in devices:
        if not isinstance(device, dict):
            raise InventoryError(f"{spec.label}: a device is not an object")
        tags = [t for t in device.get("tags") or [] if isinstance(t, str)]
        if spec.tag and spec.tag not in tags:
            continue
        hostname = device.get("hostname") or str(device.get("name", "")).split(".")[0]
        address = device.get("name") or next(iter(device.get("addresses") or []), None)
        os_name = TAILSCALE_OS.get(str(device.get("os", "")).lower(), spec.os)
        online = device.get("connectedToControl")
        machines.append(
            {
                "name": hostname,
                "host": address,
                "os": os_name,
                "tags": [t.removeprefix("tag:") for t in tags],
                "online": online if isinstance(online, bool) else None,
            }
        )
    return machines


def http_machines(client: httpx.Client, spec: InventorySpec) -> list[dict[str, Any]]:
    assert spec.url is not None
    body = _get_json(client, spec, spec.url)
    listed = body.get("machines") if isinstance(body, dict) else body
    if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
        raise InventoryError(f"{spec.label}: expected a JSON list of machine objects")
    return listed
