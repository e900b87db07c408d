"""The llama.cpp adapter against the simulator: single-model mode, router mode, pool kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from lmtui.backends import Backend, BackendBadResponse, NotSupported
from lmtui.core.model import InstanceState, NodeKind, NodeObservation
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]

# Decoding at 1 token/s of simulated time (0.01 s real) makes a reply last 0.6-2.6 s real:
# long enough to be seen busy by a poll.
SLOW_DECODE = 1.0


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    models = [SimModel("ulysses", 5.0), SimModel("eternal", 3.0)]
    specs = [
        SimNodeSpec(
            name="single",
            kind=NodeKind.LLAMACPP,
            models=models[:1],
            loaded=["ulysses"],
            parallel=2,
            decode_tok_per_s=SLOW_DECODE,
        ),
        # 5 GB at 0.05 GB/s: a load takes 100 s simulated, 1 s real.
        SimNodeSpec(
            name="slow-start",
            kind=NodeKind.LLAMACPP,
            models=models[:1],
            loaded=["ulysses"],
            disk_gb_per_s=0.05,
        ),
        SimNodeSpec(
            name="router",
            kind=NodeKind.LLAMACPP,
            router_mode=True,
            models=models,
            loaded=["ulysses"],
            parallel=2,
            disk_gb_per_s=0.05,
        ),
        SimNodeSpec(
            name="keyed",
            kind=NodeKind.LLAMACPP,
            models=models[:1],
            loaded=["ulysses"],
            api_key="s3cret",
        ),
        SimNodeSpec(
            name="pool",
            kind=NodeKind.LLAMACPP_POOL,
            models=models[:1],
            loaded=["ulysses"],
            parallel=3,
        ),
    ]
    async with SimCluster(specs, time_scale=0.01) as c:
        yield c


def loaded(obs: NodeObservation) -> bool:
    return all(i.state is InstanceState.LOADED for i in obs.instances or ())


async def test_single_poll(
    cluster: SimCluster, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    obs = await poll_until(make_backend(cluster, "single"), loaded)
    (inst,) = obs.instances or ()
    assert (inst.model, inst.state, inst.slots_total, inst.slots_busy) == (
        "ulysses",
        InstanceState.LOADED,
        2,
        0,
    )
    assert inst.size_bytes == 5 * 1024**3
    assert obs.slots_default == 2
    assert obs.version == "b1-0c1e570"
    assert obs.metrics is not None and obs.metrics.requests_processing == 0
    assert [(a.key, a.size_bytes) for a in obs.available or ()] == [("ulysses", 5 * 1024**3)]


async def test_single_static_answers_are_read_once_a_minute_not_every_poll(
    cluster: SimCluster, make_backend: MakeBackend, poll_until: PollUntil, http: httpx.AsyncClient
) -> None:
    backend = make_backend(cluster, "single", lean=False)  # http.sent sees aiohttp only
    await poll_until(backend, loaded)
    sent: list[str] = http.sent  # type: ignore[attr-defined]
    sent.clear()
    obs = await backend.poll(time.time())
    assert sorted(sent) == ["/health", "/metrics", "/slots"]  # no /props, no /v1/models
    assert obs.slots_default == 2 and obs.version == "b1-0c1e570"  # still known
    sent.clear()
    await backend.poll(time.time() + 61)
    assert "/props" in sent and ({"/v1/models", "/models"} & set(sent))


async def test_single_busy_slot_is_seen(
    cluster: SimCluster,
    make_backend: MakeBackend,
    poll_until: PollUntil,
    http: httpx.AsyncClient,
) -> None:
    backend = make_backend(cluster, "single")
    await poll_until(backend, loaded)
    body = {"model": "ulysses", "messages": [{"role": "user", "content": "hi"}]}
    request = asyncio.create_task(
        http.post(cluster.url("single") + "/v1/chat/completions", json=body, timeout=10)
    )
    try:
        obs = await poll_until(backend, lambda o: [i.slots_busy for i in o.instances or ()] == [1])
        assert obs.metrics is not None and obs.metrics.requests_processing == 1
    finally:
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)


async def test_single_503_while_loading_is_a_loading_instance(
    cluster: SimCluster, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = make_backend(cluster, "slow-start")
    obs = await backend.poll(time.time())
    (inst,) = obs.instances or ()
    assert inst.state is InstanceState.LOADING
    assert inst.model == "ulysses"
    obs = await poll_until(backend, loaded)
    assert [i.model for i in obs.instances or ()] == ["ulysses"]
    assert (obs.instances or ())[0].size_bytes == 5 * 1024**3  # meta known once loaded


async def test_single_cannot_load(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "single")
    with pytest.raises(NotSupported, match="router"):
        await backend.load("eternal")
    with pytest.raises(NotSupported):
        await backend.unload("ulysses", "ulysses")


async def test_whether_a_node_can_load_is_known_once_its_mode_is(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    single, router = make_backend(cluster, "single"), make_backend(cluster, "router")
    assert single.can_load and router.can_load  # not polled yet: it may be a router
    await single.poll(time.time())
    await router.poll(time.time())
    assert not single.can_load and router.can_load


async def test_router_poll(cluster: SimCluster, make_backend: MakeBackend) -> None:
    obs = await make_backend(cluster, "router").poll(time.time())
    (inst,) = obs.instances or ()
    assert (inst.model, inst.state, inst.slots_total, inst.slots_busy) == (
        "ulysses",
        InstanceState.LOADED,
        2,
        0,
    )
    assert inst.size_bytes == 5 * 1024**3
    assert {a.key for a in obs.available or ()} == {"ulysses", "eternal"}
    assert obs.metrics is not None and obs.metrics.requests_processing == 0


async def test_router_load_shows_loading_then_loaded_then_unload(
    cluster: SimCluster, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = make_backend(cluster, "router")
    await backend.poll(time.time())
    assert await backend.load("eternal") == "eternal"
    obs = await backend.poll(time.time())
    states = {i.model: i.state for i in obs.instances or ()}
    assert states == {"ulysses": InstanceState.LOADED, "eternal": InstanceState.LOADING}
    obs = await poll_until(backend, loaded)
    eternal = {i.model: i for i in obs.instances or ()}["eternal"]
    assert eternal.size_bytes == 3 * 1024**3
    await backend.unload("eternal", "eternal")
    obs = await backend.poll(time.time())
    assert [i.model for i in obs.instances or ()] == ["ulysses"]
    # The size learned while it was loaded stays known for placement.
    sizes = {a.key: a.size_bytes for a in obs.available or ()}
    assert sizes["eternal"] == 3 * 1024**3


async def test_router_load_unknown_model(cluster: SimCluster, make_backend: MakeBackend) -> None:
    with pytest.raises(BackendBadResponse, match="not found"):
        await make_backend(cluster, "router").load("nosuch")


async def test_api_key_missing_is_named(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "keyed")
    # While the model loads (/health needs no key) ...
    with pytest.raises(BackendBadResponse, match="API key"):
        await backend.poll(time.time())
    async with asyncio.timeout(5):
        while cluster.node("keyed").loaded_models() != ["ulysses"]:
            await asyncio.sleep(0.02)
    # ... and once it has loaded.
    with pytest.raises(BackendBadResponse, match=r"keyed.*api_key_env"):
        await backend.poll(time.time())


async def test_api_key_from_env(
    cluster: SimCluster,
    make_backend: MakeBackend,
    poll_until: PollUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMTUI_TEST_LLAMA_KEY", "s3cret")
    backend = make_backend(cluster, "keyed", api_key_env="LMTUI_TEST_LLAMA_KEY")
    obs = await poll_until(backend, loaded)
    assert [i.model for i in obs.instances or ()] == ["ulysses"]
