"""plan_hash: blind to formatting, key order, comments and the file's path;
changed by every behaviour field."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchctl.model.plan import load_plan_text, parse_duration

BASE = """
version: 1
defaults:
  tag: linux
  timeout: 20m
entries:
  - name: build
    dir: suites/build
  - name: smoke
    dir: suites/smoke
    machine: gpu-01
    needs: [build]
    timeout: 10m
    retries: 2
    retry_on: [error, timeout]
    env: {SUITE: smoke, LEVEL: "3"}
"""

REFORMATTED = """
# the same plan, written differently
entries:
  - dir: suites/build   # key order differs
    name: build
    tag: linux          # the default, spelled out
    timeout: 1200       # 20m in seconds
  - {env: {LEVEL: 3, SUITE: smoke}, retry_on: [timeout, error], retries: 2,
     timeout: 600s, needs: [build], machine: gpu-01, dir: suites/smoke, name: smoke}
version: 1
"""


def plan_hash(text: str, base_dir: Path = Path("/plans"), env_tag: str | None = None) -> str:
    plan = load_plan_text(
        text, path="plan.yaml", base_dir=base_dir, source="inline", env_tag=env_tag
    )
    return plan.plan_hash


def test_hash_ignores_formatting_key_order_comments_and_location() -> None:
    assert plan_hash(BASE) == plan_hash(REFORMATTED)
    assert plan_hash(BASE, base_dir=Path("/elsewhere")) == plan_hash(BASE)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("name: smoke\n", "name: smoke-2\n"),
        ("dir: suites/build", "dir: suites/build-v2"),
        ("tag: linux", "tag: darwin"),
        ("machine: gpu-01", "machine: gpu-02"),
        ("needs: [build]", "needs: []"),
        ("timeout: 10m", "timeout: 11m"),
        ("timeout: 20m", "timeout: 30m"),
        ("retries: 2", "retries: 3"),
        ("retry_on: [error, timeout]", "retry_on: [error, timeout, failed]"),
        ("SUITE: smoke", "SUITE: smoke2"),
        ("env: {SUITE: smoke, ", "env: {EXTRA: x, SUITE: smoke, "),
    ],
)
def test_every_behaviour_field_changes_the_hash(old: str, new: str) -> None:
    assert old in BASE
    assert plan_hash(BASE.replace(old, new)) != plan_hash(BASE)


def test_default_tag_falls_back_to_environment_then_local() -> None:
    text = "version: 1\nentries:\n  - {name: a, dir: d}\n"
    plan = load_plan_text(text, path="p", base_dir=Path("/x"), source="inline", env_tag=None)
    assert plan.entries[0].selector == "tag:local"
    tagged = load_plan_text(text, path="p", base_dir=Path("/x"), source="inline", env_tag="ci")
    assert tagged.entries[0].selector == "tag:ci"
    assert tagged.plan_hash != plan.plan_hash


def test_entry_env_overrides_defaults_env() -> None:
    text = (
        "version: 1\ndefaults: {env: {A: '1', B: '2'}, retries: 1}\n"
        "entries:\n  - {name: a, dir: d, env: {B: '3'}, retries: 0}\n"
    )
    entry = load_plan_text(
        text, path="p", base_dir=Path("/x"), source="inline", env_tag=None
    ).entries[0]
    assert entry.env == {"A": "1", "B": "3"}
    assert entry.retries == 0
    assert entry.retry_on == ("error", "timeout", "interrupted")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2h", 7200), (45, 45), ("120", 120)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "1.5h", -3, True, "h10"])
def test_bad_durations(text: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_env_pass_names_change_the_hash_and_an_empty_list_does_not() -> None:
    with_names = BASE.replace("  timeout: 20m\n", "  timeout: 20m\n  env_pass: [CI, GITHUB_SHA]\n")
    reordered = BASE.replace("  timeout: 20m\n", "  timeout: 20m\n  env_pass: [GITHUB_SHA, CI]\n")
    empty = BASE.replace("  timeout: 20m\n", "  timeout: 20m\n  env_pass: []\n")
    assert plan_hash(with_names) != plan_hash(BASE)
    assert plan_hash(reordered) == plan_hash(with_names)
    # Plans that pass nothing keep the hash they had before env_pass existed,
    # and with it their batches.
    assert plan_hash(empty) == plan_hash(BASE)


def test_entry_env_pass_adds_to_the_defaults() -> None:
    text = (
        "version: 1\ndefaults: {env_pass: [CI]}\n"
        "entries:\n  - {name: a, dir: d, env_pass: [GITHUB_SHA]}\n  - {name: b, dir: d}\n"
    )
    plan = load_plan_text(text, path="p", base_dir=Path("/x"), source="inline", env_tag=None)
    assert [entry.env_pass for entry in plan.entries] == [("CI", "GITHUB_SHA"), ("CI",)]
