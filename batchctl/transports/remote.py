"""Command lines for runs on remote machines over the system OpenSSH client.

Pure functions: every remote command is built here, and every value put on a
remote command line is quoted for the remote OS (POSIX sh, or PowerShell on
Windows), so the construction is unit-tested even where no such machine runs.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchctl.model.environment import BASE_VARIABLES
from batchctl.model.fleet import Machine

CONNECT_TIMEOUT_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


def ssh_argv(machine: Machine, *, known_hosts: Path, remote_command: str) -> list[str]:
    """The system ssh client, non-interactive, with keepalives and a connect
    timeout. The user's ssh config, agent and jump hosts still apply."""
    assert machine.host is not None
    argv = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL_S}",
        "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
        "-o", f"StrictHostKeyChecking={machine.strict_host_key_checking}",
        "-o", f"UserKnownHostsFile={machine.known_hosts or known_hosts}",
        "-T",
    ]  # fmt: skip
    if machine.port is not None:
        argv += ["-p", str(machine.port)]
    if machine.user:
        argv += ["-l", machine.user]
    if machine.identity_file:
        argv += ["-i", str(Path(machine.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    for option in machine.ssh_options:
        argv += ["-o", option]
    # "--" so a host can never be read as an option.
    return [*argv, "--", machine.host, remote_command]


@dataclass(frozen=True)
class RemoteLayout:
    """Where a run lives on the machine: ``<workdir>/<run-id>/``."""

    root: str

    @classmethod
    def for_run(cls, machine: Machine, run_id: str) -> RemoteLayout:
        return cls(root=f"{machine.remote_workdir.rstrip('/')}/{run_id}")

    @property
    def work(self) -> str:
        return f"{self.root}/work"

    @property
    def artifacts(self) -> str:
        return f"{self.root}/artifacts"

    @property
    def inputs(self) -> str:
        return f"{self.root}/inputs"

    @property
    def env_file(self) -> str:
        return f"{self.root}/env"

    @property
    def pid_file(self) -> str:
        return f"{self.root}/pid"

    @property
    def exit_file(self) -> str:
        return f"{self.root}/exit_code"


class PosixCommands:
    """Remote commands for linux and darwin machines, run by ``sh -c``."""

    @staticmethod
    def _sh(script: str) -> str:
        # The login shell of the remote user may be anything; run our script
        # in POSIX sh so its meaning does not depend on it.
        return "sh -c " + shlex.quote(script)

    def upload(self, layout: RemoteLayout) -> str:
        """Receive a tar of ``work/`` (the test) and, when the run has
        inputs, ``inputs/``, into the run's directory."""
        q = shlex.quote
        return self._sh(
            f"rm -rf {q(layout.root)} && mkdir -p {q(layout.work)} {q(layout.artifacts)} "
            f"&& tar -xf - -C {q(layout.root)}"
        )

    @staticmethod
    def env_file(env: Mapping[str, str]) -> bytes:
        """The variables the controller chose for the run, as the shell
        lines ``run`` reads: uploaded in a private file (``env``, 0600), so
        their values (an ``env_pass`` secret) are in no command line, on
        either host, for ``ps`` to show."""
        return "".join(
            f"{name}={shlex.quote(value)}\n" for name, value in sorted(env.items())
        ).encode()

    def run(self, layout: RemoteLayout, entrypoint: str, env: Mapping[str, str]) -> str:
        """Start the entrypoint in a session of its own (setsid, where there is
        one) so the whole tree can be signalled, record its pid, wait, and
        record its exit code where a later connection can read it. ``env``
        arrives in the uploaded ``env`` file (``env_file``), not here."""
        q = shlex.quote
        # `env -i` empties the login environment; the machine's base
        # variables are put back from it where it sets them (the quoted word
        # of ${NAME+word} is one argument, or none when NAME is unset), with
        # PWD, the work directory, as a local run's shell exports it. A
        # shell then exports what the env file sets (set -a), removes the
        # file and becomes the test (exec: the pid recorded stays the test's).
        base = " ".join(f'${{{name}+"{name}=${name}"}}' for name in BASE_VARIABLES)
        load = q('set -a; . "$0"; set +a; rm -f "$0"; exec "$@"')
        clean = f'env -i {base} "PWD=$PWD" sh -c {load} {q(layout.env_file)}'
        runner = f"./{entrypoint}" if entrypoint else "false"
        return self._sh(
            f"cd {q(layout.work)} || exit 97; "
            f"if [ -x {q(runner)} ]; then set -- {q(runner)}; else set -- sh {q(runner)}; fi; "
            f'if command -v setsid >/dev/null 2>&1; then setsid {clean} "$@" </dev/null & '
            f'else {clean} "$@" </dev/null & fi; '
            f"child=$!; echo $child > {q(layout.pid_file)}; "
            f"wait $child; code=$?; echo $code > {q(layout.exit_file)}; exit $code"
        )

    def kill(self, layout: RemoteLayout, grace_s: float) -> str:
        """TERM the run's process group, wait up to the grace, then KILL."""
        q = shlex.quote
        ticks = max(int(grace_s * 10), 1)
        # `kill -TERM -PGID` (no "--": dash's kill refuses it) signals the group;
        # without setsid there is no group, and the pid alone is signalled.
        return self._sh(
            f"pg=$(cat {q(layout.pid_file)} 2>/dev/null) || exit 0; "
            'kill -TERM -"$pg" 2>/dev/null || kill -TERM "$pg" 2>/dev/null; '
            f'i=0; while [ $i -lt {ticks} ] && kill -0 -"$pg" 2>/dev/null; '
            "do sleep 0.1; i=$((i+1)); done; "
            'kill -KILL -"$pg" 2>/dev/null || kill -KILL "$pg" 2>/dev/null; exit 0'
        )

    def read_exit(self, layout: RemoteLayout) -> str:
        return self._sh(f"cat {shlex.quote(layout.exit_file)}")

    def collect(self, layout: RemoteLayout) -> str:
        return self._sh(f"tar -cf - -C {shlex.quote(layout.artifacts)} .")

    def cleanup(self, layout: RemoteLayout) -> str:
        return self._sh(f"rm -rf {shlex.quote(layout.root)}")


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is interpreted;
    a single quote is written twice."""
    return "'" + value.replace("'", "''") + "'"


class WindowsCommands:
    """Remote commands for Windows machines (OpenSSH server), run by
    PowerShell. Uses the tar.exe that ships with Windows 10 and later."""

    @staticmethod
    def _ps(script: str) -> str:
        # -EncodedCommand takes base64 of UTF-16LE: the script crosses ssh and
        # cmd.exe with nothing in it left for either to interpret.
        encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
        return (
            "powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass "
            f"-EncodedCommand {encoded}"
        )

    def upload(self, layout: RemoteLayout) -> str:
        q = ps_quote
        return self._ps(
            f"$ErrorActionPreference='Stop'; "
            f"Remove-Item -Recurse -Force -ErrorAction SilentlyContinue {q(layout.root)}; "
            f"New-Item -ItemType Directory -Force {q(layout.work)},{q(layout.artifacts)} "
            "| Out-Null; "
            f"tar -xf - -C {q(layout.root)}; exit $LASTEXITCODE"
        )

    @staticmethod
    def env_file(env: Mapping[str, str]) -> bytes | None:
        """None: Windows runs get their variables in the (encoded) command."""
        return None

    def run(self, layout: RemoteLayout, entrypoint: str, env: Mapping[str, str]) -> str:
        # The test keeps the login environment, with the controller's chosen
        # variables added: Windows programs need a dozen system variables
        # (SystemRoot, ComSpec, PATHEXT, ...) that a POSIX base does not name.
        q = ps_quote
        exports = "".join(f"$env:{name}={q(value)}; " for name, value in sorted(env.items()))
        return self._ps(
            f"Set-Location -LiteralPath {q(layout.work)}; {exports}"
            "$p = Start-Process -NoNewWindow -PassThru -FilePath powershell "
            f"-ArgumentList '-NoProfile','-ExecutionPolicy','Bypass','-File',{q(entrypoint)}; "
            f"Set-Content -LiteralPath {q(layout.pid_file)} $p.Id; $p.WaitForExit(); "
            f"Set-Content -LiteralPath {q(layout.exit_file)} $p.ExitCode; exit $p.ExitCode"
        )

    def kill(self, layout: RemoteLayout, grace_s: float) -> str:
        # Windows has no TERM for console programs: the tree is ended at once.
        q = ps_quote
        return self._ps(
            f"$id = Get-Content -LiteralPath {q(layout.pid_file)} -ErrorAction SilentlyContinue; "
            "if ($id) { taskkill /T /F /PID $id | Out-Null }; exit 0"
        )

    def read_exit(self, layout: RemoteLayout) -> str:
        return self._ps(f"Get-Content -LiteralPath {ps_quote(layout.exit_file)}")

    def collect(self, layout: RemoteLayout) -> str:
        return self._ps(f"tar -cf - -C {ps_quote(layout.artifacts)} .; exit $LASTEXITCODE")

    def cleanup(self, layout: RemoteLayout) -> str:
        return self._ps(f"Remove-Item -Recurse -Force -LiteralPath {ps_quote(layout.root)}")


def commands_for(machine: Machine) -> PosixCommands | WindowsCommands:
    return WindowsCommands() if machine.os == "windows" else PosixCommands()
