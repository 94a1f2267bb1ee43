"""Start-up imports only what a command uses (timings live in bench/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import make_suite, write_plan


def imported_after(code: str, cwd: Path | None = None) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cwd
    )
    return set(result.stdout.strip().splitlines()[-1].split(" "))


def test_version_imports_neither_the_command_line_nor_the_engine() -> None:
    modules = imported_after("from batchctl.cli.entry import main\nmain(['--version'])")
    assert not {"typer", "pydantic", "httpx", "batchctl.engine.scheduler"} & modules


def test_status_without_an_inventory_does_not_load_the_http_client(workdir: Path) -> None:
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a}\n")
    code = "from batchctl.cli.entry import main\nmain(['run', 'plan.yaml', '--dry-run', '--json'])"
    modules = imported_after(code, cwd=workdir)
    assert "typer" in modules  # the probe did run a real command
    assert "httpx" not in modules


def test_only_report_loads_the_xml_parser(workdir: Path) -> None:
    make_suite(workdir / "suites", "a")
    write_plan(workdir, "version: 1\nentries:\n  - {name: a, dir: suites/a}\n")
    code = "from batchctl.cli.entry import main\nmain(['run', 'plan.yaml', '--dry-run', '--json'])"
    modules = imported_after(code, cwd=workdir)
    assert "batchctl.cli.report" in modules  # the command line was built
    assert not {"xml.etree.ElementTree", "pyexpat", "batchctl.model.junit"} & modules
