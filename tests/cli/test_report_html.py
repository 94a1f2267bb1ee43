"""batchctl report --html: the page of a real batch (passes, a failure whose
dependents are skipped with blame, a retry that passes, a timeout, hostile
names and output), opened in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    CliRunner,
    batchctl_process,
    make_suite,
    run_batchctl,
    run_shared_batch,
    start_held_batch,
    stop_processes_of,
    wait_until,
    write_plan,
)

# Fails the first time it runs (it leaves a marker outside the run), passes after.
FLAKY = """#!/bin/sh
if [ ! -e "$MARKERS/ran-once" ]; then
  touch "$MARKERS/ran-once"; echo 'first time unlucky'; exit 1
fi
echo 'passed this time'
"""
# Output that would be markup if it were not escaped.
HOSTILE_OUTPUT = """#!/bin/sh
echo '<script>document.title="pwned"</script>'
echo '</pre><img src="http://example.invalid/x.png" onerror="document.title=1">'
printf 'bell\\007 & done\\n'
exit 3
"""
# Timed out by its entry's timeout (TERM ends the sleep at once).
HANGS = "#!/bin/sh\necho 'hanging'\nexec sleep 120\n"

PLAN = """
version: 1
defaults:
  env: {{MARKERS: "{markers}"}}
entries:
  - {{name: build, dir: suites/pass}}
  - {{name: lib, dir: suites/pass, needs: [build]}}
  - {{name: broken, dir: suites/hostile, needs: [build]}}
  - {{name: after-broken, dir: suites/pass, needs: [broken]}}
  - {{name: after-after, dir: suites/pass, needs: [after-broken]}}
  - {{name: flaky, dir: suites/flaky, retries: 1, retry_on: [failed]}}
  - {{name: hangs, dir: suites/hangs, needs: [lib], timeout: 2s}}
  - {{name: m, dir: suites/pass, matrix: {{v: ["<b>&x", "1"]}}}}
