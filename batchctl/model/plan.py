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
from batchctl.model.expansion import (
    MAX_ITEM_NAME,
    MAX_ITEMS_PER_ENTRY,
    ExpansionProblem,
    MatrixAxes,
    base_name,
    combination_count,
    combinations,
    glob_dirs,
    item_name,
    pattern_problem,
)
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
# Bounds on what matrices and globs expand to: the engine is built for
# batches of 100,000 items, and a view costs O(items + needs).
MAX_PLAN_ITEMS = 100_000
MAX_NEED_LINKS = 1_000_000


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
        if "\0" in str(raw):
            # No environment can hold it: the run could never start.
            raise ValueError(f"{key}: value must not contain a NUL character")
        env[key] = str(raw)
    return env


class _FieldProblems(ValueError):
    """Several problems found in one field, each ``(field, message)``:
    pydantic keeps one error per field, and a plan author wants them all."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems[0][1])
        self.problems = problems


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut short: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_matrix(value: object) -> object:
    """``{KEY: [value, ...], ...}``, in the order written, to a tuple of
    ``(KEY, (value, ...))`` with values as strings."""
    if not isinstance(value, Mapping):
        raise ValueError(
            "expected a mapping of variable names to lists of values, like {py: ['3.11', '3.12']}"
        )
    if not value:
        raise ValueError("is empty: give at least one variable and its list of values")
    problems: list[tuple[str, str]] = []
    axes: list[tuple[str, tuple[str, ...]]] = []
    for key, raw in value.items():
        shown_key = str(key) if isinstance(key, str | int) else _shown(key)
        field = f"matrix.{shown_key if len(shown_key) <= 60 else shown_key[:57] + '...'}"
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            problems.append((field, f"{_shown(key)} is not a valid environment variable name"))
            continue
        if key.startswith(RESERVED_ENV_PREFIX):
            problems.append(
                (field, f"names starting with {RESERVED_ENV_PREFIX} are set by batchctl")
            )
            continue
        if not isinstance(raw, list):
            problems.append((field, f"expected a list of values, got {_shown(raw)}"))
            continue
        if not raw:
            problems.append((field, "the list of values is empty"))
            continue
        values: list[str] = []
        for item in raw:
            # Floats are refused where env takes them: YAML reads 3.10 as 3.1,
            # and a value names an item, so its spelling must survive.
            if isinstance(item, float):
                problems.append(
                    (
                        field,
                        f"{_shown(item)} is a YAML number, which loses its spelling "
                        "(3.10 is read as 3.1): quote the value as written",
                    )
                )
            elif isinstance(item, bool) or not isinstance(item, str | int):
                problems.append(
                    (
                        field,
                        f"values must be strings or whole numbers (quote it), got {_shown(item)}",
                    )
                )
            elif "\0" in str(item):
                problems.append((field, "a value must not contain a NUL character"))
            elif str(item) in values:
                problems.append((field, f"{_shown(str(item))} is listed twice"))
            else:
                values.append(str(item))
        axes.append((key, tuple(values)))
    if problems:
        raise _FieldProblems(problems)
    matrix = tuple(axes)
    count = combination_count(matrix)
    if count > MAX_ITEMS_PER_ENTRY:
        raise ValueError(
            f"expands to {count:,} combinations (at most {MAX_ITEMS_PER_ENTRY:,} per entry)"
        )
    return matrix


Name = Annotated[str, BeforeValidator(_check_name)]
Duration = Annotated[int, BeforeValidator(parse_duration)]
Retries = Annotated[int, BeforeValidator(_check_retries)]
RetryOn = Annotated[tuple[str, ...], BeforeValidator(_check_retry_on)]
EnvMap = Annotated[dict[str, str], BeforeValidator(_check_env)]
EnvPass = Annotated[tuple[str, ...], BeforeValidator(check_env_pass)]
Matrix = Annotated[MatrixAxes, BeforeValidator(_check_matrix)]


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
    # Exactly one of dir and dirs (checked on the raw entry by load_plan_text,
    # so that a missing one is reported together with every other problem).
    dir: str | None = None
    dirs: str | None = None
    matrix: Matrix | None = None
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
    def _dir_not_blank(cls, value: str | None) -> str:
        # None is only the default's: written out, `dir: ~` is no directory.
        if value is None:
            raise ValueError("expected a directory, got null")
        if not value.strip():
            raise ValueError("must not be empty")
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("dirs")
    @classmethod
    def _dirs_is_a_pattern(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("expected a glob pattern of directories, got null")
        problem = pattern_problem(value)
        if problem is not None:
            raise ValueError(problem)
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
    # Per entry, the position of the plan entry it comes from (a matrix or
    # dirs entry gives several), and the positions of dirs entries: a problem
    # found later names the plan entry as written.
    origins: tuple[int, ...] = ()
    globbed: frozenset[int] = frozenset()

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


def _describe_all(error: Mapping[str, Any], model: type[BaseModel]) -> list[tuple[str, str]]:
    """Every (field, message) of one pydantic error: a field validator that
    found several problems (a matrix) reports each on its own line."""
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldProblems):
        return cause.problems
    return [_describe_pydantic_error(error, model)]


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


@dataclass(frozen=True)
class _Expanded:
    """The items one matrix or dirs entry stands for, in order: name, dir
    as written, and the matrix's variables."""

    items: list[tuple[str, str, dict[str, str]]]
    names: frozenset[str]


