"""The node table: one row per configured node, keyed by node name."""

from __future__ import annotations

from lmtui.core.model import Snapshot
from lmtui.tui.render import NODE_COLUMNS, NODE_POLICY, instances_by_node, node_row
from lmtui.tui.widgets.keyed_table import KeyedTable


class NodeTable(KeyedTable):
    """Status, memory, load and errors of every node, updated in place each poll."""

    def __init__(self, *, id: str | None = "nodes") -> None:
        super().__init__(NODE_COLUMNS, NODE_POLICY, id=id)
        self.border_title = "Nodes"

    def show(self, snapshot: Snapshot, now: float) -> None:
        """Show ``snapshot``'s nodes, in config order (the order of ``snapshot.nodes``)."""
        groups = instances_by_node(snapshot)
        self.sync(
            {
                name: node_row(node, snapshot, now, instances=groups[name])
                for name, node in snapshot.nodes.items()
            }
        )
