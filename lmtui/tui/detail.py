"""Pure rendering for the detail screens (Enter on a row): a node's or a model's whole story
as Rich ``Text``, from the snapshot, the events, the history and what the engine answers
about processes and request percentiles. Nothing here touches a widget, like ``render``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.text import Text

from lmtui.core.events import Event, Level
from lmtui.core.model import Instance, InstanceState, Node, Snapshot
from lmtui.core.units import fmt_bytes
from lmtui.engine.details import ModelDetails, Percentiles
from lmtui.tui.render import (
    HEALTH_STYLE,
    INSTANCE_COLUMNS,
    LEVEL_STYLE,
    NONE,
    Cells,
    fmt_ago,
    fmt_clock,
    fmt_duration,
    instance_row,
    node_in_flight,
    node_queued,
    truncate,
)

#: The replica tables of the detail screens: the model table's columns less the one the
#: screen is about (a node screen lists models, a model screen nodes).
NODE_SCREEN_COLUMNS = tuple(c for c in INSTANCE_COLUMNS if c[0] != "node")
MODEL_SCREEN_COLUMNS = tuple(c for c in INSTANCE_COLUMNS if c[0] != "model")
#: Recent errors a node screen lists, newest last.
ERRORS_SHOWN = 8
#: Log lines per process a pool node's screen shows, and their width.
LOG_LINES = 3
LOG_WIDTH = 160


def _field(out: Text, label: str, value: str | Text, *, width: int = 14) -> None:
    if out:
        out.append("\n")
    out.append(label.ljust(width), style="dim")
    out.append_text(value if isinstance(value, Text) else Text(value))


def node_summary(node: Node, snapshot: Snapshot, now: float) -> Text:
    """Who the node is, its health and polls, its host memory next to what the backend
    says its models take, and its slots."""
    insts = list(snapshot.instances_on(node.name))
    out = Text()
    ident = Text(f"{node.kind.value}  {node.url}")
    if node.version:
        ident.append(f"  version {node.version}", style="dim")
    _field(out, "Node", ident)
    status = Text(node.health.value, style=HEALTH_STYLE[node.health])
    if node.drained:
        status.append(" (drained: no new requests)", style="yellow")
    if node.consecutive_failures:
        status.append(f"  {node.consecutive_failures} failed polls in a row", style="red")
    _field(out, "Status", status)
    latency = "" if node.poll_latency_s is None else f" in {node.poll_latency_s * 1000:.0f} ms"
    last_poll = None if node.last_poll_at is None else now - node.last_poll_at
    last_ok = None if node.last_ok_at is None else now - node.last_ok_at
    _field(out, "Polls", f"last {fmt_ago(last_poll)}{latency}, last answer {fmt_ago(last_ok)}")
    mem = node.memory
    if mem is None:
        host = Text("unknown", style="dim")
        if node.memory_error:
            host.append(f"  ({truncate(node.memory_error, 80)})", style="red")
    else:
        host = Text(
            f"{fmt_bytes(mem.used_bytes)} used of {fmt_bytes(mem.total_bytes)}, "
            f"{fmt_bytes(mem.available_bytes)} available"
        )
        host.append(f"  (from {mem.source})", style="dim")
        other = mem.used_bytes - sum(i.size_bytes or 0 for i in insts)
        if mem.source not in ("config", "unknown") and other > 0:
            host.append(f"; {fmt_bytes(other)} of it beyond this node's models")
        if mem.pressure_free_pct is not None:
            host.append(f"  pressure: {mem.pressure_free_pct:.0f}% free")
        if mem.gpu_total_bytes:
            host.append(
                f"  GPU {fmt_bytes(mem.gpu_used_bytes)} of {fmt_bytes(mem.gpu_total_bytes)}"
            )
    _field(out, "Host memory", host)
    loaded = sum(i.size_bytes or 0 for i in insts)
    unknown = sum(1 for i in insts if i.size_bytes is None)
    models = Text(f"{fmt_bytes(loaded)} in {len(insts)} instance(s), the backend's own sizes")
    if unknown:
        models.append(f" ({unknown} of unknown size)", style="yellow")
    budget = node.budget_bytes
    if budget is not None:
        models.append(
            f"; budget {fmt_bytes(budget)} ({fmt_bytes(node.reserved_bytes)} kept free)",
            style="dim",
        )
    _field(out, "Models", models)
    busy = node_in_flight(node, insts)
    total = sum(i.slots_total for i in insts)
    slots = f"{busy} busy of {total}, {node_queued(node, insts)} queued in the server"
    if node.server_slots is not None:
        slots += f"; the server runs {node.server_slots} request(s) at once across models"
    if node.max_instances is not None:
        slots += f"; at most {node.max_instances} model(s) resident"
    _field(out, "Slots", slots)
    tripped = [c for c in snapshot.circuits.values() if c.node == node.name]
    for c in tripped:
        state = "half-open" if c.half_open(now) else f"open {fmt_duration(now - c.opened_at)}"
        _field(
            out,
            "Circuit",
            Text(
                f"{c.instance_id}: {state} after {c.failures} failed requests in a row",
                style="bold red" if not c.half_open(now) else "bold yellow",
            ),
        )
    return out


def node_errors(node: Node, events: Iterable[Event]) -> Text:
    """The node's last poll and memory errors, then its recent warning and error events."""
    out = Text()
    if node.last_error:
        out.append("last poll: ", style="dim")
        out.append(truncate(node.last_error, 200), style="red")
    if node.memory_error:
        if out:
            out.append("\n")
        out.append("memory: ", style="dim")
        out.append(truncate(node.memory_error, 200), style="red")
    mine = [e for e in events if e.node == node.name and e.level is not Level.INFO]
    for e in mine[-ERRORS_SHOWN:]:
        if out:
            out.append("\n")
        out.append(fmt_clock(e.at) + " ", style="dim")
        out.append(e.message, style=LEVEL_STYLE[e.level])
    return out or Text("none", style="dim")


