"""Every fault of the simulator, through lmtui's router, with four real clients.

Each case starts simulated nodes and a real Engine on loopback (``conftest.routed``), turns
a fault on, sends a burst of requests (the ``openai`` client, httpx, aiohttp and a raw
socket, streamed and not), and asserts that every request ended in an answer or an explicit
error within its bound, and — when ``routed`` exits — that no slot, queue entry or in-flight
count leaked in the store, in ``/metrics`` or on the nodes.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from _faults import assert_all_ended, burst, chat_body, lms, outcomes, routed

from lmtui.config import RouterConfig
from lmtui.core.model import Health
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster

#: The first-byte bound of the cases that hang: short, so each case is quick, and every
#: hung request must end within a few of it (one per attempt) however many replicas hang.
FIRST_BYTE_S = 1.0
HANG_ROUTER = RouterConfig(queue_timeout=8.0, first_byte_timeout=FIRST_BYTE_S)


def served_by(cluster: SimCluster, name: str) -> int:
    return sum(1 for j in cluster.node(name).records if j.outcome == "ok")


# --- refuse --------------------------------------------------------------------------------


async def test_refused_connections_are_served_by_the_other_replica() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        await cluster.node("a").set_down(True)
        assert_all_ended(await burst(engine, 8), ok=True)
        assert served_by(cluster, "b") == 8
        # Back on the same port: served there again once a poll saw it.
        await cluster.node("a").set_down(False)
        await engine.poller.poll_once("a")
        assert_all_ended(await burst(engine, 8), ok=True)


async def test_a_model_whose_only_node_refuses_gets_an_explicit_error() -> None:
    async with routed([lms("a", ["m1"])]) as (cluster, engine):
        await cluster.node("a").set_down(True)
        results = await burst(engine, 8)
        assert_all_ended(results)
        assert all(r.kind == "error" and r.status in (502, 503) for r in results), results


# --- hang after accept ---------------------------------------------------------------------


async def test_a_frozen_node_costs_each_request_one_bound_and_it_is_served_elsewhere() -> None:
    """Frozen as under SIGSTOP: connections accepted, nothing answered, polls too."""
    async with routed(
        [lms("a", ["m1"]), lms("b", ["m1"])], router=HANG_ROUTER, time_scale=0.02
    ) as (cluster, engine):
        cluster.node("a").faults.hang = True
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # Nothing reached these clients before the node froze: each is retried on b.
        assert_all_ended(await burst(engine, 8, bound=4 * FIRST_BYTE_S + 4), ok=True)
        assert loop.time() - t0 < 4 * FIRST_BYTE_S + 4
        cluster.node("a").faults.hang = False


async def test_a_node_that_hangs_only_inference_behind_a_healthy_health() -> None:
    """Polls answer, POSTs never do: only the first-byte bound ends them, and each one that
    had received nothing is served by the other replica."""
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])], router=HANG_ROUTER) as (
        cluster,
        engine,
    ):
        cluster.node("a").faults.post_hang = True
        assert_all_ended(await burst(engine, 8, bound=3 * FIRST_BYTE_S + 4), ok=True)
        assert engine.store.snapshot.nodes["a"].health is Health.HEALTHY
        assert any("no first byte" in e.message for e in engine.store.events)
        cluster.node("a").faults.post_hang = False


async def test_when_every_replica_hangs_each_request_ends_in_an_explicit_error() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])], router=HANG_ROUTER) as (
        cluster,
        engine,
    ):
        for n in ("a", "b"):
            cluster.node(n).faults.post_hang = True
        results = await burst(engine, 6, bound=HANG_ROUTER.queue_timeout + 4)
        assert_all_ended(results)
        assert all(r.kind == "error" and r.status >= 500 for r in results), results
        for n in ("a", "b"):
            cluster.node(n).faults.post_hang = False


# --- 5xx -----------------------------------------------------------------------------------


async def test_a_node_answering_500_is_retried_elsewhere() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        cluster.node("a").faults.error_rate = 1.0
        assert_all_ended(await burst(engine, 8), ok=True)


async def test_500s_behind_a_healthy_health_open_the_circuit() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        cluster.node("a").faults.post_errors = True
        for _ in range(3):
            assert_all_ended(await burst(engine, 4), ok=True)
        assert any("routing around it" in e.message for e in engine.store.events)


async def test_a_model_whose_only_node_answers_500_gets_a_502() -> None:
    async with routed([lms("a", ["m1"])]) as (cluster, engine):
        cluster.node("a").faults.post_errors = True
        results = await burst(engine, 8)
        assert_all_ended(results)
        assert all(r.kind == "error" and r.status in (502, 503) for r in results), results


# --- garbage JSON in a 200 -------------------------------------------------------------------


async def test_garbage_json_in_a_200_is_retried_elsewhere() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        cluster.node("a").faults.malformed_json = True
        assert_all_ended(await burst(engine, 8, stream=False), ok=True)
        assert any("not valid JSON" in e.message for e in engine.store.events)


async def test_garbage_json_from_the_only_node_is_a_502() -> None:
    async with routed([lms("a", ["m1"])], router=RouterConfig(queue_timeout=3.0)) as (
        cluster,
        engine,
    ):
        cluster.node("a").faults.malformed_json = True
        results = await burst(engine, 4, stream=False)
        assert_all_ended(results)
        assert all(r.kind == "error" and r.status in (502, 503) for r in results), results


# --- truncated SSE and drop mid-stream -------------------------------------------------------


async def test_a_truncated_stream_ends_with_an_explicit_error() -> None:
    """The node ends its body cleanly half-way through an event: no finish, no [DONE]. The
    client must not take that for a whole answer."""
    async with routed([lms("a", ["m1"])], time_scale=0.05) as (cluster, engine):
        cluster.node("a").faults.truncate_stream = True
        # Plain answers are whole: unaffected.
        assert_all_ended(await burst(engine, 4, stream=False), ok=True)
        results = await burst(engine, 8, stream=True, max_tokens=64)
        assert_all_ended(results)
        # Each is an error (the cut stream, or 503 once those failures opened a's circuit).
        assert all(r.kind == "error" for r in results), results
        assert any(r.status == 200 for r in results), results


async def test_a_stream_dropped_mid_way_ends_with_an_error_event() -> None:
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])], time_scale=0.05) as (
        cluster,
        engine,
    ):
        for n in ("a", "b"):
            cluster.node(n).faults.drop_mid_stream = True
        assert_all_ended(await burst(engine, 4, stream=False), ok=True)  # unaffected
        results = await burst(engine, 8, stream=True, max_tokens=64)
        assert_all_ended(results)
        # Bytes reached the client before the cut: no retry, an explicit error instead (a
        # 503 once those failures opened both circuits).
        assert all(r.kind == "error" for r in results), results
        assert any(r.status == 200 for r in results), results


# --- slow -----------------------------------------------------------------------------------


async def test_a_slow_node_within_the_bound_answers_and_past_it_is_gone_around() -> None:
    async with routed(
        [lms("a", ["m1"]), lms("b", ["m1"])],
        router=HANG_ROUTER,
    ) as (cluster, engine):
        cluster.node("a").faults.slow_s = FIRST_BYTE_S / 4
        assert_all_ended(await burst(engine, 8), ok=True)
        assert served_by(cluster, "a") > 0
        cluster.node("a").faults.slow_s = FIRST_BYTE_S * 3
        assert_all_ended(await burst(engine, 8, bound=2 * FIRST_BYTE_S + 4), ok=True)
        cluster.node("a").faults.slow_s = 0


# --- a node killed while a load runs (the simulator's stand-in; tests/real has the real one) --


async def test_a_node_going_down_during_a_load_ends_the_waiting_requests() -> None:
    # m2 is on disk on both, loaded nowhere: the first request loads it (4 GB at 3 GB/s
    # simulated, ~0.7 s real at this time scale) on one node, which then goes away.
    specs = [lms("a", ["m1"]), lms("b", ["m1"])]
    async with routed(specs, time_scale=0.5) as (cluster, engine):
        base = engine.router_url
        assert base is not None
        tasks = [asyncio.create_task(burst(engine, 4, model="m2"))]
        loading = None
        async with asyncio.timeout(10):
            while loading is None:
                loading = next((n for n in cluster.nodes if n.loading_models()), None)
                await asyncio.sleep(0.01)
        await loading.set_down(True)
        results = (await asyncio.gather(*tasks))[0]
        assert_all_ended(results)
        await loading.set_down(False)
        await engine.poller.poll_once(loading.spec.name)
        assert_all_ended(await burst(engine, 4, model="m2"), ok=True)


# --- memory smaller than claimed ----------------------------------------------------------------


async def test_a_node_with_less_memory_than_claimed_fails_the_load_and_another_serves() -> None:
    # a claims 64 GB and has 2; b has 64. m2 (4 GB) is loaded nowhere: placement picks a
    # (the most free memory by its claim), which refuses for want of memory.
    specs = [lms("a", ["m1"], memory_gb=96.0), lms("b", ["m1"])]
    async with routed(specs, time_scale=0.05) as (cluster, engine):
        cluster.node("a").faults.memory_gb = 2.0
        assert_all_ended(await burst(engine, 6, model="m2"), ok=True)
        assert cluster.node("b").loaded_models() == ["m1", "m2"]
        assert any("load of m2 on a failed" in e.message for e in engine.store.events)


async def test_a_model_that_fits_nowhere_in_reality_gets_an_explicit_error() -> None:
    specs = [lms("a", ["m1"])]
    async with routed(specs, time_scale=0.05, router=RouterConfig(queue_timeout=5.0)) as (
        cluster,
        engine,
    ):
        cluster.node("a").faults.memory_gb = 2.0
        results = await burst(engine, 4, model="m2")
        assert_all_ended(results)
        assert all(r.kind == "error" for r in results), results


# --- the client goes away ---------------------------------------------------------------------

#: How soon a request whose client left must be out of lmtui's queue (the streams' progress
#: comment is made 0.2 s apart here, so a stream notices within a few of them).
GONE_BOUND_S = 2.0
STREAM_OR_PLAIN = [pytest.param(True, id="stream"), pytest.param(False, id="plain")]


async def _abandon(engine: Engine, *, stream: bool, model: str, n: int = 4) -> None:
    """``n`` requests over the four clients, cancelled (their connections closed) once all
    are in lmtui's queue; then the queue must empty within GONE_BOUND_S."""
    task = asyncio.create_task(burst(engine, n, stream=stream, model=model))
    async with asyncio.timeout(10):
        while engine.store.snapshot.queue_depth.get(model, 0) < n:
            await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(GONE_BOUND_S):
        while engine.store.snapshot.queue_depth.get(model, 0):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("stream", STREAM_OR_PLAIN)
