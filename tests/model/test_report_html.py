"""The HTML report's pure parts: escaping, lanes, ranks, the critical path,
and the size of the page of a large batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from batchctl.model.report import AttemptInput, ItemInput, build_report
from batchctl.model.report_html import (
    FAILURES_BUDGET,
    assign_lanes,
    critical_path,
    href,
    ranks,
    render_html,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
RUNS = "/home/ci-runner/.local/state/batchctl/runs"


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def attempt(
    number: int,
    start: float,
    end: float | None,
    *,
    status: str = "succeeded",
    machine: str = "box-1",
    tail: str | None = None,
) -> AttemptInput:
    return AttemptInput(
        attempt=number,
        run_id=f"run-{number}-{start}",
        machine=machine,
        status=status,
        exit_code=0 if status == "succeeded" else 1 if status == "failed" else None,
        started_at=at(start),
        ended_at=at(end) if end is not None else None,
        # As long as real ones: a state directory in a home, a run id of a batch.
        log_path=f"{RUNS}/20261123-120000-abcdef-{start:06.0f}-{number}/output.log",
        artifacts_path=f"{RUNS}/20261123-120000-abcdef-{start:06.0f}-{number}/artifacts",
        log_tail=tail,
    )


def item(name: str, *attempts: AttemptInput, needs: tuple[str, ...] = (), **kw: str) -> ItemInput:
    last = attempts[-1].status if attempts else "skipped"
    outcome = {"succeeded": "passed"}.get(last, last)
    fields: dict[str, str] = {"state": "dispatched" if attempts else "skipped", **kw}
    return ItemInput(
        name=name,
        selector="tag:local",
        outcome=outcome,
        final=last != "running",
        attempts=attempts,
        needs=needs,
        **fields,
    )


def page_of(*items: ItemInput, done: bool = True, link_base: str | None = None) -> str:
    report = build_report(
        batch_id="b-1", source="plan:plan.yaml", staging="s", done=done, items=items
    )
    return render_html(report, now=NOW, link_base=link_base)


class Elements(HTMLParser):
    """Every element of a page, with its attributes, as a browser parses them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    return parser


def test_hostile_names_and_logs_stay_text() -> None:
    hostile = 'x[a=<script>alert(1)</script>,b="onload=1%]'
    log = "</pre><script>alert(2)</script>\n<img src=x onerror=alert(3)>\n\"'&\x1b[31mred\x07"
    page = page_of(
        item(hostile, attempt(1, 0, 5, status="failed", tail=log)),
        item(
            "skipped-one",
            needs=(hostile,),
            error_code="dep_failed",
            blame=f"{hostile}#1",
        ),
    )

    found = parse(page)
    tags = [tag for tag, _ in found.elements]
    assert tags.count("script") == 1  # the page's own
    assert "img" not in tags
    for _, attrs in found.elements:
        assert not any(name.startswith("on") for name in attrs)
    text = "".join(found.text)
    assert "</pre><script>alert(2)</script>" in text
    assert "red\\x07" in text  # colour dropped, the bell visible
    assert "\x1b" not in page
    assert hostile in text
    items = [attrs["data-item"] for tag, attrs in found.elements if tag == "tr" and attrs]
    assert items == [hostile, "skipped-one"]
    # The skipped item is linked to the one it blames.
    blame = [
        attrs
        for tag, attrs in found.elements
        if tag == "path" and "blame" in (attrs.get("class") or "")
    ]
    assert [(attrs["data-from"], attrs["data-to"]) for attrs in blame] == [(hostile, "skipped-one")]


def test_links_are_relative_inside_the_state_dir_and_absolute_outside() -> None:
    assert href("/state/runs/r1/output.log", "/state/reports") == "../runs/r1/output.log"
    assert href("/state/runs/r1/output.log", None) == "file:///state/runs/r1/output.log"
    assert href("/s/runs/a b%/output.log", None) == "file:///s/runs/a%20b%25/output.log"


def test_lanes_are_taken_greedily_by_start_time() -> None:
    spans = [(10, 20), (0, 10), (5, 15), (12, 13), (20, 30)]
    # (0,10) lane 0; (5,15) lane 1; (10,20) lane 0 again (free at 10);
    # (12,13) lane 2 (0 busy to 20, 1 to 15); (20,30) lane 0.
    assert assign_lanes(spans) == [0, 0, 1, 2, 0]
    assert assign_lanes([]) == []


