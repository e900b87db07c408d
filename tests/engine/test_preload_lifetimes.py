"""Preload, frequency-aware eviction and lifetimes, end to end: the engine against simulated
LM Studio and Ollama servers over loopback, driven by the real ``openai`` client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _routing import MSG, client, eventually, routed

from lmtui.config import ModelConfig, PoolConfig
from lmtui.core.events import Event
from lmtui.core.model import NodeKind
from lmtui.engine.engine import Engine
from lmtui.engine.reqlog import RequestLog, RequestRecord
from lmtui.sim import SimModel, SimNodeSpec


def lms(name: str, memory_gb: float, models: list[SimModel], loaded: list[str]) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=NodeKind.LMSTUDIO,
        memory_gb=memory_gb,
        models=models,
        loaded=loaded,
        parallel=2,
        version="0.4.2",
    )


def ollama(name: str, models: list[SimModel], *, version: str = "", **kw: Any) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=NodeKind.OLLAMA,
        memory_gb=kw.pop("memory_gb", 32),
        models=models,
        loaded=kw.pop("loaded", []),
        parallel=2,
        version=version,
        **kw,
    )


def events_of(engine: Engine) -> list[Event]:
    seen: list[Event] = []
    engine.store.subscribe(lambda _snap, events: seen.extend(events))
    return seen


async def seeded_log(path: Path, counts: dict[str, int], ago_s: float = 5.0) -> None:
    """A request log holding ``counts`` requests per model, ending ``ago_s`` ago."""
    log = RequestLog(path, flush_interval_s=60)
    await log.start()
    now = time.time() - ago_s
    for model, n in counts.items():
        for k in range(n):
            rec = RequestRecord(now - k, model, "a", 0.0, 0.1, 1.0, 10, 5, "ok", 200, False)
            log.record(rec)
    await log.stop()


# -- preload ------------------------------------------------------------------------------


async def test_preload_fills_free_memory_with_the_most_requested_models(tmp_path: Path) -> None:
    models = [SimModel(m, 10.0) for m in ("m1", "hot", "warm", "cold")] + [SimModel("big", 40.0)]
    db = tmp_path / "requests.sqlite3"
    # Earlier traffic, as the request log remembers it: "big" most (but it fits nowhere
    # without evicting), then "hot", then "warm"; "cold" only 40 minutes ago (decayed to
    # 0.3 requests an hour, under preload_min_rate).
    await seeded_log(db, {"big": 60, "hot": 40, "warm": 20, "m1": 5})
    await seeded_log(db, {"cold": 1}, ago_s=2400)
    specs = [lms("a", 45, models, ["m1"])]
    pool = PoolConfig(reserved_gb=0, preload_keep_free=0.1, preload_min_rate=1.0)
    async with routed(specs, pool=pool, request_log=db) as (cluster, engine):
        seen = events_of(engine)
        # One preload per node per pass; the second follows once the first has landed.
        await eventually(lambda: cluster.node("a").loaded_models() == ["hot", "m1", "warm"], 15)
        await asyncio.sleep(1.5)  # one more pool manager tick: nothing else comes
        assert cluster.node("a").loaded_models() == ["hot", "m1", "warm"]
        msgs = [e.message for e in seen]
        assert any("preload: hot on a (rank 2," in m for m in msgs), msgs
        assert any("preload: warm on a (rank 3," in m for m in msgs), msgs
        # "big" (rank 1) does not fit beside m1 and nothing is evicted for it.
        assert not any("evict" in m.lower() for m in msgs), msgs
        body = engine.metrics.render()[0].decode()
        assert 'lmtui_loads_total{model="hot",node="a",ok="true",reason="preload"} 1.0' in body
        # A request for a preloaded model is served without a load.
        r = await client(engine).chat.completions.create(model="warm", messages=MSG, max_tokens=4)
        assert r.choices
        assert 'reason="on_demand"' not in engine.metrics.render()[0].decode()


async def test_preload_is_off_when_configured_so(tmp_path: Path) -> None:
    db = tmp_path / "requests.sqlite3"
    await seeded_log(db, {"hot": 40})
    specs = [lms("a", 64, [SimModel("m1", 10.0), SimModel("hot", 10.0)], ["m1"])]
    async with routed(specs, pool=PoolConfig(reserved_gb=0, preload=False), request_log=db) as (
        cluster,
        engine,
    ):
        await eventually(lambda: "hot" in engine.dispatcher.settings.pool.request_rate, 5)
        await asyncio.sleep(1.5)  # another pool manager tick
        assert cluster.node("a").loaded_models() == ["m1"]


async def test_a_node_coming_back_gets_preloaded_and_an_operator_unload_is_respected(
    tmp_path: Path,
) -> None:
    db = tmp_path / "requests.sqlite3"
    await seeded_log(db, {"hot": 40})
    models = [SimModel("m1", 10.0), SimModel("hot", 10.0)]
    specs = [lms("a", 64, models, ["m1"])]
    async with routed(specs, pool=PoolConfig(reserved_gb=0), request_log=db) as (cluster, engine):
        await eventually(lambda: "hot" in cluster.node("a").loaded_models(), 10)
        # ...and lmtui has polled it (the unload names an instance lmtui knows).
        await eventually(lambda: any(True for _ in engine.store.snapshot.instances_of("hot")), 10)
        # The operator unloads it: it is not preloaded straight back.
        from lmtui.engine import commands as cmd

        await engine.controller.execute(cmd.Unload(node="a", instance_id="hot"))
        await asyncio.sleep(2.5)  # two pool manager ticks
        assert cluster.node("a").loaded_models() == ["m1"]
        # A drain and undrain (the node "comes back") still respects the hold...
        await engine.controller.execute(cmd.Drain(node="a"))
        await engine.controller.execute(cmd.Undrain(node="a"))
        await asyncio.sleep(1.5)
        assert cluster.node("a").loaded_models() == ["m1"]
        # ...until the model is asked for again: then it is simply in demand.
        r = await client(engine).chat.completions.create(model="hot", messages=MSG, max_tokens=4)
        assert r.choices
        assert "hot" in cluster.node("a").loaded_models()


async def test_a_node_coming_back_is_preloaded() -> None:
    models = [SimModel("m1", 10.0), SimModel("hot", 10.0)]
    specs = [lms("a", 10, models, ["m1"]), lms("b", 32, models, [])]
    async with routed(specs, pool=PoolConfig(reserved_gb=0)) as (cluster, engine):
        await cluster.node("b").set_down(True)
        await eventually(lambda: engine.store.snapshot.nodes["b"].health.value == "down", 10)
        # Demand arrives while b is down and a is full: nothing can be preloaded...
        now = time.time()
        for k in range(40):
            engine.controller.demand.request_done("hot", "ok", now - k)
        await asyncio.sleep(2.5)  # two pool manager ticks
        assert not any(True for _ in engine.store.snapshot.instances_of("hot"))
        # ...until b comes back: that is when a preload pass runs.
        await cluster.node("b").set_down(False)
        await eventually(lambda: cluster.node("b").loaded_models() == ["hot"], 15)
        assert cluster.node("a").loaded_models() == ["m1"]  # nothing evicted for it


# -- frequency-aware eviction -------------------------------------------------------------


@pytest.mark.parametrize(("policy", "evicted"), [("gdsf", "cold"), ("lru", "hot")])
async def test_gdsf_evicts_the_rarely_requested_model_where_lru_evicts_the_older_one(
    tmp_path: Path, policy: str, evicted: str
) -> None:
    db = tmp_path / "requests.sqlite3"
    await seeded_log(db, {"hot": 60, "cold": 1})
    models = [SimModel("hot", 10.0), SimModel("cold", 10.0), SimModel("new", 10.0)]
    specs = [lms("a", 25, models, ["hot", "cold"])]
    pool = PoolConfig(reserved_gb=0, eviction=policy, min_residency=0, preload=False)  # type: ignore[arg-type]
    async with routed(specs, pool=pool, request_log=db) as (cluster, engine):
        c = client(engine)
        # "hot" was used before "cold": by recency alone, "hot" is the one to go.
        for model in ("hot", "cold"):
            await c.chat.completions.create(model=model, messages=MSG, max_tokens=4)
            await asyncio.sleep(0.05)
        await eventually(lambda: "hot" in engine.dispatcher.settings.pool.request_rate, 5)
        r = await c.chat.completions.create(model="new", messages=MSG, max_tokens=4)
        assert r.choices
        kept = {"hot", "cold"} - {evicted}
        assert cluster.node("a").loaded_models() == sorted(kept | {"new"})


@pytest.mark.parametrize(("policy", "kept"), [("gdsf", "hot"), ("lru", "cold")])
async def test_gdsf_waits_for_a_busy_rare_model_rather_than_evict_the_hot_one(
    tmp_path: Path, policy: str, kept: str
) -> None:
    """Room for two of three: "cold" (asked for once before) is answering a request when
    "new" is asked for, so only "hot" (60 requests) could go at once. LRU evicts it; gdsf
    waits for that request to end and evicts "cold" instead (it could not have otherwise:
    "cold" was busy when "new" came)."""
    db = tmp_path / "requests.sqlite3"
    await seeded_log(db, {"hot": 60, "cold": 1})
    models = [SimModel("hot", 10.0), SimModel("cold", 10.0), SimModel("new", 10.0)]
    specs = [lms("a", 25, models, ["hot", "cold"])]
    pool = PoolConfig(reserved_gb=0, eviction=policy, min_residency=0, preload=False)  # type: ignore[arg-type]
    async with routed(specs, pool=pool, request_log=db) as (cluster, engine):
        c = client(engine)
        seen = events_of(engine)
        await eventually(lambda: "hot" in engine.dispatcher.settings.pool.request_rate, 5)
        stream = await c.chat.completions.create(
            model="cold", messages=MSG, max_tokens=2000, stream=True
        )
        chunks = aiter(stream)
        await anext(chunks)  # "cold" has a request in flight now
        assert engine.store.snapshot.instances[("a", "cold")].in_flight == 1
        new = asyncio.create_task(
            c.chat.completions.create(model="new", messages=MSG, max_tokens=4)
        )
        async for _ in chunks:
            pass
        r = await asyncio.wait_for(new, 10)
        assert r.choices
        assert cluster.node("a").loaded_models() == sorted({kept, "new"})
        evicted = {"hot", "cold"} - {kept}
        assert [e.message for e in seen if e.message.startswith("evicting ")] == [
            f"evicting {m} from a to make room for new" for m in evicted
        ]


# -- lifetimes ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.12.6", "0.1.48"])
async def test_a_pinned_model_stays_loaded_on_ollama_under_proxied_traffic(version: str) -> None:
    """Ollama 0.12 keeps a model's keep_alive under requests without one (every /v1 request:
    that endpoint ignores the field); 0.1.48 reset it to OLLAMA_KEEP_ALIVE on each, so there
    lmtui must set it again. keep_alive_s 500 simulated is 5 s real at this time scale."""
    spec = ollama("o", [SimModel("p", 4.0), SimModel("x", 4.0)], version=version, keep_alive_s=500)
    models = [ModelConfig(name="p", pinned=True)]
    async with routed([spec], models=models, pool=PoolConfig(reserved_gb=0)) as (cluster, engine):
        seen = events_of(engine)
        node = cluster.node("o")
        await eventually(lambda: node.loaded_models() == ["p"], 10)
        c = client(engine)
        t_end = time.monotonic() + 7.0  # longer than the server default of 5 s
        while time.monotonic() < t_end:
            r = await c.chat.completions.create(model="p", messages=MSG, max_tokens=2)
            assert r.choices
            assert node.loaded_models() == ["p"]
            await asyncio.sleep(0.2)
        await asyncio.sleep(6.0)  # idle past the server default
        assert node.loaded_models() == ["p"]
        msgs = [e.message for e in seen]
        # Loaded once, at start, and never again.
        assert sum("pinned but loaded nowhere" in m for m in msgs) == 1, msgs
        kept = [m for m in msgs if m.startswith("lifetime: p on o")]
        if version == "0.1.48":
            assert kept and "setting to stay loaded (pinned) again" in kept[0]
        else:
            assert kept == []


async def test_a_model_ttl_is_ollamas_keep_alive() -> None:
    # At time scale 1 the simulated keep_alive is real seconds, as lmtui's TTLs are.
    spec = ollama("o", [SimModel("t", 1.0)])
    models = [ModelConfig(name="t", ttl=2)]
    pool = PoolConfig(reserved_gb=0, min_residency=0)
    async with routed([spec], models=models, pool=pool, time_scale=1.0) as (cluster, engine):
        seen = events_of(engine)
        r = await client(engine).chat.completions.create(model="t", messages=MSG, max_tokens=2)
        assert r.choices
        inst = next(iter(cluster.node("o").state.instances.values()))
        assert inst.ttl_s == pytest.approx(2)  # loaded with keep_alive "2s"
        await eventually(lambda: cluster.node("o").loaded_models() == [], 10)
        # Ollama's expiry matched the TTL: lmtui never had to set it again.
        assert not any(e.message.startswith("lifetime:") for e in seen)


async def test_a_request_ttl_loads_with_it_and_reaches_only_lm_studio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs = [
        lms("l", 64, [SimModel("m1", 4.0)], ["m1"]),
        ollama("o", [SimModel("m2", 4.0), SimModel("m3", 4.0)], loaded=["m2"]),
    ]
    async with routed(specs, pool=PoolConfig(reserved_gb=0, preload=False)) as (cluster, engine):
        router = engine.router
        assert router is not None
        real = router._pool
        sent: list[tuple[str, dict[str, Any]]] = []

        def spy(node: str, url: str | None = None) -> Any:
            pool = real(node, url)

            class Spy:
                async def request(self, method: str, path: str, body: bytes, headers: Any) -> Any:
                    sent.append((node, msgspec.json.decode(body)))
                    return await pool.request(method, path, body, headers)

            return Spy()

        monkeypatch.setattr(router, "_pool", spy)
        c = client(engine)
        for model, ttl in (("m1", 120), ("m2", 120), ("m2", "5m"), ("m1", "5m")):
            await c.chat.completions.create(
                model=model, messages=MSG, max_tokens=2, extra_body={"ttl": ttl}
            )
        assert [(n, b.get("ttl")) for n, b in sent] == [
            ("l", 120),
            ("o", None),
            ("o", None),
            ("l", "5m"),
        ]
        assert all(b["messages"] for _n, b in sent)  # the rest of the body is intact
        # A request whose model is loaded nowhere causes the load: its ttl is that load's
        # idle TTL (LM Studio's JIT rule), which Ollama gets as keep_alive.
        await c.chat.completions.create(
            model="m3", messages=MSG, max_tokens=2, extra_body={"ttl": 3000}
        )
        inst = cluster.node("o").state.instances["m3"]
        assert inst.ttl_s == pytest.approx(3000)
        assert engine.dispatcher.settings.pool.lifetimes.loaded_with[("o", "m3")] == 3000
        # A bad ttl is not lmtui's to honour, nor a 400: the server judges its own field.
        await c.chat.completions.create(
            model="m1", messages=MSG, max_tokens=2, extra_body={"ttl": -1}
        )
