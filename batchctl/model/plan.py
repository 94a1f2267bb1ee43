"""Loading, validating and hashing plan files (SPEC §2).

Validation reports every problem at once, one line each, naming the file, the
entry and the field, so a user fixes a plan in one round trip.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchctl.model.environment import (
    ENV_NAME_RE,
    RESERVED_ENV_PREFIX,
    check_env_pass,
    merged_names,
)
from batchctl.model.errors import EmptyPlan, InvalidInput, InvalidPlan
from batchctl.model.models import Entry

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DURATION_RE = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")

RETRYABLE_STATUSES = ("error", "timeout", "interrupted", "failed")
DEFAULT_RETRY_ON = ("error", "timeout", "interrupted")
DEFAULT_TIMEOUT_S = 3600
DEFAULT_RETRIES = 0
MAX_RETRIES = 20
# A timeout longer than a year is a typo, and past 64 bits no JSON holds it.
MAX_DURATION_S = 366 * 86_400
FALLBACK_TAG = "local"


def parse_duration(value: object) -> int:
    """``90s``, ``10m``, ``1h30m`` or a whole number of seconds, to seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 10m or 1h30m, not a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value and (match := DURATION_RE.fullmatch(value.strip())):
        if not any(match.groups()):
            raise ValueError(f"invalid duration {value!r} (use 90s, 10m, 1h30m or whole seconds)")
        hours, minutes, secs = (int(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value.strip())
    else:
        raise ValueError(f"invalid duration {value!r} (use 90s, 10m, 1h30m or whole seconds)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration must be at most 366 days ({MAX_DURATION_S}s), got {value!r}")
    return seconds


def _check_name(value: object) -> object:
    if isinstance(value, str) and not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; at most 128 characters)"
        )
    return value


def _check_retries(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number of retries, got {value!r}")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"must be between 0 and {MAX_RETRIES}, got {value}")
    return value


def _check_retry_on(value: object) -> object:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list drawn from {', '.join(RETRYABLE_STATUSES)}")
    unknown = [status for status in value if status not in RETRYABLE_STATUSES]
    if unknown:
        raise ValueError(
            f"unknown status {unknown[0]!r} (allowed: {', '.join(RETRYABLE_STATUSES)})"
        )
    if len(set(value)) != len(value):
        raise ValueError("lists a status more than once")
    return tuple(value)


def _check_env(value: object) -> object:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of variable names to values")
    env: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if key.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"{key!r}: names starting with {RESERVED_ENV_PREFIX} are set by batchctl"
            )
        # Numbers are accepted because YAML makes `PORT: 8080` an int; booleans
        # and nulls are refused because their spelling would be a surprise.
        if isinstance(raw, bool) or raw is None or not isinstance(raw, str | int | float):
            raise ValueError(f"{key}: value must be a string or a number (quote it), got {raw!r}")
        env[key] = str(raw)
    return env


Name = Annotated[str, BeforeValidator(_check_name)]
Duration = Annotated[int, BeforeValidator(parse_duration)]
Retries = Annotated[int, BeforeValidator(_check_retries)]
RetryOn = Annotated[tuple[str, ...], BeforeValidator(_check_retry_on)]
EnvMap = Annotated[dict[str, str], BeforeValidator(_check_env)]
EnvPass = Annotated[tuple[str, ...], BeforeValidator(check_env_pass)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DefaultsSpec(_Spec):
    tag: Name | None = None
    timeout: Duration | None = None
    retries: Retries | None = None
    retry_on: RetryOn | None = None
    env: EnvMap | None = None
    env_pass: EnvPass | None = None


class EntrySpec(_Spec):
    name: Name
    dir: str
    machine: Name | None = None
    tag: Name | None = None
    needs: list[str] = []
    timeout: Duration | None = None
    retries: Retries | None = None
    retry_on: RetryOn | None = None
    env: EnvMap | None = None
    env_pass: EnvPass | None = None
    # Entries among ``needs`` whose passing run's artifacts this one receives.
    inputs: list[str] = []

    @field_validator("dir")
    @classmethod
    def _dir_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @model_validator(mode="after")
    def _machine_xor_tag(self) -> EntrySpec:
        if self.machine is not None and self.tag is not None:
            raise ValueError("machine and tag are mutually exclusive: give one of them")
        return self

    @field_validator("inputs")
    @classmethod
    def _inputs_are_needed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # `needs` is declared first, so it is validated (or has failed) by now.
        needs = info.data.get("needs", [])
        for name in value:
            if name not in needs:
                raise ValueError(
                    f"{name!r} is not in needs (an entry receives the artifacts of "
                    "entries it needs, once they passed)"
                )
        if len(set(value)) != len(value):
            raise ValueError("lists an entry twice")
        return value


class PlanHeaderSpec(_Spec):
    version: int
    defaults: DefaultsSpec | None = None
    entries: list[Any]

    @field_validator("version")
    @classmethod
    def _version_is_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"version must be 1 (this batchctl reads plan version 1), got {value}")
        return value


