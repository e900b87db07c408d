"""Pure rendering: snapshot pieces in, Rich ``Text`` cells out.

Nothing here touches a widget, a clock or the engine: every function takes ``now`` (seconds on
the engine's clock) and returns plain values, so the table code can diff rows by equality and
the tests can check each cell without running an app.

Sizes are shown in GB meaning GiB (1024³ bytes), the unit the config uses (``memory_gb``,
``size_gb``), so a figure a user reads here can be typed back into the config unchanged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence

from rich.text import Text

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import (
    CircuitState,
    GiB,
    Health,
    Instance,
    InstanceState,
    Node,
    Snapshot,
    busy_total,
    node_queued,
)
from lmtui.core.units import fmt_bytes as fmt_bytes  # the one size format, used here
from lmtui.tui.layout import ColumnPolicy

Cells = tuple[Text, ...]

#: Column keys and labels of the node table, in display order. Keys are stable ids that the
#: diff uses; labels are for people and may change.
NODE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Node"),
    ("kind", "Kind"),
    ("status", "Status"),
    ("memory", "Memory"),
    ("models", "Models"),
    ("in_flight", "In-flight"),
    ("queued", "Queued"),
    ("tps", "Tok/s"),
    ("trend", "Req/s (5 min)"),
    ("latency", "Poll ms"),
    ("error", "Last error"),
)

#: How the node table's columns give way on a narrow terminal (``layout.fit_columns``): at
#: 80 columns Node, Status, Memory, In-flight and Queued stay (66 cells); the error is cut
#: to fit before anything else goes, and Poll ms goes first.
NODE_POLICY: dict[str, ColumnPolicy] = {
    "name": ColumnPolicy(0, min_width=10),
    "status": ColumnPolicy(1),
    "memory": ColumnPolicy(2),
    "in_flight": ColumnPolicy(3),
    "queued": ColumnPolicy(4),
    "error": ColumnPolicy(5, min_width=12),
    "models": ColumnPolicy(6),
    "tps": ColumnPolicy(7),
    "trend": ColumnPolicy(8),
    "kind": ColumnPolicy(9),
    "latency": ColumnPolicy(10),
}

#: Column keys and labels of the model table, in display order.
INSTANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("node", "Node"),
    ("state", "State"),
    ("pinned", "Pinned"),
    ("size", "Size"),
    ("slots", "Slots"),
    ("queued", "Queued"),
    ("last_used", "Last used"),
    ("ttl", "TTL left"),
)

#: How the model table's columns give way: Model, Node, State, Slots and Queued always stay
#: (a long model name is cut first), then Pinned and Size; TTL left goes first.
INSTANCE_POLICY: dict[str, ColumnPolicy] = {
    "model": ColumnPolicy(0, min_width=16),
    "node": ColumnPolicy(1, min_width=10),
    "state": ColumnPolicy(2, min_width=12),
    "slots": ColumnPolicy(3),
    "queued": ColumnPolicy(4),
    "pinned": ColumnPolicy(5),
    "size": ColumnPolicy(6),
    "last_used": ColumnPolicy(7),
    "ttl": ColumnPolicy(8),
}

HEALTH_STYLE: dict[Health, str] = {
    Health.HEALTHY: "bold green",
    Health.SUSPECT: "bold yellow",
    Health.DOWN: "bold red",
    Health.UNKNOWN: "dim",
}

STATE_STYLE: dict[InstanceState, str] = {
    InstanceState.LOADED: "green",
    InstanceState.LOADING: "yellow",
    InstanceState.UNLOADING: "dim",
    InstanceState.FAILED: "bold red",
}

LEVEL_STYLE: dict[Level, str] = {
    Level.INFO: "",
    Level.WARNING: "yellow",
    Level.ERROR: "bold red",
}

#: Shown for "not known" so an empty cell never reads as zero.
NONE = "—"
#: A TTL longer than this is "forever": Ollama answers ``keep_alive < 0`` with a date
#: hundreds of years ahead, which is no use printed as a duration.
FOREVER_S = 365 * 24 * 3600.0
ERROR_WIDTH = 28
BAR_WIDTH = 10


def _num(value: str) -> Text:
    """A right-aligned cell, so columns of numbers line up on their last digit."""
    return Text(value, justify="right")


def size_cell(inst: Instance) -> str:
    """The model table's Size: the server's own figure as is; ``~`` before one that is not
    (seen while it was loaded, or ``size_gb`` from config), so nobody mistakes it for a
    measurement; ``?`` when nobody knows (placement then assumes a default footprint)."""
    if inst.size_bytes is None:
        return "?"
    text = fmt_bytes(inst.size_bytes)
    return text if inst.size_source in ("server", None) else "~" + text


def fmt_ago(seconds: float | None) -> str:
    """How long ago, coarsened to the largest unit: ``12s ago``, ``5m ago``, ``3h ago``."""
    if seconds is None:
        return NONE
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def fmt_duration(seconds: float | None) -> str:
    """A time left: ``45s``, ``4m 30s``, ``2h 05m``, ``∞`` past a year; ``—`` when unknown."""
    if seconds is None:
        return NONE
    if seconds >= FOREVER_S:
        return "∞"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_clock(at: float) -> str:
    """Wall-clock time of day (local time zone) for the event log: ``14:03:27``."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def truncate(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with an ellipsis."""
    text = " ".join(text.split())  # server errors often carry newlines; a cell has one line
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def memory_bar(
    used: int | None,
    total: int | None,
    width: int = BAR_WIDTH,
    *,
    other: int = 0,
    budget: int | None = None,
) -> Text:
    """A fixed-width bar of memory, coloured by how full it is, then ``used/total GB``.

    ``used`` is what the models take (the backends' sizes), ``other`` what the host's own
    figure shows in use beyond them (other programs, models lmtui does not know): ``█``
    models, ``▒`` other use, ``░`` free within the budget, ``·`` the reserve past the
    ``budget`` (total less ``reserved_gb``). With other use the figure reads
    ``models+other/total GB``. Green below 70 % of the total in use, yellow below 90 %,
    red above: at 90 % a further model load on a unified-memory Mac starts to swap.
    Unknown memory renders as a dim ``unknown`` so the column keeps its width.
    """
    if used is None or total is None or total <= 0:
        return Text("unknown".ljust(width) + " " + NONE, style="dim")
    used = max(0, min(used, total))
    other = max(0, min(other, total - used))
    frac = (used + other) / total
    cap = total if budget is None else max(0, min(budget, total))
    models_end = round(used / total * width)
    other_end = max(models_end, round((used + other) / total * width))
    budget_end = max(other_end, round(cap / total * width))
    colour = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    bar = Text()
    bar.append("█" * models_end, style=colour)
    bar.append("▒" * (other_end - models_end), style="magenta")
    bar.append("░" * (budget_end - other_end), style="dim")
    bar.append("·" * (width - budget_end), style="dim")
    if other >= GiB // 10:
        bar.append(f" {used / GiB:.1f}+{other / GiB:.1f}/{total / GiB:.1f} GB")
    else:
        bar.append(f" {(used + other) / GiB:.1f}/{total / GiB:.1f} GB")
    return bar


