"""The OpenAI-compatible (vLLM) adapter against the simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from lmtui.backends import Backend, NotSupported
from lmtui.core.model import NodeKind, NodeObservation
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    spec = SimNodeSpec(
        name="v",
        kind=NodeKind.OPENAI,
        models=[SimModel("Qwen/Qwen2.5-7B-Instruct", 5.0, max_context=16384)],
        loaded=["Qwen/Qwen2.5-7B-Instruct"],
        parallel=1,
        decode_tok_per_s=1.0,  # a reply lasts about a second real: long enough to see
    )
    async with SimCluster([spec], time_scale=0.01) as c:
        yield c


async def test_poll(cluster: SimCluster, make_backend: MakeBackend) -> None:
    obs = await make_backend(cluster, "v").poll(time.time())
    (inst,) = obs.instances or ()
    assert (inst.model, inst.context_length, inst.slots_busy, inst.queued) == (
        "Qwen/Qwen2.5-7B-Instruct",
        16384,
        0,
        0,
    )
    assert inst.slots_total is None  # vLLM does not say; config `slots` may
    assert obs.metrics is not None
    assert (obs.metrics.requests_processing, obs.metrics.kv_cache_usage) == (0, 0.0)
    assert [a.key for a in obs.available or ()] == ["Qwen/Qwen2.5-7B-Instruct"]


async def test_running_and_waiting_requests(
    cluster: SimCluster,
    make_backend: MakeBackend,
    poll_until: PollUntil,
    http: httpx.AsyncClient,
) -> None:
    backend = make_backend(cluster, "v", slots=1)
    body = {"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "x"}]}
    url = cluster.url("v") + "/v1/chat/completions"
    requests = [asyncio.create_task(http.post(url, json=body, timeout=10)) for _ in range(3)]
    try:
        obs = await poll_until(
            backend, lambda o: [(i.slots_busy, i.queued) for i in o.instances or ()] == [(1, 2)]
        )
        assert obs.metrics is not None and obs.metrics.requests_waiting == 2
        assert [i.slots_total for i in obs.instances or ()] == [1]
    finally:
        for r in requests:
            r.cancel()
        await asyncio.gather(*requests, return_exceptions=True)


async def test_cannot_load(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "v")
    assert not backend.can_load
    with pytest.raises(NotSupported):
        await backend.load("other")