@dataclass(frozen=True)
class Plan:
    path: str
    source: str
    entries: tuple[Entry, ...]
    plan_hash: str

    def entry(self, name: str) -> Entry:
        return next(entry for entry in self.entries if entry.name == name)


# libyaml's parser when PyYAML was built with it: a 100,000-entry plan parses
# in seconds instead of most of a minute.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate keys: YAML silently keeps the last one,
    which would hide a typo'd or pasted-twice field."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, list | dict | set):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value such as a name, not a list or mapping",
                key_node.start_mark,
            )
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# Values a document may stand for once its aliases are expanded: far above
# any plan (a 100,000-entry plan is about a million), far below what makes
# validation, or the message about it, take seconds and gigabytes.
MAX_EXPANDED_VALUES = 5_000_000


def _expanded_values(root: yaml.Node) -> int:
    """How many values the document stands for with every alias expanded,
    counted without expanding: each node once, O(nodes). Raises ValueError
    for an alias that contains itself."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if key in on_path:
            raise ValueError("an alias refers to a value that contains it")
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise ValueError("an alias refers to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def parse_yaml(text: str, path: str) -> object:
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            try:
                expanded = _expanded_values(node)
            except ValueError as exc:
                raise InvalidPlan(path, [f"{path}: refused: {exc}"]) from None
            if expanded > MAX_EXPANDED_VALUES:
                raise InvalidPlan(
                    path,
                    [
                        f"{path}: refused: its aliases expand to {expanded:,} values "
                        f"(at most {MAX_EXPANDED_VALUES:,}; a YAML alias bomb?)"
                    ],
                )
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise InvalidPlan(path, [f"{path}: refused: nested too deeply"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = exc.problem or exc.context or "malformed YAML"
        raise InvalidPlan(path, [f"{where}: malformed YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise InvalidPlan(path, [f"{path}: malformed YAML: {exc}"]) from None


def _describe_pydantic_error(error: Mapping[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    """(field, message) for one pydantic error, in words a plan author uses."""
    loc = [str(part) for part in error["loc"]]
    field = ".".join(loc) if loc else "machine/tag"
    kind = error["type"]
    if kind == "extra_forbidden":
        unknown = loc[-1]
        owner = DefaultsSpec if loc[0] == "defaults" and model is PlanHeaderSpec else model
        known_fields = list(owner.model_fields)
        close = difflib.get_close_matches(unknown, known_fields, n=1)
        hint = (
            f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(known_fields)})"
        )
        return field, f"unknown key{hint}"
    if kind == "missing":
        return field, "is required"
    message = str(error["msg"]).removeprefix("Value error, ")
    return field, message


def _entry_label(index: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    if isinstance(name, str) and name:
        return f"entry {name!r} (#{index + 1})"
    return f"entry #{index + 1}"


def _find_cycles(needs_by_name: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every distinct dependency cycle reachable by depth-first search, each
    rotated to start at its earliest-authored member."""
    order = {name: position for position, name in enumerate(needs_by_name)}
    cycles: dict[frozenset[str], list[str]] = {}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for needed in needs_by_name.get(name, ()):
            if needed not in needs_by_name:
                continue
            if state.get(needed) == 1:
                cycle = path[path.index(needed) :]
                start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                rotated = cycle[start:] + cycle[:start]
                cycles.setdefault(frozenset(rotated), rotated)
            elif state.get(needed) is None:
                visit(needed)
        path.pop()
        state[name] = 2

    for name in needs_by_name:
        if name not in state:
            visit(name)
    return sorted(cycles.values(), key=lambda cycle: order[cycle[0]])


