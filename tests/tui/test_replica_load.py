"""``l`` on the model table: one more replica of the model under the cursor, picked from a
dialog that previews where the engine would place it ("anywhere") and what a load on each
node that can take one would do there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, OptionList, Static

from lmtui.config import Config, NodeConfig, PollConfig
from lmtui.core.model import AvailableModel, GiB, Health, NodeKind
from lmtui.engine.client import InProcessClient
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.controls import ANYWHERE_LABEL
from lmtui.tui.widgets.dialogs import ChoiceScreen
from lmtui.tui.widgets.model_table import ModelTable

from .fakes import FIXED_NOW, FakeClient, instance, node, snapshot
from .test_app import SIZE, started, until

M = "mistral-small-24b"


def listing(*models: tuple[str, float]) -> tuple[AvailableModel, ...]:
    return tuple(AvailableModel(name, int(gb * GiB)) for name, gb in models)


def cluster_app(**kw: object) -> tuple[LmtuiApp, FakeClient]:
    """``M`` (14 GiB) loaded on ``holder``; of the other nodes that list it, ``roomy`` has
    room, ``tight`` has room once its idle model goes, ``stuck`` is full of a pinned model;
    ``drained``, ``down`` and ``old-lms`` (its backend cannot load) list it too but cannot
    take a load, and ``elsewhere`` does not list it."""
    m = (M, 14)
    nodes = [
        node("holder", total_gb=64, used_gb=14, available=listing(m)),
        node("roomy", total_gb=64, used_gb=0, available=listing(m)),
        node("tight", total_gb=20, used_gb=10, available=listing(m, ("old", 10))),
        node("stuck", total_gb=20, used_gb=12, available=listing(m)),
        node("drained", total_gb=64, used_gb=0, available=listing(m), drained=True),
        node("down", total_gb=64, used_gb=0, available=listing(m), health=Health.DOWN),
        node(
            "old-lms",
            total_gb=64,
            used_gb=0,
            available=listing(m),
            no_load="LM Studio before 0.4 has no REST load or unload",
        ),
        node("elsewhere", total_gb=64, used_gb=0, available=listing(("other", 4))),
    ]
    instances = [
        instance("holder", M, size_bytes=14 * GiB, slots_busy=0),
        instance("tight", "old", size_bytes=10 * GiB, slots_busy=0, last_used=FIXED_NOW - 7200),
        instance("stuck", "pinned-one", size_bytes=12 * GiB, slots_busy=0, pinned=True),
        instance("elsewhere", "solo", size_bytes=4 * GiB, slots_busy=0),
    ]
    client = FakeClient(snapshot(nodes, instances), **kw)  # type: ignore[arg-type]
    return build_app(client, clock=lambda: FIXED_NOW), client


def labels(app: LmtuiApp) -> list[str]:
    options = app.screen.query_one(OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def note(app: LmtuiApp) -> str:
    return str(app.screen.query_one("#choice-note", Static).render())


async def open_on(pilot, app: LmtuiApp, row: str) -> None:  # type: ignore[no-untyped-def]
    """Put the model table's cursor on ``row`` and press ``l``."""
    models = app.query_one(ModelTable)
    models.focus()
    await pilot.pause()
    models.move_cursor(row=models.shown_keys.index(row))
    await pilot.pause()
    assert models.cursor_key == row
    await pilot.press("l")


async def test_the_dialog_offers_anywhere_then_each_node_that_can_take_one() -> None:
    app, client = cluster_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await open_on(pilot, app, f"holder/{M}")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert app.screen.title_text == f"Load another replica of {M}"
        shown = labels(app)
        # Not holder (it has one), drained, down, old-lms nor elsewhere.
        assert [label.split()[0] for label in shown] == ["anywhere", "roomy", "tight", "stuck"]
        assert shown[0] == f"{ANYWHERE_LABEL}  on roomy, fits"
        assert [label.split("  ")[-1] for label in shown[1:]] == [
            "fits",
            "evicts 1",
            "cannot fit",
        ]
        # The highlighted entry's full preview, entry by entry.
        await until(pilot, lambda: note(app).startswith("On roomy: Fits in free memory"))
        await pilot.press("down")
        await until(pilot, lambda: note(app).startswith("Fits in free memory"))
        assert "roomy has" in note(app)
        await pilot.press("down")
        await until(pilot, lambda: note(app).startswith("Fits after evicting"))
        assert "unloads old" in note(app)
        await pilot.press("down")
        await until(pilot, lambda: note(app).startswith("Cannot fit here"))
        assert "pinned-one" in note(app) and "pinned" in note(app)
        assert client.commands == []


async def test_picking_a_node_loads_there_and_anywhere_lets_the_engine_place_it() -> None:
    app, client = cluster_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await open_on(pilot, app, f"holder/{M}")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("down", "down", "enter")  # tight, which evicts "old" first
        await until(pilot, lambda: client.commands == [("load", M, "tight")])
        assert not isinstance(app.screen, ChoiceScreen)

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("enter")  # anywhere: no node named
        await until(pilot, lambda: client.commands == [("load", M, "tight"), ("load", M, None)])

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("escape")  # picks nothing, sends nothing
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        await pilot.pause(0.1)
        assert len(client.commands) == 2


