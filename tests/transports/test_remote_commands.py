"""Remote command construction: quoting for POSIX sh and for PowerShell on
Windows (which cannot run here, so its commands are checked as text)."""

from __future__ import annotations

import base64
import shlex
import subprocess
from pathlib import Path

from batchctl.model.fleet import Machine
from batchctl.transports.remote import (
    PosixCommands,
    RemoteLayout,
    WindowsCommands,
    commands_for,
    ps_quote,
    ssh_argv,
)
from batchctl.transports.runners.ssh import classify_ssh_failure

HOSTILE = "a b'c\"d $(touch pwned) `id` ; rm -rf / & echo $HOME"


def linux(**extra: object) -> Machine:
    return Machine.model_validate(
        {"name": "box", "transport": "ssh", "host": "box.example", "os": "linux", **extra}
    )


def test_ssh_argv_is_non_interactive_and_honours_machine_settings(tmp_path: Path) -> None:
    machine = linux(
        user="ci", port=2222, identity_file="~/.ssh/k", ssh_options=["ProxyJump=bastion"]
    )
    argv = ssh_argv(machine, known_hosts=tmp_path / "kh", remote_command="true")

    assert argv[0] == "ssh"
    joined = " ".join(argv)
    for option in (
        "BatchMode=yes",
        "StrictHostKeyChecking=accept-new",
        "ServerAliveInterval=",
        "ConnectTimeout=",
        f"UserKnownHostsFile={tmp_path / 'kh'}",
        "ProxyJump=bastion",
    ):
        assert option in joined
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "ci"
    assert argv[-3:] == ["--", "box.example", "true"]
    own = ssh_argv(linux(known_hosts="/etc/kh"), known_hosts=tmp_path / "kh", remote_command="x")
    assert "UserKnownHostsFile=/etc/kh" in own


def test_posix_run_command_passes_hostile_values_literally(tmp_path: Path) -> None:
    """Run the generated command with a local sh: the value arrives intact and
    nothing in it is executed."""
    layout = RemoteLayout(root=str(tmp_path / "run dir 'quoted'"))
    (tmp_path / "run dir 'quoted'" / "work").mkdir(parents=True)
    script = Path(layout.work) / "run.sh"
    script.write_text('#!/bin/sh\nprintf "%s" "$HOSTILE"\n')
    script.chmod(0o755)

    # The values travel in the uploaded env file, never in a command line.
    Path(layout.env_file).write_bytes(PosixCommands.env_file({"HOSTILE": HOSTILE}))
    command = PosixCommands().run(layout, "run.sh", {"HOSTILE": HOSTILE})
    assert "touch pwned" not in command
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=False, cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == HOSTILE
    assert not list(tmp_path.rglob("pwned"))
    assert Path(layout.exit_file).read_text().strip() == "0"
    assert not Path(layout.env_file).exists()  # read, then removed


def test_posix_commands_quote_every_path() -> None:
    layout = RemoteLayout(root="/var/tmp/it's here")
    for command in (
        PosixCommands().upload(layout),
        PosixCommands().cleanup(layout),
        PosixCommands().collect(layout),
        PosixCommands().kill(layout, 1),
    ):
        inner = shlex.split(command)
        assert inner[:2] == ["sh", "-c"]
        assert len(inner) == 3  # one quoted script, nothing spilling out


def decode(command: str) -> str:
    encoded = command.rsplit(" ", 1)[1]
    return base64.b64decode(encoded).decode("utf-16-le")


def test_windows_commands_use_powershell_with_encoded_scripts() -> None:
    machine = linux(os="windows")
    commands = commands_for(machine)
    assert isinstance(commands, WindowsCommands)
    layout = RemoteLayout.for_run(machine, "r1")
    assert layout.root == "C:/Windows/Temp/batchctl/r1"

    run = commands.run(layout, machine.entrypoint, {"HOSTILE": HOSTILE})
    assert run.startswith("powershell -NoProfile -NonInteractive")
    assert "-EncodedCommand" in run
    script = decode(run)
    assert "run.ps1" in script
    assert f"$env:HOSTILE={ps_quote(HOSTILE)};" in script
    assert "Set-Location -LiteralPath 'C:/Windows/Temp/batchctl/r1/work'" in script
    assert "taskkill /T /F" in decode(commands.kill(layout, 5))
    assert "tar -xf -" in decode(commands.upload(layout))
    assert "tar -cf -" in decode(commands.collect(layout))


def test_powershell_quoting_doubles_single_quotes() -> None:
    assert ps_quote("it's") == "'it''s'"
    assert ps_quote("$(x) `y`") == "'$(x) `y`'"


def test_ssh_failures_are_classified() -> None:
    assert classify_ssh_failure("root@h: Permission denied (publickey).") == "ssh_auth"
    assert classify_ssh_failure("Host key verification failed.") == "ssh_auth"
    assert (
        classify_ssh_failure("ssh: connect to host h port 22: Connection refused") == "ssh_connect"
    )
    assert classify_ssh_failure("ssh: Could not resolve hostname nowhere") == "ssh_connect"
