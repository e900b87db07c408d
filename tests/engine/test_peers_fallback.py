"""Fallback to peers: requests the cluster cannot serve in time go to a ``[[peers]]`` service.

The peer here is a second lmtui (its own engine and simulated node on loopback, with an API
key), so what crosses is real HTTP between two routers; the callers are the real ``openai``
and ``anthropic`` clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from _routing import MSG, client, eventually, routed
from test_router import lms

from lmtui.config import PeerConfig, RouterConfig
from lmtui.core.model import Health
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster
from lmtui.sim.spec import SimModel

KEY = "peer-secret"


@asynccontextmanager
async def pair(
    monkeypatch: pytest.MonkeyPatch,
    *,
    request_log: Path | None = None,
    router: RouterConfig | None = None,
    near_parallel: int = 4,
    time_scale: float = 0.01,
    **peer: Any,
) -> AsyncIterator[tuple[SimCluster, Engine, SimCluster, Engine]]:
    """``near`` (the cluster, one node "a" with m1) and ``far`` (the peer: another lmtui,
    keyed, with m1 and m3), near configured with far as its peer."""
    monkeypatch.setenv("FAR_KEY", KEY)
    far_specs = [lms("b", ["m1"], parallel=4, models=[SimModel("m1", 5.0), SimModel("m3", 5.0)])]
    async with routed(far_specs, router=RouterConfig(api_keys_env=["FAR_KEY"])) as (fc, fe):
        assert fe.router_url is not None
        cfg = PeerConfig(
            name="far",
            url=fe.router_url,
            api_key_env="FAR_KEY",
            models=peer.pop("models", ["m1", "m3"]),
            **peer,
        )
        near_specs = [lms("a", ["m1"], parallel=near_parallel, models=[SimModel("m1", 5.0)])]
        async with routed(
            near_specs, peers=[cfg], request_log=request_log, router=router, time_scale=time_scale
        ) as (nc, ne):
            yield nc, ne, fc, fe


async def down(cluster: SimCluster, engine: Engine, name: str = "a") -> None:
    await cluster.node(name).set_down(True)
    await eventually(lambda: engine.store.snapshot.nodes[name].health is Health.DOWN, 10.0)


async def test_every_local_node_down_sends_the_request_to_the_peer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with pair(monkeypatch, request_log=tmp_path / "log.sqlite3") as (nc, ne, fc, _fe):
        c = client(ne)
        r = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        assert r.choices[0].message.content  # served at home while "a" is up
        assert len(fc.node("b").records) == 0
        await down(nc, ne)

        raw = await c.chat.completions.with_raw_response.create(
            model="m1", messages=MSG, max_tokens=4
        )
        assert raw.headers["x-lmtui-peer"] == "far"
        assert raw.parse().choices[0].message.content
        # Streamed too, through the peer's own router to its node.
        async with c.chat.completions.with_streaming_response.create(
            model="m1", messages=MSG, max_tokens=8, stream=True
        ) as resp:
            assert resp.headers["x-lmtui-peer"] == "far"
            stream = await resp.parse()
            text = "".join(
                [(ch.choices[0].delta.content or "") async for ch in stream if ch.choices]
            )
            assert text
        assert len(fc.node("b").records) == 2

        # Marked in the request log (node peer:far) and in the dashboard's snapshot.
        assert ne.request_log is not None
        await ne.request_log.flush()
        rows = await ne.request_log.recent(10)
        assert [r.node for r in rows if r.outcome == "ok"].count("peer:far") == 2
        state = ne.store.snapshot.peers["far"]
        assert (state.served, state.in_flight, state.failed) == (2, 0, 0)
        assert any("→ peer far" in e.message for e in ne.store.events)


async def test_a_model_no_local_node_has_goes_to_the_peer_that_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (_nc, ne, fc, _fe):
        c = client(ne)
        raw = await c.chat.completions.with_raw_response.create(
            model="m3", messages=MSG, max_tokens=4
        )
        assert raw.headers["x-lmtui-peer"] == "far"
        # /v1/models lists it with the peer that may serve it.
        listed = {m.id: m for m in (await c.models.list()).data}
        assert listed["m3"].model_extra is not None
        assert listed["m3"].model_extra["peers"] == ["far"]
        assert listed["m1"].model_extra is not None
        assert listed["m1"].model_extra["peers"] == ["far"]
        # A model the peer does not name stays a local 404.
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="nope", messages=MSG, max_tokens=4)
        assert {r.model for r in fc.node("b").records} == {"m3"}


async def test_the_budget_refuses_past_its_limit_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch, budget=1, budget_window=3600) as (nc, ne, fc, _fe):
        await down(nc, ne)
        c = client(ne)
        await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        e = info.value
        assert e.status_code == 503
        message = str(e.body)
        assert "peer far: its budget of 1 requests per 60 min is spent" in message
        assert "Retry-After" in e.response.headers
        assert len(fc.node("b").records) == 1
        assert ne.store.snapshot.peers["far"].budget_used == 1


async def test_the_budget_survives_a_restart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "log.sqlite3"
    async with pair(monkeypatch, request_log=log, budget=2) as (nc, ne, _fc, _fe):
        await down(nc, ne)
        await client(ne).chat.completions.create(model="m1", messages=MSG, max_tokens=4)
    # A new engine on the same log: one of the two is already spent.
    async with pair(monkeypatch, request_log=log, budget=2) as (_nc, ne, _fc, _fe):
        assert ne.store.snapshot.peers["far"].budget_used == 1


async def test_a_request_that_waits_too_long_locally_goes_to_the_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = RouterConfig(fallback_after=0.3)
    async with pair(monkeypatch, router=router, near_parallel=1, time_scale=0.1) as (
        _nc,
        ne,
        fc,
        _fe,
    ):
        c = client(ne)
        # A long prompt holds the only slot of m1 on "a" (serial) for a few seconds.
        long = [{"role": "user", "content": "word " * 40_000}]
        holder = asyncio.create_task(
            c.chat.completions.create(model="m1", messages=long, max_tokens=4)  # type: ignore[arg-type]
        )
        inst = ("a", "m1")
        await eventually(lambda: ne.store.snapshot.instances[inst].in_flight == 1)
        raw = await c.chat.completions.with_raw_response.create(
            model="m1", messages=MSG, max_tokens=4
        )
        assert raw.headers["x-lmtui-peer"] == "far"
        assert any("no local replica within 0.3 s" in e.message for e in ne.store.events)
        assert (await holder).choices  # the long one was served at home
        assert len(fc.node("b").records) == 1


async def test_a_request_another_lmtui_sent_is_never_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (nc, ne, fc, _fe):
        await down(nc, ne)
        assert ne.router_url is not None
        async with httpx.AsyncClient(base_url=ne.router_url, timeout=20) as h:
            r = await h.post(
                "/v1/chat/completions",
                json={"model": "m1", "messages": MSG, "max_tokens": 4},
                headers={"x-lmtui-via": "lmtui"},
            )
        assert r.status_code == 503, r.text
        assert "x-lmtui-peer" not in r.headers
        assert len(fc.node("b").records) == 0


async def test_a_peer_that_fails_too_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with pair(monkeypatch) as (nc, ne, fc, _fe):
        await down(nc, ne)
        await fc.node("b").set_down(True)
        with pytest.raises(openai.APIStatusError) as info:
            await client(ne).chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        assert info.value.status_code in (502, 503)
        assert "peer far:" in str(info.value.body)
        state = ne.store.snapshot.peers["far"]
        assert state.failed == 1 and state.last_error


async def test_messages_go_to_the_peer_with_anthropic_shapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (nc, ne, fc, _fe):
        await down(nc, ne)
        assert ne.router_url is not None
        a = anthropic.AsyncAnthropic(base_url=ne.router_url, api_key="x", max_retries=0)
        raw = await a.messages.with_raw_response.create(
            model="m1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-lmtui-peer"] == "far"
        msg = await raw.parse()
        assert msg.content and msg.content[0].type == "text"
        async with a.messages.stream(
            model="m1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text
        assert len(fc.node("b").records) == 2


async def test_concurrent_fallbacks_respect_max_concurrent(monkeypatch: pytest.MonkeyPatch) -> None:
    async with pair(monkeypatch, max_concurrent=2) as (nc, ne, _fc, _fe):
        await down(nc, ne)
        c = client(ne, timeout=30.0)
        results = await asyncio.gather(
            *(c.chat.completions.create(model="m1", messages=MSG, max_tokens=64) for _ in range(6)),
            return_exceptions=True,
        )
        served = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, openai.APIStatusError)]
        assert len(served) + len(refused) == 6
        assert served, results
        for r in refused:
            assert "max_concurrent" in str(r.body)
        assert ne.store.snapshot.peers["far"].in_flight == 0


async def test_a_continuation_of_a_response_a_peer_made_goes_back_to_that_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pair(monkeypatch) as (nc, ne, fc, _fe):
        await down(nc, ne)
        c = client(ne)
        first = await c.responses.create(model="m1", input="hi", max_output_tokens=8)
        # "a" is back, but the state of that response lives behind the peer.
        await nc.node("a").set_down(False)
        await eventually(lambda: ne.store.snapshot.nodes["a"].health is Health.HEALTHY, 10.0)
        raw = await c.responses.with_raw_response.create(
            model="m1", input="and then?", previous_response_id=first.id, max_output_tokens=8
        )
        assert raw.headers["x-lmtui-peer"] == "far"
        assert len(fc.node("b").records) == 2
        assert len(nc.node("a").records) == 0
