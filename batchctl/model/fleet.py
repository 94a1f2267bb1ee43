"""The fleet: machines batchctl may dispatch to (SPEC §7).

Read from ``--fleet``, else ``$BATCHCTL_FLEET``, else ``<state-dir>/fleet.yaml``;
with none, the fleet is this host alone.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batchctl.model.environment import merged_names
from batchctl.model.errors import InvalidFleet, InvalidPlan
from batchctl.model.fleet_fields import Arguments, EnvPass, FleetName, SshOptions, Tags
from batchctl.model.health import DEFAULT_CHECK, HealthSpec, MachineGroups
from batchctl.model.plan import NAME_RE, parse_duration, parse_yaml
from batchctl.model.pools import Address, PoolSpec

OsName = Literal["linux", "darwin", "windows"]
ENTRYPOINTS: dict[str, str] = {"linux": "run.sh", "darwin": "run.sh", "windows": "run.ps1"}


def this_os() -> OsName:
    system = platform.system().lower()
    if system == "darwin":
        return "darwin"
    if system == "windows":
        return "windows"
    return "linux"


MAX_SLOTS = 4096
SIM_OUTCOMES = ("succeeded", "failed", "error", "timeout", "interrupted")
_SIM_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")
_SIM_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def _sim_seconds(text: str) -> float:
    match = _SIM_DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r} (use 0s, 500ms, 2s, 1m, or a range 1s..5s)")
    return float(match.group(1)) * _SIM_UNITS[match.group(2)]


def parse_sim_duration(value: object) -> object:
    """``2s``, ``500ms``, a number of seconds, or a range ``1s..5s``, to (low, high)."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like 2s or 1s..5s")
    if isinstance(value, int | float):
        return (float(value), float(value))
    if not isinstance(value, str):
        raise ValueError("expected a duration like 2s or 1s..5s")
    low_text, _, high_text = value.partition("..")
    low = _sim_seconds(low_text)
    high = _sim_seconds(high_text) if high_text else low
    if high < low:
        raise ValueError(f"invalid range {value!r}: the upper end is below the lower")
    return (low, high)


