"""The tables' fast path draws what a full redraw would.

``KeyedTable`` makes a changed row's strip again and repaints just its line, keeping every
other row's strip and styled line from its caches; rows off screen whose
ages or sparkline alone moved are made only when they come into view. Each of those is a
way for the screen to go stale, so these tests follow a run of updates (cells changing,
rows added above the cursor and removed, a cell growing past its column, the clock moving,
scrolling to rows that waited) and compare, after each step:

- what a terminal would show, rebuilt from every frame the app wrote (so a changed row
  whose lines were not repainted shows), with a full redraw from empty caches;
- every row's cells with the pure render functions' for the same snapshot and clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rich.console import Console
from rich.segment import ControlType
from rich.style import Style
from textual.pilot import Pilot

from lmtui.core.model import Instance, Snapshot
from lmtui.engine.history import History, Sample
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.render import (
    INSTANCE_COLUMNS,
    NODE_COLUMNS,
    instance_row,
    instance_row_key,
    instances_by_node,
    node_row,
)
from lmtui.tui.trend import sparkline
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, instance, next_version, node, snapshot
from .test_app import until

SIZE = (120, 40)
Screen = dict[tuple[int, int], tuple[str, Style | None]]


class Terminal:
    """The cells a real terminal would hold after the app's writes, one frame at a time."""

    def __init__(self) -> None:
        self.cells: Screen = {}

    def write(self, renderable: object, console: Console) -> None:
        x = y = 0
        for segment in console.render(renderable):  # type: ignore[arg-type]
            if segment.control:
                for control in segment.control:
                    if control[0] == ControlType.CURSOR_MOVE_TO:
                        x, y = int(control[1]), int(control[2])  # type: ignore[misc]
                continue
            if segment.text == "\n":
                continue
            for ch in segment.text:
                self.cells[(x, y)] = (ch, segment.style)
                x += 1

    def lines(self, width: int, height: int) -> list[str]:
        return [
            "".join(self.cells.get((x, y), (" ", None))[0] for x in range(width))
            for y in range(height)
        ]


def record(app: LmtuiApp) -> Terminal:
    """Keep a ``Terminal`` of everything the app paints from now on (headless apps write
    nothing; this sees the same frames a terminal would get)."""
    term = Terminal()
    display = app._display

    def capture(screen: object, renderable: object) -> None:
        if renderable is not None and not app._batch_count and screen is app.screen:
            term.write(renderable, app.console)
        display(screen, renderable)  # type: ignore[arg-type]

    app._display = capture  # type: ignore[method-assign]
    return term


def full_redraw(app: LmtuiApp) -> list[str]:
    """The screen drawn from nothing: every cache of both tables emptied first."""
    for table in (app.query_one(NodeTable), app.query_one(ModelTable)):
        table._clear_caches()
        table.refresh()
    term = Terminal()
    term.write(app.screen._compositor.render_update(full=True), app.console)
    return term.lines(*SIZE)


def sample(history: History, at: float, k: int) -> None:
    """One history sample in which every node's requests/s moved."""
    nodes = {f"node-{i}": (float((i + k) % 5), 0.0, 1.0, None) for i in range(N_NODES)}
    history.add(Sample(at, (1.0, 0.0, 5.0, None), nodes))


N_NODES = 16


def cluster(n_nodes: int = N_NODES, n_models: int = 4) -> Snapshot:
    nodes = [node(f"node-{i}") for i in range(n_nodes)]
    insts = [
        instance(f"node-{i}", f"model-{m}", slots_busy=m % 3, last_used=FIXED_NOW - 7 * m)
        for i in range(n_nodes)
        for m in range(n_models)
    ]
    return snapshot(nodes, insts)


def changed(snap: Snapshot, k: int) -> Snapshot:
    """A third of the instances busier or idler, and just used."""
    insts: list[Instance] = []
    for n, inst in enumerate(snap.instances.values()):
        if n % 3 == k % 3:
            inst = replace(inst, slots_busy=(inst.slots_busy + 1) % 5, last_used=FIXED_NOW + k)
        insts.append(inst)
    return next_version(snap, instances=insts)


def expect_rows(app: LmtuiApp, snap: Snapshot, now: float) -> None:
    """Every model row as ``instance_row`` draws it now: what the table holds (and draws)
    for the rows on screen, and what ``shown_row`` says for every row, on screen or not."""
    models = app.query_one(ModelTable)
    want = {
        instance_row_key(inst): [c.plain for c in instance_row(inst, now)]
        for inst in snap.instances.values()
    }
    columns = [c for c, _ in INSTANCE_COLUMNS]
    for key in models.keys_on_screen():
        held = {col: models.get_cell(key, col).plain for col in models.shown_columns}
        assert held == {col: want[key][columns.index(col)] for col in held}, key
    for key, cells in want.items():
        assert [c.plain for c in models.shown_row(key)] == cells, key


