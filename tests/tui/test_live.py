"""The whole chain live: simulated servers → real Engine polls → InProcessClient → screen.

Nothing is faked between the HTTP servers and the table cells: a node that stops answering
must show as down on screen, and a model loaded through a server's own API (behind lmtui's
back) must appear as a row, each within about two poll intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from textual.pilot import Pilot

from lmtui.config import Config, NodeConfig, PollConfig
from lmtui.core.model import NodeKind
from lmtui.engine.client import InProcessClient
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec
from lmtui.tui.app import LmtuiApp, build_app
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

POLL_S = 0.2
#: Two polls, plus room for a loaded 2-core CI machine to schedule them: the point is
#: "within a couple of polls", not a speed requirement.
WITHIN_S = 2 * POLL_S + 3.0

SPECS = [
    SimNodeSpec(
        name="ollama-1",
        kind=NodeKind.OLLAMA,
        memory_gb=32,
        models=[SimModel("qwen2.5:7b", 4.7), SimModel("llama3.2:3b", 2.0)],
        loaded=["qwen2.5:7b"],
        parallel=2,
        # Ollama's default keep-alive (300 s) is 3 s of wall time at time_scale 0.01: on a
        # loaded machine the model could leave before the test counted it. Nothing here is about
        # expiry, so nothing expires.
        keep_alive_s=10**6,
    ),
    SimNodeSpec(
        name="studio-1",
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("gemma-3-12b", 8.1)],
        loaded=["gemma-3-12b"],
    ),
]


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    async with asyncio.timeout(10), SimCluster(SPECS, time_scale=0.01) as c:
        yield c


@pytest.fixture
async def engine(cluster: SimCluster) -> AsyncIterator[Engine]:
    config = Config(
        nodes=[
            # memory_gb: the sims run on this host, whose real memory would make the
            # memory column depend on the test machine.
            NodeConfig(name=s.name, kind=s.kind, url=cluster.url(s.name), memory_gb=s.memory_gb)
            for s in SPECS
        ],
        poll=PollConfig(interval=POLL_S, timeout=1.0),
    )
    eng = Engine(config, source="/tmp/live-test.toml")
    await eng.start()
    try:
        yield eng
    finally:
        async with asyncio.timeout(10):
            await eng.stop()


async def until(pilot: Pilot[None], cond: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not cond():
            await pilot.pause(0.02)


def cell(table: NodeTable | ModelTable, row: str, column: str) -> str:
    return str(table.get_cell(row, column)) if row in table.shown_keys else ""


async def test_live_node_down_and_model_load_show_on_screen(
    cluster: SimCluster, engine: Engine
) -> None:
    app: LmtuiApp = build_app(InProcessClient(engine))
    async with app.run_test(size=(160, 40)) as pilot:
        nodes = app.query_one(NodeTable)
        models = app.query_one(ModelTable)
        await until(
            pilot,
            lambda: (
                all(cell(nodes, s.name, "status") == "healthy" for s in SPECS)
                and {"ollama-1/qwen2.5:7b", "studio-1/gemma-3-12b"} <= set(models.shown_keys)
            ),
            within=10,
        )
        assert nodes.shown_keys == ["ollama-1", "studio-1"]

        # A node stops answering: its row turns "down" in place.
        await cluster.node("studio-1").set_down(True)
        await until(pilot, lambda: cell(nodes, "studio-1", "status") == "down", WITHIN_S)
        assert nodes.row_count == 2
        assert cell(nodes, "ollama-1", "status") == "healthy"
        assert cell(nodes, "studio-1", "error") != ""

        # A model loaded through Ollama's own API appears as a new row.
        async with httpx.AsyncClient(base_url=cluster.url("ollama-1"), timeout=5) as http:
            # keep_alive -1: kept loaded (5m, 3 s here, could end before the count below).
            r = await http.post("/api/generate", json={"model": "llama3.2:3b", "keep_alive": -1})
            assert r.status_code == 200, r.text
        await until(
            pilot,
            lambda: cell(models, "ollama-1/llama3.2:3b", "state") == "loaded",
            WITHIN_S,
        )
        assert cell(models, "ollama-1/llama3.2:3b", "node") == "ollama-1"
        assert cell(nodes, "ollama-1", "models") == "2"

        # And the node comes back.
        await cluster.node("studio-1").set_down(False)
        await until(pilot, lambda: cell(nodes, "studio-1", "status") == "healthy", 10)


async def test_live_history_reaches_an_attached_dashboard_and_the_node_screen(
    cluster: SimCluster,
) -> None:
    """Requests through a real router show up as a rate in the node table's sparkline of a
    dashboard attached over HTTP (history over the control API), and Enter on the node
    opens its screen with its instance and its plots."""
    from lmtui.engine.client import HttpEngineClient
    from lmtui.tui.widgets.detail_screens import NodeScreen, ReplicaTable, TrendRow

    config = Config(
        nodes=[
            NodeConfig(name=s.name, kind=s.kind, url=cluster.url(s.name), memory_gb=s.memory_gb)
            for s in SPECS
        ],
        poll=PollConfig(interval=POLL_S, timeout=1.0),
    )
    engine = Engine(config, source="/tmp/live-test.toml", listen="127.0.0.1:0")
    await engine.start()
    remote = HttpEngineClient(engine.router_url or "")
    try:
        await remote.connect()
        app = build_app(remote)
        async with app.run_test(size=(160, 40)) as pilot:
            nodes = app.query_one(NodeTable)
            await until(pilot, lambda: "ollama-1" in nodes.shown_keys, within=10)
            body = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]}
            async with httpx.AsyncClient(base_url=engine.router_url or "", timeout=10) as h:
                for _ in range(5):
                    r = await h.post("/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
            # The next sample counts them, and the sparkline keeps them for 5 minutes: a
            # block above the lowest (zero) one.
            await until(
                pilot,
                lambda: any(c not in " ▁" for c in cell(nodes, "ollama-1", "trend")[:10]),
                within=10,
            )
            assert remote.history().points("node", "ollama-1", "requests")
            nodes.focus()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, NodeScreen), within=5)
            screen = app.screen
            assert isinstance(screen, NodeScreen)
            assert screen.query_one(ReplicaTable).shown_keys == ["ollama-1/qwen2.5:7b"]
            plots = {row.metric: row for row in screen.query(TrendRow)}
            assert any(v for v in plots["requests"].values if v)
            await pilot.press("escape")
    finally:
        await remote.aclose()
        async with asyncio.timeout(10):
            await engine.stop()