def check_sim_outcomes(value: object) -> object:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of outcome to share, e.g. {failed: 0.1}")
    shares: dict[str, float] = {}
    for name, share in value.items():
        if name not in SIM_OUTCOMES:
            raise ValueError(f"unknown outcome {name!r} (use {', '.join(SIM_OUTCOMES)})")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValueError(f"outcome {name!r}: share must be a number from 0 to 1")
        shares[str(name)] = float(share)
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ValueError("outcome shares add up to more than 1")
    return shares


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: FleetName
    transport: Literal["local", "ssh", "sim", "slurm"] = "local"
    os: OsName = Field(default_factory=this_os)
    tags: Tags = ()
    slots: Annotated[int, Field(ge=1, le=MAX_SLOTS)] = 1
    # Controller variables every run on this machine receives, by name.
    env_pass: EnvPass = ()
    # ssh only
    host: str | None = None
    user: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    identity_file: str | None = None
    workdir: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: Literal["accept-new", "yes", "no"] = "accept-new"
    ssh_options: SshOptions = ()
    keep_remote: bool = False
    max_artifacts_mb: Annotated[int, Field(ge=1)] = 1024
    # A shell command run on the machine (over ssh for an ssh machine) to
    # tell whether a quarantined machine may take runs again: exit 0 = yes.
    health_check: str | None = None
    # sim only: how long a run takes (``2s``, ``500ms``, ``1s..5s`` drawn
    # uniformly) and the share of each outcome (the rest succeed).
    duration: Annotated[tuple[float, float], BeforeValidator(parse_sim_duration)] = (0.0, 0.0)
    outcomes: Annotated[dict[str, float], BeforeValidator(check_sim_outcomes)] = Field(
        default_factory=dict
    )
    # slurm only: the partition jobs go to, the directory both this host and
    # the cluster's nodes see (runs live under it), the nodes ``machine:`` may
    # pin, extra sbatch options, and the cluster's slurm.conf (else Slurm's own).
    partition: str | None = None
    shared_dir: str | None = None
    nodes: Tags = ()
    account: str | None = None
    qos: str | None = None
    sbatch_args: Arguments = ()
    slurm_conf: str | None = None
    # Set for machines discovered through an inventory; never in a fleet file.
    source: str = "file"
    online: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _slurm_slots(cls, raw: object) -> object:
        # Slurm decides how many jobs run; batchctl only caps what it hands over.
        if isinstance(raw, Mapping) and raw.get("transport") == "slurm" and "slots" not in raw:
            return {**raw, "slots": MAX_SLOTS}
        return raw

    @model_validator(mode="after")
    def _transport_fields(self) -> Machine:
        slurm_only = [
            name
            for name in ("partition", "shared_dir", "account", "qos", "slurm_conf")
            if getattr(self, name) is not None
        ] + [name for name in ("nodes", "sbatch_args") if getattr(self, name)]
        if self.transport == "slurm":
            if not self.shared_dir:
                raise ValueError(
                    "a slurm machine needs 'shared_dir' (a directory this host and the nodes see)"
                )
            if not Path(self.shared_dir).is_absolute():
                raise ValueError(f"shared_dir {self.shared_dir!r} must be an absolute path")
            if self.os != "linux":
                raise ValueError("a slurm machine runs linux")
        elif slurm_only:
            raise ValueError(f"{', '.join(slurm_only)}: only for slurm machines (transport: slurm)")
        if self.transport == "ssh" and not self.host:
            raise ValueError("an ssh machine needs 'host'")
        if self.transport != "sim" and ("duration" in self.model_fields_set or self.outcomes):
            raise ValueError("duration, outcomes: only for simulated machines (transport: sim)")
        if self.transport in ("local", "sim", "slurm"):
            given = [
                name
                for name in ("host", "user", "port", "identity_file", "workdir", "known_hosts")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)}: only for ssh machines (transport: ssh)")
        return self

    @property
    def remote_workdir(self) -> str:
        if self.workdir:
            return self.workdir
        # On the remote machine, where runs get a directory each under it.
        return "C:/Windows/Temp/batchctl" if self.os == "windows" else "/var/tmp/batchctl"  # noqa: S108

    @property
    def dispatchable(self) -> bool:
        """Offline machines (as an inventory reports them) receive no runs."""
        return self.online is not False

    @property
    def entrypoint(self) -> str:
        return ENTRYPOINTS[self.os]

    def matches(self, selector: str) -> bool:
        kind, _, value = selector.partition(":")
        if kind == "machine":
            # A slurm machine also answers for its listed nodes (pinned with -w).
            return self.name == value or value in self.nodes
        return kind == "tag" and value in self.tags


class InventorySpec(BaseModel):
    """Machines discovered over HTTP (SPEC §7 ``inventory:``), with the
    connection settings every discovered machine gets."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Literal["tailscale", "http"]
    # kind: tailscale -- the Tailscale devices API
    tailnet: str | None = None
    tag: str | None = None
    api_url: str = "https://api.tailscale.com"
    # kind: http -- any URL answering with a JSON list of machines
    url: str | None = None
    # for every discovered machine
    transport: Literal["ssh"] = "ssh"
    user: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    identity_file: str | None = None
    workdir: str | None = None
    known_hosts: str | None = None
    ssh_options: SshOptions = ()
    slots: Annotated[int, Field(ge=1, le=4096)] = 1
    os: OsName = "linux"
    timeout: Annotated[int, BeforeValidator(parse_duration)] = 10
    cache_ttl: Annotated[int, BeforeValidator(parse_duration)] = 60

    @field_validator("url", "api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """An address the HTTP client can use, checked here: a malformed one
        is a fleet file problem, not a failed request."""
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a usable URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        if any(char.isspace() or char == "\0" for char in value):
            raise ValueError(f"{value!r} holds spaces or control characters")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> InventorySpec:
        if self.kind == "tailscale" and not self.tailnet:
            raise ValueError("a tailscale inventory needs 'tailnet'")
        if self.kind == "http" and not self.url:
            raise ValueError("an http inventory needs 'url'")
        return self

    @property
    def label(self) -> str:
        return f"inventory {self.kind} ({self.tailnet or self.url})"


class FleetFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    machines: list[Any] = []
    inventory: list[Any] = []
    env_pass: EnvPass = ()
    # Checked by ``_limits`` (each problem named by its tag), not here.
    limits: Any = None
    # Checked by ``_health`` (each problem named by its field), not here.
    health: Any = None
    # Elastic machines; each checked by ``_pools``.
    pools: list[Any] = []


# A cap is at most this: a larger number caps nothing a fleet could hold.
MAX_LIMIT = 1_000_000


def _limits(raw: object, path: str, problems: list[str]) -> dict[str, int]:
    """``limits: {TAG: N}``: at most N runs at once on the machines tagged
    TAG, whatever batch they belong to. Every problem is named by its field."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: field 'limits': must be a mapping of tag to a number of runs")
        return {}
    limits: dict[str, int] = {}
    for tag, value in raw.items():
        if not isinstance(tag, str) or not NAME_RE.fullmatch(tag):
            problems.append(
                f"{path}: field 'limits': {tag!r} is not a valid tag name "
                "(letters, digits, '.', '_', '-')"
            )
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
            problems.append(
                f"{path}: field 'limits.{tag}': {value!r} is not a positive whole number "
                f"of runs (1 to {MAX_LIMIT})"
            )
            continue
        limits[tag] = value
    return limits