def expect_nodes(app: LmtuiApp, snap: Snapshot, now: float, history: History) -> None:
    """The same for the node table, sparklines included."""
    nodes = app.query_one(NodeTable)
    groups = instances_by_node(snap)
    want = {
        name: [
            c.plain
            for c in node_row(
                n,
                snap,
                now,
                instances=groups[name],
                trend=sparkline(history, "node", name, "requests"),
            )
        ]
        for name, n in snap.nodes.items()
    }
    columns = [c for c, _ in NODE_COLUMNS]
    for key in nodes.keys_on_screen():
        held = {col: nodes.get_cell(key, col).plain for col in nodes.shown_columns}
        assert held == {col: want[key][columns.index(col)] for col in held}, key
    for key, cells in want.items():
        assert [c.plain for c in nodes.shown_row(key)] == cells, key


async def settle(pilot: Pilot[None], app: LmtuiApp, client: FakeClient, snap: Snapshot) -> None:
    client.push(snap)
    await until(pilot, lambda: app.shown_version == snap.version)
    await pilot.pause()


async def test_in_place_updates_draw_what_a_full_redraw_draws() -> None:
    snap = cluster()
    history = History()
    clock = [FIXED_NOW]
    client = FakeClient(snap, history=history)
    app = build_app(client, clock=lambda: clock[0], theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        term = record(app)
        app.screen.refresh()
        await pilot.pause()
        models = app.query_one(ModelTable)
        nodes = app.query_one(NodeTable)
        assert models.row_count > len(models.keys_on_screen())  # some rows off screen

        def check(step: str, *, rows: bool = True) -> None:
            assert term.lines(*SIZE) == full_redraw(app), step
            if rows:  # (shown_row brings every waiting row up to date)
                expect_rows(app, snap, clock[0])
                expect_nodes(app, snap, clock[0], history)

        steps: list[tuple[str, Callable[[Snapshot, int], Snapshot]]] = [
            ("cells change", changed),
            ("the clock moves", lambda s, k: next_version(s)),
            ("cells change again", changed),
            (
                "a row added above the cursor, one removed",
                lambda s, k: next_version(
                    s,
                    instances=[
                        *[i for i in s.instances.values() if i.key != ("node-5", "model-3")],
                        instance("node-0", "aaa-first", last_used=FIXED_NOW + k),
                    ],
                ),
            ),
            (
                "a cell grows past its column",
                lambda s, k: next_version(
                    s, nodes=[replace(s.nodes["node-2"], last_error="connection refused " * 3)]
                ),
            ),
        ]
        models.focus()
        await pilot.press("down", "down")
        cursor = models.cursor_key
        for k, (step, change) in enumerate(steps, start=1):
            clock[0] = FIXED_NOW + 10 * k
            sample(history, clock[0], k)
            snap = change(snap, k)
            await settle(pilot, app, client, snap)
            check(step)
            assert models.cursor_key == cursor, step

        # Off screen, the ages and sparklines moved while nothing else did: those rows
        # wait...
        clock[0] += 45
        sample(history, clock[0], 9)
        snap = next_version(snap)
        await settle(pilot, app, client, snap)
        waiting = set(models._stale)
        assert waiting and not waiting & models.keys_on_screen()
        waiting_nodes = set(nodes._stale)
        assert waiting_nodes and not waiting_nodes & nodes.keys_on_screen()
        check("ages waiting off screen", rows=False)
        # ...and are drawn when scrolled to, and so are the nodes' waiting sparklines.
        models.scroll_end(animate=False)
        nodes.scroll_end(animate=False)
        await pilot.pause()
        await pilot.pause()
        assert waiting & models.keys_on_screen()
        assert waiting_nodes & nodes.keys_on_screen()
        check("scrolled to the rows that waited")
        snap = changed(snap, 7)
        await settle(pilot, app, client, snap)
        check("cells change while scrolled")
        models.scroll_home(animate=False)
        await pilot.pause()
        await pilot.pause()
        check("scrolled back")


async def test_a_cell_written_in_place_leaves_the_other_rows_rendering_alone() -> None:
    """The counter the fast path exists for: one changed cell makes one row again, and
    every other row's strip is kept as it was."""
    snap = cluster(2, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await pilot.pause()
        models = app.query_one(ModelTable)
        strips = dict(models._strips)
        drawn = models.rows_drawn
        assert len(strips) == models.row_count  # every row is on screen, and was drawn
        inst = snap.instances[("node-1", "model-2")]
        snap = next_version(
            snap,
            instances=[
                replace(i, slots_busy=4) if i is inst else i for i in snap.instances.values()
            ],
        )
        await settle(pilot, app, client, snap)
        assert models.last_sync_stats == (0, 1, 0)
        assert models.get_cell("node-1/model-2", "slots").plain == "4/4"
        assert models.rows_drawn - drawn == 1
        again = {k for k, strip in strips.items() if models._strips.get(k) is not strip}
        assert again == {"node-1/model-2"}