"""
ITEMS = [
    "build",
    "lib",
    "broken",
    "after-broken",
    "after-after",
    "flaky",
    "hangs",
    "m[v=%3Cb%3E%26x]",
    "m[v=1]",
]


@dataclass(frozen=True)
class Batch:
    id: str
    state_dir: Path
    root: Path
    view: dict[str, Any]

    @property
    def attempts(self) -> int:
        return sum(len(item["history"]) + 1 for item in self.view["items"] if item.get("run_id"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batch]:
    """One finished batch of real local runs, for every test of this module."""
    root = tmp_path_factory.mktemp("html")
    state_dir, markers = root / "state", root / "markers"
    markers.mkdir()
    make_suite(root / "suites", "pass")
    make_suite(root / "suites", "flaky", FLAKY)
    make_suite(root / "suites", "hostile", HOSTILE_OUTPUT)
    make_suite(root / "suites", "hangs", HANGS)
    write_plan(root, PLAN.format(markers=markers))
    try:
        ran = run_shared_batch(root, extra_env={"BATCHCTL_KILL_GRACE": "1"})
        assert ran.code == 1, ran.stderr  # some items did not pass
        view = ran.json()["data"]["batch"]
        yield Batch(id=view["id"], state_dir=state_dir, root=root, view=view)
    finally:
        stop_processes_of(root)


def write_html(cli: CliRunner, batch: Batch, target: Path, *args: str) -> dict[str, Any]:
    result = cli(
        "report",
        batch.id,
        "--state-dir",
        str(batch.state_dir),
        "--html",
        str(target),
        "--json",
        *args,
    )
    assert result.code == 0, result.stderr
    data: dict[str, Any] = result.json()["data"]
    return data


def test_the_batch_is_as_the_page_expects(batch: Batch) -> None:
    outcomes = {item["name"]: item["outcome"] for item in batch.view["items"]}
    assert list(outcomes) == ITEMS
    assert outcomes["broken"] == "failed"
    assert outcomes["hangs"] == "timeout"
    assert outcomes["flaky"] == "passed"
    assert outcomes["after-after"] == "skipped"


def test_html_combines_with_junit_and_markdown_and_escapes_everything(
    cli: CliRunner, batch: Batch, tmp_path: Path
) -> None:
    html, junit, markdown = tmp_path / "r.html", tmp_path / "j.xml", tmp_path / "s.md"

    data = write_html(cli, batch, html, "--junit", str(junit), "--markdown", str(markdown))

    assert data["written"] == {"junit": str(junit), "markdown": str(markdown), "html": str(html)}
    assert junit.exists()
    assert markdown.exists()
    page = html.read_text()
    assert "<script>document.title" not in page
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert '<img src="http' not in page
    assert "bell\\x07 &amp; done" in page
    assert 'data-item="m[v=%3Cb%3E%26x]"' in page
    # Outside the state directory: absolute links to the logs.
    assert f'href="file://{batch.state_dir}/runs/' in page
    # Nothing on the page is fetched: no source attribute, no link off the machine.
    assert not re.search(r"<[^>]* src=", page)
    assert 'href="http' not in page


def test_html_inside_the_state_dir_links_logs_relatively(cli: CliRunner, batch: Batch) -> None:
    target = batch.state_dir / "reports" / "batch.html"
    target.parent.mkdir(exist_ok=True)

    write_html(cli, batch, target)

    page = target.read_text()
    assert 'href="../runs/' in page
    assert "file://" not in page


def test_the_same_file_twice_is_refused(cli: CliRunner, batch: Batch) -> None:
    result = cli(
        "report",
        batch.id,
        "--state-dir",
        str(batch.state_dir),
        "--markdown",
        "same.txt",
        "--html",
        "same.txt",
    )
    assert result.code == 2
    assert "--markdown and --html name the same file same.txt" in result.stderr


# -- in a real browser ------------------------------------------------------


def chromium() -> str:
    """Debian's Chromium (playwright cannot download its own here); with CI
    set, missing it fails the test: .ci/run installs it."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def test_the_page_in_chromium(cli: CliRunner, batch: Batch, tmp_path: Path) -> None:
    executable = chromium()
    from playwright.sync_api import ConsoleMessage, Request, sync_playwright

    page_path = tmp_path / "report.html"
    write_html(cli, batch, page_path)
    url = page_path.as_uri()
    requests: list[str] = []
    problems: list[str] = []

    with sync_playwright() as playwright:
        # Chromium keeps a profile and caches in HOME: give it one of its own.
        browser_home = tmp_path / "browser-home"
        browser_home.mkdir()
        browser = playwright.chromium.launch(
            executable_path=executable,
            env={
                **os.environ,
                "HOME": str(browser_home),
                "XDG_CONFIG_HOME": str(browser_home / ".config"),
                "XDG_CACHE_HOME": str(browser_home / ".cache"),
            },
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    problems.append(message.text)

            def on_request(request: Request) -> None:
                requests.append(request.url)

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", on_request)
            page.goto(url)
            page.wait_for_load_state("load")

            rows = page.eval_on_selector_all(
                "#items tbody tr", "rows => rows.map(row => row.dataset.item)"
            )
            assert rows == ITEMS
            bars = page.eval_on_selector_all(
                "#timeline g.run", "bars => bars.map(b => [b.dataset.item, b.dataset.attempt])"
            )
            assert len(bars) == batch.attempts
            assert ["flaky", "2"] in bars
            retries = page.eval_on_selector_all(
                "#timeline path.retry", "links => links.map(l => l.dataset.item)"
            )
            assert retries == ["flaky"]
            critical = page.eval_on_selector_all(
                "#graph g.node[data-critical=true]", "nodes => nodes.map(n => n.dataset.item)"
            )
            assert critical == ["build", "lib", "hangs"]
            blame = page.eval_on_selector_all(
                "#graph path.blame", "edges => edges.map(e => [e.dataset.from, e.dataset.to])"
            )
            assert sorted(blame) == [["broken", "after-after"], ["broken", "after-broken"]]
            assert page.title() != "pwned"
            assert page.locator("img").count() == 0
            tail = page.locator("pre").first.text_content() or ""
            assert '<script>document.title="pwned"</script>' in tail

            # The script sorts and filters the table.
            page.get_by_role("button", name="Duration").click()
            page.get_by_role("button", name="Duration").click()  # longest first
            first = page.eval_on_selector("#items tbody tr", "row => row.dataset.item")
            assert first == "hangs"
            page.fill("#filter-text", "after")
            visible = page.eval_on_selector_all(
                "#items tbody tr:not([hidden])", "rows => rows.map(row => row.dataset.item)"
            )
            assert visible == ["after-broken", "after-after"]
            page.fill("#filter-text", "")
            page.get_by_role("button", name="Zoom in").first.click()

            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
            sys.stdout.write(f"\nscreenshot of the HTML report: {screenshot}\n")

            # Without JavaScript: the same markup, the controls hidden.
            plain = browser.new_context(java_script_enabled=False).new_page()
            plain.on("request", on_request)
            plain.goto(url)
            assert plain.locator("#items tbody tr").count() == len(ITEMS)
            assert plain.locator("#timeline g.run").count() == batch.attempts
            assert not plain.locator("#controls").is_visible()
        finally:
            browser.close()

    assert problems == []
    assert set(requests) == {url}
    assert screenshot.stat().st_size > 0


def test_the_json_answer_names_the_page(cli: CliRunner, batch: Batch, tmp_path: Path) -> None:
    data = write_html(cli, batch, tmp_path / "r.html")
    assert data["written"]["html"] == str(tmp_path / "r.html")
    assert data["written"]["junit"] is None
    assert json.dumps(data)


def sim_fleet(machines: int, duration: str = "0s") -> str:
    return "machines:\n" + "".join(
        f"  - {{name: sim{index:04d}, transport: sim, tags: [local], slots: 1, "
        f"duration: {duration}, outcomes: {{failed: 0.1, error: 0.02, timeout: 0.02}}}}\n"
        for index in range(1, machines + 1)
    )


def sim_plan(items: int) -> str:
    """``items`` items: one the others need, a matrix of the rest but one
    (retried once when they fail), and one needing them all."""
    values = ", ".join(str(index) for index in range(1, items - 1))
    return (
        "version: 1\nentries:\n"
        "  - {name: setup, dir: suites/pass}\n"
        f"  - {{name: test, dir: suites/pass, needs: [setup], retries: 1, "
        f"retry_on: [failed, error], matrix: {{shard: [{values}]}}}}\n"
        "  - {name: final, dir: suites/pass, needs: [test]}\n"
    )


def test_a_thousand_item_simulated_batch_is_under_two_megabytes(
    cli: CliRunner, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_suite(workdir / "suites", "pass")
    write_plan(workdir, sim_plan(1000))
    monkeypatch.setenv("BATCHCTL_FLEET", str(write_plan(workdir, sim_fleet(100), "fleet.yaml")))
    ran = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir, timeout=120)
    assert ran.code == 1, ran.stderr  # some simulated runs failed
    view = ran.json()["data"]["batch"]
    assert len(view["items"]) == 1000

    batch = Batch(view["id"], Path(os.environ["BATCHCTL_STATE_DIR"]), workdir, view)
    page_path = workdir / "r.html"

    data = write_html(cli, batch, page_path)

    size = page_path.stat().st_size
    sys.stdout.write(f"\nHTML report of {len(view['items'])} simulated items: {size:,} bytes\n")
    assert size <= 2_000_000, size
    page = page_path.read_text()
    assert page.count('<g class="run ') == batch.attempts
    assert data["items"]["total"] == 1000


def test_an_unfinished_batch_is_drawn_as_it_stands(cli: CliRunner, workdir: Path) -> None:
    batch_id, release = start_held_batch(workdir)

    def outcomes() -> dict[str, str]:
        view = cli("status", batch_id, "--json").json()["data"]["batch"]
        return {item["name"]: item["outcome"] for item in view["items"]}

    try:
        wait_until(lambda: outcomes() == {"quick": "passed", "slow": "running", "after": "waiting"})
        result = cli("report", batch_id, "--html", "r.html", "--json")
    finally:
        release.touch()

    assert result.code == 0, result.stderr
    assert "is not finished" in result.stderr
    page = (workdir / "r.html").read_text()
    assert "not finished: reported as it stands" in page
    assert 'data-item="slow" data-attempt="1" data-status="running"' in page
    assert 'data-result="not_finished"' in page
    assert "Critical path so far" in page
    wait_until(lambda: outcomes()["after"] == "passed")


def test_an_unwritable_page_is_named_and_nothing_is_written(
    cli: CliRunner, batch: Batch, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    target = tmp_path / "missing" / "r.html"
    result = run_batchctl(
        "report",
        batch.id,
        "--state-dir",
        str(batch.state_dir),
        "--junit",
        str(junit),
        "--html",
        str(target),
    )
    assert result.code == 4, result.stderr
    assert result.stderr.startswith(f"batchctl: error: --html {target}: cannot write"), (
        result.stderr
    )
    assert "does not exist" in result.stderr
    assert not junit.exists()  # all or nothing


def test_watch_rewrites_the_page_until_the_batch_is_finished(cli: CliRunner, workdir: Path) -> None:
    batch_id, release = start_held_batch(workdir, with_dependent=False)
    page = workdir / "r.html"

    def page_shows(*parts: str) -> bool:
        text = page.read_text() if page.exists() else ""
        return all(part in text for part in parts)

    args = ("report", batch_id, "--html", str(page), "--watch", "--interval", "0.2", "--json")
    with batchctl_process(*args, cwd=workdir) as watching:
        try:
            wait_until(
                lambda: page_shows(
                    'data-status="running"', '<meta http-equiv="refresh" content="1">'
                )
            )
        finally:
            release.touch()
        out, err = watching.communicate(timeout=60)

    assert watching.returncode == 0, err
    assert json.loads(out)["data"]["done"] is True
    final = page.read_text()
    assert 'http-equiv="refresh"' not in final
    assert 'data-item="slow" data-attempt="1" data-status="succeeded"' in final
    assert "is not finished" not in err.decode()


def test_watch_needs_an_html_page(cli: CliRunner, batch: Batch) -> None:
    result = cli(
        "report", batch.id, "--state-dir", str(batch.state_dir), "--junit", "j.xml", "--watch"
    )
    assert result.code == 2
    assert "--watch rewrites an HTML page: it needs --html FILE" in result.stderr