def _health(raw: object, path: str, problems: list[str]) -> HealthSpec:
    """``health:``: quarantine thresholds and health checks, every problem
    named by its field."""
    if raw is None:
        return HealthSpec()
    if not isinstance(raw, Mapping):
        problems.append(
            f"{path}: field 'health': must be a mapping (failures, max_quarantined, ...)"
        )
        return HealthSpec()
    try:
        spec = HealthSpec.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                message = f"unknown key (allowed: {', '.join(HealthSpec.model_fields)})"
            else:
                message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{path}: field 'health.{where}': {message}")
        return HealthSpec()
    for tag, command in spec.checks.items():
        if not NAME_RE.fullmatch(tag):
            problems.append(f"{path}: field 'health.checks': {tag!r} is not a valid tag name")
        elif not command.strip():
            problems.append(f"{path}: field 'health.checks.{tag}': the command is empty")
    if spec.check_every_max < spec.check_every:
        problems.append(
            f"{path}: field 'health.check_every_max': shorter than check_every "
            f"({spec.check_every_max}s < {spec.check_every}s)"
        )
    return spec


MAX_POOL_NAME = 120


def _pools(
    raw: Sequence[Any], machines: Sequence[Machine], path: str, problems: list[str]
) -> list[PoolSpec]:
    """``pools:``: elastic machines, every problem named by its pool and field."""
    pools: list[PoolSpec] = []
    names = {machine.name for machine in machines}
    for index, raw_pool in enumerate(raw):
        name = raw_pool.get("name") if isinstance(raw_pool, Mapping) else None
        label = f"pool {name!r} (#{index + 1})" if isinstance(name, str) else f"pool #{index + 1}"
        if not isinstance(raw_pool, Mapping):
            problems.append(f"{path}: {label}: must be a mapping with name, provision, deprovision")
            continue
        try:
            pool = PoolSpec.model_validate(raw_pool)
        except ValidationError as exc:
            problems.extend(
                _problem(path, label, error, list(PoolSpec.model_fields), whole="pool")
                for error in exc.errors()
            )
            continue
        if pool.name in names:
            problems.append(f"{path}: {label}: field 'name': a machine has that name already")
        if len(pool.name) > MAX_POOL_NAME:
            # Room for "-<number>" in its machines' names (at most 128 characters).
            problems.append(
                f"{path}: {label}: field 'name': longer than {MAX_POOL_NAME} characters"
            )
        # Its machines are named P-1, P-2, ...: a machine of the file named
        # so would be two machines under one name.
        taken = sorted(m.name for m in machines if _is_pool_machine_name(pool.name, m.name))
        if taken:
            problems.append(
                f"{path}: {label}: field 'name': its machines would be named like machine "
                f"{taken[0]!r} ({pool.name}-1, {pool.name}-2, ...); rename the pool or the machine"
            )
        if pool.min > pool.max:
            problems.append(
                f"{path}: {label}: field 'min': more than max ({pool.min} > {pool.max})"
            )
        for field_name in ("provision", "deprovision"):
            if not getattr(pool, field_name).strip():
                problems.append(f"{path}: {label}: field {field_name!r}: the command is empty")
        names.add(pool.name)
        pools.append(pool)
    return pools


