"""SVG snapshot tests: the whole screen, fixed size, frozen clock, fixed cluster.

Regenerate after an intended visual change with
``.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from textual.pilot import Pilot

from lmtui.core.model import AvailableModel, GiB
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.widgets.header import ClusterHeader

from .fakes import FIXED_NOW, FakeClient, fixed_cluster, fixed_details, fixed_history

SIZE = (132, 32)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Event-log times are local time; pin the zone so the SVG is the same everywhere."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "UTC")
        time.tzset()
        yield
    time.tzset()


def app_for(source: str) -> tuple[LmtuiApp, Callable[[Pilot[None]], Any]]:
    snap, events = fixed_cluster()
    client = FakeClient(snap, events, source=source, history=fixed_history())
    client.details = fixed_details()
    app = build_app(client, clock=lambda: FIXED_NOW)

    async def shown(pilot: Pilot[None]) -> None:
        async with asyncio.timeout(5):
            while not (
                client.watching
                and app.shown_version == snap.version
                # The strategy comes from its own request, after the first update.
                and "strategy" in app.query_one(ClusterHeader).totals_text
            ):
                await pilot.pause(0.01)

    return app, shown


def test_demo_dashboard(snap_compare: Any) -> None:
    app, shown = app_for("demo")
    assert snap_compare(app, terminal_size=SIZE, run_before=shown)


def test_filtered_models(snap_compare: Any) -> None:
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def filtered(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("slash", *"mac-studio")

    assert snap_compare(app, terminal_size=SIZE, run_before=filtered)


def test_help_modal(snap_compare: Any) -> None:
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def help_open(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("question_mark")

    assert snap_compare(app, terminal_size=SIZE, run_before=help_open)


def test_dashboard_at_80x24(snap_compare: Any) -> None:
    """The smallest terminal we design for: low-priority columns give way, no scrollbar."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown)


def test_dashboard_at_160x48(snap_compare: Any) -> None:
    """A tall terminal: the tables take their rows and the event log all the rest."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")
    assert snap_compare(app, terminal_size=(160, 48), run_before=shown)


def test_dashboard_at_120x40(snap_compare: Any) -> None:
    """A common laptop size: the sparkline column stays, the header trend has its line."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")
    assert snap_compare(app, terminal_size=(120, 40), run_before=shown)


def test_node_screen(snap_compare: Any) -> None:
    """Enter on a node: its memory, slots, trends, instances and errors."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def opened(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("down", "enter")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(120, 40), run_before=opened)


def test_model_screen(snap_compare: Any) -> None:
    """Enter on a model: its replicas, request trend, percentiles and settings."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def opened(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("tab", "ctrl+end", "enter")
        async with asyncio.timeout(5):
            while "p99" not in str(app.screen.query_one("#summary").render()):
                await pilot.pause(0.01)

    assert snap_compare(app, terminal_size=(120, 40), run_before=opened)


def preview_app() -> tuple[LmtuiApp, Callable[[Pilot[None]], Any]]:
    """The fixed cluster with mac-studio's catalogue: one model that fits, one that needs an
    eviction, one that the pinned qwen3 keeps out."""
    app, shown = app_for("demo")
    client = app.client
    assert isinstance(client, FakeClient)
    snap = client.snapshot()
    nodes = dict(snap.nodes)
    nodes["mac-studio"] = replace(
        nodes["mac-studio"],
        available=(
            AvailableModel("mistral-small-24b", 14 * GiB),
            AvailableModel("big-170", 170 * GiB),
            AvailableModel("huge-300", 300 * GiB),
        ),
    )
    client._snap = replace(snap, nodes=MappingProxyType(nodes))
    return app, shown


def test_load_dialog_with_its_memory_fit_preview(snap_compare: Any) -> None:
    app, shown = preview_app()

    async def dialog(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("l", "down")  # the model that evicts gemma-3-12b

    assert snap_compare(app, terminal_size=(120, 40), run_before=dialog)


def test_command_palette_finds_an_action_with_its_key(snap_compare: Any) -> None:
    app, shown = app_for("demo")

    async def palette(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("ctrl+p", *"drain")
        await pilot.pause(0.3)  # the palette searches in a worker

    assert snap_compare(app, terminal_size=(120, 40), run_before=palette)


@pytest.mark.parametrize("theme", ["lmtui-day", "lmtui-contrast"])
def test_each_shipped_theme(snap_compare: Any, theme: str) -> None:
    """The light and high-contrast themes on the same screen (the dark default is every
    other snapshot's)."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def themed(pilot: Pilot[None]) -> None:
        await shown(pilot)
        app.theme = theme
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(120, 40), run_before=themed)


def test_rebalance_preview(snap_compare: Any) -> None:
    """r: the plan (upkeep, then proposals), asked before anything is carried out."""
    from lmtui.core.rebalance import PlanStep, RebalancePlan

    app, shown = app_for("/home/me/.config/lmtui/config.toml")
    plan = RebalancePlan(
        steps=(
            PlanStep("load", "gpu-box", "gemma-3-12b", "pinned", 8 * GiB),
            PlanStep("load", "gpu-box", "qwen3-8b", "all replicas busy", 5 * GiB, proposed=True),
        ),
        loads_bytes=13 * GiB,
    )

    async def rebalance(*, apply: bool = False) -> RebalancePlan:
        return plan

    app.client.rebalance = rebalance  # type: ignore[method-assign]

    async def previewed(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("r")
        async with asyncio.timeout(5):
            while "confirm" not in type(app.screen).__name__.lower():
                await pilot.pause(0.01)

    assert snap_compare(app, terminal_size=(120, 40), run_before=previewed)


def test_strategy_picker(snap_compare: Any) -> None:
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def picker(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("s")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(120, 40), run_before=picker)


def test_drain_confirmation(snap_compare: Any) -> None:
    """d on a node asks first, saying what a drain does."""
    app, shown = app_for("/home/me/.config/lmtui/config.toml")

    async def asked(pilot: Pilot[None]) -> None:
        await shown(pilot)
        await pilot.press("d")
        async with asyncio.timeout(5):
            while "confirm" not in type(app.screen).__name__.lower():
                await pilot.pause(0.01)

    assert snap_compare(app, terminal_size=(120, 40), run_before=asked)


def test_header_with_peers_at_work(snap_compare: Any) -> None:
    """[[peers]] taking requests: the header counts them (yellow while some are in flight)."""
    from lmtui.core.model import PeerState

    app, shown = app_for("/home/me/.config/lmtui/config.toml")
    client = app.client
    assert isinstance(client, FakeClient)
    peers = {"cloud": PeerState(name="cloud", served=14, in_flight=2, budget=1000, budget_used=16)}
    client._snap = replace(client.snapshot(), peers=MappingProxyType(peers))
    assert snap_compare(app, terminal_size=(120, 40), run_before=shown)
