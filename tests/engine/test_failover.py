"""Nodes that fail by saying nothing (frozen, too slow) and nodes that refuse a load for now.

The router is driven by the real ``openai`` client and ``httpx`` against simulated nodes on
loopback; a frozen node is the simulator's ``hang`` fault (the port accepts connections and
nothing answers, as a real server under SIGSTOP does).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from _routing import MSG, client, routed
from test_router import lms

from lmtui.backends.base import Backend, BackendBadResponse, LoadDeferred
from lmtui.config import ModelConfig, NodeConfig, RouterConfig
from lmtui.core.model import Health, InstanceObservation, Node, NodeKind, NodeObservation
from lmtui.core.scheduler import RequestInfo, SchedulerSettings
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.store import Store
from lmtui.http import UpstreamPool


async def test_requests_on_a_frozen_node_are_served_by_the_other_replica() -> None:
    specs = [lms("a", ["m1"], parallel=4), lms("b", ["m1"], parallel=4)]
    async with routed(specs, time_scale=0.02) as (cluster, engine):
        cluster.node("a").faults.hang = True
        c = client(engine, timeout=30.0)
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(c.chat.completions.create(model="m1", messages=MSG, max_tokens=8) for _ in range(6)),
            return_exceptions=True,
        )
        took = time.monotonic() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        # Some went to "a" first (idle replicas take turns) and were moved when it went
        # down, well before the client's own 30 s timeout.
        moved = [e for e in engine.store.events if "went down" in e.message]
        assert moved, [e.message for e in engine.store.events]
        assert engine.store.snapshot.nodes["a"].health is Health.DOWN
        assert took < 25, took
        assert len(cluster.node("b").records) == 6


async def test_a_request_past_its_first_byte_timeout_goes_elsewhere() -> None:
    # "a" answers polls (slowly) but takes 0.6 s before any answer: past its 0.2 s bound.
    specs = [lms("a", ["m1"], parallel=4), lms("b", ["m1"], parallel=4)]
    overrides = {"a": {"first_byte_timeout": 0.2}}
    async with routed(specs, node_overrides=overrides) as (cluster, engine):
        c = client(engine)
        # Make "b" the one that served last, so the next request goes to "a".
        await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        served_before = len(cluster.node("b").records)
        cluster.node("a").faults.slow_s = 0.6
        for _ in range(2):
            r = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
            assert r.choices[0].message.content
        assert len(cluster.node("b").records) == served_before + 2
        assert any("no first byte" in e.message for e in engine.store.events)


async def test_the_model_bound_overrides_the_node_and_router_bounds() -> None:
    specs = [lms("a", ["m1"], parallel=4)]
    async with routed(
        specs,
        router=RouterConfig(first_byte_timeout=0.1),
        models=[ModelConfig(name="m1", first_byte_timeout=30.0)],
    ) as (cluster, engine):
        cluster.node("a").faults.slow_s = 0.5
        r = await client(engine).chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        assert r.choices[0].message.content
        assert not any("no first byte" in e.message for e in engine.store.events)


async def test_a_stream_on_a_node_that_freezes_ends_with_an_error_event() -> None:
    async with routed([lms("a", ["m1"], parallel=2)], time_scale=1.0) as (cluster, engine):
        async with (
            httpx.AsyncClient(timeout=30.0) as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m1", "messages": MSG, "stream": True, "max_tokens": 4000},
            ) as r,
        ):
            chunks = r.aiter_bytes()
            first = await chunks.__anext__()
            assert first.startswith(b"data: ")
            # Frozen as with SIGSTOP: the stream stops, and so do the polls.
            cluster.node("a").faults.hang = True
            async with asyncio.timeout(20):
                rest = b"".join([b async for b in chunks])
        assert b"went down" in rest
        assert rest.rstrip().endswith(b"data: [DONE]")


# --- a load the node refuses for now --------------------------------------------------


class Refusing(Backend):
    """A node that refuses ``refusals`` loads as transient, then loads."""

    kind = NodeKind.LLAMACPP
    supports_load = True

    def __init__(self, store: Store, refusals: int) -> None:
        super().__init__(
            NodeConfig(name="n", kind=NodeKind.LLAMACPP, url="http://n"),
            UpstreamPool("http://n"),  # never used: this node is scripted
            api_key=None,
        )
        self.store = store
        self.refusals = refusals
        self.loads = 0

    async def load(self, model: str, **_kw: object) -> str:
        self.loads += 1
        if self.loads <= self.refusals:
            raise LoadDeferred("model limit reached, try again later")
        self.store.apply(
            NodeObservation("n", time.time(), 0.0, instances=(InstanceObservation(model, model),))
        )
        return model


async def test_a_deferred_load_keeps_the_request_waiting_and_is_retried_gently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lmtui.engine.dispatch.DEFER_FIRST_S", 0.05)
    store = Store([Node("n", NodeKind.LLAMACPP, "http://n", health=Health.HEALTHY)])
    backend = Refusing(store, refusals=3)
    d = Dispatcher(store, {"n": backend}, SchedulerSettings(known_models=frozenset({"m"})))
    try:
        lease = await d.acquire(RequestInfo("m", request_id="r1"), deadline=time.time() + 10)
        assert lease.model == "m"
        # Three refusals, then the load: four attempts with a doubling pause, not a storm.
        assert backend.loads == 4
        waits = [e for e in store.events if "cannot load m yet" in e.message]
        assert len(waits) == 1  # one event for the whole episode
        d.release(lease)
    finally:
        d.close()


async def test_a_deferred_load_ends_in_504_at_the_deadline_never_500() -> None:
    store = Store([Node("n", NodeKind.LLAMACPP, "http://n", health=Health.HEALTHY)])
    backend = Refusing(store, refusals=10**6)
    d = Dispatcher(store, {"n": backend}, SchedulerSettings(known_models=frozenset({"m"})))
    try:
        with pytest.raises(Exception) as err:
            await d.acquire(RequestInfo("m", request_id="r1"), deadline=time.time() + 1.5)
        assert getattr(err.value, "status", None) == 504
        assert backend.loads <= 3  # 1 s, then 2 s: at most a handful within the deadline
    finally:
        d.close()


async def test_a_stream_still_flowing_from_a_node_marked_down_is_not_cut() -> None:
    # Polls fail (HTTP 500 to every new request) while the stream in progress flows on:
    # an overloaded node is marked down, but its good answers are not thrown away.
    spec = lms("a", ["m1"], parallel=2)
    spec.decode_tok_per_s = 20.0  # 64-256 tokens: a stream of several seconds
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        async with (
            httpx.AsyncClient(timeout=30.0) as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m1", "messages": MSG, "stream": True},
            ) as r,
        ):
            body = b""
            down_at: float | None = None
            async for piece in r.aiter_bytes():
                body += piece
                if cluster.node("a").faults.error_rate == 0.0:
                    cluster.node("a").faults.error_rate = 1.0
                if down_at is None and engine.store.snapshot.nodes["a"].health is Health.DOWN:
                    down_at = time.monotonic()
                if down_at is not None and time.monotonic() - down_at > 3.0:
                    break  # flowed on well past the stall bound after the node was down
        assert b"stream_interrupted" not in body
        assert down_at is not None or body.rstrip().endswith(b"data: [DONE]")


class Broken(Refusing):
    """A node whose loads fail for good (a file it cannot read)."""

    async def load(self, model: str, **_kw: object) -> str:
        self.loads += 1
        raise BackendBadResponse("failed to load model: bad file")


async def test_a_failed_load_sends_the_waiting_request_to_another_node() -> None:
    from lmtui.core.model import GiB, HostMemory

    def node(name: str, gb: int) -> Node:
        mem = HostMemory(gb * GiB, gb * GiB, "config")
        return Node(name, NodeKind.LLAMACPP, f"http://{name}", health=Health.HEALTHY, memory=mem)

    store = Store([node("big", 64), node("n", 16)])  # "big" has the most room: tried first
    broken, good = Broken(store, 0), Refusing(store, refusals=0)
    d = Dispatcher(
        store, {"big": broken, "n": good}, SchedulerSettings(known_models=frozenset({"m"}))
    )
    try:
        lease = await d.acquire(RequestInfo("m", request_id="r1"), deadline=time.time() + 5)
        assert lease.node == "n" and broken.loads == 1 and good.loads == 1
        d.release(lease)
    finally:
        d.close()


async def test_a_slot_granted_while_progress_is_sent_is_never_leaked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lmtui.engine.dispatch.PROGRESS_EVERY_S", 0.05)
    store = Store([Node("n", NodeKind.LLAMACPP, "http://n", health=Health.HEALTHY)])
    store.apply(NodeObservation("n", time.time(), 0.0, instances=(InstanceObservation("m", "m"),)))
    d = Dispatcher(store, {}, SchedulerSettings())
    try:
        first = await d.acquire(RequestInfo("m", request_id="r1"), deadline=time.time() + 5)

        async def slow_progress(_text: str) -> None:
            # The slot frees and the deadline passes while this write is under way.
            d.release(first)
            await asyncio.sleep(0.4)

        second = await d.acquire(
            RequestInfo("m", request_id="r2"), deadline=time.time() + 0.2, progress=slow_progress
        )
        d.release(second)
        assert store.snapshot.instances[("n", "m")].in_flight == 0

        # A progress write that fails (the client left) gives a granted slot back too.
        third = await d.acquire(RequestInfo("m", request_id="r3"), deadline=time.time() + 5)

        async def client_gone(_text: str) -> None:
            d.release(third)
            await asyncio.sleep(0)
            raise ConnectionResetError

        with pytest.raises(ConnectionResetError):
            await d.acquire(
                RequestInfo("m", request_id="r4"), deadline=time.time() + 5, progress=client_gone
            )
        assert store.snapshot.instances[("n", "m")].in_flight == 0
    finally:
        d.close()


async def test_a_200_whose_json_does_not_parse_is_never_passed_on_as_a_success() -> None:
    """A node that answers 200 with a body cut mid-object used to reach the client as a
    200. It is a failed answer: served by another replica, or a 502 that says why."""
    async with routed(
        [lms("a", ["m1"]), lms("b", ["m1"])], router=RouterConfig(queue_timeout=3)
    ) as (cluster, engine):
        cluster.node("a").faults.malformed_json = True
        body = {"model": "m1", "messages": MSG, "max_tokens": 2}
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(4):  # whichever replica each one is sent to first
                r = await h.post("/v1/chat/completions", json=body)
                assert r.status_code == 200 and r.json()["choices"], r.text
            cluster.node("b").faults.malformed_json = True
            r = await h.post("/v1/chat/completions", json=body)
        # 502 when the attempt fails, 503 once the polls (garbage too) mark both down.
        assert r.status_code in (502, 503), r.text
        assert "error" in r.json()
        assert any("not valid JSON" in e.message for e in engine.store.events)


async def test_an_answer_past_max_answer_bytes_is_a_failed_answer() -> None:
    """The router reads a non-streamed answer whole: past ``[router] max_answer_bytes`` it
    stops reading and serves the request elsewhere, or answers 502 — memory stays bounded."""
    async with routed([lms("a", ["m1"])], router=RouterConfig(max_answer_bytes=64)) as (
        _cluster,
        engine,
    ):
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post(
                "/v1/chat/completions", json={"model": "m1", "messages": MSG, "max_tokens": 2}
            )
        # The only replica failed and there is no other: a 502 that says why (it was a 503
        # "no healthy node" that hid the node's failure).
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "upstream_error"
        assert "larger than 64 bytes" in r.json()["error"]["message"]
        assert any("larger than 64 bytes" in e.message for e in engine.store.events)


async def test_a_replica_that_fails_every_request_behind_a_healthy_health_is_routed_around(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node answering every request 500 while its polls are fine stayed healthy and was
    picked first forever. After CIRCUIT_FAILURES in a row its circuit opens: requests go to
    the other replica; after the backoff one trial goes there, and a success closes it."""
    import lmtui.engine.dispatch as dispatch

    monkeypatch.setattr(dispatch, "CIRCUIT_OPEN_S", 0.3)
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        cluster.node("a").faults.post_errors = True
        body = {"model": "m1", "messages": MSG, "max_tokens": 2}
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(12):  # each is served: by b at once, or after a's 500, by b
                r = await h.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
            assert engine.store.snapshot.nodes["a"].health is Health.HEALTHY  # polls: fine
            opened = [e for e in engine.store.events if "routing around it" in e.message]
            assert opened and opened[0].node == "a"
            # While it is open, a's failures stop: no new "failed before the first byte".
            before = sum(
                "on a failed before the first byte" in e.message for e in engine.store.events
            )
            for _ in range(5):
                assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
            after = sum(
                "on a failed before the first byte" in e.message for e in engine.store.events
            )
            assert after - before <= 1  # at most one trial, if the backoff ran out meanwhile
            # Mended: after the backoff a trial succeeds and the circuit closes.
            cluster.node("a").faults.post_errors = False
            # (A failed trial meanwhile doubled the backoff: wait for it to run out.)
            d = engine.dispatcher
            async with asyncio.timeout(10):
                while d._open_circuits(engine.clock()):
                    await asyncio.sleep(0.05)
            for _ in range(6):
                assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
            metrics = (await h.get("/metrics")).text
        assert any("its circuit is closed" in e.message for e in engine.store.events)
        assert 'lmtui_circuit_opens_total{node="a"}' in metrics
