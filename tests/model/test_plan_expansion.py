"""Matrices and directory globs: one plan entry expanding into several items,
with their names, directories, environments and needs, and every way to get
one wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchctl.model.errors import InvalidPlan
from batchctl.model.plan import Plan, load_plan_text, missing_dir_problems


def load(text: str, base_dir: Path = Path("/plans")) -> Plan:
    return load_plan_text(
        textwrap.dedent(text).lstrip(),
        path="plan.yaml",
        base_dir=base_dir,
        source="inline",
        env_tag=None,
    )


def problems_of(text: str, base_dir: Path = Path("/plans")) -> list[str]:
    with pytest.raises(InvalidPlan) as caught:
        load(text, base_dir)
    return caught.value.problems


def make_dirs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


MATRIX = """
version: 1
defaults: {env: {py: default, LEVEL: "1"}}
entries:
  - name: test
    dir: suites/test
    matrix: {py: ["3.11", "3.12"], shard: [1, 2, 3]}
    env: {SUITE: unit}
  - name: report
    dir: suites/report
    needs: [test]
"""


def test_a_matrix_expands_to_one_item_per_combination_in_the_order_written() -> None:
    plan = load(MATRIX)

    assert [entry.name for entry in plan.entries] == [
        "test[py=3.11,shard=1]",
        "test[py=3.11,shard=2]",
        "test[py=3.11,shard=3]",
        "test[py=3.12,shard=1]",
        "test[py=3.12,shard=2]",
        "test[py=3.12,shard=3]",
        "report",
    ]
    first = plan.entries[0]
    # Its values join the entry's env and override defaults.env.
    assert first.env == {"py": "3.11", "shard": "1", "LEVEL": "1", "SUITE": "unit"}
    assert {entry.dir for entry in plan.entries[:6]} == {"suites/test"}
    assert first.abs_dir == "/plans/suites/test"
    # Needing the entry is needing every one of its items.
    assert plan.entries[-1].needs == tuple(entry.name for entry in plan.entries[:6])
    assert plan.origins == (0, 0, 0, 0, 0, 0, 1)


def test_keys_and_values_keep_the_order_written() -> None:
    plan = load(
        "version: 1\nentries:\n  - {name: t, dir: d, matrix: {shard: [2, 1], py: ['3.12']}}\n"
    )
    assert [entry.name for entry in plan.entries] == ["t[shard=2,py=3.12]", "t[shard=1,py=3.12]"]


def test_values_outside_the_name_characters_are_percent_encoded_in_the_name_only() -> None:
    plan = load(
        "version: 1\nentries:\n"
        "  - {name: db, dir: d, matrix: {IMAGE: ['postgres:15', 'a b,c=d', 'ü', '50%', '']}}\n"
    )
    assert [entry.name for entry in plan.entries] == [
        "db[IMAGE=postgres%3A15]",
        "db[IMAGE=a%20b%2Cc%3Dd]",
        "db[IMAGE=%C3%BC]",
        "db[IMAGE=50%25]",
        "db[IMAGE=]",
    ]
    assert [entry.env["IMAGE"] for entry in plan.entries] == [
        "postgres:15",
        "a b,c=d",
        "ü",
        "50%",
        "",
    ]


def test_a_glob_expands_to_each_matching_directory_sorted(tmp_path: Path) -> None:
    make_dirs(tmp_path, "tests/core", "tests/api", "tests/.hidden", "tests/zeta")
    (tmp_path / "tests" / "a-file").write_text("")
    plan = load(
        """
        version: 1
        entries:
          - {name: unit, dirs: tests/*/}
          - {name: all, dirs: tests/*, needs: [unit]}
          - {name: pick, dirs: "tests/[ac]*", needs: ["unit[api]"]}
        """,
        tmp_path,
    )

    names = [entry.name for entry in plan.entries]
    # Only directories, hidden ones left out as a shell's '*' does.
    assert names[:3] == ["unit[api]", "unit[core]", "unit[zeta]"]
    assert names[3:6] == ["all[api]", "all[core]", "all[zeta]"]
    assert names[6:] == ["pick[api]", "pick[core]"]
    assert [entry.dir for entry in plan.entries[:3]] == ["tests/api", "tests/core", "tests/zeta"]
    assert plan.entries[0].abs_dir == str(tmp_path / "tests" / "api")
    assert plan.entries[3].needs == ("unit[api]", "unit[core]", "unit[zeta]")
    assert plan.entries[6].needs == ("unit[api]",)
    assert plan.globbed == {0, 1, 2}


def test_a_glob_item_is_labelled_by_what_its_wildcards_matched(tmp_path: Path) -> None:
    make_dirs(tmp_path, "suites/api/tests", "suites/core/tests", "a/x", "b/x", "odd/my dir")
    plan = load(
        """
        version: 1
        entries:
          - {name: deep, dirs: suites/*/tests/}
          - {name: two, dirs: "[ab]/*/"}
          - {name: odd, dirs: odd/*/}
        """,
        tmp_path,
    )
    assert [entry.name for entry in plan.entries] == [
        "deep[api]",
        "deep[core]",
        # Two levels matched: the sub-path, its '/' encoded like any other.
        "two[a%2Fx]",
        "two[b%2Fx]",
        "odd[my%20dir]",
    ]
    assert plan.entries[0].dir == "suites/api/tests"


def test_a_glob_may_reach_outside_the_plan_directory_as_dir_may(tmp_path: Path) -> None:
    make_dirs(tmp_path, "tests/api", "plans")
    plan = load(
        f"""
        version: 1
        entries:
          - {{name: up, dirs: ../tests/*/}}
          - {{name: absolute, dirs: {tmp_path}/tests/*/}}
        """,
        tmp_path / "plans",
    )
    assert [(entry.name, entry.dir) for entry in plan.entries] == [
        ("up[api]", "../tests/api"),
        ("absolute[api]", f"{tmp_path}/tests/api"),
    ]
    assert plan.entries[0].abs_dir == str(tmp_path / "tests" / "api")


def test_a_glob_with_a_matrix_is_their_product_directory_first(tmp_path: Path) -> None:
    make_dirs(tmp_path, "tests/api", "tests/core")
    plan = load(
        """
        version: 1
        entries:
          - {name: unit, dirs: tests/*/, matrix: {py: ["3.11", "3.12"]}}
          - {name: pkg, dir: tests/api, matrix: {arch: [x86, arm]}, needs: [unit]}
        """,
        tmp_path,
    )
    names = [entry.name for entry in plan.entries]
    assert names == [
        "unit[api,py=3.11]",
        "unit[api,py=3.12]",
        "unit[core,py=3.11]",
        "unit[core,py=3.12]",
        "pkg[arch=x86]",
        "pkg[arch=arm]",
    ]
    assert plan.entries[2].dir == "tests/core"
    assert plan.entries[2].env == {"py": "3.11"}
    # An expanded dependent: each of its items needs every item named.
    assert plan.entries[4].needs == plan.entries[5].needs == tuple(names[:4])


def test_one_item_of_a_matrix_can_be_needed_by_its_name() -> None:
    plan = load(
        """
        version: 1
        entries:
          - {name: test, dir: d, matrix: {py: ["3.11", "3.12"]}}
          - {name: lint, dir: d}
          - {name: docs, dir: d, needs: ["test[py=3.12]", lint]}
        """
    )
    assert plan.entries[-1].needs == ("test[py=3.12]", "lint")


def test_the_hash_follows_matrix_values_and_globbed_directories(tmp_path: Path) -> None:
    make_dirs(tmp_path, "tests/api", "tests/core")
    text = """
        version: 1
        entries:
          - {name: unit, dirs: tests/*/, matrix: {py: ["3.11", "3.12"]}}
    """
    before = load(text, tmp_path).plan_hash

    assert load(text, tmp_path).plan_hash == before
    # Written differently, the same items: the same hash.
    assert (
        load(
            """
            version: 1
            entries:
              - matrix:
                  py: ['3.11', "3.12"]   # quoted either way
                dirs: "tests/*/"
                name: unit
            """,
            tmp_path,
        ).plan_hash
        == before
    )
    assert load(text.replace("3.12", "3.13"), tmp_path).plan_hash != before
    assert load(text.replace(', "3.12"', ""), tmp_path).plan_hash != before
    make_dirs(tmp_path, "tests/new")
    assert load(text, tmp_path).plan_hash != before
    (tmp_path / "tests" / "new").rmdir()
    assert load(text, tmp_path).plan_hash == before


def test_a_plain_plan_hashes_as_it_did() -> None:
    # Recorded before matrices existed: a plan without them keeps its batches.
    plan = load("version: 1\nentries:\n  - {name: a, dir: d}\n  - {name: b, dir: d, needs: [a]}\n")
    assert plan.plan_hash == "b5738907ec80a8be9dfbaf892ffbcdebc5b3adf98d66cacba2bb9bc1bdfc899a"


def test_a_missing_dir_is_reported_once_for_all_items_of_its_entry(tmp_path: Path) -> None:
    make_dirs(tmp_path, "present")
    plan = load(
        """
        version: 1
        entries:
          - {name: ok, dir: present}
          - {name: test, dir: gone, matrix: {py: ["3.11", "3.12"], shard: [1, 2]}}
        """,
        tmp_path,
    )
    assert missing_dir_problems(plan) == [
        f"plan.yaml: entry 'test' (#2): field 'dir': 'gone' does not exist ({tmp_path / 'gone'})"
    ]


ENTRY = "version: 1\nentries:\n  - {name: t, dir: d, %s}\n"

BAD_MATRICES = {
    "not-a-mapping": ("matrix: [a, b]", "field 'matrix': expected a mapping"),
    "empty": ("matrix: {}", "field 'matrix': is empty"),
    "empty-list": ("matrix: {py: []}", "field 'matrix.py': the list of values is empty"),
    "not-a-list": ("matrix: {py: '3.11'}", "field 'matrix.py': expected a list of values"),
    "bad-key": ("matrix: {1py: [a]}", "field 'matrix.1py': '1py' is not a valid environment"),
    "reserved-key": (
        "matrix: {BATCHCTL_ITEM: [a]}",
        "field 'matrix.BATCHCTL_ITEM': names starting with BATCHCTL_ are set by batchctl",
    ),
    "boolean": ("matrix: {DEBUG: [yes]}", "field 'matrix.DEBUG': values must be strings or"),
    "null": ("matrix: {X: [~]}", "field 'matrix.X': values must be strings or whole numbers"),
    "nested": ("matrix: {X: [[1]]}", "field 'matrix.X': values must be strings or whole numbers"),
    "float": ("matrix: {py: [3.10]}", "field 'matrix.py': 3.1 is a YAML number"),
    "duplicate": ("matrix: {shard: [1, '1']}", "field 'matrix.shard': '1' is listed twice"),
    "clash-with-env": (
        "matrix: {py: [a]}, env: {py: b}",
        "field 'matrix.py': is also set in 'env'",
    ),
    "too-many": (
        f"matrix: {{A: [{','.join(map(str, range(101)))}], B: [0, 1]}}",
        "field 'matrix': expands to 202 combinations",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MATRICES))
def test_a_bad_matrix_is_one_line_naming_file_entry_and_field(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small cap keeps the too-many case quick; the rule is the same.
    monkeypatch.setattr("batchctl.model.plan.MAX_ITEMS_PER_ENTRY", 200)
    fields, expected = BAD_MATRICES[case]
    problems = problems_of(ENTRY % fields)
    assert len(problems) == 1, problems
    assert problems[0].startswith("plan.yaml: entry 't' (#1): ")
    assert expected in problems[0]
    assert "\n" not in problems[0]


def test_the_cap_on_combinations_is_ten_thousand() -> None:
    hundred = ",".join(map(str, range(100)))
    assert len(load(ENTRY % f"matrix: {{A: [{hundred}], B: [{hundred}]}}").entries) == 10_000
    (problem,) = problems_of(ENTRY % f"matrix: {{A: [{hundred}], B: [{hundred}], C: [x, y]}}")
    assert "field 'matrix': expands to 20,000 combinations (at most 10,000 per entry)" in problem


def test_every_problem_of_a_matrix_is_listed() -> None:
    problems = problems_of(ENTRY % "matrix: {py: [], BATCHCTL_X: [1], ok: [1, 1]}")
    assert problems == [
        "plan.yaml: entry 't' (#1): field 'matrix.py': the list of values is empty",
        "plan.yaml: entry 't' (#1): field 'matrix.BATCHCTL_X': "
        "names starting with BATCHCTL_ are set by batchctl",
        "plan.yaml: entry 't' (#1): field 'matrix.ok': '1' is listed twice",
    ]


def test_a_name_too_long_for_a_file_name_is_refused() -> None:
    assert len(load(ENTRY % f"matrix: {{A: [{'x' * 250}]}}").entries[0].name) == 255
    (problem,) = problems_of(ENTRY % f"matrix: {{A: [{'x' * 251}]}}")
    assert "entry 't' (#1): field 'matrix': item name 't[A=xxx" in problem
    assert "would be 256 characters (at most 255)" in problem


BAD_GLOBS = {
    "matches-nothing": ("dirs: nothing/*/", "field 'dirs': 'nothing/*/' matches no directory"),
    "matches-only-files": ("dirs: 'tests/*.txt'", "field 'dirs': 'tests/*.txt' matches no dir"),
    "no-wildcard": ("dirs: tests/api", "field 'dirs': 'tests/api' has no wildcard"),
    "recursive": ("dirs: tests/**/", "field 'dirs': 'tests/**/': '**' (any depth) is not"),
    "empty": ("dirs: ' '", "field 'dirs': must not be empty"),
    "nul": ('dirs: "tests/*\\0"', "field 'dirs': must not contain a NUL character"),
    "not-a-string": ("dirs: [tests/*/]", "field 'dirs': Input should be a valid string"),
    "with-dir": ("dirs: tests/*/, dir: tests/api", "field 'dir/dirs': dir and dirs are mutually"),
}


@pytest.mark.parametrize("case", sorted(BAD_GLOBS))
def test_a_bad_glob_is_one_line_naming_file_entry_and_field(case: str, tmp_path: Path) -> None:
    make_dirs(tmp_path, "tests/api")
    (tmp_path / "tests" / "notes.txt").write_text("")
    fields, expected = BAD_GLOBS[case]
    problems = problems_of(f"version: 1\nentries:\n  - {{name: t, {fields}}}\n", tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("plan.yaml: entry 't' (#1): ")
    assert expected in problems[0]


def test_neither_dir_nor_dirs_is_required_dir() -> None:
    (problem,) = problems_of("version: 1\nentries:\n  - {name: t, matrix: {A: [1]}}\n")
    assert problem == (
        "plan.yaml: entry 't' (#1): field 'dir': is required (or 'dirs', a glob of directories)"
    )


def test_glob_times_matrix_over_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batchctl.model.plan.MAX_ITEMS_PER_ENTRY", 5)
    make_dirs(tmp_path, "t/a", "t/b", "t/c")
    (problem,) = problems_of(
        "version: 1\nentries:\n  - {name: u, dirs: t/*/, matrix: {A: [1, 2]}}\n", tmp_path
    )
    assert "entry 'u' (#1): field 'dirs': 3 directories x 2 matrix combinations make 6 items" in (
        problem
    )


NEEDS = """
version: 1
entries:
  - {name: test, dir: d, matrix: {py: ["3.11", "3.12"]}}
  - {name: lint, dir: d}
  - {name: broken, dir: d, matrix: {py: []}}
  - {name: x, dir: d, needs: %s}
"""


@pytest.mark.parametrize(
    ("needs", "expected"),
    [
        ("[tset]", "unknown entry 'tset' (did you mean 'test'?)"),
        ('["test[py=3.13]"]', "unknown item 'test[py=3.13]' of entry 'test' (did you mean"),
        ('["tets[py=3.11]"]', "unknown item 'tets[py=3.11]': no entry 'tets' (did you mean 'test"),
        ('["lint[a]"]', "unknown item 'lint[a]': entry 'lint' has no matrix or dirs"),
        ('[test, "test[py=3.11]"]', "'test[py=3.11]' is already needed through 'test'"),
        ('["test[py=3.11]", "test[py=3.11]"]', "'test[py=3.11]' is listed twice"),
        ("[x]", "an entry cannot need itself"),
        ('["x[a]"]', "an entry cannot need its own item 'x[a]'"),
    ],
)
def test_bad_needs_of_expanded_entries(needs: str, expected: str) -> None:
    problems = problems_of(NEEDS % needs)
    assert len(problems) == 2, problems
    assert problems[0].startswith("plan.yaml: entry 'broken' (#3): field 'matrix.py'")
    assert problems[1].startswith("plan.yaml: entry 'x' (#4): field 'needs': ")
    assert expected in problems[1]


def test_needing_an_item_of_an_entry_with_a_problem_adds_no_problem() -> None:
    problems = problems_of(NEEDS % '[broken, "broken[py=3.11]"]')
    assert len(problems) == 1, problems
    assert "entry 'broken' (#3)" in problems[0]


def test_a_cycle_through_one_item_is_a_cycle() -> None:
    (problem,) = problems_of(
        """
        version: 1
        entries:
          - {name: a, dir: d, matrix: {n: [1, 2]}, needs: [b]}
          - {name: b, dir: d, needs: ["a[n=2]"]}
        """
    )
    assert problem == "plan.yaml: entry 'a' (#1): field 'needs': dependency cycle a -> b -> a"


def test_every_problem_at_once_across_entries(tmp_path: Path) -> None:
    problems = problems_of(
        """
        version: 1
        entries:
          - {name: a, dirs: none/*/, matrix: {py: []}}
          - {name: b, dir: d, timeout: soon, matrix: {X: [1, 1]}}
          - {name: c, dir: d, needs: ["a[x]", nope]}
        """,
        tmp_path,
    )
    assert len(problems) == 5, problems
    for fragment in (
        "entry 'a' (#1): field 'matrix.py': the list of values is empty",
        "entry 'a' (#1): field 'dirs': 'none/*/' matches no directory",
        "entry 'b' (#2): field 'timeout'",
        "entry 'b' (#2): field 'matrix.X': '1' is listed twice",
        "entry 'c' (#3): field 'needs': unknown entry 'nope'",
    ):
        assert any(fragment in problem for problem in problems), (fragment, problems)


def test_a_plan_expanding_past_100000_items_is_refused() -> None:
    hundred = ",".join(map(str, range(100)))
    entries = "".join(
        f"  - {{name: e{n}, dir: d, matrix: {{A: [{hundred}], B: [{hundred}]}}}}\n"
        for n in range(11)
    )
    (problem,) = problems_of(f"version: 1\nentries:\n{entries}")
    assert problem == (
        "plan.yaml: field 'entries': the plan expands to 110,000 items "
        "(at most 100,000 once matrices and dirs are expanded)"
    )


def test_an_expanded_entry_needing_another_is_capped_at_a_million_links() -> None:
    thousand = ",".join(map(str, range(1000)))
    (problem,) = problems_of(
        f"""
        version: 1
        entries:
          - {{name: a, dir: d, matrix: {{A: [{thousand}]}}}}
          - {{name: b, dir: d, matrix: {{A: [{thousand}], B: [x, y]}}, needs: [a]}}
        """
    )
    assert problem == (
        "plan.yaml: entry 'b' (#2): field 'needs': 2,000 items each needing 1,000 make "
        "2,000,000 dependencies (at most 1,000,000 in a plan)"
    )
