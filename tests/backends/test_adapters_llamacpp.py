"""The llama.cpp adapter against the simulator: single-model mode, router mode, pool kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from lmtui.backends import Backend, BackendBadResponse, NotSupported
from lmtui.backends.base import LoadDeferred
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
    assert not single.can_unload and router.can_unload


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
    # The router answers the POST at once and loads in the background; load() returns only
    # once the model reads loaded, so polls meanwhile show it loading.
    load = asyncio.create_task(backend.load("eternal"))
    obs = await poll_until(
        backend,
        lambda o: (
            {i.model: i.state for i in o.instances or ()}.get("eternal") is InstanceState.LOADING
        ),
    )
    assert {i.model: i.state for i in obs.instances or ()}["ulysses"] is InstanceState.LOADED
    assert await load == "eternal"
    obs = await backend.poll(time.time())
    assert loaded(obs)
    eternal = {i.model: i for i in obs.instances or ()}["eternal"]
    assert eternal.size_bytes == 3 * 1024**3
    assert eternal.size_source == "server"
    await backend.unload("eternal", "eternal")
    obs = await backend.poll(time.time())
    assert [i.model for i in obs.instances or ()] == ["ulysses"]
    # The size learned while it was loaded stays known for placement, marked as such.
    sizes = {a.key: (a.size_bytes, a.size_source) for a in obs.available or ()}
    assert sizes["eternal"] == (3 * 1024**3, "seen")
    assert cluster.node("router").server.load_posts == ["eternal"]  # type: ignore[attr-defined]


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


def _router_spec(**kw: object) -> SimNodeSpec:
    base: dict[str, object] = {
        "name": "rt",
        "kind": NodeKind.LLAMACPP,
        "router_mode": True,
        "models": [SimModel("ulysses", 5.0), SimModel("eternal", 3.0)],
        "loaded": ["ulysses"],
        "parallel": 2,
        "models_max": 1,
        "decode_tok_per_s": SLOW_DECODE,
    }
    base.update(kw)
    return SimNodeSpec(**base)  # type: ignore[arg-type]


async def test_router_instance_limit_is_read_from_props(make_backend: MakeBackend) -> None:
    async with SimCluster([_router_spec(), _router_spec(name="free", models_max=0)]) as c:
        assert (await make_backend(c, "rt").poll(time.time())).max_instances == 1
        # --models-max 0: no limit.
        assert (await make_backend(c, "free").poll(time.time())).max_instances is None


async def test_router_load_at_the_limit_evicts_an_idle_model(make_backend: MakeBackend) -> None:
    async with SimCluster([_router_spec()], time_scale=0.01) as c:
        backend = make_backend(c, "rt")
        assert await backend.load("eternal") == "eternal"
        assert c.node("rt").loaded_models() == ["eternal"]


async def test_polls_during_an_unload_do_not_load_the_model_again(
    make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    # The simulated router, like the real one, loads a model again when a GET names it
    # with ?model= while it is being stopped.
    async with SimCluster([_router_spec()], time_scale=0.01) as c:
        reply = await http.get(c.url("rt") + "/slots", params={"model": "eternal"})
        assert reply.status_code == 200 and sorted(c.node("rt").loaded_models()) == ["eternal"]
        backend = make_backend(c, "rt")
        await backend.load("ulysses")
        stop = asyncio.Event()

        async def keep_polling() -> None:
            while not stop.is_set():
                await backend.poll(time.time())

        pollers = [asyncio.create_task(keep_polling()) for _ in range(2)]
        await asyncio.sleep(0.05)
        await backend.unload("ulysses", "ulysses")
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*pollers)
        assert c.node("rt").loaded_models() == []


async def test_router_load_at_the_limit_while_busy_is_deferred(
    make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    async with SimCluster([_router_spec()], time_scale=0.01) as c:
        node = c.node("rt")
        body = {"model": "ulysses", "messages": [{"role": "user", "content": "hi"}]}
        chat = asyncio.create_task(http.post(c.url("rt") + "/v1/chat/completions", json=body))
        async with asyncio.timeout(5):
            while node.in_flight() == 0:
                await asyncio.sleep(0.01)
        backend = make_backend(c, "rt")
        with pytest.raises(LoadDeferred, match="model limit reached"):
            await backend.load("eternal")
        # Transient: nothing failed, the resident model still serves.
        obs = await backend.poll(time.time())
        assert [(i.model, i.state) for i in obs.instances or ()] == [
            ("ulysses", InstanceState.LOADED)
        ]
        assert all(i.error is None for i in obs.instances or ())
        chat.cancel()


async def test_router_downloading_model_reads_loading_and_is_loaded_once(
    make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    # 1 GB at 0.5 GB/s simulated is 2 s, 0.2 s real: long enough to be seen downloading.
    spec = _router_spec(
        models=[SimModel("ulysses", 5.0), SimModel("fresh", 1.0, downloaded=False)],
        models_max=0,
        download_gb_per_s=0.5,
    )
    async with SimCluster([spec], time_scale=0.1) as c:
        backend, other = make_backend(c, "rt"), make_backend(c, "rt")
        first = asyncio.create_task(backend.load("fresh"))
        obs = await poll_until(
            other, lambda o: any(i.model == "fresh" for i in o.instances or ()), limit_s=5.0
        )
        (fresh,) = [i for i in obs.instances or () if i.model == "fresh"]
        assert fresh.state is InstanceState.LOADING
        # A second load of a model coming up waits for it instead of posting again.
        assert await asyncio.gather(first, other.load("fresh")) == ["fresh", "fresh"]
        assert c.node("rt").server.load_posts == ["fresh"]  # type: ignore[attr-defined]
        obs = await other.poll(time.time())
        assert {i.model: i.state for i in obs.instances or ()}["fresh"] is InstanceState.LOADED


async def test_router_load_that_fails_says_so(make_backend: MakeBackend) -> None:
    # 5 GB cannot load in 4 GB: the model's process exits and /models shows it failed.
    spec = _router_spec(memory_gb=4.0, loaded=[], models_max=0)
    async with SimCluster([spec], time_scale=0.01) as c:
        with pytest.raises(BackendBadResponse, match="ulysses"):
            await make_backend(c, "rt").load("ulysses")


async def test_single_model_path_id_is_named_by_its_file(make_backend: MakeBackend) -> None:
    spec = SimNodeSpec(
        "s", NodeKind.LLAMACPP, models=[SimModel("../models/Gemma-3.gguf", 0.3)], parallel=2
    )
    async with SimCluster([spec], time_scale=0.01) as c:
        obs = await _wait_loaded(make_backend(c, "s"))
        assert [(i.model, i.instance_id) for i in obs.instances or ()] == [("Gemma-3", "Gemma-3")]
        assert [a.key for a in obs.available or ()] == ["Gemma-3"]


async def _wait_loaded(backend: Backend) -> NodeObservation:
    async with asyncio.timeout(5):
        while True:
            obs = await backend.poll(time.time())
            if obs.instances and loaded(obs):
                return obs
            await asyncio.sleep(0.02)


async def test_router_sleeping_model_is_loaded_with_slots_from_props_and_left_asleep(
    make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    # --sleep-idle-seconds 1 (simulated): 0.01 s real of idleness puts ulysses to sleep.
    spec = _router_spec(parallel=3, sleep_idle_s=1.0, models_max=0)
    async with SimCluster([spec], time_scale=0.01) as c:
        url = c.url("rt")

        async def status() -> str:
            entries = (await http.get(url + "/models")).json()["data"]
            return {m["id"]: m["status"]["value"] for m in entries}["ulysses"]

        async with asyncio.timeout(5):
            while await status() != "sleeping":
                await asyncio.sleep(0.01)
        backend = make_backend(c, "rt", lean=False)
        http.sent.clear()  # type: ignore[attr-defined]
        obs = await backend.poll(time.time())
        (inst,) = obs.instances or ()
        assert (inst.state, inst.slots_total) == (InstanceState.LOADED, 3)
        # The router's /props and the sleeping model's /props; never /slots or /metrics,
        # which would wake it.
        assert sorted(http.sent) == ["/models", "/props", "/props"]  # type: ignore[attr-defined]
        http.sent.clear()  # type: ignore[attr-defined]
        await backend.poll(time.time())
        assert http.sent == ["/models"]  # type: ignore[attr-defined]  # read once per sleep
        assert await status() == "sleeping"


async def test_router_unload_returns_once_the_place_is_free(make_backend: MakeBackend) -> None:
    # The router answers an unload at once and lists the model loaded until its process
    # exits; a load at --models-max meanwhile is refused. unload() waits, so the load that
    # follows an eviction goes through.
    async with SimCluster([_router_spec()], time_scale=0.05) as c:
        backend = make_backend(c, "rt")
        await backend.poll(time.time())
        await backend.unload("ulysses", "ulysses")
        obs = await backend.poll(time.time())
        assert obs.instances == ()
        assert await backend.load("eternal") == "eternal"
