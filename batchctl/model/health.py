"""Machine health: when a machine is quarantined, when it is checked again,
and how many machines may be out at once. Pure decisions; the state they
act on is kept in ``health.json`` (batchctl/state/health.py).

A machine that ends ``failures`` consecutive runs of different items with an
infrastructure error (status ``error``, or ``interrupted`` because the
connection was lost) is quarantined: it receives no runs, and its health
check is run on it, first ``check_every`` after the quarantine and then
twice as long after each failed check, up to ``check_every_max``. It
returns when a check passes. A quarantine that would leave more than
``max_quarantined`` (a fraction) of the whole fleet, or of the machines
sharing one of its tags, quarantined at once is held back: when every
machine fails, the fault is more likely the build than the machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from batchctl.model.plan import parse_duration

# A run that ends so says more about the machine than about the test.
CONNECTION_LOST = "ssh_connection_lost"


def _float(value: object) -> object:
    # YAML ``1`` is an int; a fraction of 1 is a fine value (strict mode
    # would refuse it).
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class HealthSpec(BaseModel):
    """``health:`` in the fleet file. Every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Consecutive infrastructure failures, of different items, that quarantine.
    failures: Annotated[int, Field(ge=1, le=1000)] = 3
    # At most this fraction of the fleet, and of each tag's machines, at once.
    max_quarantined: Annotated[float, BeforeValidator(_float), Field(ge=0.0, le=1.0)] = 0.5
    # Delay before the first health check, doubled after each failed one.
    check_every: Annotated[int, BeforeValidator(parse_duration)] = 5
    check_every_max: Annotated[int, BeforeValidator(parse_duration)] = 300
    # A check that has not ended after this long failed (its process is killed).
    check_timeout: Annotated[int, BeforeValidator(parse_duration)] = 30
    # How long a retry waits for a machine it has not failed on, when the
    # only free ones are machines it failed on.
    retry_elsewhere: Annotated[int, BeforeValidator(parse_duration)] = 30
    # Health check per tag; a machine's own ``health_check`` wins.
    checks: dict[str, str] = Field(default_factory=dict)


# When a machine has no health check of its own: does it answer at all?
# Over ssh this is a full connection and login.
DEFAULT_CHECK = "true"


# A run that ended so never reached its machine: the machine is probed at
# once (can it be reached now?) rather than given more runs to fail.
UNREACHABLE = ("ssh_connect", "ssh_auth")


def needs_probe(status: str, error_code: str | None) -> bool:
    return status == "error" and error_code in UNREACHABLE


def is_infrastructure_failure(status: str, error_code: str | None) -> bool:
    """Whether a run's end counts against its machine."""
    return status == "error" or (status == "interrupted" and error_code == CONNECTION_LOST)


@dataclass(frozen=True)
class Failure:
    """One infrastructure failure counted against a machine."""

    batch: str
    item: str
    run: str
    code: str
    at: datetime


@dataclass(frozen=True)
class Quarantine:
    since: datetime
    reason: str
    # Health checks run so far, and when the next one is due.
    checks: int
    next_check_at: datetime
    last_check: str | None = None
    # A worker running the check now, and until when its claim holds.
    checking_by: str | None = None
    checking_until: datetime | None = None


@dataclass(frozen=True)
class MachineHealth:
    """What is known of one machine's health; a machine with no entry is healthy."""

    streak: tuple[Failure, ...] = ()
    quarantine: Quarantine | None = None
    # Why a quarantine due was not made (the valve), while that holds.
    held_back: str | None = None

    @property
    def empty(self) -> bool:
        return not self.streak and self.quarantine is None and self.held_back is None


@dataclass(frozen=True)
class EndedRun:
    """The facts of a run's end the health policy looks at."""

    machine: str
    batch: str
    item: str
    run: str
    status: str
    error_code: str | None
    at: datetime


