"""A batch's report as one self-contained HTML page (``report --html``): a
summary, a timeline of every attempt, the graph of needs with its critical
path, a table of the items and the tails of the failed items' logs.

Everything is generated here: inline CSS, inline SVG and a little inline
script, nothing fetched (a Content-Security-Policy forbids the page any
request). The page reads without the script (the table and the drawings
are plain markup; the script only sorts, filters and zooms) and without
colour (every bar and node carries its outcome as a word or a symbol and a
pattern). Every string that comes from the batch (item names, machines,
reasons, logs) is escaped where it is written.

Standard library only, and no I/O: ``engine.report`` gathers the batch,
``cli.report`` writes the file.
"""

from __future__ import annotations

import heapq
import html
import itertools
import math
import posixpath
import urllib.parse
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from batchctl.model import rules
from batchctl.model.junit import xml_text
from batchctl.model.report import FLAKY, NOT_FINISHED, AttemptInput, ItemInput, ItemReport, Report

# How a run's status reads without colour: a symbol in the bar, a word in
# its title and in the table.
STATUS_MARK = {
    "succeeded": "✓",
    "failed": "✗",
    "timeout": "◷",
    "error": "!",
    "interrupted": "⊘",
    "running": "…",
    "pending": "…",
}
# Results the table and the failures section treat as not passed.
BAD_RESULTS = frozenset({"failed", "error", "timeout", "interrupted", NOT_FINISHED})

# Geometry of the drawings, in SVG user units (pixels at zoom 1).
TIMELINE_WIDTH = 1000
LANE_LABEL_WIDTH = 170
LANE_HEIGHT = 20
LANE_GAP = 4
AXIS_HEIGHT = 24
NODE_WIDTH = 190
NODE_HEIGHT = 26
NODE_GAP_X = 70
NODE_GAP_Y = 10
# A rank with more items than this is drawn as several columns, so a batch
# of 1,000 independent items is not one column 30,000 pixels tall.
NODES_PER_COLUMN = 40
LABEL_CHARS = 26

# The page stays small for large batches (2 MB for 1,000 items, every one
# failed): each failed item's tail is cut to its last TAIL_CHARS characters,
# and once the failures' sections take FAILURES_BUDGET bytes, the remaining
# failed items are only linked from the table.
TAIL_CHARS = 4_000
FAILURES_BUDGET = 500_000
SUMMARY_TOP = 5
CRITICAL_ATTRIBUTE = ' data-critical="true"'


def esc(text: object) -> str:
    """Text (or an attribute value) as HTML carries it: markup characters
    escaped, colour sequences dropped and control characters written out
    visibly (``\\x07``), as the JUnit report does."""
    return html.escape(xml_text(str(text)), quote=True)


def href(path: str, base: str | None) -> str:
    """A link to a file of the state directory: relative to ``base`` (the
    directory of a report written inside the state directory, so the link
    survives moving the whole directory), else an absolute ``file:`` URL."""
    if base is not None and posixpath.isabs(path):
        return urllib.parse.quote(posixpath.relpath(path, base))
    return "file://" + urllib.parse.quote(path)


def _parse(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment) if moment else None


def assign_lanes(spans: Sequence[tuple[int, int]]) -> list[int]:
    """Lanes for runs of one machine, ``spans`` being (start, end): taken by
    start time (then as given), each run goes to the lowest lane free at its
    start (a lane is free once its last run ended), else to a new lane. Runs
    never overlap in a lane, and a machine's lanes are as many as it ever ran
    at once, its slots in use."""
    order = sorted(range(len(spans)), key=lambda index: (spans[index][0], index))
    lanes = [0] * len(spans)
    # Lanes in use as (free from, lane), and lanes free again, lowest first:
    # O(runs x log lanes), not runs x lanes (a machine of 1,000 slots).
    busy: list[tuple[int, int]] = []
    idle: list[int] = []
    count = 0
    for index in order:
        start, end = spans[index]
        while busy and busy[0][0] <= start:
            heapq.heappush(idle, heapq.heappop(busy)[1])
        if idle:
            lane = heapq.heappop(idle)
        else:
            lane, count = count, count + 1
        heapq.heappush(busy, (max(end, start), lane))
        lanes[index] = lane
    return lanes