def _expand(spec: EntrySpec, base_dir: Path, where: str) -> tuple[_Expanded | None, list[str]]:
    """The items of a matrix or dirs entry, or the problems that stop it."""
    problems: list[str] = []
    own_env = spec.env or {}
    for key, _ in spec.matrix or ():
        if key in own_env:
            problems.append(
                f"{where}: field 'matrix.{key}': is also set in 'env': set it in one place"
            )
    dirs: list[tuple[str, str | None]]
    if spec.dirs is not None:
        try:
            dirs = [(found, label) for found, label in glob_dirs(spec.dirs, base_dir)]
        except ExpansionProblem as exc:
            return None, [*problems, f"{where}: field 'dirs': {exc}"]
    else:
        assert spec.dir is not None
        dirs = [(spec.dir, None)]
    combos = list(combinations(spec.matrix)) if spec.matrix else [([], {})]
    count = len(dirs) * len(combos)
    if count > MAX_ITEMS_PER_ENTRY:
        problems.append(
            f"{where}: field 'dirs': {len(dirs):,} directories x {len(combos):,} matrix "
            f"combinations make {count:,} items (at most {MAX_ITEMS_PER_ENTRY:,} per entry)"
        )
    if problems:
        return None, problems
    items = [
        (item_name(spec.name, [*([label] if label is not None else []), *labels]), found, env)
        for found, label in dirs
        for labels, env in combos
    ]
    longest = max(items, key=lambda item: len(item[0]))[0]
    if len(longest) > MAX_ITEM_NAME:
        field = "matrix" if spec.matrix else "dirs"
        return None, [
            f"{where}: field {field!r}: item name {longest[:40] + '...'!r} would be "
            f"{len(longest):,} characters (at most {MAX_ITEM_NAME}): use shorter values"
        ]
    return _Expanded(items, frozenset(name for name, _, _ in items)), []


