"""The fleet with discovered machines merged in, behind a short on-disk cache
so that `status` and every worker tick do not call the API."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from batchctl.inventory.sources import InventoryError, http_machines, tailscale_machines
from batchctl.model.clock import Clock
from batchctl.model.fleet import Fleet, InventorySpec, Machine
from batchctl.state.jsonfile import JsonStateFile

CACHE_SCHEMA_VERSION = 1
MACHINE_FIELDS = ("name", "host", "user", "port", "os", "tags", "slots", "online", "workdir")


def _cache_key(spec: InventorySpec) -> str:
    return hashlib.sha256(
        orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:16]


def to_machine(spec: InventorySpec, raw: Mapping[str, Any], index: int) -> Machine:
    """A discovered record, with the inventory's connection settings."""
    record = {key: raw[key] for key in MACHINE_FIELDS if key in raw and raw[key] is not None}
    try:
        return Machine.model_validate(
            {
                "transport": spec.transport,
                "user": spec.user,
                "port": spec.port,
                "identity_file": spec.identity_file,
                "workdir": spec.workdir,
                "known_hosts": spec.known_hosts,
                "ssh_options": list(spec.ssh_options),
                "slots": spec.slots,
                "os": spec.os,
                **record,
                "tags": list(record.get("tags") or []),
                "source": f"inventory:{spec.kind}",
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "record"
        name = raw.get("name", f"#{index + 1}")
        raise InventoryError(
            f"{spec.label}: machine {name!r}: field {field!r}: {first['msg']}"
        ) from None


class InventoryResolver:
    def __init__(
        self,
        cache_path: Path,
        clock: Clock,
        *,
        env: Mapping[str, str],
        client_factory: Callable[[], httpx.Client] = httpx.Client,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.cache = JsonStateFile(
            cache_path, schema_version=CACHE_SCHEMA_VERSION, collection="inventories"
        )
        self.clock = clock
        self.env = env
        self.client_factory = client_factory
        self.warn = warn

    def _fetch(self, spec: InventorySpec) -> list[dict[str, Any]]:
        with self.client_factory() as client:
            if spec.kind == "tailscale":
                return tailscale_machines(client, spec, self.env)
            return http_machines(client, spec)

    def machines(self, spec: InventorySpec) -> list[Machine]:
        key = _cache_key(spec)
        now = self.clock.now()
        cached = self.cache.read()["inventories"].get(key)
        if cached and now - datetime.fromisoformat(cached["fetched_at"]) < timedelta(
            seconds=spec.cache_ttl
        ):
            records = cached["machines"]
        else:
            try:
                records = self._fetch(spec)
            except InventoryError as error:
                if not cached:
                    raise
                # Better an hour-old list than no fleet: keep dispatching to
                # what we knew, with its online state unknown.
                self.warn(f"{error.message}; using the list from {cached['fetched_at']}")
                records = [{**record, "online": None} for record in cached["machines"]]
            else:

                def store(document: dict[str, Any]) -> tuple[dict[str, Any], None]:
                    document["inventories"][key] = {
                        "fetched_at": now.isoformat(),
                        "machines": records,
                    }
                    return document, None

                self.cache.update(store)
        return [to_machine(spec, record, index) for index, record in enumerate(records)]

    def resolve(self, fleet: Fleet) -> Fleet:
        """File machines first; a discovered machine whose name the file
        already uses is left out (the file wins)."""
        if not fleet.inventories:
            return fleet
        machines = list(fleet.machines)
        names = {machine.name for machine in machines}
        for spec in fleet.inventories:
            for machine in self.machines(spec):
                if machine.name not in names:
                    names.add(machine.name)
                    machines.append(machine)
        return dataclasses.replace(fleet, machines=tuple(machines))