def memory_cell(node: Node, instances: Sequence[Instance]) -> Text:
    """The node table's memory bar: the models' sizes on ``node``, the rest of what its
    host's own figure shows in use (SSH or psutil; nothing when the memory comes from the
    config), and its budget."""
    mem = node.memory
    if mem is None:
        return memory_bar(None, None)
    models = sum(i.size_bytes or 0 for i in instances)
    other = mem.used_bytes - models if mem.source not in ("config", "unknown") else 0
    return memory_bar(models, mem.total_bytes, other=other, budget=node.budget_bytes)


def instances_by_node(snapshot: Snapshot) -> dict[str, list[Instance]]:
    """The snapshot's instances grouped by node, in one pass.

    Rendering every node row from ``snapshot.instances_on`` would scan all instances once
    per node (200 nodes × 400 instances per poll); grouping first keeps a redraw linear.
    """
    groups: dict[str, list[Instance]] = {name: [] for name in snapshot.nodes}
    for inst in snapshot.instances.values():
        groups.setdefault(inst.node, []).append(inst)
    return groups


def node_in_flight(node: Node, instances: Sequence[Instance]) -> int:
    """Requests running on a node: lmtui's own plus those from clients that bypass it.

    Each instance's ``busy`` already takes the larger of the polled and the engine's count;
    a server that reports a node-wide figure (vLLM, llama.cpp ``/metrics``) may see more.
    """
    busy = busy_total(instances)
    reported = node.metrics.requests_processing if node.metrics else None
    return max(busy, reported or 0)


