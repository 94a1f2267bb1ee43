"""One batch view: run, status, cancel and retry answer with it under
``data.batch``, and ``--jq`` filters any --json answer."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import blocking_script, make_suite, run_batchctl, write_plan

PLAN = """
version: 1
entries:
  - {name: held, dir: suites/held}
  - {name: broken, dir: suites/broken}
"""


def test_run_status_cancel_and_retry_answer_with_the_same_batch_view(workdir: Path) -> None:
    gate = workdir / "gate"
    make_suite(workdir / "suites", "held", blocking_script(gate))
    make_suite(workdir / "suites", "broken", "#!/bin/sh\nexit 3\n")
    write_plan(workdir, PLAN)

    ran = run_batchctl("run", "plan.yaml", "--json", cwd=workdir)
    batch_id = ran.json()["data"]["batch"]["id"]
    answers = {
        "run": ran,
        "status": run_batchctl("status", batch_id, "--json", cwd=workdir),
        "cancel": run_batchctl("cancel", batch_id, "--json", cwd=workdir),
        "retry": run_batchctl("retry", batch_id, "--json", cwd=workdir),
    }
    gate.touch()
    final = run_batchctl("status", batch_id, "--wait", "--json", cwd=workdir)

    for command, answer in answers.items():
        assert answer.code == 0, (command, answer.stderr)
        batch = answer.json()["data"]["batch"]
        assert batch["id"] == batch_id, command
        assert [item["name"] for item in batch["items"]] == ["held", "broken"], command
    assert answers["run"].json()["data"]["resumed"] is False
    assert answers["cancel"].json()["data"]["batch"]["cancelled"] is True
    assert sorted(answers["retry"].json()["data"]["requeued"]) == ["broken", "held"]
    assert final.code == 1  # broken is broken still
    assert final.json()["data"]["batch"]["counts"] == {"passed": 1, "failed": 1}


def test_jq_filters_any_json_answer(workdir: Path) -> None:
    make_suite(workdir / "suites", "held")
    make_suite(workdir / "suites", "broken", "#!/bin/sh\nexit 3\n")
    write_plan(workdir, PLAN)
    waited = run_batchctl("run", "plan.yaml", "--wait", "--jq", ".data.batch.id", cwd=workdir)
    batch_id = waited.stdout.strip()

    # Strings as they are, one result a line; anything else as JSON. --jq
    # implies --json.
    names = run_batchctl(
        "status", batch_id, "--jq", '.data.batch.items[] | select(.outcome != "passed") | .name'
    )
    counts = run_batchctl("status", batch_id, "--json", "--jq=.data.batch.counts", cwd=workdir)
    listed = run_batchctl("list", "--jq", "[.data.batches[].id]", cwd=workdir)

    assert (waited.code, len(batch_id)) == (1, len("20261122-050000-3fa9c1"))
    assert (names.code, names.stdout) == (0, "broken\n")
    assert counts.stdout == '{"passed":1,"failed":1}\n'
    assert listed.stdout == f'["{batch_id}"]\n'


def test_a_jq_program_that_fails_is_invalid_input_and_prints_nothing(workdir: Path) -> None:
    make_suite(workdir / "suites", "held")
    write_plan(workdir, "version: 1\nentries:\n  - {name: held, dir: suites/held}\n")
    batch_id = run_batchctl("run", "plan.yaml", "--wait", "--jq", ".data.batch.id").stdout.strip()

    for program in (".data.batch.items[", ".data.batch.id | tonumber"):
        shown = run_batchctl("status", batch_id, "--jq", program, cwd=workdir)
        assert (shown.code, shown.stdout) == (2, ""), program
        error = shown.error()["error"]
        assert error["code"] == "invalid_input"
        assert error["message"].startswith("--jq: ")
    missing = run_batchctl("list", "--jq", cwd=workdir)
    assert missing.code == 2
    assert "--jq needs a jq program" in missing.error()["error"]["message"]