def processes_text(procs: Sequence[Mapping[str, Any]]) -> Text:
    """A pool node's servers: model, port, pid, state, then their last log lines."""
    out = Text()
    for p in procs:
        if out:
            out.append("\n")
        out.append(str(p.get("model", "?"))[:120], style="bold")
        out.append(
            f"  port {p.get('port', '?')}  pid {p.get('pid', '?')}  {p.get('state', '?')}"
            + ("  (adopted)" if p.get("adopted") else "")
        )
        lines = p.get("last_lines") or []
        for line in list(lines)[-LOG_LINES:] if isinstance(lines, list) else ():
            out.append("\n  ")
            out.append(truncate(str(line), LOG_WIDTH), style="dim")
    return out or Text("no servers running", style="dim")


def replica_cells(inst: Instance, snapshot: Snapshot, now: float, *, drop: str) -> Cells:
    """A replica table's row: the model table's cells without the ``drop`` column."""
    cells = instance_row(
        inst, now, snapshot.queue_depth.get(inst.model, 0), snapshot.circuits.get(inst.key)
    )
    keep = [i for i, (key, _) in enumerate(INSTANCE_COLUMNS) if key != drop]
    return tuple(cells[i] for i in keep)


def _pcts(p: Percentiles | None) -> str:
    if p is None:
        return NONE
    return f"p50 {_secs(p.p50)}  p90 {_secs(p.p90)}  p99 {_secs(p.p99)}"


def _secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def model_summary(model: str, snapshot: Snapshot, now: float, details: ModelDetails | None) -> Text:
    """A model's replicas at a glance, its settings (pin, priority, replicas, TTL) and its
    requests' queue wait and time to first token over the last hour."""
    insts = list(snapshot.instances_of(model))
    loaded = sum(1 for i in insts if i.state is InstanceState.LOADED)
    out = Text()
    reps = Text(f"{loaded} loaded of {len(insts)} replica(s)")
    busy = sum(i.busy for i in insts)
    total = sum(i.slots_total for i in insts)
    reps.append(f"; {busy} of {total} slots busy")
    waiting = snapshot.queue_depth.get(model, 0)
    reps.append(f"; {waiting} waiting in lmtui", style="bold magenta" if waiting else "")
    _field(out, "Replicas", reps)
    pinned = details.pinned if details is not None else any(i.pinned for i in insts)
    settings = Text()
    settings.append("pinned" if pinned else "not pinned", style="bold cyan" if pinned else "")
    if details is not None:
        settings.append(f"  priority {details.priority}")
        if details.min_replicas:
            settings.append(f"  min replicas {details.min_replicas}")
        settings.append(
            "  idle TTL "
            + (fmt_duration(details.idle_ttl_s) if details.idle_ttl_s else "none")
            + (" (pinned: never)" if pinned and details.idle_ttl_s else ""),
            style="dim",
        )
    ttls = [t for i in insts if (t := i.ttl_left(now)) is not None]
    if ttls:
        settings.append(f"  server TTL left {fmt_duration(min(ttls))}", style="dim")
    _field(out, "Settings", settings)
    if details is None:
        _field(out, "Requests", Text("the engine gives no request figures here", style="dim"))
    elif not details.logged:
        _field(
            out,
            "Requests",
            Text(
                "no request log to read (the demo keeps none; else [router] request_log)",
                style="dim",
            ),
        )
    else:
        head = f"{details.requests} in the last {fmt_duration(details.window_s)}"
        req = Text(head)
        if details.failed:
            req.append(f", {details.failed} failed", style="bold red")
        _field(out, "Requests", req)
        _field(out, "Queue wait", _pcts(details.queue_wait_s))
        _field(out, "First token", _pcts(details.ttft_s))
    return out
