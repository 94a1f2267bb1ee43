"""Elastic machines: a pool in the fleet file whose machines batchctl
provisions while items wait for its tags and deprovisions once idle.

A pool's ``provision`` command runs on the controller (under ``sh``). It
prints, as the last line of its standard output, one JSON object naming the
new machine: ``{"host": "10.0.0.7", "port": 22, "id": "i-0abc"}`` (``port``,
``id``, ``user`` and ``workdir`` optional). Exit 0 means the machine exists;
exit ``CAPACITY_EXIT`` (75, EX_TEMPFAIL) means "no capacity now, try again
later"; any other exit is a failed provision. ``deprovision`` receives the
machine's name, host and id in its environment (``BATCHCTL_MACHINE``,
``BATCHCTL_MACHINE_HOST``, ``BATCHCTL_MACHINE_PORT``, ``BATCHCTL_MACHINE_ID``)
and the same JSON line on its standard input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from batchctl.model.fleet_fields import EnvPass, FleetName, SshOptions, Tags
from batchctl.model.plan import parse_duration

# sysexits.h EX_TEMPFAIL: what a provision command exits with when the
# provider has no capacity now; retried with backoff.
CAPACITY_EXIT = 75


class PoolSpec(BaseModel):
    """``pools:`` entries in the fleet file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Checked as a machine's are: its machines are machines.
    name: FleetName
    tags: Tags = ()
    slots: Annotated[int, Field(ge=1, le=4096)] = 1
    min: Annotated[int, Field(ge=0, le=1000)] = 0
    max: Annotated[int, Field(ge=1, le=1000)] = 1
    # An idle machine is deprovisioned after this long without a run.
    idle_timeout: Annotated[int, BeforeValidator(parse_duration)] = 300
    # A new machine whose health check has not passed by then is
    # deprovisioned and counted as failed.
    ready_timeout: Annotated[int, BeforeValidator(parse_duration)] = 300
    # Waits after a capacity error or failed provision: doubled each time.
    retry_every: Annotated[int, BeforeValidator(parse_duration)] = 5
    retry_every_max: Annotated[int, BeforeValidator(parse_duration)] = 300
    provision: str
    deprovision: str
    # How its machines are reached: as for an ssh machine.
    os: Literal["linux", "darwin", "windows"] = "linux"
    user: str | None = None
    identity_file: str | None = None
    workdir: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: Literal["accept-new", "yes", "no"] = "accept-new"
    ssh_options: SshOptions = ()
    health_check: str | None = None
    env_pass: EnvPass = ()

    def machine_name(self, number: int) -> str:
        return f"{self.name}-{number}"

    def serves(self, selector: str) -> bool:
        """Whether items of ``selector`` may run on this pool's machines."""
        kind, _, value = selector.partition(":")
        if kind == "tag":
            return value in self.tags
        return kind == "machine" and value.startswith(f"{self.name}-")


@dataclass(frozen=True)
class Address:
    """Where a provisioned machine is, as its provision command said."""

    host: str
    port: int | None = None
    id: str | None = None
    user: str | None = None
    workdir: str | None = None

    def as_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if v is not None}, sort_keys=True)


class BadProvisionOutput(ValueError):
    pass


def parse_address(output: str) -> Address:
    """The machine's address from a provision command's output: its last
    non-empty line, a JSON object with at least ``host``."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise BadProvisionOutput("printed nothing (expected a JSON line with 'host')")
    try:
        raw: Any = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise BadProvisionOutput(
            f"last line is not JSON: {lines[-1][:120]!r} (expected a JSON line with 'host')"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("host"), str) or not raw["host"]:
        raise BadProvisionOutput(f"last line has no 'host': {lines[-1][:120]!r}")
    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
    ):
        raise BadProvisionOutput(f"'port' is not a port number: {port!r}")
    text = {key: raw.get(key) for key in ("id", "user", "workdir")}
    for key, value in text.items():
        if value is not None and not isinstance(value, str | int):
            raise BadProvisionOutput(f"{key!r} must be a string")
    return Address(
        host=raw["host"],
        port=port,
        id=str(text["id"]) if text["id"] is not None else None,
        user=str(text["user"]) if text["user"] is not None else None,
        workdir=str(text["workdir"]) if text["workdir"] is not None else None,
    )


def machines_wanted(demand: int, slots: int) -> int:
    """Machines that would take ``demand`` waiting items at once."""
    return -(-demand // slots)


def to_request(
    *, demand: int, slots: int, coming: int, alive: int, minimum: int, maximum: int
) -> int:
    """How many new machines to provision now: enough for the waiting
    items beyond those coming up (``coming``: provisioning or starting),
    and up to ``minimum``, never past ``maximum`` machines alive (every
    machine not yet deprovisioned counts)."""
    wanted = max(machines_wanted(demand, slots) - coming, minimum - alive, 0)
    return max(0, min(wanted, maximum - alive))


def retry_delay(failures: int, base_s: int, cap_s: int) -> float:
    """After a capacity error or failed provision: base doubled per failure in a row."""
    return float(min(cap_s, base_s * 2 ** max(failures - 1, 0)))
