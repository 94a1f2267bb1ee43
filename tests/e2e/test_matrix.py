"""A matrix and a directory glob run for real: every item with its own values,
a dependent that starts only once every item it needs has passed, and the
bracketed names usable wherever an item is named."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import make_suite, run_batchctl, write_plan

# Each item writes its values where its artifacts are collected, and appends
# to a ledger when it starts and ends (O_APPEND: lines from concurrent runs
# never interleave). The last item holds on until the three others have
# ended, so a dependent that started too early would be seen starting before
# it ended.
MATRIX_SCRIPT = """#!/bin/sh
echo "start $BATCHCTL_ITEM" >> "$LEDGER"
printf '%s/%s' "$py" "$shard" > "$BATCHCTL_ARTIFACTS_DIR/values"
echo "values $py/$shard"
if [ "$BATCHCTL_ITEM" = "test[py=3.12,shard=2]" ]; then
  while [ "$(grep -c '^end test' "$LEDGER")" -lt 3 ]; do sleep 0.05; done
fi
echo "end $BATCHCTL_ITEM" >> "$LEDGER"
"""

LEDGER_SCRIPT = """#!/bin/sh
echo "start $BATCHCTL_ITEM" >> "$LEDGER"
echo "end $BATCHCTL_ITEM" >> "$LEDGER"
"""

MATRIX_ITEMS = [
    "test[py=3.11,shard=1]",
    "test[py=3.11,shard=2]",
    "test[py=3.12,shard=1]",
    "test[py=3.12,shard=2]",
]


def test_a_dependent_of_a_matrix_starts_after_every_item_passed(workdir: Path) -> None:
    ledger = workdir / "ledger"
    make_suite(workdir / "suites", "test", MATRIX_SCRIPT)
    make_suite(workdir / "suites", "report", LEDGER_SCRIPT)
    # Room for every item at once: only needs hold the dependent back.
    (workdir / "fleet.yaml").write_text(
        "machines:\n  - {name: local, transport: local, tags: [local], slots: 5}\n"
    )
    write_plan(
        workdir,
        """
        version: 1
        defaults: {env: {LEDGER: ledger-placeholder}}
        entries:
          - name: test
            dir: suites/test
            matrix: {py: ["3.11", "3.12"], shard: [1, 2]}
          - name: report
            dir: suites/report
            needs: [test]
        """.replace("ledger-placeholder", str(ledger)),
    )

    waited = run_batchctl(
        "run",
        "plan.yaml",
        "--staging",
        "s",
        "--wait",
        "--json",
        "--fleet",
        "fleet.yaml",
        cwd=workdir,
    )

    assert waited.code == 0, waited.stderr
    batch = waited.json()["data"]["batch"]
    items = {item["name"]: item for item in batch["items"]}
    assert list(items) == [*MATRIX_ITEMS, "report"]
    assert {item["outcome"] for item in items.values()} == {"passed"}
    assert items["report"]["needs"] == MATRIX_ITEMS
    for name in MATRIX_ITEMS:
        values = name.removeprefix("test[py=").removesuffix("]").replace(",shard=", "/")
        artifacts = Path(items[name]["run"]["artifacts_path"])
        assert (artifacts / "values").read_text() == values
    lines = ledger.read_text().splitlines()
    assert sorted(lines) == sorted(
        [f"{event} {name}" for name in [*MATRIX_ITEMS, "report"] for event in ("start", "end")]
    )
    report_started = lines.index("start report")
    assert all(lines.index(f"end {name}") < report_started for name in MATRIX_ITEMS), lines

    # The names work wherever an item is named: status, logs, the table.
    batch_id = batch["id"]
    one = run_batchctl("status", batch_id, "test[py=3.12,shard=1]", "--json", cwd=workdir)
    assert one.code == 0, one.stderr
    assert one.json()["data"]["name"] == "test[py=3.12,shard=1]"
    logs = run_batchctl("logs", batch_id, "test[py=3.12,shard=1]", cwd=workdir)
    assert logs.code == 0, logs.stderr
    assert logs.stdout == "values 3.12/1\n"
    table = run_batchctl("status", batch_id, cwd=workdir)
    assert table.code == 0, table.stderr
    rows = [line.split()[:2] for line in table.stdout.splitlines()]
    for name in [*MATRIX_ITEMS, "report"]:
        assert [name, "passed"] in rows, table.stdout
    # The entry is not an item; the answer says which items it stands for.
    entry = run_batchctl("status", batch_id, "test", cwd=workdir)
    assert entry.code == 3
    assert f"items of 'test': {', '.join(MATRIX_ITEMS)}" in entry.stderr


def test_a_glob_with_a_matrix_runs_each_directory_with_each_value(workdir: Path) -> None:
    script = '#!/bin/sh\necho "$(basename "$PWD") $MODE"\n'
    for name in ("api", "core"):
        make_suite(workdir / "tests", name, script)
    (workdir / "tests" / "api" / "marker").write_text("")
    write_plan(
        workdir,
        """
        version: 1
        entries:
          - {name: unit, dirs: tests/*/, matrix: {MODE: [fast, full]}}
        """,
    )

    waited = run_batchctl("run", "plan.yaml", "--wait", "--json", cwd=workdir)

    assert waited.code == 0, waited.stderr
    batch = waited.json()["data"]["batch"]
    assert [item["name"] for item in batch["items"]] == [
        "unit[api,MODE=fast]",
        "unit[api,MODE=full]",
        "unit[core,MODE=fast]",
        "unit[core,MODE=full]",
    ]
    for item in batch["items"]:
        log = Path(item["run"]["log_path"]).read_text()
        directory, mode = item["name"].removeprefix("unit[").removesuffix("]").split(",MODE=")
        # A fresh copy of the matched directory, with its own files.
        assert log.split()[1] == mode
        copied = Path(item["run"]["log_path"]).parent
        assert (directory == "api") == any(copied.rglob("marker")), item["name"]
