"""What a run's environment holds, the same on every transport.

A run gets, in this order (a later layer wins on a clash):

1. the **base** of the machine it runs on: ``PATH``, ``HOME``, ``LANG`` and
   ``TMPDIR``, each only where the machine sets it (a local run takes them
   from the worker's environment, an ssh run from the remote login's);
2. the controller's variables the plan or the fleet **passes through** by
   name (``env_pass: [CI, GITHUB_SHA]``), each only where it is set;
3. the entry's ``env``;
4. batchctl's own ``BATCHCTL_*`` variables.

Nothing else of the controller's environment reaches a test: the same plan
behaves the same on every machine, and a CI job's secrets stay with the job
unless a plan names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

BASE_VARIABLES = ("PATH", "HOME", "LANG", "TMPDIR")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV_PREFIX = "BATCHCTL_"


def check_env_pass(value: object) -> object:
    """A list of variable names, each valid, not batchctl's own, listed once;
    to a tuple (the models are frozen)."""
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of environment variable names")
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"{name!r}: names starting with {RESERVED_ENV_PREFIX} are set by batchctl"
            )
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return tuple(value)


def merged_names(*lists: Iterable[str]) -> tuple[str, ...]:
    """The names of several ``env_pass`` lists, once each, sorted."""
    return tuple(sorted({name for names in lists for name in names}))


def base_of(machine_environment: Mapping[str, str]) -> dict[str, str]:
    """The base variables a machine's environment sets."""
    return {
        name: machine_environment[name] for name in BASE_VARIABLES if name in machine_environment
    }


def passed_through(controller: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The named controller variables that are set (an unset one stays unset)."""
    return {name: controller[name] for name in names if name in controller}


def run_variables(
    *,
    controller: Mapping[str, str],
    env_pass: Iterable[str],
    entry_env: Mapping[str, str],
    batchctl: Mapping[str, str],
) -> dict[str, str]:
    """Layers 2-4: what the controller decides. The machine adds its base."""
    return {**passed_through(controller, env_pass), **entry_env, **batchctl}


def local_environment(
    *,
    controller: Mapping[str, str],
    env_pass: Iterable[str],
    entry_env: Mapping[str, str],
    batchctl: Mapping[str, str],
) -> dict[str, str]:
    """A run on the controller's own host: its base is the controller's."""
    return {
        **base_of(controller),
        **run_variables(
            controller=controller, env_pass=env_pass, entry_env=entry_env, batchctl=batchctl
        ),
    }