def _need_problem(
    name: str,
    needed: str,
    listed: set[str],
    entry_names: Mapping[str, object],
    expanded: Mapping[str, _Expanded],
    expanding: set[str],
) -> str | None:
    """What is wrong with ``name`` needing ``needed``, if anything. An item of
    an expanded entry is needed by its full name, ``test[py=3.11]``."""
    base, bracket, _ = needed.partition("[")
    if needed == name:
        return "an entry cannot need itself"
    if not bracket:
        if needed in entry_names:
            return None
        close = difflib.get_close_matches(needed, sorted(entry_names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown entry {needed!r}{hint}"
    if base == name:
        return f"an entry cannot need its own item {needed!r}"
    if base not in entry_names:
        close = difflib.get_close_matches(base, sorted(entry_names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown item {needed!r}: no entry {base!r}{hint}"
    if base in expanded:
        if needed not in expanded[base].names:
            close = difflib.get_close_matches(needed, sorted(expanded[base].names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown item {needed!r} of entry {base!r}{hint}"
        if base in listed:
            return f"{needed!r} is already needed through {base!r}"
        return None
    if base in expanding:
        return None  # the entry's matrix or dirs has a problem of its own, reported
    return f"unknown item {needed!r}: entry {base!r} has no matrix or dirs (need {base!r})"


def load_plan_text(
    text: str, *, path: str, base_dir: Path, source: str, env_tag: str | None
) -> Plan:
    """Validate plan text; ``path`` names it in messages, ``base_dir`` anchors
    ``dir`` and ``dirs``. Matrix and dirs entries are expanded here, so
    everything after sees one entry per item."""
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
            for field, message in _describe_all(error, PlanHeaderSpec):
                if field == "entries" and error["type"] == "list_type":
                    message = "must be a list of entries"
                problems.append(f"{path}: field {field!r}: {message}")

    raw_entries = raw.get("entries")
    if header is not None and not header.entries:
        raise EmptyPlan(f"{path}: empty plan: 'entries' lists nothing to run")
    if not isinstance(raw_entries, list):
        raise InvalidPlan(path, problems)

    specs: list[tuple[int, EntrySpec]] = []
    # Entries that expand (as written, valid or not): their items are unknown
    # when the entry has a problem, and needing one is then not an error too.
    expanding: set[str] = set()
    for index, raw_entry in enumerate(raw_entries):
        label = _entry_label(index, raw_entry)
        if not isinstance(raw_entry, Mapping):
            problems.append(f"{path}: {label}: must be a mapping with at least 'name' and 'dir'")
            continue
        if (
            raw_entry.get("matrix") is not None or raw_entry.get("dirs") is not None
        ) and isinstance(raw_entry.get("name"), str):
            expanding.add(raw_entry["name"])
        valid = True
        try:
            spec = EntrySpec.model_validate(raw_entry)
        except ValidationError as exc:
            valid = False
            for error in exc.errors():
                for field, message in _describe_all(error, EntrySpec):
                    problems.append(f"{path}: {label}: field {field!r}: {message}")
        if "dir" not in raw_entry and "dirs" not in raw_entry:
            valid = False
            problems.append(
                f"{path}: {label}: field 'dir': is required (or 'dirs', a glob of directories)"
            )
        elif "dir" in raw_entry and "dirs" in raw_entry:
            valid = False
            problems.append(
                f"{path}: {label}: field 'dir/dirs': dir and dirs are mutually exclusive: "
                "give one of them"
            )
        if valid:
            specs.append((index, spec))
        elif isinstance(pattern := raw_entry.get("dirs"), str) and pattern_problem(pattern) is None:
            # The entry has other problems, but whether its glob matches is
            # worth knowing in the same round.
            try:
                glob_dirs(pattern, base_dir)
            except ExpansionProblem as exc:
                problems.append(f"{path}: {label}: field 'dirs': {exc}")

    first_index_of: dict[str, int] = {}
    for index, spec in specs:
        if spec.name in first_index_of:
            problems.append(
                f"{path}: {_entry_label(index, {'name': spec.name})}: field 'name': "
                f"duplicate of entry #{first_index_of[spec.name] + 1}"
            )
        else:
            first_index_of[spec.name] = index

    expanded: dict[str, _Expanded] = {}
    for index, spec in specs:
        if (spec.matrix or spec.dirs is not None) and first_index_of[spec.name] == index:
            where = f"{path}: {_entry_label(index, {'name': spec.name})}"
            expansion, expansion_problems = _expand(spec, base_dir, where)
            problems.extend(expansion_problems)
            if expansion is not None:
                expanded[spec.name] = expansion

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
        listed_needs = set(needs)
        for needed in needs:
            if needed in seen_needs:
                problem: str | None = f"{needed!r} is listed twice"
            else:
                problem = _need_problem(name, needed, listed_needs, raw_needs, expanded, expanding)
            if problem is not None:
                problems.append(f"{path}: {label}: field 'needs': {problem}")
            seen_needs.add(needed)

    # Needing one item of an entry is an edge to that entry: every item of an
    # entry needs the same things, so a cycle of entries is a cycle of items.
    needs_graph = {
        name: [base_name(n) for n in needs if base_name(n) != name]
        for name, (_, needs) in raw_needs.items()
    }
    for cycle in _find_cycles(needs_graph):
        label = _entry_label(raw_needs[cycle[0]][0], {"name": cycle[0]})
        problems.append(
            f"{path}: {label}: field 'needs': dependency cycle {' -> '.join([*cycle, cycle[0]])}"
        )

    if expanded:
        problems.extend(_size_problems(path, specs, first_index_of, expanded))

    if problems or header is None:
        raise InvalidPlan(path, problems)

    defaults = header.defaults or DefaultsSpec()
    default_tag = _default_tag(header.defaults, env_tag)
    # Many entries share a directory (or a handful): resolve each once.
    resolved: dict[str, str] = {}

    def absolute(directory: str) -> str:
        if directory not in resolved:
            resolved[directory] = str((base_dir / directory).resolve())
        return resolved[directory]

    entries: list[Entry] = []
    origins: list[int] = []
    for index, spec in specs:

        def items_of(names: Sequence[str]) -> tuple[str, ...]:
            """Names of entries or items, with each entry's whole expansion."""
            return tuple(
                item
                for named in names
                for item in (
                    [name for name, _, _ in expanded[named].items] if named in expanded else [named]
                )
            )

        needs_of = items_of(spec.needs)
        inputs_of = items_of(spec.inputs)
        selector = f"machine:{spec.machine}" if spec.machine else f"tag:{spec.tag or default_tag}"
        timeout_s = spec.timeout or defaults.timeout or DEFAULT_TIMEOUT_S
        retries = _first_set(spec.retries, defaults.retries, DEFAULT_RETRIES)
        retry_on = spec.retry_on or defaults.retry_on or DEFAULT_RETRY_ON
        env = {**(defaults.env or {}), **(spec.env or {})}
        env_pass = merged_names(defaults.env_pass or (), spec.env_pass or ())
        if spec.name in expanded:
            items = expanded[spec.name].items
        else:
            assert spec.dir is not None
            items = [(spec.name, spec.dir, {})]
        for name, directory, matrix_env in items:
            entries.append(
                Entry(
                    name=name,
                    dir=directory,
                    abs_dir=absolute(directory),
                    selector=selector,
                    needs=needs_of,
                    timeout_s=timeout_s,
                    retries=retries,
                    retry_on=retry_on,
                    # A matrix variable may override defaults.env, as the
                    # entry's own env does (a clash with that env is refused).
                    env={**env, **matrix_env},
                    env_pass=env_pass,
                    inputs=inputs_of,
                )
            )
            origins.append(index)
    return Plan(
        path=path,
        source=source,
        entries=tuple(entries),
        plan_hash=compute_plan_hash(entries),
        origins=tuple(origins),
        globbed=frozenset(index for index, spec in specs if spec.dirs is not None),
    )


def _size_problems(
    path: str,
    specs: Sequence[tuple[int, EntrySpec]],
    first_index_of: Mapping[str, int],
    expanded: Mapping[str, _Expanded],
) -> list[str]:
    """A plan whose matrices and globs expand past what a batch is built for:
    too many items, or too many item-to-item needs (an expanded entry needing
    another makes one for every pair)."""
    problems = []
    size = {name: len(expansion.items) for name, expansion in expanded.items()}
    total_items = 0
    total_links = 0
    for index, spec in specs:
        if first_index_of.get(spec.name) != index:
            continue
        items = size.get(spec.name, 1)
        needed = sum(1 if "[" in need else size.get(need, 1) for need in spec.needs)
        links = items * needed
        total_items += items
        total_links += links
        if links > MAX_NEED_LINKS:
            problems.append(
                f"{path}: {_entry_label(index, {'name': spec.name})}: field 'needs': "
                f"{items:,} items each needing {needed:,} make {links:,} dependencies "
                f"(at most {MAX_NEED_LINKS:,} in a plan)"
            )
    if total_items > MAX_PLAN_ITEMS:
        problems.append(
            f"{path}: field 'entries': the plan expands to {total_items:,} items "
            f"(at most {MAX_PLAN_ITEMS:,} once matrices and dirs are expanded)"
        )
    if total_links > MAX_NEED_LINKS and not problems:
        problems.append(
            f"{path}: field 'entries': the plan's needs expand to {total_links:,} "
            f"dependencies between items (at most {MAX_NEED_LINKS:,})"
        )
    return problems


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


def dir_label(plan: Plan, position: int) -> tuple[int, str]:
    """(plan entry index, ``"entry 'x' (#n): field 'dir'"``) for the item at
    ``position`` of ``plan.entries``: problems of a directory are the plan
    entry's, whatever number of items it expanded to."""
    origin = plan.origins[position] if plan.origins else position
    label = _entry_label(origin, {"name": base_name(plan.entries[position].name)})
    field = "dirs" if origin in plan.globbed else "dir"
    return origin, f"{label}: field {field!r}"


def missing_dir_problems(plan: Plan) -> list[str]:
    """Entries whose ``dir`` is absent or not a directory, checked when a batch
    is created: one line per plan entry, however many items it expanded to."""
    problems = []
    checked: dict[str, str | None] = {}  # each directory is asked about once
    reported: set[int] = set()
    for position, entry in enumerate(plan.entries):
        if entry.abs_dir not in checked:
            target = Path(entry.abs_dir)
            try:
                checked[entry.abs_dir] = (
                    "missing" if not target.exists() else None if target.is_dir() else "not-a-dir"
                )
            except OSError as exc:  # a name too long for the file system, say
                checked[entry.abs_dir] = exc.strerror or "unreadable"
        origin = plan.origins[position] if plan.origins else position
        if checked[entry.abs_dir] is None or origin in reported:
            continue
        reported.add(origin)
        label = _entry_label(origin, {"name": base_name(entry.name)})
        # A globbed directory that went away between the glob and this look.
        field = "dirs" if origin in plan.globbed else "dir"
        target = Path(entry.abs_dir)
        if checked[entry.abs_dir] not in ("missing", "not-a-dir"):
            problems.append(
                f"{plan.path}: {label}: field {field!r}: {entry.dir!r} cannot be used "
                f"({checked[entry.abs_dir]})"
            )
        elif not target.exists():
            problems.append(
                f"{plan.path}: {label}: field {field!r}: {entry.dir!r} does not exist ({target})"
            )
        elif not target.is_dir():
            problems.append(
                f"{plan.path}: {label}: field {field!r}: {entry.dir!r} is not a directory"
            )
    return problems
