"""Detail screens (Enter on a row, Escape back) and the event log's level key."""

from __future__ import annotations

from textual.widgets import Static

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import CircuitState, NodeKind
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.widgets.detail_screens import ModelScreen, NodeScreen, ReplicaTable, TrendRow
from lmtui.tui.widgets.event_log import EventLog
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import (
    FIXED_NOW,
    FakeClient,
    fixed_cluster,
    fixed_details,
    fixed_history,
    instance,
    next_version,
    node,
    snapshot,
)
from .test_app import until

SIZE = (140, 45)


def make_app() -> tuple[LmtuiApp, FakeClient]:
    snap, events = fixed_cluster()
    client = FakeClient(snap, events, history=fixed_history())
    client.details = fixed_details()
    return build_app(client, clock=lambda: FIXED_NOW), client


def text_of(screen: NodeScreen | ModelScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def test_enter_on_a_node_opens_its_screen_live_and_escape_closes_it() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        app.query_one(NodeTable).focus()
        await pilot.press("down", "enter")  # gpu-box
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        screen = app.screen
        assert isinstance(screen, NodeScreen) and screen.node == "gpu-box"
        summary = text_of(screen, "#summary")
        assert "58.9 GB used of 64.0 GB" in summary and "ssh-macos" in summary
        assert "6.2 GB in 2 instance(s), the backend's own sizes (1 of unknown size)" in summary
        replicas = screen.query_one(ReplicaTable)
        assert replicas.shown_keys == ["gpu-box/llama3.1:8b", "gpu-box/nomic-embed-text"]
        rows = {r.metric: r for r in screen.query(TrendRow)}
        # The burst a minute ago (3/s for 40 s) stands out of the plot's columns.
        burst = [v for v in rows["requests"].values if v is not None]
        assert len(burst) > 50 and 2.5 <= max(burst) <= 3.0 and min(burst) < 0.5
        # A new snapshot reaches the open screen: a third model loads there.
        snap = client.snapshot()
        client.push(
            next_version(snap, instances=[*snap.instances.values(), instance("gpu-box", "phi-4")]),
            [
                Event(
                    FIXED_NOW,
                    EventKind.ERROR,
                    "loading qwen on gpu-box failed: out of memory",
                    node="gpu-box",
                    level=Level.ERROR,
                )
            ],
        )
        await until(pilot, lambda: "gpu-box/phi-4" in replicas.shown_keys)
        await until(pilot, lambda: "out of memory" in text_of(screen, "#errors"))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen))
        # The dashboard kept following meanwhile.
        assert "gpu-box/phi-4" in app.query_one(ModelTable).shown_keys


async def test_a_down_node_says_why_in_its_screen() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        app.query_one(NodeTable).focus()
        await pilot.press("down", "down", "enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        assert isinstance(app.screen, NodeScreen)
        errors = text_of(app.screen, "#errors")
        assert "Connection refused" in errors and "old-mini is down" in errors
        assert "unknown" in text_of(app.screen, "#summary")  # no memory reading


async def test_a_pool_node_screen_lists_its_processes_and_log_lines() -> None:
    pool = node("pool", NodeKind.LLAMACPP_POOL, url="http://127.0.0.1:9000")
    client = FakeClient(snapshot([pool], [instance("pool", "gemma3-270m")]))
    client.procs["pool"] = [
        {
            "model": "gemma3-270m",
            "port": 9101,
            "pid": 4242,
            "state": "ready",
            "last_lines": ["srv  load_model: loading", "main: server is listening"],
        }
    ]
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        app.query_one(NodeTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen))
        assert isinstance(app.screen, NodeScreen)
        screen = app.screen
        await until(pilot, lambda: "pid 4242" in text_of(screen, "#processes"))
        assert "server is listening" in text_of(screen, "#processes")


async def test_enter_on_a_model_opens_its_screen_with_percentiles_and_settings() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        models = app.query_one(ModelTable)
        models.focus()
        await pilot.press("ctrl+end", "enter")  # qwen3-30b-a3b, sorted last
        await until(pilot, lambda: isinstance(app.screen, ModelScreen))
        screen = app.screen
        assert isinstance(screen, ModelScreen) and screen.model == "qwen3-30b-a3b"
        await until(pilot, lambda: "p99 2.4 s" in text_of(screen, "#summary"))
        summary = text_of(screen, "#summary")
        assert "pinned" in summary and "priority high" in summary and "min replicas 1" in summary
        assert "412 in the last 1h 00m, 3 failed" in summary
        assert "p50 4 ms  p90 210 ms  p99 1.9 s" in summary  # queue wait
        assert screen.query_one(ReplicaTable).shown_keys == ["mac-studio/qwen3-30b-a3b"]
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0])


async def test_a_model_screen_without_figures_says_so() -> None:
    app, client = make_app()
    client.details = {}
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        app.query_one(ModelTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ModelScreen))
        assert isinstance(app.screen, ModelScreen)
        assert "gives no request figures" in text_of(app.screen, "#summary")


async def test_an_open_circuit_shows_in_both_tables_and_half_open_after_the_wait() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        snap = client.snapshot()
        c = CircuitState("mac-studio", "qwen3-30b-a3b", 3, FIXED_NOW - 12, FIXED_NOW + 8)
        from dataclasses import replace
        from types import MappingProxyType

        client.push(replace(snap, version=snap.version + 1, circuits=MappingProxyType({c.key: c})))
        models, nodes = app.query_one(ModelTable), app.query_one(NodeTable)
        state = [k for k, _ in ModelTable(id=None)._column_spec].index("state")
        await until(
            pilot,
            lambda: models.shown_row("mac-studio/qwen3-30b-a3b")[state].plain == "circuit open 12s",
        )
        assert "1 circuit open" in nodes.shown_row("mac-studio")[2].plain
        c2 = replace(c, open_until=FIXED_NOW - 1)
        client.push(replace(snap, version=snap.version + 2, circuits=MappingProxyType({c.key: c2})))
        await until(
            pilot,
            lambda: (
                models.shown_row("mac-studio/qwen3-30b-a3b")[state].plain == "circuit half-open"
            ),
        )
        assert "1 half-open" in nodes.shown_row("mac-studio")[2].plain


async def test_routing_events_are_hidden_until_v_and_long_lines_wrap() -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 30)) as pilot:
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        log = app.query_one(EventLog)
        route = Event(FIXED_NOW, EventKind.ROUTE, "qwen3-30b-a3b -> mac-studio: least busy")
        long = Event(
            FIXED_NOW,
            EventKind.LOAD,
            "loading llama3.1:8b on gpu-box failed: the server answered 500 with a long "
            "explanation about memory and contexts that goes far past eighty columns",
            level=Level.ERROR,
        )
        client.push(client.snapshot(), [route, long])
        await until(pilot, lambda: log.count == 6)
        assert route not in log.shown and long in log.shown
        # The long line wrapped instead of being cut, under its message, not its time: its
        # end is on screen.
        texts = [line.text.rstrip() for line in log.lines]
        assert texts[-1].strip() == "columns" and texts[-1].startswith(" " * 9)
        lines_before = len(log.lines)
        await pilot.press("v")
        assert route in log.shown
        assert len(log.lines) == lines_before + 1
        await pilot.press("v")
        assert route not in log.shown