async def test_clients_gone_while_queued_leave_the_queue_at_once(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lmtui.engine.dispatch.PROGRESS_EVERY_S", 0.2)
    # One slot, held by a stream of ~15 s: the others queue behind it all along.
    spec = lms("a", ["m1"], parallel=1)
    spec.decode_tok_per_s = 10.0
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        hold = asyncio.create_task(burst(engine, 1, stream=True, max_tokens=150))
        async with asyncio.timeout(10):
            while not cluster.node("a").in_flight():
                await asyncio.sleep(0.01)
        try:
            await _abandon(engine, stream=stream, model="m1")
            assert outcomes(engine).get("client_gone") == 4
            assert len(cluster.node("a").records) == 0  # none reached the node
        finally:
            hold.cancel()
            await asyncio.gather(hold, return_exceptions=True)


async def test_a_plain_client_gone_on_aiohttps_path_leaves_the_queue_at_once() -> None:
    """The same plain request, sent with a chunked body (so the fast front hands its
    connection to aiohttp), leaves the queue the moment its client closes, as the fast
    front's do."""
    spec = lms("a", ["m1"], parallel=1)
    spec.decode_tok_per_s = 10.0
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        hold = asyncio.create_task(burst(engine, 1, stream=True, max_tokens=150))
        async with asyncio.timeout(10):
            while not cluster.node("a").in_flight():
                await asyncio.sleep(0.01)
        try:
            assert engine.router_url is not None
            host, port = engine.router_url.removeprefix("http://").split(":")
            body = json.dumps(chat_body()).encode()
            writers = []
            for _ in range(4):
                _reader, w = await asyncio.open_connection(host, int(port))
                w.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                )
                writers.append(w)
            async with asyncio.timeout(10):
                while engine.store.snapshot.queue_depth.get("m1", 0) < 4:
                    await asyncio.sleep(0.005)
            for w in writers:
                w.close()
            async with asyncio.timeout(GONE_BOUND_S):
                while engine.store.snapshot.queue_depth.get("m1", 0):
                    await asyncio.sleep(0.01)
            assert outcomes(engine).get("client_gone") == 4
            assert engine.front is not None and engine.front.handed_on >= 4
        finally:
            hold.cancel()
            await asyncio.gather(hold, return_exceptions=True)