def after_end(health: MachineHealth, end: EndedRun) -> MachineHealth:
    """A machine's health after one of its runs ended. A quarantined machine
    is judged by its health check alone; a run that passed (or failed its
    test) ends the streak; an infrastructure failure of an item already in
    the streak is not counted twice (one item that breaks everywhere is not
    the machine's fault). O(streak)."""
    if health.quarantine is not None:
        return health
    if not is_infrastructure_failure(end.status, end.error_code):
        return MachineHealth() if health.streak or health.held_back else health
    if any(f.run == end.run or (f.batch, f.item) == (end.batch, end.item) for f in health.streak):
        return health
    failure = Failure(
        batch=end.batch,
        item=end.item,
        run=end.run,
        code=end.error_code or end.status,
        at=end.at,
    )
    return replace(health, streak=(*health.streak, failure))


def quarantine_due(health: MachineHealth, spec: HealthSpec) -> bool:
    return health.quarantine is None and len(health.streak) >= spec.failures


def quarantined(
    health: MachineHealth, spec: HealthSpec, now: datetime, *, reason: str | None = None
) -> MachineHealth:
    """The machine taken out, its first check due ``check_every`` from now."""
    codes = sorted({failure.code for failure in health.streak})
    count = len(health.streak)
    if reason is None:
        reason = (
            f"{count} runs of different items in a row ended with "
            f"infrastructure errors ({', '.join(codes)})"
            if count > 1
            else f"a run ended with an infrastructure error ({', '.join(codes)})"
        )
    return MachineHealth(
        streak=health.streak[-spec.failures :],
        quarantine=Quarantine(
            since=now,
            reason=reason,
            checks=0,
            next_check_at=now + timedelta(seconds=spec.check_every),
        ),
    )


def check_delay(checks_failed: int, spec: HealthSpec) -> float:
    """Seconds from a failed check to the next: ``check_every`` doubled per
    failed check, at most ``check_every_max``. No jitter: checks are few, one
    per quarantined machine, and one worker runs each."""
    return float(min(spec.check_every_max, spec.check_every * 2 ** max(checks_failed - 1, 0)))


def after_check(
    health: MachineHealth, spec: HealthSpec, *, passed: bool, detail: str, now: datetime
) -> MachineHealth:
    """A quarantined machine after a health check: healthy again, or still
    out with its next check further away."""
    if health.quarantine is None or passed:
        return MachineHealth()
    checks = health.quarantine.checks + 1
    return replace(
        health,
        quarantine=replace(
            health.quarantine,
            checks=checks,
            next_check_at=now + timedelta(seconds=check_delay(checks, spec)),
            last_check=detail,
            checking_by=None,
            checking_until=None,
        ),
    )


@dataclass(frozen=True)
class MachineGroups:
    """What the valve counts: the whole fleet, and each tag's machines."""

    fleet: tuple[str, ...]
    by_tag: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, machines: Iterable[tuple[str, Sequence[str]]]) -> MachineGroups:
        names: list[str] = []
        by_tag: dict[str, list[str]] = {}
        for name, tags in machines:
            names.append(name)
            for tag in tags:
                by_tag.setdefault(tag, []).append(name)
        return cls(fleet=tuple(names), by_tag={tag: tuple(m) for tag, m in by_tag.items()})

    def of_machine(self, name: str, tags: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        """The groups the valve checks for one machine: the fleet, and each
        of its tags that more than one machine carries (a tag of one machine
        says nothing about a fault common to many)."""
        groups = [("the fleet", self.fleet)]
        for tag in tags:
            members = self.by_tag.get(tag, ())
            if len(members) > 1:
                groups.append((f"tag {tag}", members))
        return groups


def allowed_out(group_size: int, spec: HealthSpec) -> int:
    """How many machines of a group may be quarantined at once."""
    return int(spec.max_quarantined * group_size + 1e-9)


def valve_holds(
    name: str,
    tags: Sequence[str],
    out: Mapping[str, object],
    groups: MachineGroups,
    spec: HealthSpec,
) -> str | None:
    """Why quarantining ``name`` now would take out too many machines (of
    ``out``, those quarantined already), or None if it may be. O(groups x
    their machines)."""
    for label, members in groups.of_machine(name, tags):
        already = sum(1 for member in members if member in out and member != name)
        limit = allowed_out(len(members), spec)
        if already + 1 > limit:
            return (
                f"not quarantined: {already} of the {len(members)} machines of {label} "
                f"already are (max_quarantined {spec.max_quarantined:g} allows {limit})"
            )
    return None