def _is_pool_machine_name(pool: str, name: str) -> bool:
    """Whether ``name`` is one a pool named ``pool`` gives its machines."""
    prefix = f"{pool}-"
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def pool_machine(pool: PoolSpec, name: str, address: Address) -> Machine:
    """A provisioned machine of ``pool``, reached over ssh at ``address``."""
    return Machine(
        name=name,
        transport="ssh",
        os=pool.os,
        tags=pool.tags,
        slots=pool.slots,
        env_pass=pool.env_pass,
        host=address.host,
        port=address.port,
        user=address.user or pool.user,
        identity_file=pool.identity_file,
        workdir=address.workdir or pool.workdir,
        known_hosts=pool.known_hosts,
        strict_host_key_checking=pool.strict_host_key_checking,
        ssh_options=pool.ssh_options,
        health_check=pool.health_check,
        source=f"pool {pool.name}",
    )


@dataclass(frozen=True)
class Drain:
    """A machine taken out of dispatch by ``machines drain``: it finishes the
    runs it holds and takes no new one, for every batch, until resumed."""

    reason: str
    since: datetime
    by: str


@dataclass(frozen=True)
class Fleet:
    machines: tuple[Machine, ...]
    source: str
    inventories: tuple[InventorySpec, ...] = ()
    # Controller variables every run on any machine receives, by name.
    env_pass: tuple[str, ...] = ()
    # tag -> at most this many runs at once on the machines with that tag.
    limits: Mapping[str, int] = field(default_factory=dict)
    # Quarantine thresholds, check timing and health checks (``health:``).
    health: HealthSpec = field(default_factory=HealthSpec)
    # Elastic machines: provisioned while items wait for their tags.
    pools: tuple[PoolSpec, ...] = ()

    def pools_serving(self, selector: str) -> list[PoolSpec]:
        return [pool for pool in self.pools if pool.serves(selector)]

    def pool_templates(self, selector: str) -> list[Machine]:
        """What a pool's machines will be, for deciding whether an item can
        run here at all (its OS's entrypoint) before any is provisioned."""
        return [
            pool_machine(pool, pool.name, Address(host="pool")).model_copy(update={"online": False})
            for pool in self.pools_serving(selector)
        ]

    def health_check_of(self, machine: Machine) -> str:
        """The machine's own check, else its first tag's that has one, else
        whether it answers at all."""
        if machine.health_check:
            return machine.health_check
        for tag in machine.tags:
            if tag in self.health.checks:
                return self.health.checks[tag]
        if machine.transport == "slurm" and machine.partition:
            # A cluster answers when its controller lists the partition's
            # nodes: `true` here would prove nothing about it.
            return f"sinfo -h -p {shlex.quote(machine.partition)} -o %D | grep -q ."
        return DEFAULT_CHECK

    @cached_property
    def groups(self) -> MachineGroups:
        """What the quarantine valve counts: the fleet and each tag's machines."""
        return MachineGroups.of((m.name, m.tags) for m in self.machines)

    def env_pass_for(self, machine: Machine | None, entry_names: Sequence[str]) -> tuple[str, ...]:
        """What a run of an entry on a machine receives: the plan's names,
        the fleet's and the machine's."""
        return merged_names(entry_names, self.env_pass, machine.env_pass if machine else ())

    def matching(self, selector: str) -> list[Machine]:
        return [machine for machine in self.machines if machine.matches(selector)]

    def get(self, name: str) -> Machine | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, Machine]:
        return {machine.name: machine for machine in self.machines}

    @cached_property
    def pool_machine_names(self) -> frozenset[str]:
        """The machines a pool provisioned (``with_pool_machines``)."""
        return frozenset(m.name for m in self.machines if m.source.startswith("pool "))

    @cached_property
    def limited(self) -> dict[str, tuple[str, ...]]:
        """Each capped tag's machines, by name: what a cap counts."""
        return {tag: tuple(m.name for m in self.machines if tag in m.tags) for tag in self.limits}

    def caps_of(self, machine: Machine) -> tuple[str, ...]:
        """The capped tags a run on this machine counts against."""
        return tuple(tag for tag in machine.tags if tag in self.limits)

    def close_names(self, name: str) -> list[str]:
        """Machine names like ``name`` (a typo's likely meaning)."""
        names = [machine.name for machine in self.machines]
        return difflib.get_close_matches(name, names, n=3, cutoff=0.5)


class FleetSource:
    """The fleet, resolved on first use and then kept: commands that never
    look at machines (`list`, `logs`) never read the fleet file or call an
    inventory API."""

    def __init__(self, load: Callable[[], Fleet]) -> None:
        self._load = load
        self._fleet: Fleet | None = None

    def get(self) -> Fleet:
        if self._fleet is None:
            self._fleet = self._load()
        return self._fleet

    def reload(self) -> Fleet:
        """Resolve the fleet again (a pool's machines came or went). If that
        fails (the file was edited into something invalid, an inventory is
        down), the error is raised and the fleet as it was is kept: whoever
        asks next gets it, not the error."""
        self._fleet = self._load()
        return self._fleet