def test_the_timeline_has_a_bar_per_attempt_and_links_retries() -> None:
    page = page_of(
        item("a", attempt(1, 0, 10)),
        item(
            "b",
            attempt(1, 2, 4, status="failed", machine="box-2"),
            attempt(2, 5, 9, machine="box-1"),
        ),
        item("c", attempt(1, 12, None, status="running")),
        done=False,
    )
    found = parse(page)
    bars = [
        (attrs["data-item"], attrs["data-attempt"], attrs["data-status"])
        for tag, attrs in found.elements
        if tag == "g" and (attrs.get("class") or "").startswith("run ")
    ]
    assert sorted(bars) == [
        ("a", "1", "succeeded"),
        ("b", "1", "failed"),
        ("b", "2", "succeeded"),
        ("c", "1", "running"),
    ]
    retries = [
        attrs for tag, attrs in found.elements if tag == "path" and attrs.get("class") == "retry"
    ]
    assert [(attrs["data-item"], attrs["data-attempt"]) for attrs in retries] == [("b", "2")]
    # box-1 ran a and b#2 at once: two lanes; box-2 one.
    text = "".join(found.text)
    assert "box-1 · slot 2" in text
    assert "box-2 · slot" not in text
    assert "Critical path so far" in text


def test_ranks_are_the_longest_chain_from_a_root() -> None:
    needs = {"a": (), "b": ("a",), "c": ("a", "b"), "d": (), "e": ("c", "d")}
    assert ranks(needs) == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 3}


def test_the_critical_path_is_the_longest_chain_ending_at_the_last_finish() -> None:
    #   a(10) ─► b(5)  ─► d(1)
    #     └────► c(20) ─┘
    #   x(100), alone, ended before d.
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "x": ()}
    durations = {"a": 10, "b": 5, "c": 20, "d": 1, "x": 100}
    ends = {"a": 10, "b": 15, "c": 30, "d": 31, "x": 100}
    assert critical_path(needs, durations, {**ends, "x": 25}) == ["a", "c", "d"]
    # x finishing last makes it the whole path.
    assert critical_path(needs, durations, ends) == ["x"]
    # Equal run time: the need that ended later is the one waited for.
    assert critical_path(
        {"p": (), "q": (), "r": ("p", "q")}, {"p": 5, "q": 5, "r": 1}, {"p": 5, "q": 8, "r": 9}
    ) == ["q", "r"]
    # Items that did not run (skipped) are not on it.
    assert critical_path(needs, durations, {"a": 10, "b": 15}) == ["a", "b"]
    assert critical_path(needs, durations, {}) == []


def test_the_critical_path_is_marked_in_the_graph() -> None:
    page = page_of(
        item("a", attempt(1, 0, 10)),
        item("b", attempt(1, 10, 12), needs=("a",)),
        item("c", attempt(1, 10, 30, machine="box-2"), needs=("a",)),
        item("d", attempt(1, 30, 31), needs=("b", "c")),
    )
    found = parse(page)
    critical = [
        attrs["data-item"]
        for tag, attrs in found.elements
        if tag == "g" and attrs.get("data-critical") == "true"
    ]
    assert critical == ["a", "c", "d"]
    edges = [
        (attrs["data-from"], attrs["data-to"])
        for tag, attrs in found.elements
        if tag == "path" and "critical" in (attrs.get("class") or "").split()
    ]
    assert edges == [("a", "c"), ("c", "d")]


def test_a_thousand_failed_items_with_long_logs_stay_under_two_megabytes() -> None:
    """The worst case for size: every item failed, each with 30 long lines
    of output; the page keeps at most FAILURES_BUDGET bytes of failures."""
    line = "E" * 150 + "\n"
    items = [
        item(
            f"test[shard={index},py=3.11%]",
            attempt(
                1, index, index + 30, status="failed", machine=f"m{index % 50:03d}", tail=line * 30
            ),
            needs=(f"test[shard={index - 1},py=3.11%]",) if index % 10 else (),
        )
        for index in range(1000)
    ]
    page = page_of(*items)
    size = len(page.encode())
    assert size <= 2_000_000, size
    assert page.count("<pre>") <= FAILURES_BUDGET // 4_000
    assert "their log tails are left out to keep this page small" in page
