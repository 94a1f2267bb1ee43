"""Whatever a plan or fleet file holds, batchctl answers 0 or 2 with a clear
message, never an internal error, and quickly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import CliRunner, make_suite

# Values that have broken loaders: NUL and over-long path components, huge
# integers, non-ASCII, nesting, and every YAML scalar type.
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["suites/a", "a\0b", "x" * 300, "../..", "/", "tag:x", "local", "90s", "-1"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)

ENTRY_KEYS = [
    "name",
    "dir",
    "dirs",
    "matrix",
    "machine",
    "tag",
    "needs",
    "timeout",
    "retries",
    "retry_on",
    "env",
]
entries = st.dictionaries(st.sampled_from([*ENTRY_KEYS, "other"]), values, max_size=6)

# Matrices and globs mostly right, so that they get expanded: values and
# directories whose names must be encoded, and now and then a reserved or
# invalid key, a duplicate, a float, a clash with env, or a glob that
# matches nothing, climbs out of the plan's directory or is refused.
good_values = st.lists(
    st.sampled_from(["3.11", "a b", "x:y,z=", "%", "", "ü", "1", 2, -3, 2**70]),
    min_size=1,
    max_size=4,
    unique_by=str,
)
good_matrices = st.dictionaries(
    st.sampled_from(["py", "shard", "A", "PATH_"]), good_values, min_size=1, max_size=3
)
bad_matrices = st.dictionaries(
    st.one_of(st.sampled_from(["py", "BATCHCTL_X", "1x", ""]), texts),
    st.one_of(st.lists(scalars, max_size=3), values),
    max_size=3,
)
matrices = st.one_of(good_matrices, good_matrices, good_matrices, bad_matrices, values)
good_globs = st.sampled_from(["suites/*/", "suites/*", "*/", "suites/[ab]*/", "../*/", "*/*/"])
bad_globs = st.one_of(st.sampled_from(["none*/", "suites/**/", "suites/a", "", "a\0*"]), texts)
where = st.one_of(
    st.just({"dir": "suites/a"}),
    st.just({"dir": "suites/a"}),
    st.builds(lambda glob: {"dirs": glob}, good_globs),
    st.builds(lambda glob: {"dirs": glob}, good_globs),
    st.builds(lambda glob: {"dirs": glob}, bad_globs),
    st.builds(lambda glob: {"dir": "suites/a", "dirs": glob}, good_globs),
    st.just({}),
)
needs_lists = st.lists(
    st.sampled_from(["t", "u", "t[py=3.11]", "u[a]", "t[", "u[]", "x[a]", "t[A=1]", "v"]),
    max_size=2,
    unique=True,
)
expanding_entries = st.builds(
    lambda name, where, extra: {"name": name, **where, **extra},
    st.sampled_from(["t", "u", "v"]),
    where,
    st.fixed_dictionaries(
        {},
        optional={
            "matrix": matrices,
            "needs": needs_lists,
            "env": st.sampled_from([{"py": "x"}, {"B": "y"}]),
        },
    ),
)
expanding_plans = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "entries": st.lists(
            expanding_entries, min_size=1, max_size=4, unique_by=lambda entry: str(entry["name"])
        ),
    },
    optional={"defaults": st.fixed_dictionaries({"env": st.just({"py": "d", "A": "d"})})},
)
any_plans = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), values),
        "defaults": st.dictionaries(
            st.sampled_from(["tag", "timeout", "retries", "retry_on", "env", "x"]), values
        ),
        "entries": st.one_of(st.lists(entries, max_size=4), values),
    },
)
plans = st.one_of(any_plans, expanding_plans)

MACHINE_KEYS = ["name", "transport", "host", "user", "port", "tags", "slots", "os", "workdir"]
machines = st.dictionaries(st.sampled_from([*MACHINE_KEYS, "other"]), values, max_size=6)
# Inventories only with addresses nothing answers at: the fuzz never goes
# on the network.
inventories = st.fixed_dictionaries(
    {"kind": st.sampled_from(["http", "tailscale", "other"])},
    optional={
        "url": st.sampled_from(["http://[::1", "::::", "", "ftp://", "http://\0"]),
        "api_url": st.sampled_from(["http://[::1", "nope"]),
        "tailnet": texts,
        "slots": values,
    },
)
fleets = st.fixed_dictionaries(
    {},
    optional={
        "machines": st.one_of(st.lists(machines, max_size=3), values),
        "inventory": st.one_of(st.lists(inventories, max_size=2), values),
    },
)


def as_yaml(document: Any) -> bytes:
    try:
        return yaml.safe_dump(document, allow_unicode=True).encode()
    except (yaml.YAMLError, ValueError):
        return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS) if document else b"{}"


def assert_answered(result: Any, started: float) -> None:
    assert result.code in (0, 2), (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    if result.code == 2:
        error = orjson.loads(result.stderr)["error"]
        # The codes of exit 2 (model/errors.py; an inventory that cannot be
        # asked, e.g. without credentials, is a fleet problem too).
        assert error["code"] in (
            "invalid_input",
            "invalid_plan",
            "empty_plan",
            "invalid_fleet",
            "inventory_error",
        )
        assert len(error["message"]) < 10_000
    assert time.monotonic() - started < 5


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(plan=plans, mangle=st.sampled_from(["", "\xff", "\0", "&a [*a]", ": : :"]))
def test_any_plan_is_answered_0_or_2(
    plan: dict[str, Any], mangle: str, cli: CliRunner, workdir: Path
) -> None:
    make_suite(workdir / "suites", "a")
    path = workdir / "plan.yaml"
    path.write_bytes(as_yaml(plan) + mangle.encode("utf-8", "surrogateescape"))
    started = time.monotonic()
    result = cli("run", str(path), "--dry-run", "--json")
    assert_answered(result, started)


@FUZZ
@given(fleet=fleets, raw=st.binary(max_size=40))
def test_any_fleet_is_answered_0_or_2(
    fleet: dict[str, Any], raw: bytes, cli: CliRunner, workdir: Path
) -> None:
    make_suite(workdir / "suites", "a")
    (workdir / "plan.yaml").write_text("version: 1\nentries:\n  - {name: a, dir: suites/a}\n")
    path = workdir / "fleet.yaml"
    for content in (as_yaml(fleet), raw):
        path.write_bytes(content)
        started = time.monotonic()
        result = cli("run", "plan.yaml", "--dry-run", "--json", "--fleet", str(path))
        assert_answered(result, started)


@pytest.mark.parametrize(
    "plan",
    [
        "version: 1\nentries: " + "[" * 5000 + "]" * 5000 + "\n",
        "version: 1\nentries: &x [*x]\n",
    ],
)
def test_deep_and_self_referring_plans_are_refused(
    plan: str, cli: CliRunner, workdir: Path
) -> None:
    (workdir / "plan.yaml").write_text(plan)
    started = time.monotonic()
    assert_answered(cli("run", "plan.yaml", "--dry-run", "--json"), started)


def test_an_alias_bomb_is_refused_fast_in_a_line(cli: CliRunner, workdir: Path) -> None:
    lines = ["version: 1", "entries:", "  - name: z", "    dir: suites/a", "    needs:"]
    lines.append('      - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"      - &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append("  - {name: b, dir: suites/a, retry_on: *i}")
    (workdir / "plan.yaml").write_text("\n".join(lines) + "\n")
    assert len((workdir / "plan.yaml").read_bytes()) < 600

    started = time.monotonic()
    result = cli("run", "plan.yaml", "--dry-run", "--json")

    assert_answered(result, started)
    assert "alias bomb" in orjson.loads(result.stderr)["error"]["message"]
