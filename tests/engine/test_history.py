"""The metric history (engine/history.py), the circuit breakers' state in the snapshot, and
both as an attached dashboard gets them over the control API."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import httpx
import pytest
from _routing import MSG, eventually, routed
from test_router import lms

from lmtui.config import ModelConfig
from lmtui.core.model import GiB, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.engine.client import HttpEngineClient, InProcessClient
from lmtui.engine.codec import snapshot_from_builtins, snapshot_to_builtins
from lmtui.engine.details import percentiles
from lmtui.engine.history import (
    History,
    HistorySampler,
    Sample,
    sample_from_builtins,
    sample_to_builtins,
)
from lmtui.engine.store import Store


def _store() -> Store:
    mem = HostMemory(total_bytes=64 * GiB, available_bytes=40 * GiB)
    nodes = [
        Node("a", NodeKind.LMSTUDIO, "http://a", memory=mem, tokens_per_second=12.0),
        Node("b", NodeKind.OLLAMA, "http://b"),
    ]
    store = Store(nodes)
    store._snap = Snapshot(
        version=1,
        nodes=store.snapshot.nodes,
        instances=MappingProxyType(
            {
                ("a", "m1"): Instance("a", "m1", "m1", slots_total=4, queued=2),
                ("b", "m1"): Instance("b", "m1", "m1"),
            }
        ),
        queue_depth=MappingProxyType({"m1": 3}),
    )
    return store


def test_the_sampler_turns_started_requests_into_rates_per_node_model_and_cluster() -> None:
    store = _store()
    history = History()
    sampler = HistorySampler(store, history, clock=lambda: 0.0)
    history.add(sampler.sample(100.0))  # the first sample has no rate yet
    for _ in range(6):
        store.add_in_flight(("a", "m1"), +1, 100.5)
    store.add_in_flight(("b", "m1"), +1, 100.5)
    store.add_in_flight(("a", "m1"), -1, 101.0)  # a finish is not a new request
    history.add(sampler.sample(102.0))
    assert history.points("node", "a", "requests") == [(100.0, 0.0), (102.0, 3.0)]
    assert history.points("node", "b", "requests")[-1] == (102.0, 0.5)
    assert history.points("model", "m1", "requests")[-1] == (102.0, 3.5)
    assert history.points("cluster", "", "requests")[-1] == (102.0, 3.5)
    # Queue: a's server queue for the node; lmtui's queue plus servers' for the model.
    assert history.latest("node", "a") == (3.0, 2.0, 12.0, float(24 * GiB))
    assert history.points("model", "m1", "queued")[-1] == (102.0, 5.0)
    # Unknown stays unknown: b reports no tokens and nobody read its memory.
    assert history.latest("node", "b") == (0.5, 0.0, None, None)
    assert history.latest("cluster") == (3.5, 5.0, 12.0, float(24 * GiB))


def test_windows_are_bounded_and_quiet_series_go() -> None:
    history = History(window_s=10, step_s=1)
    for t in range(25):
        nodes = {"a": (1.0, 0.0, None, None)}
        if t < 5:
            nodes["gone"] = (0.0, 0.0, None, None)
        history.add(Sample(float(t), (1.0, 0.0, None, None), nodes))
    assert len(history.points("node", "a", "requests")) == 10
    assert history.points("node", "a", "requests")[0][0] == 15.0
    assert "gone" not in history.names("node")  # nothing for a whole window
    # A sample seen already (a backlog overlapping the stream) is not added twice.
    history.add(Sample(24.0, (9.0, 0.0, None, None), {"a": (9.0, 0.0, None, None)}))
    assert history.points("node", "a", "requests")[-1] == (24.0, 1.0)


def test_history_and_samples_survive_the_wire() -> None:
    history = History()
    s1 = Sample(1.0, (1.0, 2.0, None, 3.0), {"a": (1.0, 0.0, 4.5, None)}, {"m": (1, 2, None, None)})
    history.add(s1)
    copy = History()
    copy.load_builtins(history.to_builtins())
    assert copy.points("node", "a", "tokens") == [(1.0, 4.5)]
    assert copy.latest("cluster") == (1.0, 2.0, None, 3.0)
    s2 = sample_from_builtins(sample_to_builtins(Sample(2.0, (0.0, 0.0, 1.0, 1.0))))
    assert s2 == Sample(2.0, (0.0, 0.0, 1.0, 1.0))
    # Junk from a foreign server is skipped, not raised.
    assert sample_from_builtins({"at": "x", "cluster": [1]}) is None
    copy.load_builtins({"nodes": {"a": [["bad"], [3.0, 1, 2, "x", None]]}, "cluster": 7})
    assert copy.points("node", "a", "tokens")[-1] == (3.0, None)


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) is None
    p = percentiles([float(i) for i in range(1, 101)])
    assert p is not None and (p.p50, p.p90, p.p99) == (50.0, 90.0, 99.0)
    one = percentiles([0.25])
    assert one is not None and one.p99 == 0.25


async def test_the_engine_samples_history_and_an_attached_client_gets_it_and_its_stream() -> None:
    async with routed([lms("a", ["m1"])]) as (_cluster, engine):
        body = {"model": "m1", "messages": MSG, "max_tokens": 2}
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            engine.sampler.tick()
            for _ in range(4):
                assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
        engine.sampler.tick()
        local = InProcessClient(engine).history()
        assert sum(v or 0 for _, v in local.points("node", "a", "requests")) > 0
        remote = HttpEngineClient(engine.router_url or "")
        try:
            await remote.connect()
            assert remote.history().points("node", "a", "requests") == local.points(
                "node", "a", "requests"
            )
            # Then one sample a second arrives on the event stream.
            seen = remote.history().last_at

            async def follow() -> None:
                async for _ in remote.watch():
                    pass

            task = asyncio.create_task(follow())
            try:
                await eventually(lambda: remote.history().last_at > seen, timeout=5)
            finally:
                task.cancel()
        finally:
            await remote.aclose()


async def test_an_open_circuit_is_in_the_snapshot_locally_and_attached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmtui.engine.dispatch as dispatch

    monkeypatch.setattr(dispatch, "CIRCUIT_OPEN_S", 30.0)
    async with routed([lms("a", ["m1"]), lms("b", ["m1"])]) as (cluster, engine):
        assert engine.store.snapshot.circuits == {}
        cluster.node("a").faults.post_errors = True
        body = {"model": "m1", "messages": MSG, "max_tokens": 2}
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(12):
                assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
        engine.sampler.tick()  # the tick publishes the breakers' state
        circuits = engine.store.snapshot.circuits
        assert list(circuits) == [("a", "m1")]
        c = circuits[("a", "m1")]
        now = engine.clock()
        assert c.failures >= dispatch.CIRCUIT_FAILURES
        assert c.opened_at <= now < c.open_until and not c.half_open(now)
        # Through the wire format, and an attached client.
        assert snapshot_from_builtins(snapshot_to_builtins(engine.store.snapshot)).circuits == (
            circuits
        )
        remote = HttpEngineClient(engine.router_url or "")
        try:
            await remote.connect()
            assert remote.snapshot().circuits == circuits
        finally:
            await remote.aclose()


async def test_model_details_in_process_and_attached(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    models = [ModelConfig(name="m1", priority="high", min_replicas=1, pinned=True)]
    async with routed([lms("a", ["m1"])], models=models, request_log=tmp_path / "r.sqlite3") as (
        _cluster,
        engine,
    ):
        body = {"model": "m1", "messages": MSG, "max_tokens": 2, "stream": True}
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(3):
                assert (await h.post("/v1/chat/completions", json=body)).status_code == 200
        local = await InProcessClient(engine).model_details("m1")
        assert local is not None and local.logged
        assert (local.priority, local.min_replicas, local.pinned) == ("high", 1, True)
        assert local.requests == 3 and local.failed == 0
        assert local.queue_wait_s is not None and local.ttft_s is not None
        remote = HttpEngineClient(engine.router_url or "")
        try:
            assert await remote.model_details("m1") == local
            unknown = await remote.model_details("nobody")
            assert unknown is not None and unknown.requests == 0
        finally:
            await remote.aclose()


def test_a_point_that_is_no_figure_is_not_kept_as_one() -> None:
    """What an attached engine sends (or a node reports) may decode to NaN or infinity
    (msgspec reads 1e999 as inf): such a time drops the point, such a value is unknown,
    and neither reaches a sparkline's running sums or a plot's means."""
    history = History()
    history.add(Sample(1.0, (1.0, 2.0, 3.0, 4.0), {"a": (float("nan"), 1.0, float("inf"), 2.0)}))
    history.load_builtins({"nodes": {"a": [[float("inf"), 9, 9, 9, 9], [2.0, 5, None, -1e999, 0]]}})
    history.load_builtins({"nodes": {"x" * 10_000: [[3.0, 1, 1, 1, 1]]}})
    assert history.last_at == 2.0  # not pinned at infinity
    assert history.points("node", "a", "requests") == [(1.0, None), (2.0, 5.0)]
    assert history.points("node", "a", "tokens") == [(1.0, None), (2.0, None)]
    assert history.latest("node", "a") == (5.0, None, None, 0.0)
    assert history.names("node") == ["a"]  # a name over MAX_NAME characters is no series
    means, newest = history.bucket_means("node", "a", "memory", 2)
    assert newest == (2.0, 0.0) and means == [None, 1.0]  # the mean of 2.0 and 0.0
    means, _ = history.bucket_means("node", "a", "tokens", 2)
    assert means == [None, None]
    # A streamed sample at no time is left out whole: no series, no listener, no last_at.
    heard: list[Sample] = []
    history.subscribe(heard.append)
    streamed = sample_from_builtins({"at": 1e999, "cluster": [1, 1, 1, 1]})
    assert streamed is not None
    history.add(streamed)
    assert heard == [] and history.last_at == 2.0