async def test_no_node_that_can_take_a_replica_is_a_warning_not_a_dialog() -> None:
    app, client = cluster_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await open_on(pilot, app, "elsewhere/solo")  # no other node lists "solo"
        await until(pilot, lambda: bool(app._notifications))
        [told] = app._notifications
        assert told.severity == "warning"
        assert told.message == (
            "no node can load another replica of solo: "
            "no healthy, undrained node that can load solo"
        )
        assert not isinstance(app.screen, ChoiceScreen)
        assert client.commands == []


async def test_anywhere_says_when_no_node_can_take_it_now() -> None:
    """Every node that lists the model is full of busy instances: the nodes are offered
    (each says no room now) and so is "anywhere", whose preview says no node can take it
    now and why (the engine's own reason)."""
    nodes = [
        node("a", total_gb=16, used_gb=14, available=listing((M, 14))),
        node("b", total_gb=16, used_gb=10, available=listing((M, 14), ("busy", 10))),
    ]
    instances = [
        instance("a", M, size_bytes=14 * GiB),
        instance("b", "busy", size_bytes=10 * GiB, slots_busy=2, in_flight=2),
    ]
    client = FakeClient(snapshot(nodes, instances))
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await open_on(pilot, app, f"a/{M}")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert labels(app) == [f"{ANYWHERE_LABEL}  no room now", "b  14.0 GB  no room now"]
        await until(pilot, lambda: note(app).startswith("No node can take it now: no room"))


async def test_read_only_refuses_it_on_the_model_table_too() -> None:
    app, client = cluster_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await open_on(pilot, app, f"holder/{M}")
        await until(pilot, lambda: bool(app._notifications))
        [told] = app._notifications
        assert (told.message, told.severity) == (
            "Load: lmtui is read-only (--read-only)",
            "warning",
        )
        assert not isinstance(app.screen, ChoiceScreen)
        assert client.commands == []


async def test_the_palettes_load_on_a_model_row_opens_the_same_dialog() -> None:
    app, client = cluster_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.query_one(ModelTable).focus()
        await pilot.pause()
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        app.screen.query_one(Input).value = "load a model"

        def first_hit() -> str:
            hits = app.screen.query_one(CommandList)
            return str(hits.get_option_at_index(0).prompt) if hits.option_count else ""

        await until(pilot, lambda: first_hit().startswith("Load a model"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert app.screen.title_text == f"Load another replica of {M}"
        await pilot.press("down", "enter")
        await until(pilot, lambda: client.commands == [("load", M, "roomy")])


# -- live: the simulator, a real engine, the in-process client -----------------------------

SPECS = [
    SimNodeSpec(
        name=name,
        kind=NodeKind.OLLAMA,
        memory_gb=32,
        models=[SimModel("qwen2.5:7b", 4.7)],
        loaded=loaded,
        # Ollama's 5 minutes are 3 s at the time scale below: no replica may expire here.
        keep_alive_s=10**6,
    )
    for name, loaded in (("ollama-a", ["qwen2.5:7b"]), ("ollama-b", []), ("ollama-c", []))
]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    async with asyncio.timeout(10), SimCluster(SPECS, time_scale=0.01) as cluster:
        config = Config(
            nodes=[
                NodeConfig(name=s.name, kind=s.kind, url=cluster.url(s.name), memory_gb=32)
                for s in SPECS
            ],
            poll=PollConfig(interval=0.2, timeout=1.0),
        )
        eng = Engine(config, source="/tmp/replica-load-test.toml")
        await eng.start()
        try:
            yield eng
        finally:
            async with asyncio.timeout(10):
                await eng.stop()


async def test_live_anywhere_goes_where_its_preview_said_and_a_picked_node_too(
    engine: Engine,
) -> None:
    app = build_app(InProcessClient(engine))
    q = "qwen2.5:7b"
    async with app.run_test(size=SIZE) as pilot:
        models = app.query_one(ModelTable)
        await until(pilot, lambda: models.shown_keys == [f"ollama-a/{q}"], 10)
        # Each node's catalogue, polled: the dialog offers the nodes that list the model.
        await until(pilot, lambda: all(n.available for n in engine.store.snapshot.nodes.values()))
        await open_on(pilot, app, f"ollama-a/{q}")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        shown = labels(app)
        assert [label.split()[0] for label in shown] == ["anywhere", "ollama-b", "ollama-c"]
        assert all(label.endswith("fits") for label in shown)
        [named] = [n for n in ("ollama-b", "ollama-c") if shown[0].endswith(f"on {n}, fits")]
        await pilot.press("enter")  # anywhere
        await until(pilot, lambda: f"{named}/{q}" in models.shown_keys, 10)
        assert len(models.shown_keys) == 2

        # The other node is left: picked by name this time.
        other = "ollama-c" if named == "ollama-b" else "ollama-b"
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert [label.split()[0] for label in labels(app)] == ["anywhere", other]
        await pilot.press("down", "enter")
        await until(pilot, lambda: f"{other}/{q}" in models.shown_keys, 10)

        # Every node holds one: a warning, no dialog.
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        app.clear_notifications()
        await pilot.press("l")
        await until(pilot, lambda: any(n.severity == "warning" for n in app._notifications))
        told = [n.message for n in app._notifications if n.severity == "warning"]
        assert told == [
            f"no node can load another replica of {q}: no healthy, undrained node that can load {q}"
        ]
        assert not isinstance(app.screen, ChoiceScreen)
