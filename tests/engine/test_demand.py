"""The engine's demand: seeded from a real request log, fed by finished requests, and pushed
into the dispatcher's settings by the pool manager (what the gdsf eviction policy reads)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import openai
import pytest
from _routing import MSG, client, eventually, routed

from lmtui.core.demand import HALF_LIFE_S
from lmtui.core.model import NodeKind
from lmtui.engine import commands as cmd
from lmtui.engine.demand import Demand
from lmtui.engine.reqlog import RequestLog, RequestRecord
from lmtui.sim import SimModel, SimNodeSpec

NOW = 1_700_000_000.0


def rec(model: str, at: float, outcome: str = "ok") -> RequestRecord:
    return RequestRecord(at, model, "mac", 0.0, 0.1, 1.0, 10, 5, outcome, 200, False)


async def test_seeded_from_the_request_log_with_decay(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.sqlite3", flush_interval_s=60)
    async with asyncio.timeout(10):
        await log.start()
        for k in range(30):
            log.record(rec("hot", NOW - 10 - k))  # 30 in the last minute
        log.record(rec("old", NOW - 3 * 600))  # one, three half-lives ago
        log.record(rec("ancient", NOW - 100 * 600))  # out of the window
        log.record(rec("typo", NOW - 5, outcome="not_found"))
        log.record(rec("hot", NOW - 5, outcome="bad_request"))
        demand = Demand(half_life_s=600)
        assert await demand.seed(log, NOW) == 31
        await log.stop()
    rates = demand.rates(NOW)
    tau = 600 / math.log(2)
    assert set(rates) == {"hot", "old"}
    exact = sum(2 ** (-(10 + k) / 600) for k in range(30)) / tau
    assert rates["hot"] == pytest.approx(exact, rel=0.02)  # in one-minute buckets
    assert rates["old"] == pytest.approx(2**-3 / tau, rel=0.1)


def test_finished_requests_count_unless_no_model_was_asked_for() -> None:
    demand = Demand(half_life_s=600)
    demand.request_done("m1", "ok", NOW)
    demand.request_done("m1", "rejected_429", NOW)  # wanted, even if refused
    demand.request_done("nope", "not_found", NOW)
    demand.request_done("m1", "bad_request", NOW)
    assert demand.rates(NOW) == {"m1": pytest.approx(2 * math.log(2) / 600)}


def sim_node() -> SimNodeSpec:
    return SimNodeSpec(
        name="a",
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("m1", 10.0), SimModel("m2", 10.0)],
        loaded=["m1"],
        parallel=2,
        version="0.4.2",
    )


async def test_the_pool_manager_pushes_request_rates_into_the_dispatcher() -> None:
    async with routed([sim_node()]) as (_cluster, engine):
        c = client(engine)
        for _ in range(3):
            await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="no-such-model", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
        # The pool manager ticks every max(1 s, 2 polls): within a few seconds.
        await eventually(lambda: "m1" in engine.dispatcher.settings.pool.request_rate, 5.0)
        rates = engine.dispatcher.settings.pool.request_rate
        assert set(rates) == {"m1"}
        assert rates["m1"] == pytest.approx(3 * math.log(2) / HALF_LIFE_S, rel=0.05)
        # A command that rebuilds the settings keeps the rates.
        await engine.controller.execute(cmd.SetStrategy(strategy="spread"))
        assert "m1" in engine.dispatcher.settings.pool.request_rate