def node_row(
    node: Node,
    snapshot: Snapshot,
    now: float,
    *,
    instances: Sequence[Instance] | None = None,
    trend: Text | None = None,
) -> Cells:
    """One row of the node table, in ``NODE_COLUMNS`` order.

    ``instances`` are the node's instances when the caller already grouped them (see
    ``instances_by_node``); otherwise they are looked up in ``snapshot``. ``trend`` is the
    node's requests/s sparkline (``trend_cell``); blank without history.
    """
    if instances is None:
        instances = list(snapshot.instances_on(node.name))
    status = node.health.value + (" (drained)" if node.drained else "")
    if snapshot.circuits:
        tripped = [c for c in snapshot.circuits.values() if c.node == node.name]
        if tripped:
            opened = sum(1 for c in tripped if not c.half_open(now))
            status += (
                f", {opened} circuit{'s' if opened > 1 else ''} open"
                if opened
                else f", {len(tripped)} half-open"
            )
    error = node.last_error or node.memory_error
    tps = node.tokens_per_second
    latency = node.poll_latency_s
    return (
        Text(node.name, style="bold"),
        Text(node.kind.value),
        Text(status, style=HEALTH_STYLE[node.health]),
        memory_cell(node, instances),
        _num(str(len(instances))),
        _num(str(node_in_flight(node, instances))),
        _num(str(node_queued(node, instances))),
        _num(NONE if tps is None else f"{tps:.1f}"),
        trend if trend is not None else Text(""),
        _num(NONE if latency is None else f"{latency * 1000:.0f}"),
        Text(truncate(error, ERROR_WIDTH) if error else "", style="red"),
    )


def instance_row_key(inst: Instance) -> str:
    """The model table's row key: ``node/instance_id``, unique across the cluster."""
    return f"{inst.node}/{inst.instance_id}"


def queued_cell(waiting: int, in_server: int) -> str:
    """The model table's Queued cell: requests waiting in lmtui for the model, then ``+N``
    waiting inside this instance's server when it reports any."""
    return f"{waiting}+{in_server}" if in_server else str(waiting)


def waiting_row_key(model: str) -> str:
    """The row of a model that has requests waiting in lmtui and no instance at all."""
    return f"~queued/{model}"


def waiting_row(model: str, depth: int) -> Cells:
    """A model nobody serves yet (not loaded anywhere, or no room to load it) but requests
    wait for: without this row the operator would not see it in the model table at all."""
    return (
        Text(model, style="bold"),
        Text("—", style="dim"),
        Text("waiting: no replica", style="bold magenta"),
        Text(""),
        _num(""),
        _num(""),
        _num(str(depth)),
        _num(""),
        _num(""),
    )


def circuit_text(circuit: CircuitState, now: float) -> Text:
    """A tripped circuit breaker as the State cell says it: ``circuit open 12s`` (open that
    long; requests go around the replica) or ``circuit half-open`` (the wait is over and
    the next request, or the one under way, is the trial)."""
    if circuit.half_open(now):
        return Text("circuit half-open", style="bold yellow")
    return Text(f"circuit open {fmt_duration(now - circuit.opened_at)}", style="bold red")


