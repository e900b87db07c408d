"""The detail screens: Enter on a node row or a model row shows everything lmtui knows about
it, live, until Escape.

The history is drawn as bar plots three rows tall (``trend.plot_lines``: 24 levels, one
column per few seconds) rather than with Textual's one-row ``Sparkline``, whose columns
resample the points without regard to time, so a gap in the history would not show.

Each is a full-size modal screen, so the dashboard's command keys (which act on the
tables' cursors, hidden behind it) are not live while it is up, and the app's worker keeps
following the engine meanwhile: the app hands every update down with ``show`` (attributes
down), as it does to the tables. What the snapshot does not carry (a pool node's
processes, a model's request percentiles) the screen asks the engine for itself, in a
worker, when it opens and every ``REFRESH_S`` seconds after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from lmtui.core.events import Event
from lmtui.core.model import NodeKind, Snapshot
from lmtui.core.units import fmt_bytes
from lmtui.engine.client import EngineClient
from lmtui.engine.commands import CommandError
from lmtui.engine.details import ModelDetails
from lmtui.engine.history import History, Metric, Scope
from lmtui.tui.detail import (
    MODEL_SCREEN_COLUMNS,
    NODE_SCREEN_COLUMNS,
    model_summary,
    node_errors,
    node_summary,
    processes_text,
    replica_cells,
)
from lmtui.tui.render import NONE, instance_row_key
from lmtui.tui.trend import buckets, fmt_rate, plot_lines
from lmtui.tui.widgets.keyed_table import KeyedTable

#: Seconds between two asks for what the snapshot does not carry.
REFRESH_S = 5.0
#: Rows of each history plot, and the cells left of it for its name and figures.
PLOT_HEIGHT = 3
LABEL_WIDTH = 18

_CSS = """
{name} {{ align: center middle; }}
{name} > VerticalScroll {{
    width: 100%; height: 100%; border: round $primary; background: $surface;
    padding: 0 1;
}}
{name} .title {{ text-style: bold; margin-bottom: 1; }}
{name} .section {{ color: $text-muted; text-style: bold; margin-top: 1; }}
{name} ReplicaTable {{ height: auto; max-height: 12; }}
{name} .hint {{ color: $text-muted; margin-top: 1; }}
"""


class TrendRow(Static):
    """One history series as a bar plot ``PLOT_HEIGHT`` rows tall across the screen, 5
    minutes wide, with its name, peak and latest value on the left."""

    DEFAULT_CSS = """
    TrendRow { height: auto; margin-bottom: 1; }
    """

    def __init__(self, label: str, scope: Scope, name: str, metric: Metric) -> None:
        super().__init__(classes="trend")
        self.label, self.scope, self.name_, self.metric = label, scope, name, metric
        #: The plot's columns (bucket means), for tests.
        self.values: list[float | None] = []
        self._history: History | None = None
        #: The value of a full column (a node's total memory); None: the peak shown.
        self.top: float | None = None

    def _fmt(self, v: float | None) -> str:
        if self.metric == "memory":
            return NONE if v is None else fmt_bytes(int(v))
        return fmt_rate(v)

    def show(self, history: History) -> None:
        self._history = history
        width = max(10, (self.content_size.width or 80) - LABEL_WIDTH)
        points = history.points(self.scope, self.name_, self.metric)
        self.values = buckets(points, history.last_at, width, history.window_s)
        latest = points[-1][1] if points and points[-1][0] >= history.last_at else None
        known = [v for v in self.values if v is not None]
        lines = plot_lines(self.values, PLOT_HEIGHT, self.top)
        top_label = (
            f"of {self._fmt(self.top)}"
            if self.top is not None
            else f"peak {self._fmt(max(known)) if known else NONE}"
        )
        side = [
            Text(self.label, style="bold"),
            Text(top_label, style="dim"),
            Text(f"now  {self._fmt(latest)}"),
        ]
        out = Text()
        for i, line in enumerate(lines):
            if i:
                out.append("\n")
            label = side[i] if i < len(side) else Text("")
            out.append_text(label)
            out.append(" " * max(1, LABEL_WIDTH - label.cell_len))
            out.append(line, style="cyan" if known else "dim")
        self.update(out)

    def on_resize(self) -> None:
        if self._history is not None:
            self.show(self._history)


class ReplicaTable(KeyedTable):
    """The instances a detail screen lists, keyed like the model table's rows."""

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        super().__init__(columns, id="replicas")

    def order(self) -> None:
        first = self._column_spec[0][0]
        self.sort(first, key=lambda cell: cell.plain.casefold())


class DetailScreen(ModalScreen[None]):
    """What the node and model screens share: Escape closes, updates come through ``show``."""

    BINDINGS = [Binding("escape", "close", "Close", id="detail.close")]

    def __init__(self, client: EngineClient, *, id: str) -> None:
        super().__init__(id=id)
        self.client = client
        self._last: tuple[Snapshot, float, History, Sequence[Event]] | None = None

    def show(
        self, snapshot: Snapshot, now: float, history: History, events: Sequence[Event]
    ) -> None:
        """Redraw from the app's latest update (kept until mounted)."""
        self._last = (snapshot, now, history, events)
        if self.is_mounted:
            self._draw(snapshot, now, history, events)

    def on_mount(self) -> None:
        if self._last is not None:
            self._draw(*self._last)
        self.query_one(ReplicaTable).focus()
        self._ask()
        self.set_interval(REFRESH_S, self._ask)

    def _draw(
        self, snapshot: Snapshot, now: float, history: History, events: Sequence[Event]
    ) -> None:
        raise NotImplementedError

    def _ask(self) -> None:
        """Ask the engine for what the snapshot lacks (nothing by default)."""

    def action_close(self) -> None:
        self.dismiss(None)