@pytest.mark.parametrize("stream", STREAM_OR_PLAIN)
async def test_clients_gone_while_their_model_loads(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lmtui.engine.dispatch.PROGRESS_EVERY_S", 0.2)
    # m2 (4 GB) loads at 1 GB/s: ~4 s, twice the bound.
    spec = lms("a", ["m1"], disk_gb_per_s=1.0)
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        await _abandon(engine, stream=stream, model="m2")
        assert outcomes(engine).get("client_gone") == 4
        # The load carries on (the next request for m2 wants it), and ends: no pending load
        # is left behind (routed's exit checks), and the next request is served.
        assert cluster.node("a").loading_models() == ["m2"]
        assert_all_ended(await burst(engine, 2, model="m2"), ok=True)


async def test_clients_gone_while_streaming_stop_the_work_on_the_node() -> None:
    spec = lms("a", ["m1"])
    spec.decode_tok_per_s = 20.0
    async with routed([spec], time_scale=1.0) as (cluster, engine):
        task = asyncio.create_task(burst(engine, 8, stream=True, max_tokens=400))
        async with asyncio.timeout(10):
            while cluster.node("a").state.processing() < 4:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # streams flowing
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # lmtui cancels its upstream requests rather than reading the abandoned streams to
        # their end: the node's slots free within a bound (and routed's exit checks lmtui's).
        async with asyncio.timeout(GONE_BOUND_S):
            while cluster.node("a").in_flight():
                await asyncio.sleep(0.02)
        # (A stream the simulator made short may have ended before the clients left.)
        ends = [j.outcome for j in cluster.node("a").records]
        # The four still queued when their clients left never reach the node.
        assert len(ends) == 4 and ends.count("cancelled") >= 3, ends
        # lmtui counts each request once: the queued ones as gone too.
        gone = ends.count("cancelled") + (8 - len(ends))
        assert outcomes(engine) == {
            k: v for k, v in {"client_gone": gone, "ok": ends.count("ok")}.items() if v
        }
