"""The node table: one row per configured node, keyed by node name."""

from __future__ import annotations

from rich.text import Text

from lmtui.core.model import Snapshot
from lmtui.engine.history import History
from lmtui.tui.render import NODE_COLUMNS, NODE_POLICY, instances_by_node, node_row
from lmtui.tui.trend import sparkline
from lmtui.tui.widgets.keyed_table import KeyedTable


class NodeTable(KeyedTable):
    """Status, memory, load, trend and errors of every node, updated in place each poll."""

    def __init__(self, *, id: str | None = "nodes") -> None:
        super().__init__(NODE_COLUMNS, NODE_POLICY, id=id)
        self.border_title = "Nodes"
        #: The sparklines of the newest history sample: a snapshot may come many times a
        #: second, the history moves once, so each node's line is drawn once per sample.
        self._trends: dict[str, Text] = {}
        self._trends_at: tuple[int, float] | None = None

    def show(self, snapshot: Snapshot, now: float, history: History | None = None) -> None:
        """Show ``snapshot``'s nodes, in config order (the order of ``snapshot.nodes``)."""
        groups = instances_by_node(snapshot)
        trends = self._trends_for(snapshot, history)
        self.sync(
            {
                name: node_row(node, snapshot, now, instances=groups[name], trend=trends.get(name))
                for name, node in snapshot.nodes.items()
            }
        )

    def _trends_for(self, snapshot: Snapshot, history: History | None) -> dict[str, Text]:
        if history is None:
            return {}
        at = (id(history), history.last_at)
        if at != self._trends_at or self._trends.keys() != snapshot.nodes.keys():
            self._trends = {
                name: sparkline(history, "node", name, "requests") for name in snapshot.nodes
            }
            self._trends_at = at
        return self._trends