def _topological(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """Items so that every item comes after what it needs (the plan has no
    cycles), in the given order otherwise. Needs naming no item are left out."""
    waiting = {name: sum(1 for need in wanted if need in needs) for name, wanted in needs.items()}
    dependents: dict[str, list[str]] = defaultdict(list)
    for name, wanted in needs.items():
        for need in wanted:
            if need in needs:
                dependents[need].append(name)
    ready = deque(name for name, count in waiting.items() if count == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return order


def ranks(needs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each item's rank for the layered drawing: the longest chain of needs
    from an item that needs nothing (rank 0) to it."""
    rank: dict[str, int] = {}
    for name in _topological(needs):
        rank[name] = max((rank[need] + 1 for need in needs[name] if need in rank), default=0)
    return rank


def critical_path(
    needs: Mapping[str, Sequence[str]],
    duration_ms: Mapping[str, int],
    end_ms: Mapping[str, int],
) -> list[str]:
    """The chain of needs, roots first, that ends at the item that finished
    last (``end_ms``: items that ran, by when their last attempt ended) and
    has the most run time (``duration_ms``: the time of all an item's
    attempts) of all the chains ending there. Between chains of equal time,
    the need that ended later is taken: it is the one the item waited for.
    Empty if nothing ran."""
    if not end_ms:
        return []
    best: dict[str, int] = {}
    previous: dict[str, str | None] = {}
    for name in _topological(needs):
        if name not in end_ms:
            continue
        ran = [need for need in needs[name] if need in best]
        before = max(ran, key=lambda need: (best[need], end_ms[need]), default=None)
        best[name] = duration_ms.get(name, 0) + (best[before] if before is not None else 0)
        previous[name] = before
    last: str | None = max(best, key=lambda name: (end_ms[name], best[name]))
    path = []
    while last is not None:
        path.append(last)
        last = previous[last]
    return path[::-1]


# -- gathering what the drawings show ------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One attempt on the timeline, in milliseconds from the batch's start."""

    item: str
    attempt: AttemptInput
    machine: str
    start_ms: int
    end_ms: int
    running: bool
    lane: int = 0

    @property
    def status(self) -> str:
        return "running" if self.running else self.attempt.status


@dataclass(frozen=True)
class Timeline:
    bars: tuple[Bar, ...]
    lanes: dict[str, int]  # machine -> how many lanes
    origin: datetime | None
    span_ms: int
    undrawn: int  # attempts with no time to draw them at


def timeline(items: Iterable[ItemInput], now: datetime) -> Timeline:
    """Every attempt that started (or ended) as a bar; a run still going
    ends at ``now``. The origin is the first start, the span ends at the
    last end."""
    timed: list[tuple[str, AttemptInput, datetime, datetime, bool]] = []
    undrawn = 0
    for item in items:
        for attempt in item.attempts:
            start = _parse(attempt.started_at)
            end = _parse(attempt.ended_at)
            running = end is None and attempt.status not in rules.TERMINAL_STATUSES
            if start is None:
                if end is None:
                    undrawn += 1
                    continue
                start = end
            if end is None:
                end = now if running else start
            timed.append((item.name, attempt, start, end, running))
    if not timed:
        return Timeline((), {}, None, 1, undrawn)
    origin = min(start for _, _, start, _, _ in timed)
    last = max(end for _, _, _, end, _ in timed)

    def ms(moment: datetime) -> int:
        return round((moment - origin).total_seconds() * 1000)

    by_machine: dict[str, list[Bar]] = defaultdict(list)
    for name, attempt, start, end, running in timed:
        machine = attempt.machine or "(no machine)"
        by_machine[machine].append(
            Bar(name, attempt, machine, ms(start), max(ms(start), ms(end)), running)
        )
    bars: list[Bar] = []
    lanes: dict[str, int] = {}
    for machine in sorted(by_machine):
        runs = by_machine[machine]
        assigned = assign_lanes([(bar.start_ms, bar.end_ms) for bar in runs])
        lanes[machine] = max(assigned) + 1
        bars += [
            Bar(bar.item, bar.attempt, machine, bar.start_ms, bar.end_ms, bar.running, lane)
            for bar, lane in zip(runs, assigned, strict=True)
        ]
    return Timeline(tuple(bars), lanes, origin, max(1, ms(last)), undrawn)


def seconds_text(milliseconds: int) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``1h02m``."""
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _tick_step(span_ms: int) -> int:
    """A round step (1, 2 or 5 times a power of ten, in milliseconds) giving
    at most ten ticks."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if span_ms / (step * factor) <= 10:
                return step * factor
        step *= 10


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


# -- the page -------------------------------------------------------------------

CSS = """
:root{--pass:#2e7d32;--fail:#c62828;--timeout:#ef6c00;--error:#6a1b9a;--int:#546e7a;
--run:#1565c0;--skip:#9e9e9e;--crit:#ffb300}
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f5f5f5}td.num{text-align:right}
.r{font-weight:600}.r-passed{color:var(--pass)}.r-failed{color:var(--fail)}
.r-timeout{color:var(--timeout)}.r-error{color:var(--error)}.r-interrupted{color:var(--int)}
.r-skipped{color:#616161}.r-flaky{color:#ad8b00}.r-not_finished{color:var(--run)}
.scroll{overflow:auto;max-height:80vh;border:1px solid #eee}
svg text{font:11px system-ui,sans-serif}
.run rect{stroke:#212121;stroke-width:.5}.run.crit rect{stroke:var(--crit);stroke-width:2.5}
.run text{fill:#fff;pointer-events:none}.run.s-running text,.run.s-pending text{fill:#0d47a1}
.retry{stroke:#424242;stroke-dasharray:3 2;fill:none}
.lane-label{fill:#424242}.grid{stroke:#e0e0e0}.lane-bg{fill:#fafafa}
.edge{stroke:#9e9e9e;fill:none;marker-end:url(#arrow)}.edge.critical{stroke:var(--crit);stroke-width:3}
.edge.blame{stroke:var(--fail);stroke-dasharray:5 3}
.node rect{fill:#fff;stroke:#757575}.node.critical rect{stroke:var(--crit);stroke-width:3}
.node text{fill:#212121}
pre{background:#263238;color:#eceff1;padding:.6em;overflow:auto;max-height:24em}
.controls{margin:.5em 0}th button{font:inherit;font-weight:600;border:0;background:none;
cursor:pointer;padding:0}
"""

# Sorting, filtering and zooming; everything it shows comes from the page
# as text (textContent, dataset), never as markup.
SCRIPT = """
(function(){
var table=document.getElementById('items');var body=table.tBodies[0];
var heads=table.tHead.rows[0].cells;
Array.prototype.forEach.call(heads,function(th,col){
  var b=document.createElement('button');b.type='button';b.textContent=th.textContent;
  th.textContent='';th.appendChild(b);th.setAttribute('aria-sort','none');
  b.addEventListener('click',function(){
    var asc=th.getAttribute('aria-sort')!=='ascending';
    Array.prototype.forEach.call(heads,function(h){h.setAttribute('aria-sort','none');});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[col],y=b.cells[col];
      var p=x.dataset.sort,q=y.dataset.sort,r;
      if(p!==undefined&&q!==undefined){r=Number(p)-Number(q);}
      else{r=x.textContent.localeCompare(y.textContent);}
      return asc?r:-r;});
    rows.forEach(function(row){body.appendChild(row);});
  });
});
var controls=document.getElementById('controls');controls.hidden=false;
var text=document.getElementById('filter-text'),result=document.getElementById('filter-result');
function filter(){
  var t=text.value.toLowerCase(),r=result.value;
  Array.prototype.forEach.call(body.rows,function(row){
    var ok=(!t||row.dataset.item.toLowerCase().indexOf(t)>=0)&&(!r||row.dataset.result===r);
    row.hidden=!ok;});
}
text.addEventListener('input',filter);result.addEventListener('change',filter);
document.querySelectorAll('[data-zoom]').forEach(function(box){
  var svg=box.querySelector('svg');var w=Number(svg.getAttribute('width'));
  var h=Number(svg.getAttribute('height'));var z=1;
  box.previousElementSibling.hidden=false;
  box.previousElementSibling.querySelectorAll('button').forEach(function(b){
    b.addEventListener('click',function(){
      z=b.dataset.z==='in'?z*1.5:b.dataset.z==='out'?z/1.5:1;
      svg.setAttribute('width',String(w*z));svg.setAttribute('height',String(h*z));});
  });
});
})();
"""

PATTERNS = """<defs>
<pattern id="p-succeeded" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#2e7d32"/></pattern>
<pattern id="p-failed" width="6" height="6" patternUnits="userSpaceOnUse"
 patternTransform="rotate(45)"><rect width="6" height="6" fill="#c62828"/>
<rect width="2" height="6" fill="#8e0000"/></pattern>
<pattern id="p-timeout" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#ef6c00"/><path d="M0 0L6 6M6 0L0 6" stroke="#a33c00"/></pattern>
<pattern id="p-error" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#6a1b9a"/><circle cx="3" cy="3" r="1.2" fill="#e1bee7"/></pattern>
<pattern id="p-interrupted" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#546e7a"/><rect width="6" height="2" fill="#29434e"/></pattern>
<pattern id="p-running" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#bbdefb"/></pattern>
<pattern id="p-pending" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#bbdefb"/></pattern>
<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8"
 markerUnits="userSpaceOnUse"
 orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#757575"/></marker>
</defs>"""


def _clock(moment: str | None) -> str:
    """A run's time of day, to the millisecond (the page's summary gives the
    date): titles of 1,000 bars stay short."""
    parsed = _parse(moment)
    if parsed is None:
        return "?"
    return f"{parsed:%H:%M:%S}.{parsed.microsecond // 1000:03d}"


def _bar_title(bar: Bar) -> str:
    attempt = bar.attempt
    how = "still running" if bar.running else f"{attempt.status} ({attempt.how})"
    exit_code = attempt.exit_code if attempt.exit_code is not None else "-"
    return (
        f"{bar.item} attempt {attempt.attempt} on {bar.machine}: {how}\n"
        f"{_clock(attempt.started_at)} to {_clock(attempt.ended_at)} "
        f"({seconds_text(bar.end_ms - bar.start_ms)}), exit code {exit_code}\nrun {attempt.run_id}"
    )


def _timeline_svg(line: Timeline, critical: frozenset[str]) -> str:
    lane_y: dict[tuple[str, int], int] = {}
    y = AXIS_HEIGHT
    labels = []
    for machine, count in line.lanes.items():
        for lane in range(count):
            lane_y[(machine, lane)] = y
            name = f"{machine} · slot {lane + 1}" if count > 1 else machine
            labels.append(
                f'<rect class="lane-bg" x="{LANE_LABEL_WIDTH}" y="{y}" width="{TIMELINE_WIDTH}" '
                f'height="{LANE_HEIGHT}"/><text class="lane-label" x="4" y="{y + 14}">'
                f"{esc(_short(name, 28))}<title>{esc(name)}</title></text>"
            )
            y += LANE_HEIGHT + LANE_GAP
    height = y + 4
    width = LANE_LABEL_WIDTH + TIMELINE_WIDTH + 40  # room for the last tick's label
    scale = TIMELINE_WIDTH / line.span_ms
    step = _tick_step(line.span_ms)
    ticks = []
    for at in range(0, line.span_ms + 1, step):
        x = LANE_LABEL_WIDTH + at * scale
        ticks.append(
            f'<line class="grid" x1="{x:.1f}" y1="{AXIS_HEIGHT - 4}" x2="{x:.1f}" y2="{height}"/>'
            f'<text x="{x + 2:.1f}" y="{AXIS_HEIGHT - 8}">{seconds_text(at)}</text>'
        )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="timeline-title">'
        f'<title id="timeline-title">Timeline: {len(line.bars)} runs on '
        f"{sum(line.lanes.values())} machine slots</title>",
        PATTERNS,
        *labels,
        *ticks,
    ]
    ends: dict[tuple[str, int], tuple[float, int]] = {}
    for bar in line.bars:
        top = lane_y[(bar.machine, bar.lane)]
        x = LANE_LABEL_WIDTH + bar.start_ms * scale
        w = max(2.0, (bar.end_ms - bar.start_ms) * scale)
        ends[(bar.item, bar.attempt.attempt)] = (x + w, top + LANE_HEIGHT // 2)
        status = bar.status
        mark = STATUS_MARK.get(status, "?")
        label = f"{mark} {bar.item}#{bar.attempt.attempt}"
        fits = int((w - 4) / 6.5)
        text = (
            f'<text x="{x + 3:.1f}" y="{top + 14}">{esc(_short(label, fits))}</text>'
            if fits >= 3
            else ""
        )
        classes = f"run s-{status}" + (" crit" if bar.item in critical else "")
        parts.append(
            f'<g class="{classes}" data-item="{esc(bar.item)}" '
            f'data-attempt="{bar.attempt.attempt}" data-status="{status}">'
            f"<title>{esc(_bar_title(bar))}</title>"
            f'<rect x="{x:.1f}" y="{top}" width="{w:.1f}" height="{LANE_HEIGHT}" '
            f'fill="url(#p-{status})"/>{text}</g>'
        )
    # A retry is linked to the attempt before it: a dashed line from where
    # that one ended to where this one started.
    for bar in line.bars:
        before = ends.get((bar.item, bar.attempt.attempt - 1))
        if before is None:
            continue
        x2 = LANE_LABEL_WIDTH + bar.start_ms * scale
        y2 = lane_y[(bar.machine, bar.lane)] + LANE_HEIGHT // 2
        parts.append(
            f'<path class="retry" data-item="{esc(bar.item)}" '
            f'data-attempt="{bar.attempt.attempt}" d="M{before[0]:.1f} {before[1]}L{x2:.1f} {y2}">'
            f"<title>{esc(bar.item)}: attempt {bar.attempt.attempt} retries attempt "
            f"{bar.attempt.attempt - 1}</title></path>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _blamed(item: ItemInput) -> str | None:
    """The item a skipped item blames (``build#2`` names build's attempt 2)."""
    if item.state != rules.SKIPPED or not item.blame:
        return None
    return item.blame.rpartition("#")[0] or item.blame


def _graph_svg(inputs: Sequence[ItemInput], results: Mapping[str, str], path: Sequence[str]) -> str:
    needs = {item.name: item.needs for item in inputs}
    rank = ranks(needs)
    # Each item's rank and its place in it (plan order); a rank takes as
    # many columns as NODES_PER_COLUMN needs for its items.
    place: dict[str, tuple[int, int]] = {}
    per_rank: Counter[int] = Counter()
    for item in inputs:
        r = rank.get(item.name, 0)
        place[item.name] = (r, per_rank[r])
        per_rank[r] += 1
    offset: dict[int, int] = {}
    column = 0
    for r in sorted(per_rank):
        offset[r] = column
        column += -(-per_rank[r] // NODES_PER_COLUMN)
    rows = min(NODES_PER_COLUMN, max(per_rank.values(), default=1))
    width = column * (NODE_WIDTH + NODE_GAP_X) + 10
    height = rows * (NODE_HEIGHT + NODE_GAP_Y) + 10
    xy: dict[str, tuple[int, int]] = {}
    for name, (r, index) in place.items():
        col = offset[r] + index // NODES_PER_COLUMN
        xy[name] = (
            5 + col * (NODE_WIDTH + NODE_GAP_X),
            5 + (index % NODES_PER_COLUMN) * (NODE_HEIGHT + NODE_GAP_Y),
        )
    on_path = set(itertools.pairwise(path))
    critical = set(path)
    blamed = {item.name: who for item in inputs if (who := _blamed(item)) in xy}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="graph-title">'
        f'<title id="graph-title">Needs between items; the critical path: '
        f"{esc(' → '.join(path) or 'none')}</title>{PATTERNS}"
    ]

    def edge(source: str, target: str, classes: str, title: str) -> str:
        x1, y1 = xy[source]
        x2, y2 = xy[target]
        x1, y1, y2 = x1 + NODE_WIDTH, y1 + NODE_HEIGHT // 2, y2 + NODE_HEIGHT // 2
        bend = max(20, (x2 - x1) // 2)
        return (
            f'<path class="{classes}" data-from="{esc(source)}" data-to="{esc(target)}" '
            f'd="M{x1} {y1}C{x1 + bend} {y1} {x2 - bend} {y2} {x2} {y2}">'
            + (f"<title>{esc(title)}</title>" if title else "")
            + "</path>"
        )

    for item in inputs:
        for need in item.needs:
            if need not in xy:
                continue
            # Only the edges that say more than the nodes at their ends have
            # a title: a page of 1,000 items stays small.
            classes = "edge"
            title = ""
            if (need, item.name) in on_path:
                classes += " critical"
                title = f"{item.name} needs {need} (critical path)"
            if blamed.get(item.name) == need:
                classes += " blame"
                title = f"{item.name} needs {need}; skipped because of {item.blame}"
            parts.append(edge(need, item.name, classes, title))
    for item in inputs:
        who = blamed.get(item.name)
        if who is not None and who not in item.needs:
            parts.append(
                edge(who, item.name, "edge blame", f"{item.name} skipped because of {item.blame}")
            )
    for item in inputs:
        x, y = xy[item.name]
        result = results[item.name]
        is_critical = item.name in critical
        words = [item.name, result]
        if is_critical:
            words.append("on the critical path")
        if item.blame and item.state == rules.SKIPPED:
            words.append(f"because of {item.blame}")
        label = ("★ " if is_critical else "") + item.name
        parts.append(
            f'<g class="node r-{result}{" critical" if is_critical else ""}" '
            f'data-item="{esc(item.name)}"{CRITICAL_ATTRIBUTE if is_critical else ""}>'
            f"<title>{esc(', '.join(words))}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="4"/>'
            f'<text x="{x + 5}" y="{y + 17}">{esc(_short(label, LABEL_CHARS - 6))} '
            f'<tspan class="r r-{result}">{esc(result)}</tspan></text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _duration(item: ItemInput) -> int:
    return sum(attempt.duration_ms for attempt in item.attempts)


def _end_ms(item: ItemInput, origin: datetime | None) -> int | None:
    ends = [_parse(attempt.ended_at) for attempt in item.attempts]
    known = [end for end in ends if end is not None]
    if not known or origin is None:
        return None
    return round((max(known) - origin).total_seconds() * 1000)


def _result_badge(result: str) -> str:
    return f'<span class="r r-{esc(result)}">{esc(result)}</span>'


def _summary(
    report: Report,
    line: Timeline,
    inputs: Sequence[ItemInput],
    now: datetime,
    index: Mapping[str, int],
) -> list[str]:
    results = report.item_results()
    attempts = sum(len(item.attempts) for item in inputs)
    slowest = sorted(inputs, key=lambda item: -_duration(item))[:SUMMARY_TOP]
    failures: Counter[str] = Counter(
        attempt.machine or "(no machine)"
        for item in inputs
        for attempt in item.attempts
        if attempt.status in rules.TERMINAL_STATUSES and attempt.status != rules.SUCCEEDED
    )
    state = "finished" if report.done else "not finished: reported as it stands"
    out = [
        f"<h1>batchctl report: batch <code>{esc(report.batch_id)}</code></h1>",
        '<section aria-labelledby="summary"><h2 id="summary">Summary</h2>',
        f"<p>{esc(report.source)}, staging <code>{esc(report.staging or '-')}</code>; "
        f"the batch is <strong>{esc(state)}</strong>; written {esc(now.isoformat())}.</p>",
        '<ul class="counts">',
        f"<li>{len(report.items)} items, {attempts} runs (attempts)</li>",
        *(f"<li>{_result_badge(result)}: {count}</li>" for result, count in results.items()),
        "</ul>",
    ]
    if line.origin is not None:
        out.append(
            f"<p>Wall time (first start to last end): <strong>{seconds_text(line.span_ms)}"
            f"</strong>, from {esc(line.origin.isoformat())}.</p>"
        )
    if slowest and _duration(slowest[0]) > 0:
        out.append("<p>Slowest items (time of all their attempts):</p><ol>")
        out += [
            f'<li><a href="#item-{index[item.name]}">{esc(item.name)}</a> '
            f"{seconds_text(_duration(item))}</li>"
            for item in slowest
            if _duration(item) > 0
        ]
        out.append("</ol>")
    if failures:
        out.append("<p>Machines with the most runs that did not pass:</p><ol>")
        out += [
            f"<li>{esc(machine)}: {count}</li>"
            for machine, count in failures.most_common(SUMMARY_TOP)
        ]
        out.append("</ol>")
    out.append("</section>")
    return out


def _link(path: str | None, base: str | None, text: str) -> str:
    if not path:
        return ""
    return f'<a href="{esc(href(path, base))}">{esc(text)}</a>'


def _table(
    items: Sequence[tuple[ItemReport, ItemInput]], base: str | None, failed: set[str]
) -> list[str]:
    results = sorted({report.result for report, _ in items})
    options = "".join(f'<option value="{esc(r)}">{esc(r)}</option>' for r in results)
    out = [
        '<section aria-labelledby="items-title"><h2 id="items-title">Items</h2>',
        '<div id="controls" class="controls" hidden><label>Item name contains '
        '<input id="filter-text" type="search"></label> <label>Result '
        f'<select id="filter-result"><option value="">any</option>{options}</select></label>'
        "</div>",
        '<table id="items"><caption>Every item of the batch, with its last attempt'
        "</caption><thead><tr>"
        + "".join(
            f'<th scope="col">{name}</th>'
            for name in (
                "Item",
                "Result",
                "Duration",
                "Machine",
                "Attempts",
                "Flaky",
                "Reason",
                "Log",
                "Artifacts",
            )
        )
        + "</tr></thead><tbody>",
    ]
    for number, (report, item) in enumerate(items):
        last = item.attempts[-1] if item.attempts else None
        duration = _duration(item)
        name = esc(report.name)
        anchor = f' <a href="#failure-{number}">log tail</a>' if report.name in failed else ""
        out.append(
            f'<tr id="item-{number}" data-item="{name}" data-result="{esc(report.result)}">'
            f'<th scope="row">{name}</th><td>{_result_badge(report.result)}{anchor}</td>'
            f'<td class="num" data-sort="{duration}">{seconds_text(duration)}</td>'
            f"<td>{esc(report.machine or '')}</td>"
            f'<td class="num" data-sort="{report.attempts}">{report.attempts}</td>'
            f"<td>{'yes' if report.result == FLAKY else ''}</td><td>{esc(report.reason)}</td>"
            f"<td>{_link(last.log_path if last else None, base, 'log')}</td>"
            f"<td>{_link(last.artifacts_path if last else None, base, 'artifacts')}</td></tr>"
        )
    out.append("</tbody></table></section>")
    return out


def _failures(
    items: Sequence[tuple[ItemReport, ItemInput]], base: str | None
) -> tuple[list[str], set[str]]:
    """A section per item that did not pass, with its last attempt's log
    tail, until FAILURES_BUDGET bytes are spent; the rest are counted (the
    table links their logs)."""
    out = [
        '<section aria-labelledby="failures-title"><h2 id="failures-title">'
        "Failed items: the end of their logs</h2>"
    ]
    shown: set[str] = set()
    left_out = 0
    budget = FAILURES_BUDGET
    for number, (report, item) in enumerate(items):
        if report.result not in BAD_RESULTS or not item.attempts:
            continue
        last = item.attempts[-1]
        tail = last.log_tail or ""
        if len(tail) > TAIL_CHARS:
            tail = "…" + tail[-TAIL_CHARS:]
        name = esc(report.name)
        section = (
            f'<section id="failure-{number}" aria-label="{name} log tail"><h3>{name}#'
            f"{last.attempt} on {esc(last.machine or '?')}: {_result_badge(report.result)} "
            f"({esc(last.how)})</h3><p>{_link(last.log_path, base, 'whole log')} "
            f"{_link(last.artifacts_path, base, 'artifacts')}</p>"
            + (f"<pre>{esc(tail)}</pre>" if tail else "<p>(no output)</p>")
            + "</section>"
        )
        if len(section) > budget:
            left_out += 1
            continue
        budget -= len(section)
        shown.add(report.name)
        out.append(section)
    if left_out:
        out.append(
            f"<p>{left_out} more items did not pass; their log tails are left out to keep this "
            "page small. The table links their logs.</p>"
        )
    elif not shown:
        out.append("<p>No item failed.</p>")
    out.append("</section>")
    return out, shown


def render_html(
    report: Report,
    *,
    now: datetime,
    link_base: str | None = None,
    reload_s: float | None = None,
) -> str:
    """The report as one HTML page. ``now`` is when it is written (a run
    still going is drawn up to it); ``link_base`` the directory the page is
    written to when that is inside the state directory (links to logs and
    artifacts are then relative), else None (absolute ``file:`` links);
    ``reload_s``, for a page that will be written again (``--watch``), how
    often the browser reloads it. ``report`` is one ``build_report`` made:
    it draws from the attempts and needs it keeps in ``inputs``."""
    inputs = report.inputs
    pairs = list(zip(report.items, inputs, strict=True))
    line = timeline(inputs, now)
    ended = {item.name: end for item in inputs if (end := _end_ms(item, line.origin)) is not None}
    path = critical_path(
        {item.name: item.needs for item in inputs},
        {item.name: _duration(item) for item in inputs},
        ended,
    )
    results = {report_item.name: report_item.result for report_item in report.items}
    # Anchors are by position: an item's name may hold characters a URL
    # fragment would have to encode.
    index = {report_item.name: number for number, report_item in enumerate(report.items)}
    failures, failed = _failures(pairs, link_base)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # The page may fetch nothing: only its own inline style and script run.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # A meta refresh, not script: it works with JavaScript off too.
        f'<meta http-equiv="refresh" content="{max(1, math.ceil(reload_s))}">'
        if reload_s is not None
        else "",
        f"<title>batchctl report {esc(report.batch_id)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        *_summary(report, line, inputs, now, index),
        '<section aria-labelledby="timeline-h"><h2 id="timeline-h">Timeline</h2>',
        "<p>One lane per machine slot; each bar is one run (attempt), its symbol and "
        "pattern saying how it ended (✓ passed, ✗ failed, ◷ timed out, ! error, "
        "⊘ interrupted, … running); a dashed line joins a retry to the attempt before it; "
        "bars outlined in amber are on the critical path. Hover a bar for its details.</p>",
    ]
    zoom = (
        '<div class="controls" hidden><button type="button" data-z="in">Zoom in</button> '
        '<button type="button" data-z="out">Zoom out</button> '
        '<button type="button" data-z="reset">Reset</button></div>'
    )
    if line.bars:
        parts += [
            zoom,
            f'<div class="scroll" data-zoom>{_timeline_svg(line, frozenset(path))}</div>',
        ]
    else:
        parts.append("<p>No run has started yet.</p>")
    if line.undrawn:
        parts.append(f"<p>{line.undrawn} runs have no start or end time and are not drawn.</p>")
    parts.append("</section>")
    parts.append('<section aria-labelledby="graph-h"><h2 id="graph-h">Needs and critical path</h2>')
    on_path = set(path)
    if path:
        parts.append(
            '<p id="critical-path">Critical path'
            + ("" if report.done else " so far")
            + " (the chain of needs with the most run time ending at the last finish): "
            + " → ".join(f'<a href="#item-{index[name]}">{esc(name)}</a>' for name in path)
            + f", {seconds_text(sum(_duration(i) for i in inputs if i.name in on_path))}"
            + " of runs.</p>"
        )
    if any(item.needs for item in inputs) or any(_blamed(item) for item in inputs):
        parts.append(
            "<p>Items ranked by their longest chain of needs; ★ marks the critical path, "
            "dashed red lines a skipped item's blame.</p>"
        )
        parts += [zoom, f'<div class="scroll" data-zoom>{_graph_svg(inputs, results, path)}</div>']
    else:
        parts.append("<p>No item needs another.</p>")
    parts.append("</section>")
    parts += _table(pairs, link_base, failed)
    parts += failures
    parts.append(f"</main><script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)
