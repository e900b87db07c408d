"""The engine loading on a llama.cpp router: one load per model, whatever the router shows
while it comes up (``downloading``, ``loading``), and the true load time in the event log."""

from __future__ import annotations

import re

from _routing import MSG, client, routed

from lmtui.config import PoolConfig
from lmtui.core.events import EventKind
from lmtui.core.model import NodeKind
from lmtui.sim import SimModel, SimNodeSpec


def router(models: list[SimModel], **kw: object) -> SimNodeSpec:
    return SimNodeSpec(
        name="rt",
        kind=NodeKind.LLAMACPP,
        router_mode=True,
        models=models,
        parallel=2,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_downloading_model_is_loaded_once_for_a_waiting_request() -> None:
    # 2 GB at 0.4 GB/s simulated is a 5 s download, 0.5 s real at this scale: many polls
    # (0.2 s) and scheduler passes see it downloading. Before, a downloading model had no
    # instance and each pass posted a new load: 4,203 posts in 4 s on a real router.
    fresh = SimModel("fresh", 2.0, downloaded=False)
    spec = router([SimModel("other", 1.0), fresh], download_gb_per_s=0.4)
    async with routed([spec], time_scale=0.1) as (cluster, engine):
        reply = await client(engine).chat.completions.create(
            model="fresh", messages=MSG, max_tokens=4
        )
        assert reply.choices[0].message.content
        server = cluster.node("rt").server
        assert server.load_posts == ["fresh"]  # type: ignore[attr-defined]
        loads = [e for e in engine.store.events if e.kind is EventKind.LOAD]
        assert sum(e.message.startswith("loading fresh") for e in loads) == 1


async def test_load_event_reports_the_time_until_the_router_had_it_loaded() -> None:
    # 6 GB at 3 GB/s plus 0.5 s overhead: 2.5 s simulated, 0.25 s real.
    spec = router([SimModel("big", 6.0)])
    async with routed([spec], time_scale=0.1) as (cluster, engine):
        await client(engine).chat.completions.create(model="big", messages=MSG, max_tokens=4)
        (done,) = [
            e
            for e in engine.store.events
            if e.kind is EventKind.LOAD and e.message.startswith("big loaded")
        ]
        m = re.search(r"in ([\d.]+)s", done.message)
        assert m is not None
        # The router answered the POST at once; only waiting for "loaded" takes this long.
        load_real_s = cluster.node("rt").state.instances["big"].load_time_s * 0.1
        assert float(m.group(1)) >= round(load_real_s, 1) - 0.05


async def test_a_router_at_its_instance_limit_swaps_an_idle_model_for_a_request() -> None:
    # --models-max 1 with 64 GB: memory is no reason to evict, the instance limit is.
    spec = router([SimModel("ulysses", 5.0), SimModel("eternal", 3.0)], models_max=1)
    spec.loaded = ["ulysses"]
    pool = PoolConfig(reserved_gb=0, min_residency=0)
    async with routed([spec], time_scale=0.05, pool=pool) as (cluster, engine):
        assert engine.store.snapshot.nodes["rt"].max_instances == 1
        reply = await client(engine).chat.completions.create(
            model="eternal", messages=MSG, max_tokens=4
        )
        assert reply.model == "eternal"
        assert cluster.node("rt").loaded_models() == ["eternal"]
        evictions = [e.message for e in engine.store.events if e.kind is EventKind.EVICT]
        assert any("evicting ulysses" in m for m in evictions)
        # One load, no refusal: the eviction waited until ulysses's place was free.
        assert cluster.node("rt").server.load_posts == ["eternal"]  # type: ignore[attr-defined]
        assert not [e for e in engine.store.events if e.kind is EventKind.ERROR]
