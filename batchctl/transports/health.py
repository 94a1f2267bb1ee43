"""How a health check runs on a machine: over its own transport."""

from __future__ import annotations

import shlex
from pathlib import Path

from batchctl.model.fleet import Machine
from batchctl.transports.remote import ssh_argv


def health_check_argv(machine: Machine, command: str, *, known_hosts: Path) -> list[str] | None:
    """The command line that runs ``command`` on ``machine``: through ssh
    for an ssh machine (so the check also proves the machine can be reached
    and logged into), under ``sh`` here for a local one and for a Slurm
    cluster (with its SLURM_CONF: its client commands run here). None for a
    simulated machine, which has nothing to check."""
    if machine.transport == "sim":
        return None
    if machine.transport == "ssh":
        remote = command if machine.os == "windows" else "sh -c " + shlex.quote(command)
        return ssh_argv(machine, known_hosts=known_hosts, remote_command=remote)
    if machine.transport == "slurm" and machine.slurm_conf:
        # Run on this host, as sbatch and squeue are, against the machine's cluster.
        return ["env", f"SLURM_CONF={machine.slurm_conf}", "sh", "-c", command]
    return ["sh", "-c", command]