def instance_row(
    inst: Instance, now: float, waiting: int = 0, circuit: CircuitState | None = None
) -> Cells:
    """One row of the model table, in ``INSTANCE_COLUMNS`` order; ``waiting`` is lmtui's
    queue for the instance's model, ``circuit`` its circuit breaker when tripped."""
    state = inst.state.value
    if inst.state is InstanceState.LOADING and inst.load_progress is not None:
        state += f" {inst.load_progress * 100:.0f}%"
    if inst.error:
        state += f": {truncate(inst.error, 24)}"
    last_used = None if inst.last_used is None else now - inst.last_used
    state_cell = (
        circuit_text(circuit, now)
        if circuit is not None and inst.state is InstanceState.LOADED
        else _shared_text(state, STATE_STYLE[inst.state])
    )
    return (
        _shared_text(inst.model, "bold"),
        _shared_text(inst.node, ""),
        state_cell,
        _shared_text("yes", "bold cyan") if inst.pinned else _shared_text("", ""),
        _shared_num(size_cell(inst)),
        _shared_num(f"{inst.busy}/{inst.slots_total}"),
        _shared_num(queued_cell(waiting, inst.queued)),
        _shared_num(fmt_ago(last_used)),
        _shared_num(fmt_duration(inst.ttl_left(now))),
    )


def instance_ages(inst: Instance, now: float) -> tuple[str, str]:
    """The only text of ``instance_row`` that changes with ``now`` alone (a row without a
    tripped circuit): its Last used and its TTL left."""
    last_used = None if inst.last_used is None else now - inst.last_used
    return fmt_ago(last_used), fmt_duration(inst.ttl_left(now))


def instance_row_aged(cells: Cells, ages: tuple[str, str]) -> Cells:
    """``cells`` (an ``instance_row`` of an instance without a tripped circuit, drawn at
    another ``now``) with the Last used and TTL left of ``ages`` (``instance_ages`` at this
    ``now``): the same cells ``instance_row`` would draw now, the other seven reused as they
    are, so that a clock tick costs two cells per row, not nine."""
    last_used, ttl = ages
    return (*cells[:7], _shared_num(last_used), _shared_num(ttl))


#: Distinct cell texts kept as shared ``Text`` objects (model and node names, states,
#: numbers, ages): a few per row even at 4,000 rows, and a miss only costs a new ``Text``.
SHARED_CELLS = 8192


@functools.lru_cache(maxsize=SHARED_CELLS)
def _shared_num(value: str) -> Text:
    """``_num(value)``, one object per text: "12s ago" or "1/4" is the same in every row,
    and making a ``Text`` (which scans its string for control codes) for every cell of the
    hundreds of rows an update or a clock tick touches was most of the model table's cost.
    The object is shared, so nothing may change it but the table's own no-wrap and
    ellipsis, which are the same for every cell."""
    return _num(value)


@functools.lru_cache(maxsize=SHARED_CELLS)
def _shared_text(value: str, style: str) -> Text:
    """``Text(value, style=style)``, shared as ``_shared_num`` is."""
    return Text(value, style=style)


def instance_matches(inst: Instance, needle: str) -> bool:
    """Whether the model-table filter keeps this row: a case-insensitive substring of the
    model name, the node name or the instance id."""
    if not needle:
        return True
    n = needle.casefold()
    return any(n in s.casefold() for s in (inst.model, inst.node, inst.instance_id))


#: Event kinds the log shows only at the debug level: one line per request would push the
#: loads, evictions, health changes and failures out of sight within seconds.
DEBUG_KINDS = frozenset({EventKind.ROUTE})


def is_debug(event: Event) -> bool:
    """Whether ``event`` is debug-level: a routing decision that went as planned. A routing
    event the engine raised above info (a warning about it) is not."""
    return event.kind in DEBUG_KINDS and event.level is Level.INFO


def event_line(event: Event) -> Text:
    """One line of the event log: time, level colour, message (debug lines dim). Long lines
    wrap in the log, under the message rather than under the time."""
    line = Text(no_wrap=False)
    line.append(fmt_clock(event.at), style="dim")
    line.append(" ")
    line.append(event.message, style="dim" if is_debug(event) else LEVEL_STYLE[event.level])
    return line


def header_text(
    snapshot: Snapshot,
    source: str,
    *,
    read_only: bool = False,
    groups: Mapping[str, Sequence[Instance]] | None = None,
    strategy: str | None = None,
    mode: str = "embedded",
) -> Text:
    """The header on one line: ``header_totals``, a bar, then ``header_context``."""
    out = header_totals(snapshot, groups=groups)
    out.append(HEADER_BAR, style="dim")
    out.append_text(header_context(source, read_only=read_only, strategy=strategy, mode=mode))
    return out


#: Between the totals and the context when they share a line.
HEADER_BAR = "  │ "


