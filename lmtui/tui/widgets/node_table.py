"""The node table: one row per configured node, keyed by node name."""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping, Sequence

from rich.text import Text

from lmtui.core.model import Instance, Node, Snapshot
from lmtui.engine.history import History
from lmtui.tui.render import (
    NODE_COLUMNS,
    NODE_POLICY,
    Cells,
    instances_by_node,
    node_row,
)
from lmtui.tui.trend import sparkline
from lmtui.tui.widgets.keyed_table import KeyedTable

#: Where the sparkline is in a node row.
TREND = [key for key, _ in NODE_COLUMNS].index("trend")


def _same(a: Sequence[Instance], b: Sequence[Instance]) -> bool:
    """The very same instance objects (a snapshot reuses the unchanged ones)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


class NodeTable(KeyedTable):
    """Status, memory, load, trend and errors of every node, updated in place each poll."""

    def __init__(self, *, id: str | None = "nodes") -> None:
        super().__init__(NODE_COLUMNS, NODE_POLICY, id=id)
        self.border_title = "Nodes"
        #: The sparklines of the newest history sample: a snapshot may come many times a
        #: second, the history moves once, so each node's line is drawn once per sample,
        #: and only for a node on screen (the others when they are scrolled to).
        self._trends: dict[str, Text] = {}
        self._trends_at: tuple[int, float] | None = None
        self._history: History | None = None
        #: Per row: what it was drawn from (node, its instances, the history sample) and
        #: its cells.
        self._row_cache: dict[
            str, tuple[Node, Sequence[Instance], tuple[int, float] | None, Cells]
        ] = {}
        self._snapshot: Snapshot | None = None
        self._now = 0.0
        #: Off-screen rows whose node or instances moved since their cells were drawn:
        #: the newest of those, drawn when the row comes into view.
        self._due: dict[str, tuple[Node, Sequence[Instance]]] = {}

    def show(
        self,
        snapshot: Snapshot,
        now: float,
        history: History | None = None,
        groups: Mapping[str, Sequence[Instance]] | None = None,
    ) -> None:
        """Show ``snapshot``'s nodes, in config order (the order of ``snapshot.nodes``).

        A row is drawn again when its node or its instances changed (they are immutable:
        unchanged ones are the same objects in the next snapshot), when a circuit of the
        node is tripped (its state counts seconds), or when the history moved. A row off
        screen keeps its cells until it is scrolled to, whatever moved: its newest inputs
        wait in ``_due``. ``groups`` are the snapshot's instances by node, when the caller
        has them (``instances_by_node``).
        """
        self._snapshot, self._now = snapshot, now
        at = None if history is None else (id(history), history.last_at)
        if at != self._trends_at or history is not self._history:
            self._trends, self._trends_at, self._history = {}, at, history
        if groups is None:
            groups = instances_by_node(snapshot)
        tripped = {c.node for c in snapshot.circuits.values()} if snapshot.circuits else set()
        on_screen = self.keys_on_screen()
        cache = self._row_cache
        fresh: dict[str, tuple[Node, Sequence[Instance], tuple[int, float] | None, Cells]] = {}
        rows: dict[str, Cells] = {}
        later: list[str] = []
        due: dict[str, tuple[Node, Sequence[Instance]]] = {}
        for name, node in snapshot.nodes.items():
            instances = groups[name]
            hit = cache.get(name)
            if hit is not None and name not in on_screen:
                # Off screen a row keeps its cells until it is scrolled to (or asked for);
                # its newest node and instances wait in ``_due``.
                if name in tripped or hit[0] is not node or not _same(hit[1], instances):
                    due[name] = (node, instances)
                fresh[name] = hit
                rows[name] = hit[3]
                later.append(name)
                continue
            if hit is not None and name not in tripped and hit[2] == at:
                if hit[0] is node and _same(hit[1], instances):
                    cells = hit[3]  # nothing changed
                else:
                    cells = self._draw(name, node, snapshot, now, instances, hit[3][TREND])
                fresh[name] = (node, instances, at, cells)
                rows[name] = cells
                continue
            cells = self._draw(name, node, snapshot, now, instances)
            fresh[name] = (node, instances, at, cells)
            rows[name] = cells
        self._due = due
        self._row_cache = fresh
        self.sync(rows, later=later)

    def _draw(
        self,
        name: str,
        node: Node,
        snapshot: Snapshot,
        now: float,
        instances: Sequence[Instance],
        trend: Text | None = None,
    ) -> Cells:
        """The node's row; with the current sparkline unless ``trend`` is given."""
        if trend is None:
            trend = self._trend(name)
        return node_row(node, snapshot, now, instances=instances, trend=trend)

    def _trend(self, name: str) -> Text | None:
        history = self._history
        if history is None:
            return None
        line = self._trends.get(name)
        if line is None:
            line = self._trends[name] = sparkline(history, "node", name, "requests")
        return line

    def fresh_cells(self, keys: Collection[str]) -> dict[str, Cells]:
        """Rows that waited off screen, drawn from the last ``show``'s data."""
        snapshot = self._snapshot
        out: dict[str, Cells] = {}
        if snapshot is None:
            return out
        for key in keys:
            hit = self._row_cache.get(key)
            if hit is None:
                continue
            node, instances = self._due.pop(key) if key in self._due else (hit[0], hit[1])
            cells = self._draw(key, node, snapshot, self._now, instances)
            self._row_cache[key] = (node, instances, self._trends_at, cells)
            out[key] = cells
        return out
