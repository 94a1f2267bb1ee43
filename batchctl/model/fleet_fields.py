"""Field types shared by the fleet file's machines and pools: a pool's
machines become machines, so what a machine refuses its pool refuses too,
when the fleet file is read (a problem named by its field, exit 2), not when
the first machine is made."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from batchctl.model.environment import check_env_pass
from batchctl.model.plan import NAME_RE


def check_name(value: object) -> object:
    if isinstance(value, str) and not NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, '.', '_', '-')")
    return value


def list_as_tuple(value: object) -> object:
    # YAML gives lists; the models are frozen and keep tuples (strict mode
    # would refuse the list).
    return tuple(value) if isinstance(value, list) else value


FleetName = Annotated[str, BeforeValidator(check_name)]
Tags = Annotated[tuple[FleetName, ...], BeforeValidator(list_as_tuple)]
SshOptions = Annotated[tuple[str, ...], BeforeValidator(list_as_tuple)]
Arguments = Annotated[tuple[str, ...], BeforeValidator(list_as_tuple)]
EnvPass = Annotated[tuple[str, ...], BeforeValidator(check_env_pass)]
