"""The model table: one row per model instance, keyed ``node/instance_id``, and one per model
that has requests waiting in lmtui but no instance (keyed ``~queued/model``)."""

from __future__ import annotations

from rich.text import Text

from lmtui.core.model import CircuitState, Instance, Snapshot
from lmtui.tui.render import (
    INSTANCE_COLUMNS,
    INSTANCE_POLICY,
    Cells,
    instance_matches,
    instance_row,
    instance_row_key,
    waiting_row,
    waiting_row_key,
)
from lmtui.tui.widgets.keyed_table import KeyedTable


def _sort_key(row: tuple[Text, Text]) -> tuple[str, str]:
    model, node = row
    return (model.plain.casefold(), node.plain.casefold())


class ModelTable(KeyedTable):
    """Loaded (and loading) instances across the cluster, filtered by a substring."""

    def __init__(self, *, id: str | None = "models") -> None:
        super().__init__(INSTANCE_COLUMNS, INSTANCE_POLICY, id=id)
        self.border_title = "Models"
        self._filter = ""
        self._snapshot: Snapshot | None = None
        self._now = 0.0
        #: Per row: what it was drawn from (instance, queue, circuit, second) and its cells.
        self._row_cache: dict[str, tuple[Instance, int, CircuitState | None, int, Cells]] = {}

    @property
    def filter(self) -> str:
        """The substring rows must contain (model, node or instance id); ``""`` keeps all."""
        return self._filter

    def set_filter(self, needle: str) -> None:
        """Change the filter and re-sync at once: hidden rows go, matching ones come back."""
        needle = needle.strip()
        if needle == self._filter:
            return
        self._filter = needle
        if self._snapshot is not None:
            self.show(self._snapshot, self._now)

    def show(self, snapshot: Snapshot, now: float) -> None:
        """Show the instances of ``snapshot`` that pass the filter, sorted by model then node,
        and a row for each model that has requests waiting in lmtui but no instance."""
        self._snapshot, self._now = snapshot, now
        depth = snapshot.queue_depth
        circuits = snapshot.circuits
        # A row is drawn again only when its instance, its model's queue, its circuit or
        # the second changed (its cells show ages in whole seconds): instances are
        # immutable, so an unchanged one is the very same object in the next snapshot,
        # and a poll of one node leaves the other 199 nodes' rows alone.
        tick = int(now)
        cache, fresh = self._row_cache, {}
        rows: dict[str, Cells] = {}
        for inst in snapshot.instances.values():
            if not instance_matches(inst, self._filter):
                continue
            key = instance_row_key(inst)
            waiting = depth.get(inst.model, 0)
            circuit = circuits.get(inst.key) if circuits else None
            hit = cache.get(key)
            if (
                hit is not None
                and hit[0] is inst
                and hit[1] == waiting
                and hit[2] == circuit
                and hit[3] == tick
            ):
                cells = hit[4]
            else:
                cells = instance_row(inst, now, waiting, circuit)
            fresh[key] = (inst, waiting, circuit, tick, cells)
            rows[key] = cells
        self._row_cache = fresh
        served = {inst.model for inst in snapshot.instances.values()}
        needle = self._filter.casefold()
        for model, n in depth.items():
            if n and model not in served and needle in model.casefold():
                rows[waiting_row_key(model)] = waiting_row(model, n)
        self.sync(rows)

    def order(self) -> None:
        """By model, then node."""
        self.sort("model", "node", key=_sort_key)
