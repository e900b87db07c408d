"""The model table: one row per model instance, keyed ``node/instance_id``, and one per model
that has requests waiting in lmtui but no instance (keyed ``~queued/model``)."""

from __future__ import annotations

from collections.abc import Collection

from rich.text import Text

from lmtui.core.model import CircuitState, Instance, Snapshot
from lmtui.tui.render import (
    INSTANCE_COLUMNS,
    INSTANCE_POLICY,
    Cells,
    instance_ages,
    instance_matches,
    instance_row,
    instance_row_aged,
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
        #: The filter the rows shown were chosen by.
        self._shown_filter = ""
        self._snapshot: Snapshot | None = None
        self._now = 0.0
        #: Per row: what it was drawn from (instance, queue, circuit, the text of its two
        #: time cells) and its cells.
        self._row_cache: dict[
            str, tuple[Instance, int, CircuitState | None, tuple[str, str], Cells]
        ] = {}
        #: Off-screen rows whose instance, queue or circuit moved since their cells were
        #: drawn: the newest of those, drawn when the row comes into view.
        self._due: dict[str, tuple[Instance, int, CircuitState | None]] = {}

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
        before, shown_filter = self._snapshot, self._shown_filter
        self._snapshot, self._now, self._shown_filter = snapshot, now, self._filter
        if (
            before is not None
            and shown_filter == self._filter
            and not snapshot.circuits
            and not before.circuits
            and snapshot.queue_depth == before.queue_depth
        ):
            self._show_changes(before, snapshot, now)
        else:
            self._show_all(snapshot, now)

    def _show_changes(self, before: Snapshot, snapshot: Snapshot, now: float) -> None:
        """``show`` from what moved since ``before`` (the same filter and queues, no
        circuit): an update of a 200-node cluster replaces a few hundred of its 4,000
        instances, and only those are looked at, and the rows on screen for their ages."""
        insts, old = snapshot.instances, before.instances
        cache, due, needle = self._row_cache, self._due, self._filter
        depth = snapshot.queue_depth
        on_screen = self.keys_on_screen()
        changes: dict[str, Cells] = {}
        removed: list[str] = []
        if insts is not old:
            moved = [(k, inst) for k, inst in insts.items() if old.get(k) is not inst]
            new = 0
            for k, inst in moved:
                if k not in old:
                    new += 1
                key = instance_row_key(inst)
                hit = cache.get(key)
                if not instance_matches(inst, needle):
                    if hit is not None:
                        removed.append(key)
                        del cache[key]
                        due.pop(key, None)
                    continue
                waiting = depth.get(inst.model, 0)
                if hit is None or key in on_screen:
                    cells = instance_row(inst, now, waiting)
                    cache[key] = (inst, waiting, None, instance_ages(inst, now), cells)
                    due.pop(key, None)
                    changes[key] = cells
                else:
                    due[key] = (inst, waiting, None)  # drawn when it comes into view
            if len(old) + new != len(insts):
                for k in old.keys() - insts.keys():
                    key = instance_row_key(old[k])
                    if cache.pop(key, None) is not None:
                        removed.append(key)
                        due.pop(key, None)
        # The rows on screen age with the clock; the others when they come into view.
        for key in on_screen:
            hit = cache.get(key)
            if hit is None or key in changes:
                continue  # a waiting row, or drawn just now
            newest = due.pop(key, None)
            if newest is not None:
                inst, waiting, _ = newest
                cells = instance_row(inst, now, waiting)
            else:
                inst, waiting = hit[0], hit[1]
                ages = instance_ages(inst, now)
                if ages == hit[3]:
                    continue
                cells = instance_row_aged(hit[4], ages)
            cache[key] = (inst, waiting, None, instance_ages(inst, now), cells)
            changes[key] = cells
        if depth:
            # A model's first instance ends its waiting row; its last one's going, the other way.
            served = {inst.model for inst in insts.values()}
            shown = self._shown
            for model, n in depth.items():
                wkey = waiting_row_key(model)
                want = bool(n) and model not in served and needle.casefold() in model.casefold()
                if want and wkey not in shown:
                    changes[wkey] = waiting_row(model, n)
                elif not want and wkey in shown:
                    removed.append(wkey)
        stale = self._shown.keys() - on_screen
        stale.difference_update(removed)
        self.apply_changes(changes, removed, stale)

    def _show_all(self, snapshot: Snapshot, now: float) -> None:
        """``show`` from every instance of ``snapshot``."""
        depth = snapshot.queue_depth
        circuits = snapshot.circuits
        # A row is drawn again only when its instance, its model's queue or its circuit
        # changed: instances are immutable, so an unchanged one is the very same object in
        # the next snapshot, and a poll of one node leaves the other 199 nodes' rows alone.
        # A later clock changes only Last used and TTL left (and they only when their text
        # moves: "12s ago" every second, "5m ago" once a minute), and only those two cells
        # are made again; a tripped circuit's State counts its seconds, so that row is
        # drawn afresh.
        cache, fresh = self._row_cache, {}
        rows: dict[str, Cells] = {}
        # Off screen a row keeps the cells it has until it is scrolled to (or asked for):
        # an update of a 200-node cluster changes hundreds of rows, of which the twenty on
        # screen are drawn now; the others' newest inputs wait in ``_due``.
        on_screen = self.keys_on_screen()
        later: list[str] = []
        due: dict[str, tuple[Instance, int, CircuitState | None]] = {}
        for inst in snapshot.instances.values():
            if not instance_matches(inst, self._filter):
                continue
            key = instance_row_key(inst)
            waiting = depth.get(inst.model, 0)
            circuit = circuits.get(inst.key) if circuits else None
            hit = cache.get(key)
            if hit is not None and key not in on_screen:
                if hit[0] is not inst or hit[1] != waiting or circuit or hit[2] is not None:
                    due[key] = (inst, waiting, circuit)
                fresh[key] = hit
                rows[key] = hit[4]
                later.append(key)
                continue
            ages = instance_ages(inst, now)
            if (
                hit is None
                or hit[0] is not inst
                or hit[1] != waiting
                or circuit is not None
                or hit[2] is not None
            ):
                cells = instance_row(inst, now, waiting, circuit)
            elif hit[3] == ages:
                cells = hit[4]
            else:
                cells = instance_row_aged(hit[4], ages)
            fresh[key] = (inst, waiting, circuit, ages, cells)
            rows[key] = cells
        self._due = due
        self._row_cache = fresh
        served = {inst.model for inst in snapshot.instances.values()}
        needle = self._filter.casefold()
        for model, n in depth.items():
            if n and model not in served and needle in model.casefold():
                rows[waiting_row_key(model)] = waiting_row(model, n)
        self.sync(rows, later=later)

    def fresh_cells(self, keys: Collection[str]) -> dict[str, Cells]:
        """Rows that waited off screen, drawn from the last ``show``'s inputs and now."""
        out: dict[str, Cells] = {}
        now = self._now
        for key in keys:
            hit = self._row_cache.get(key)
            if hit is None:
                continue
            newest = self._due.pop(key, None)
            if newest is not None:
                inst, waiting, circuit = newest
                cells = instance_row(inst, now, waiting, circuit)
            else:
                inst, waiting, circuit, _, cells = hit
                cells = instance_row_aged(cells, instance_ages(inst, now))
            self._row_cache[key] = (inst, waiting, circuit, instance_ages(inst, now), cells)
            out[key] = cells
        return out

    def order(self) -> None:
        """By model, then node."""
        self.sort("model", "node", key=_sort_key)
