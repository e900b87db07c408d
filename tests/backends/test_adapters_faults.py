"""Every adapter under every simulated fault: the error type the poll loop relies on.

``BackendUnreachable`` (refused, timed out) and ``BackendBadResponse`` (500s, garbage) are
what mark a node suspect and then down; anything else escaping a poll would crash the
poll loop. Each test also checks that the node reads fine again once the fault clears.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from lmtui.backends import Backend, BackendBadResponse, BackendError, BackendUnreachable
from lmtui.core.model import InstanceState, NodeKind, NodeObservation
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]

#: A small poll timeout so that a hung node fails the poll quickly.
TIMEOUT_S = 0.3
MODELS = [SimModel("m1", 2.0), SimModel("m2", 1.0)]
SPECS = {
    "lmstudio": SimNodeSpec(name="lmstudio", kind=NodeKind.LMSTUDIO, models=MODELS, loaded=["m1"]),
    "lmstudio-0.3": SimNodeSpec(
        name="lmstudio-0.3", kind=NodeKind.LMSTUDIO, models=MODELS, loaded=["m1"], version="0.3.31"
    ),
    "ollama": SimNodeSpec(name="ollama", kind=NodeKind.OLLAMA, models=MODELS, loaded=["m1"]),
    "llamacpp": SimNodeSpec(name="llamacpp", kind=NodeKind.LLAMACPP, models=MODELS, loaded=["m1"]),
    "llamacpp-router": SimNodeSpec(
        name="llamacpp-router",
        kind=NodeKind.LLAMACPP,
        models=MODELS,
        loaded=["m1"],
        router_mode=True,
    ),
    "openai": SimNodeSpec(name="openai", kind=NodeKind.OPENAI, models=MODELS, loaded=["m1"]),
}
NAMES = list(SPECS)


@pytest.fixture(scope="module")
def specs() -> list[SimNodeSpec]:
    return list(SPECS.values())


@pytest.fixture
async def cluster(specs: list[SimNodeSpec]) -> AsyncIterator[SimCluster]:
    async with SimCluster(specs, time_scale=0.01) as c:
        yield c


def serving(obs: NodeObservation) -> bool:
    insts = obs.instances or ()
    return bool(insts) and all(i.state is InstanceState.LOADED for i in insts)


async def healthy_backend(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> Backend:
    backend = make_backend(cluster, name, timeout=TIMEOUT_S)
    await poll_until(backend, serving)
    return backend


async def poll_error(backend: Backend) -> BackendError:
    """The error one poll raises (bounded in time, whatever the node does)."""
    async with asyncio.timeout(5):
        with pytest.raises(BackendError) as info:
            await backend.poll(time.time())
    return info.value


@pytest.mark.parametrize("name", NAMES)
async def test_down_is_unreachable_then_recovers(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = await healthy_backend(cluster, name, make_backend, poll_until)
    await cluster.node(name).set_down(True)
    assert isinstance(await poll_error(backend), BackendUnreachable)
    await cluster.node(name).set_down(False)
    obs = await poll_until(backend, serving)
    assert [i.model.removesuffix(":latest") for i in obs.instances or ()] == ["m1"]


@pytest.mark.parametrize("name", NAMES)
async def test_hang_is_unreachable_after_the_timeout(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = await healthy_backend(cluster, name, make_backend, poll_until)
    cluster.node(name).faults.hang = True
    try:
        err = await poll_error(backend)
        assert isinstance(err, BackendUnreachable)
        assert "timed out" in str(err)
    finally:
        cluster.node(name).faults.hang = False
    await poll_until(backend, serving)


@pytest.mark.parametrize("name", NAMES)
async def test_slow_beyond_the_timeout_is_unreachable(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = await healthy_backend(cluster, name, make_backend, poll_until)
    cluster.node(name).faults.slow_s = 0.6
    assert isinstance(await poll_error(backend), BackendUnreachable)


@pytest.mark.parametrize("name", NAMES)
async def test_server_errors_are_bad_response(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = await healthy_backend(cluster, name, make_backend, poll_until)
    cluster.node(name).faults.error_rate = 1.0
    err = await poll_error(backend)
    assert isinstance(err, BackendBadResponse)
    assert "500" in str(err)
    cluster.node(name).faults.error_rate = 0.0
    await poll_until(backend, serving)


@pytest.mark.parametrize("name", NAMES)
async def test_malformed_json_is_bad_response(
    cluster: SimCluster, name: str, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = await healthy_backend(cluster, name, make_backend, poll_until)
    cluster.node(name).faults.malformed_json = True
    err = await poll_error(backend)
    assert isinstance(err, BackendBadResponse)
    assert "malformed" in str(err)
    cluster.node(name).faults.malformed_json = False
    await poll_until(backend, serving)


@pytest.mark.parametrize("name", NAMES)
async def test_first_poll_of_a_down_node(
    cluster: SimCluster, name: str, make_backend: MakeBackend
) -> None:
    await cluster.node(name).set_down(True)
    backend = make_backend(cluster, name, timeout=TIMEOUT_S)
    assert isinstance(await poll_error(backend), BackendUnreachable)