def default_fleet() -> Fleet:
    local = Machine(
        name="local",
        transport="local",
        tags=("local",),
        slots=os.cpu_count() or 1,
        source="default",
    )
    return Fleet(machines=(local,), source="default")


def _machine_label(index: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"machine {name!r} (#{index + 1})" if isinstance(name, str) else f"machine #{index + 1}"


def _problem(
    path: str, label: str, error: Mapping[str, Any], fields: Sequence[str], whole: str = "transport"
) -> str:
    """One readable line for a pydantic error; ``whole`` names the field a
    model-wide rule is about."""
    field = ".".join(str(part) for part in error["loc"]) or whole
    if error["type"] == "extra_forbidden":
        message = f"unknown key (allowed: {', '.join(fields)})"
    elif error["type"] == "missing":
        message = "is required"
    elif error["type"] == "literal_error" and field == "transport":
        message = f"unsupported transport {error['input']!r} (supported: local, ssh, sim, slurm)"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {label}: field {field!r}: {message}"


def parse_fleet(text: str, path: str) -> Fleet:
    try:
        raw = parse_yaml(text, path)
    except InvalidPlan as exc:  # the YAML reader speaks of plans; this is a fleet
        raise InvalidFleet(exc.message.split("\n", 1)[-1].strip(), details={"file": path}) from None
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise InvalidFleet(f"{path}: the fleet file must be a mapping with 'machines'")
    try:
        spec = FleetFileSpec.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"])
            # A rule's own message keeps its case (it may quote a name).
            message = (
                message.removeprefix("Value error, ")
                if error["type"] == "value_error"
                else message.lower()
            )
            problems.append(f"{path}: field {field!r}: {message}")
        raise InvalidFleet(
            "\n".join(problems), details={"file": path, "problems": problems}
        ) from None
    machines: list[Machine] = []
    seen: dict[str, int] = {}
    for index, raw_machine in enumerate(raw.get("machines") or []):
        label = _machine_label(index, raw_machine)
        if not isinstance(raw_machine, Mapping):
            problems.append(f"{path}: {label}: must be a mapping with at least 'name'")
            continue
        reserved = sorted(set(raw_machine) & {"source", "online"})
        if reserved:
            problems.append(f"{path}: {label}: field {reserved[0]!r}: set by inventories only")
            continue
        try:
            machine = Machine.model_validate(raw_machine)
        except ValidationError as exc:
            problems.extend(
                _problem(path, label, error, list(Machine.model_fields)) for error in exc.errors()
            )
            continue
        if machine.name in seen:
            problems.append(
                f"{path}: {label}: field 'name': duplicate of machine #{seen[machine.name] + 1}"
            )
            continue
        seen[machine.name] = index
        machines.append(machine)
    inventories: list[InventorySpec] = []
    for index, raw_inventory in enumerate(raw.get("inventory") or []):
        label = f"inventory #{index + 1}"
        try:
            inventories.append(InventorySpec.model_validate(raw_inventory))
        except ValidationError as exc:
            problems.extend(
                _problem(path, label, error, list(InventorySpec.model_fields), whole="kind")
                for error in exc.errors()
            )
    pools = _pools(spec.pools, machines, path, problems)
    if not machines and not inventories and not pools and not problems:
        problems.append(f"{path}: field 'machines': lists no machine")
    if problems:
        raise InvalidFleet("\n".join(problems), details={"file": path, "problems": problems})
    limits = _limits(spec.limits, path, problems)
    health = _health(spec.health, path, problems)
    if problems:
        raise InvalidFleet("\n".join(problems), details={"file": path, "problems": problems})
    return Fleet(
        machines=tuple(machines),
        source=path,
        inventories=tuple(inventories),
        env_pass=spec.env_pass,
        limits=limits,
        health=health,
        pools=tuple(pools),
    )


def load_fleet(path: Path | None) -> Fleet:
    """The fleet at ``path``, or the default fleet when ``path`` is None."""
    if path is None:
        return default_fleet()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidFleet(
            f"{path}: cannot read fleet file: {exc.strerror}", details={"file": str(path)}
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidFleet(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
            details={"file": str(path)},
        ) from None
    return parse_fleet(text, str(path))