def header_totals(
    snapshot: Snapshot,
    *,
    groups: Mapping[str, Sequence[Instance]] | None = None,
    gap: str = "  ",
) -> Text:
    """Cluster totals: nodes healthy, memory, models, in-flight, queued, tokens per second,
    ``gap`` apart (one space fits them in 80 columns, two read better when there is room).

    In-flight is the sum of the node table's column (so the two always agree), not
    ``ClusterTotals.in_flight``, which counts only requests that pass through lmtui.
    """
    return header_totals_texts(snapshot, groups=groups, gaps=(gap,))[0]


def header_totals_texts(
    snapshot: Snapshot,
    *,
    groups: Mapping[str, Sequence[Instance]] | None = None,
    gaps: Sequence[str] = ("  ",),
) -> tuple[Text, ...]:
    """``header_totals`` with each of ``gaps``, the totals worked out once (a pass over
    every instance of the cluster each)."""
    t = snapshot.totals()
    groups = instances_by_node(snapshot) if groups is None else groups
    in_flight = sum(node_in_flight(n, groups.get(n.name, ())) for n in snapshot.nodes.values())
    health_style = "green" if t.healthy == t.nodes else "yellow" if t.down == 0 else "red"
    peers = peers_text(snapshot) if snapshot.peers else None
    texts = []
    for gap in gaps:
        out = Text()
        out.append("nodes ", style="dim")
        out.append(f"{t.healthy}/{t.nodes} healthy", style=health_style)
        out.append(f"{gap}mem ", style="dim")
        out.append(f"{t.memory_used / GiB:.1f}/{t.memory_total / GiB:.1f} GB")
        out.append(f"{gap}models ", style="dim")
        out.append(str(t.instances))
        out.append(f"{gap}in-flight ", style="dim")
        out.append(str(in_flight))
        out.append(f"{gap}queued ", style="dim")
        out.append(str(t.queued))
        out.append(f"{gap}tok/s ", style="dim")
        out.append(f"{t.tokens_per_second:.1f}")
        if peers is not None:
            out.append(f"{gap}peers ", style="dim")
            out.append_text(peers)
        texts.append(out)
    return tuple(texts)


def peers_text(snapshot: Snapshot) -> Text:
    """The ``[[peers]]`` in the header: requests they served, those in flight now (yellow:
    the cluster is sending work away), and a spent budget or a failure (red)."""
    peers = snapshot.peers.values()
    served = sum(p.served for p in peers)
    now = sum(p.in_flight for p in peers)
    out = Text(str(served))
    if now:
        out.append(f" (+{now} now)", style="bold yellow")
    spent = [p.name for p in peers if p.budget and p.budget_used >= p.budget]
    failing = [p.name for p in peers if p.last_error]
    if spent:
        out.append(f" {', '.join(spent)} budget spent", style="bold red")
    elif failing:
        out.append(f" {', '.join(failing)} failing", style="bold red")
    return out


def header_context(
    source: str, *, read_only: bool = False, strategy: str | None = None, mode: str = "embedded"
) -> Text:
    """What the dashboard is driving: the routing strategy in force (left out until it is
    known), whether the engine runs in this process (``embedded``) or elsewhere
    (``attached``), and where the cluster description came from."""
    out = Text()
    if strategy:
        out.append("strategy ", style="dim")
        out.append(strategy, style="bold")
        out.append("  ")
    out.append(mode, style="dim")
    out.append("  ")
    out.append(source_label(source), style="dim")
    if read_only:
        out.append("  read-only", style="bold yellow")
    return out


def source_label(source: str) -> str:
    """Where the config came from, as the header says it."""
    return "demo cluster" if source == "demo" else (source or "no source")


DEMO_BANNER = "demo cluster — no config found (see lmtui --help / config.example.toml)"


def cells_equal(a: Text, b: Text) -> bool:
    """Equality that also sees the base style and alignment.

    ``Text.__eq__`` compares only the characters and spans, so a status cell going from
    green "healthy" to a differently styled one with the same letters would not redraw.
    """
    return (
        a.plain == b.plain and a.style == b.style and a.spans == b.spans and a.justify == b.justify
    )
