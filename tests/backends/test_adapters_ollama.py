"""The Ollama adapter against the simulator over loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from lmtui.backends import Backend, BackendError
from lmtui.core.model import NodeKind, NodeObservation
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    spec = SimNodeSpec(
        name="o",
        kind=NodeKind.OLLAMA,
        models=[SimModel("llama3.2:3b", 2.0), SimModel("qwen2.5:7b", 5.0)],
        loaded=["llama3.2:3b"],
        parallel=2,
        keep_alive_s=600.0,
    )
    async with SimCluster([spec], time_scale=0.01) as c:
        yield c


async def test_poll(cluster: SimCluster, make_backend: MakeBackend) -> None:
    now = time.time()
    obs = await make_backend(cluster, "o").poll(now)
    (inst,) = obs.instances or ()
    assert (inst.model, inst.instance_id) == ("llama3.2:3b", "llama3.2:3b")
    assert inst.size_bytes == 2 * 1024**3
    assert inst.context_length is not None
    # OLLAMA_NUM_PARALLEL is not exposed: without a configured `slots`, 1.
    assert inst.slots_total == 1
    assert inst.expires_at is not None and inst.expires_at > now
    assert {a.key: a.size_bytes for a in obs.available or ()} == {
        "llama3.2:3b": 2 * 1024**3,
        "qwen2.5:7b": 5 * 1024**3,
    }
    assert obs.version == cluster.node("o").spec.version


async def test_slots_come_from_config(cluster: SimCluster, make_backend: MakeBackend) -> None:
    obs = await make_backend(cluster, "o", slots=2).poll(time.time())
    assert [i.slots_total for i in obs.instances or ()] == [2]
    assert obs.slots_default == 2


async def test_rarely_changing_lists_are_not_reread_every_poll(
    cluster: SimCluster, make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    backend = make_backend(cluster, "o", lean=False)  # http.sent sees aiohttp only
    sent: list[str] = http.sent  # type: ignore[attr-defined]
    now = time.time()
    first = await backend.poll(now)
    assert sorted(sent) == ["/api/ps", "/api/tags", "/api/version"]
    sent.clear()
    second = await backend.poll(now + 1)
    assert sent == ["/api/ps"]
    # ... yet the observation still carries them.
    assert second.available == first.available
    assert second.version == first.version


async def test_load_with_ttl_then_unload(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "o")
    assert backend.can_load
    now = time.time()
    assert await backend.load("qwen2.5:7b", ttl=3600) == "qwen2.5:7b"
    obs = await backend.poll(now)
    loaded = {i.model: i for i in obs.instances or ()}
    assert set(loaded) == {"llama3.2:3b", "qwen2.5:7b"}
    # keep_alive "3600s" (simulated time, scaled 0.01): expires later than now.
    assert (loaded["qwen2.5:7b"].expires_at or 0) > now
    await backend.unload("qwen2.5:7b", "qwen2.5:7b")
    obs = await backend.poll(time.time())
    assert [i.model for i in obs.instances or ()] == ["llama3.2:3b"]


async def test_load_forever_by_default(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "o")
    await backend.load("qwen2.5:7b")
    obs = await backend.poll(time.time())
    loaded = {i.model: i for i in obs.instances or ()}
    # keep_alive -1: Ollama reports an expiry centuries ahead.
    assert (loaded["qwen2.5:7b"].expires_at or 0) > time.time() + 100 * 365 * 86400


async def test_load_unknown_model_raises_the_servers_error(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    with pytest.raises(BackendError, match="not found"):
        await make_backend(cluster, "o").load("nosuch:1b")