def _default_tag(defaults: DefaultsSpec | None, env_tag: str | None) -> str:
    if defaults is not None and defaults.tag is not None:
        return defaults.tag
    if env_tag:
        return env_tag
    return FALLBACK_TAG


def compute_plan_hash(entries: Sequence[Entry]) -> str:
    normalised = {"version": 1, "entries": [entry.hashed_fields() for entry in entries]}
    return hashlib.sha256(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_plan_text(
    text: str, *, path: str, base_dir: Path, source: str, env_tag: str | None
) -> Plan:
    """Validate plan text; ``path`` names it in messages, ``base_dir`` anchors ``dir``."""
    raw = parse_yaml(text, path)
    if raw is None:
        raise EmptyPlan(f"{path}: empty plan: the file has no content")
    if not isinstance(raw, Mapping):
        raise InvalidPlan(
            path, [f"{path}: the plan must be a mapping with 'version' and 'entries'"]
        )

    problems: list[str] = []
    header: PlanHeaderSpec | None = None
    try:
        header = PlanHeaderSpec.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            field, message = _describe_pydantic_error(error, PlanHeaderSpec)
            if field == "entries" and error["type"] == "list_type":
                message = "must be a list of entries"
            problems.append(f"{path}: field {field!r}: {message}")

    raw_entries = raw.get("entries")
    if header is not None and not header.entries:
        raise EmptyPlan(f"{path}: empty plan: 'entries' lists nothing to run")
    if not isinstance(raw_entries, list):
        raise InvalidPlan(path, problems)

    specs: list[tuple[int, EntrySpec]] = []
    for index, raw_entry in enumerate(raw_entries):
        label = _entry_label(index, raw_entry)
        if not isinstance(raw_entry, Mapping):
            problems.append(f"{path}: {label}: must be a mapping with at least 'name' and 'dir'")
            continue
        try:
            specs.append((index, EntrySpec.model_validate(raw_entry)))
        except ValidationError as exc:
            for error in exc.errors():
                field, message = _describe_pydantic_error(error, EntrySpec)
                problems.append(f"{path}: {label}: field {field!r}: {message}")

    first_index_of: dict[str, int] = {}
    for index, spec in specs:
        if spec.name in first_index_of:
            problems.append(
                f"{path}: {_entry_label(index, {'name': spec.name})}: field 'name': "
                f"duplicate of entry #{first_index_of[spec.name] + 1}"
            )
        else:
            first_index_of[spec.name] = index

    # Needs are checked on every entry that names them, including entries with
    # other problems, so one run of the validator reports everything.
    raw_needs: dict[str, tuple[int, list[str]]] = {}
    for index, raw_entry in enumerate(raw_entries):
        if isinstance(raw_entry, Mapping) and isinstance(raw_entry.get("name"), str):
            needs = raw_entry.get("needs", [])
            listed = [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else []
            raw_needs.setdefault(raw_entry["name"], (index, listed))
    for name, (index, needs) in raw_needs.items():
        label = _entry_label(index, {"name": name})
        seen_needs: set[str] = set()
        for needed in needs:
            if needed == name:
                problems.append(f"{path}: {label}: field 'needs': an entry cannot need itself")
            elif needed in seen_needs:
                problems.append(f"{path}: {label}: field 'needs': {needed!r} is listed twice")
            elif needed not in raw_needs:
                close = difflib.get_close_matches(needed, sorted(raw_needs), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{path}: {label}: field 'needs': unknown entry {needed!r}{hint}")
            seen_needs.add(needed)

    needs_graph = {name: [n for n in needs if n != name] for name, (_, needs) in raw_needs.items()}
    for cycle in _find_cycles(needs_graph):
        label = _entry_label(raw_needs[cycle[0]][0], {"name": cycle[0]})
        problems.append(
            f"{path}: {label}: field 'needs': dependency cycle {' -> '.join([*cycle, cycle[0]])}"
        )

    if problems or header is None:
        raise InvalidPlan(path, problems)

    defaults = header.defaults or DefaultsSpec()
    default_tag = _default_tag(header.defaults, env_tag)
    # Many entries share a directory (or a handful): resolve each once.
    resolved: dict[str, str] = {}
    for _, spec in specs:
        if spec.dir not in resolved:
            resolved[spec.dir] = str((base_dir / spec.dir).resolve())
    entries = tuple(
        Entry(
            name=spec.name,
            dir=spec.dir,
            abs_dir=resolved[spec.dir],
            selector=f"machine:{spec.machine}"
            if spec.machine
            else f"tag:{spec.tag or default_tag}",
            needs=tuple(spec.needs),
            timeout_s=spec.timeout or defaults.timeout or DEFAULT_TIMEOUT_S,
            retries=_first_set(spec.retries, defaults.retries, DEFAULT_RETRIES),
            retry_on=spec.retry_on or defaults.retry_on or DEFAULT_RETRY_ON,
            env={**(defaults.env or {}), **(spec.env or {})},
            env_pass=merged_names(defaults.env_pass or (), spec.env_pass or ()),
            inputs=tuple(spec.inputs),
        )
        for _, spec in specs
    )
    return Plan(path=path, source=source, entries=entries, plan_hash=compute_plan_hash(entries))


def _first_set(*values: int | None) -> int:
    return next(value for value in values if value is not None)


def load_plan(path: str, *, env_tag: str | None) -> Plan:
    """Load a plan file; ``-`` reads the plan from standard input (``dir`` relative to cwd)."""
    if path == "-":
        import sys

        return load_plan_text(
            sys.stdin.read(), path="<stdin>", base_dir=Path.cwd(), source="inline", env_tag=env_tag
        )
    plan_path = Path(path)
    try:
        text = plan_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: plan file not found", details={"file": path}) from None
    except IsADirectoryError:
        raise InvalidInput(
            f"{path}: is a directory, not a plan file", details={"file": path}
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read plan: {exc}", details={"file": path}) from None
    return load_plan_text(
        text,
        path=path,
        base_dir=plan_path.resolve().parent,
        source=f"plan:{path}",
        env_tag=env_tag,
    )


def missing_dir_problems(plan: Plan) -> list[str]:
    """Entries whose ``dir`` is absent or not a directory, checked when a batch is created."""
    problems = []
    checked: dict[str, str | None] = {}  # each directory is asked about once
    for position, entry in enumerate(plan.entries):
        if entry.abs_dir not in checked:
            target = Path(entry.abs_dir)
            try:
                checked[entry.abs_dir] = (
                    "missing" if not target.exists() else None if target.is_dir() else "not-a-dir"
                )
            except OSError as exc:  # a name too long for the file system, say
                checked[entry.abs_dir] = exc.strerror or "unreadable"
        if checked[entry.abs_dir] is None:
            continue
        label = _entry_label(position, {"name": entry.name})
        target = Path(entry.abs_dir)
        if checked[entry.abs_dir] not in ("missing", "not-a-dir"):
            problems.append(
                f"{plan.path}: {label}: field 'dir': {entry.dir!r} cannot be used "
                f"({checked[entry.abs_dir]})"
            )
        elif not target.exists():
            problems.append(
                f"{plan.path}: {label}: field 'dir': {entry.dir!r} does not exist ({target})"
            )
        elif not target.is_dir():
            problems.append(f"{plan.path}: {label}: field 'dir': {entry.dir!r} is not a directory")
    return problems