class NodeScreen(DetailScreen):
    """A node: who it is, health and polls, host memory next to what its models take,
    slots, trends, every instance, recent errors and, for a pool node, its servers."""

    DEFAULT_CSS = _CSS.format(name="NodeScreen")

    def __init__(self, client: EngineClient, node: str) -> None:
        super().__init__(client, id="node-detail")
        self.node = node
        #: The pool node's processes as last read (None: not asked, or not a pool node).
        self.processes: list[dict[str, Any]] | None = None

    def _is_pool(self) -> bool:
        snap = self._last[0] if self._last else None
        n = snap.nodes.get(self.node) if snap else None
        return n is not None and n.kind is NodeKind.LLAMACPP_POOL

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(f"Node {self.node}"), classes="title")
            yield Static(id="summary")
            yield Static("Last 5 minutes", classes="section")
            yield TrendRow("requests/s", "node", self.node, "requests")
            yield TrendRow("queued", "node", self.node, "queued")
            yield TrendRow("tokens/s", "node", self.node, "tokens")
            yield TrendRow("memory used", "node", self.node, "memory")
            yield Static("Instances", classes="section")
            yield ReplicaTable(NODE_SCREEN_COLUMNS)
            yield Static("Recent errors", classes="section")
            yield Static(id="errors")
            if self._is_pool():
                yield Static("Processes", classes="section")
                yield Static(Text("reading…", style="dim"), id="processes")
            yield Static("escape: back to the dashboard", classes="hint")

    def _draw(
        self, snapshot: Snapshot, now: float, history: History, events: Sequence[Event]
    ) -> None:
        node = snapshot.nodes.get(self.node)
        summary = self.query_one("#summary", Static)
        if node is None:
            summary.update(Text("this node is no longer in the cluster", style="bold red"))
            return
        with self.app.batch_update():
            summary.update(node_summary(node, snapshot, now))
            for row in self.query(TrendRow):
                if row.metric == "memory":
                    # Memory against the whole host, not its own peak: a flat 58.9 GB of 64
                    # is a nearly full bar, not a full one.
                    row.top = float(node.memory.total_bytes) if node.memory else None
                row.show(history)
            self.query_one(ReplicaTable).sync(
                {
                    instance_row_key(i): replica_cells(i, snapshot, now, drop="node")
                    for i in snapshot.instances_on(self.node)
                }
            )
            self.query_one("#errors", Static).update(node_errors(node, events))

    def _ask(self) -> None:
        if self._is_pool():
            self.run_worker(self._read_processes(), group="detail", exclusive=True)

    async def _read_processes(self) -> None:
        try:
            procs = await self.client.processes(self.node)
        except CommandError as e:
            text = Text(f"cannot read them: {e.message}", style="red")
        else:
            self.processes = procs
            text = processes_text(procs)
        if self.is_mounted:
            self.query_one("#processes", Static).update(text)


class ModelScreen(DetailScreen):
    """A model: every replica, its request history, queue wait and time to first token
    from the request log, and its pin, priority and TTL."""

    DEFAULT_CSS = _CSS.format(name="ModelScreen")

    def __init__(self, client: EngineClient, model: str) -> None:
        super().__init__(client, id="model-detail")
        self.model = model
        #: What the engine last said about the model (None: not yet, or it cannot say).
        self.details: ModelDetails | None = None
        self._details_error: str | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(f"Model {self.model}"), classes="title")
            yield Static(id="summary")
            yield Static("Last 5 minutes", classes="section")
            yield TrendRow("requests/s", "model", self.model, "requests")
            yield TrendRow("queued", "model", self.model, "queued")
            yield Static("Replicas", classes="section")
            yield ReplicaTable(MODEL_SCREEN_COLUMNS)
            yield Static("escape: back to the dashboard", classes="hint")

    def _draw(
        self, snapshot: Snapshot, now: float, history: History, events: Sequence[Event]
    ) -> None:
        summary = model_summary(self.model, snapshot, now, self.details)
        if self._details_error:
            summary.append(f"\n{self._details_error}", style="red")
        with self.app.batch_update():
            self.query_one("#summary", Static).update(summary)
            for row in self.query(TrendRow):
                row.show(history)
            self.query_one(ReplicaTable).sync(
                {
                    instance_row_key(i): replica_cells(i, snapshot, now, drop="model")
                    for i in snapshot.instances_of(self.model)
                }
            )

    def _ask(self) -> None:
        self.run_worker(self._read_details(), group="detail", exclusive=True)

    async def _read_details(self) -> None:
        try:
            self.details = await self.client.model_details(self.model)
            self._details_error = None
        except CommandError as e:
            self._details_error = f"request figures: {e.message}"
        if self._last is not None and self.is_mounted:
            self._draw(*self._last)
