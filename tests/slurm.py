"""A real Slurm cluster on this host (munged, slurmctld, one slurmd per node),
started once for the test session by scripts/slurm-cluster and stopped by
the pids it recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm-cluster"
# n1 and n2 serve the tests that share the cluster; n3 is the node a test
# takes down (its slurmd stopped by pid) and brings back.
NODES = ("n1:gpu,odd", "n2:cpu,even", "n3:spare")
# A second partition of the same nodes whose jobs may run a minute at most.
SHORT_PARTITION = "short"


def alive(pid: int) -> bool:
    """Exists and is not a zombie: PID 1 of a container may never reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def daemon_env() -> dict[str, str]:
    """The daemons get nothing of a test's environment (its state directory
    would make them look like that test's leftovers)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("BATCHCTL_")}


@dataclass
class SlurmCluster:
    directory: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {**daemon_env(), "SLURM_CONF": str(self.conf)}

    def machine(
        self,
        shared_dir: Path,
        name: str = "hpc",
        *,
        tags: str = "[gpu, cpu, odd, even]",
        extra: str = "",
        partition: str = "debug",
    ) -> str:
        """One fleet-file entry for this cluster."""
        return (
            f"  - {{name: {name}, transport: slurm, partition: {partition}, "
            f"shared_dir: {shared_dir}, "
            f"slurm_conf: {self.conf}, tags: {tags}, nodes: [n1, n2, n3]"
            f"{', ' + extra if extra else ''}}}\n"
        )

    def slurm(self, *argv: str) -> str:
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    def jobs(self) -> list[tuple[str, str, str, str]]:
        """(id, state, node, name) of every job the controller knows."""
        out = self.slurm("squeue", "-h", "-t", "all", "-o", "%i|%T|%N|%j")
        return [tuple(line.split("|", 3)) for line in out.splitlines()]  # type: ignore[misc]

    def pid_of(self, name: str) -> int:
        for line in (self.directory / "pids").read_text().splitlines():
            daemon, pid = line.split()
            if daemon == name:
                return int(pid)
        raise LookupError(name)

    def node_state(self, node: str) -> str:
        """The node's state (sinfo lists it once per partition)."""
        lines = self.slurm("sinfo", "-h", "-N", "-n", node, "-o", "%t").split()
        return lines[0] if lines else ""

    def stop_node(self, node: str) -> None:
        """Stop the node's slurmd by its pid: the node is lost."""
        pid = self.pid_of(f"slurmd-{node}")
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, f"slurmd {pid} did not stop"
            time.sleep(0.05)

    def start_node(self, node: str) -> None:
        """Start the node's slurmd again and wait until it takes jobs."""
        pid_file = self.directory / f"slurmd-{node}.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run(["slurmd", "-f", str(self.conf), "-N", node], env=self.env, check=True)
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "slurmd did not write its pid"
            time.sleep(0.05)
        pids = self.directory / "pids"
        lines = [
            line for line in pids.read_text().splitlines() if not line.startswith(f"slurmd-{node} ")
        ]
        pids.write_text("\n".join([*lines, f"slurmd-{node} {pid_file.read_text().strip()}"]) + "\n")
        while self.node_state(node) not in ("idle", "mix", "alloc"):
            if time.monotonic() > deadline:
                self.slurm("scontrol", "update", f"NodeName={node}", "State=RESUME")
                deadline += 30
            time.sleep(0.2)


def slurm_missing() -> bool:
    return not all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))


def require_slurm() -> None:
    """Skip (fail under CI) where a cluster cannot be started."""
    if slurm_missing():
        if os.environ.get("CI"):
            pytest.fail(
                "Slurm is not installed; .ci/run installs it (scripts/slurm-cluster install)"
            )
        pytest.skip("Slurm is not installed (scripts/slurm-cluster install)")
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the Slurm cluster's slurmd runs jobs as their users: it needs root")
        pytest.skip("the Slurm cluster needs root")


def start_cluster(directory: Path, *args: str) -> SlurmCluster:
    """scripts/slurm-cluster start DIRECTORY ARGS..."""
    started = subprocess.run(
        [str(SCRIPT), "start", str(directory), *args],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, f"the cluster did not start: {started.stderr}"
    return SlurmCluster(directory, directory / "slurm.conf")


def stop_cluster(directory: Path) -> None:
    """scripts/slurm-cluster stop DIRECTORY, if a cluster was started there."""
    if (directory / "pids").exists():
        stopped = subprocess.run(
            [str(SCRIPT), "stop", str(directory)],
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert stopped.returncode == 0, f"the cluster did not stop: {stopped.stderr}"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    require_slurm()
    directory = tmp_path_factory.mktemp("slurm")
    try:
        yield start_cluster(
            directory, *NODES, "--licenses", "gpu_lic:1", "--partition", f"{SHORT_PARTITION}:1"
        )
    finally:
        stop_cluster(directory)
