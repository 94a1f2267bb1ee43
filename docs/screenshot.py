"""Draw docs/report.png, the README's picture of an HTML report.

A small real batch runs on this machine (`run --wait`, two local slots in a
temporary state dir): a build and a lint that pass, tests over a matrix,
one of which fails on its first attempt and passes on the retry, one that
fails and takes its dependent down, and one that times out. Then `report
--html` writes its page, and headless Chromium (Debian's /usr/bin/chromium,
driven by playwright) takes the picture.

    make screenshot            # or: .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"

PLAN = """\
version: 1
defaults:
  env_pass: [FLAKY_MARK]   # a run sees only the variables the plan names
entries:
  - {name: build, dir: suites/quick}
  - {name: lint, dir: suites/quick}
  - name: test
    dir: suites/test
    needs: [build]
    matrix: {shard: [1, 2, 3, 4]}
    retries: 1
    retry_on: [failed]
  - {name: integration, dir: suites/broken, needs: [build]}
  - {name: deploy, dir: suites/quick, needs: [test, integration]}
  - {name: soak, dir: suites/slow, timeout: 2s, needs: [lint]}
"""

SCRIPTS = {
    "quick": "#!/bin/sh\necho building...\nsleep 0.4\necho done\n",
    # Shard 3 fails once (a marker outside the run says it already did).
    "test": (
        '#!/bin/sh\necho "shard $shard"\nsleep 0.$shard\n'
        'if [ "$shard" = 3 ] && [ ! -e "$FLAKY_MARK" ]; then\n'
        '  touch "$FLAKY_MARK"; echo "connection reset by peer" >&2; exit 1\nfi\n'
    ),
    "broken": "#!/bin/sh\necho 'starting the database'\nsleep 0.3\n"
    "echo 'FAILED test_migrations.py::test_upgrade - assert 3 == 4' >&2\nexit 1\n",
    "slow": "#!/bin/sh\necho 'soaking'\nsleep 30\n",
}


def batchctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchctl", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("report.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="batchctl-screenshot-") as scratch:
        root = Path(scratch)
        for name, script in SCRIPTS.items():
            suite = root / "suites" / name
            suite.mkdir(parents=True)
            (suite / "run.sh").write_text(script)
            (suite / "run.sh").chmod(0o755)
        (root / "plan.yaml").write_text(PLAN)
        (root / "fleet.yaml").write_text(
            "machines:\n  - {name: box-1, transport: local, tags: [local], slots: 2}\n"
            "  - {name: box-2, transport: local, tags: [local], slots: 1}\n"
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("BATCHCTL_")}
        env |= {
            "BATCHCTL_STATE_DIR": str(root / "state"),
            "BATCHCTL_FLEET": str(root / "fleet.yaml"),
            "BATCHCTL_KILL_GRACE": "1",
            "BATCHCTL_RETRY_BASE": "0",
            "FLAKY_MARK": str(root / "flaky-once"),
        }
        ran = batchctl(
            "run",
            "plan.yaml",
            "--staging",
            "build-4711",
            "--wait",
            "--jq",
            ".data.batch.id",
            env=env,
            cwd=root,
        )
        if ran.returncode not in (0, 1) or not ran.stdout.strip():
            sys.exit(f"the batch did not run: {ran.stderr}")
        page = root / "report.html"
        written = batchctl("report", ran.stdout.strip(), "--html", str(page), env=env, cwd=root)
        if written.returncode != 0:
            sys.exit(f"report --html failed: {written.stderr}")
        browser_home = root / "browser-home"
        browser_home.mkdir()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                env={**os.environ, "HOME": str(browser_home)},
            )
            try:
                view = browser.new_page(viewport={"width": 1280, "height": 900})
                view.goto(page.as_uri())
                view.screenshot(path=str(args.out), full_page=False)
            finally:
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
