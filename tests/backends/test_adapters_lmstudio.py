"""The LM Studio adapter against the simulator over loopback HTTP: v1, and v0 fallback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from lmtui.backends import Backend, BackendUnreachable, NotSupported
from lmtui.backends.lmstudio import V1_REPROBE_S, LMStudioBackend
from lmtui.core.model import NodeKind, NodeObservation
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MakeBackend = Callable[..., Backend]
PollUntil = Callable[..., Awaitable[NodeObservation]]

MODELS = [SimModel("qwen-7b", 5.0), SimModel("gemma-2b", 2.0), SimModel("nomic", 0.1, "embedding")]


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    specs = [
        SimNodeSpec(
            name="new", kind=NodeKind.LMSTUDIO, models=MODELS, loaded=["qwen-7b"], parallel=2
        ),
        SimNodeSpec(
            name="old", kind=NodeKind.LMSTUDIO, version="0.3.31", models=MODELS, loaded=["qwen-7b"]
        ),
    ]
    async with SimCluster(specs, time_scale=0.01) as c:
        yield c


async def test_v1_poll(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "new")
    obs = await backend.poll(time.time())
    assert obs.version == "0.4+"
    (inst,) = obs.instances or ()
    assert (inst.model, inst.slots_total) == ("qwen-7b", 2)
    assert inst.size_bytes == 5 * 1024**3
    available = {a.key: a for a in obs.available or ()}
    assert set(available) == {"qwen-7b", "gemma-2b", "nomic"}
    assert available["nomic"].kind == "embedding"
    assert available["gemma-2b"].size_bytes == 2 * 1024**3


async def test_load_then_unload(
    cluster: SimCluster, make_backend: MakeBackend, poll_until: PollUntil
) -> None:
    backend = make_backend(cluster, "new")
    await backend.poll(time.time())
    instance_id = await backend.load("gemma-2b", context_length=8192)
    obs = await backend.poll(time.time())
    loaded = {i.instance_id: i for i in obs.instances or ()}
    assert loaded[instance_id].model == "gemma-2b"
    assert loaded[instance_id].context_length == 8192
    await backend.unload("gemma-2b", instance_id)
    obs = await backend.poll(time.time())
    assert [i.model for i in obs.instances or ()] == ["qwen-7b"]
    assert cluster.node("new").loaded_models() == ["qwen-7b"]


async def test_load_unknown_model_is_an_error_with_the_servers_message(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    backend = make_backend(cluster, "new")
    with pytest.raises(Exception, match="not found"):
        await backend.load("nosuch")


async def test_v0_fallback_on_a_0_3_server(cluster: SimCluster, make_backend: MakeBackend) -> None:
    backend = make_backend(cluster, "old")
    obs = await backend.poll(time.time())
    assert obs.version == "<0.4"
    (inst,) = obs.instances or ()
    # Before 0.4 a server handles one request at a time.
    assert (inst.model, inst.slots_total) == ("qwen-7b", 1)
    assert {a.key for a in obs.available or ()} == {"qwen-7b", "gemma-2b", "nomic"}


async def test_v0_node_remembers_and_reprobes(
    cluster: SimCluster, make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    backend = make_backend(cluster, "old", lean=False)  # http.sent sees aiohttp only
    sent: list[str] = http.sent  # type: ignore[attr-defined]
    now = time.time()
    await backend.poll(now)
    assert sent == ["/api/v1/models", "/api/v0/models"]
    sent.clear()
    await backend.poll(now + 1)
    assert sent == ["/api/v0/models"]  # no wasted v1 request every poll
    sent.clear()
    await backend.poll(now + 1 + V1_REPROBE_S)
    assert sent == ["/api/v1/models", "/api/v0/models"]  # the user may have upgraded


async def test_v0_node_cannot_load_and_says_use_lms(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    backend = make_backend(cluster, "old")
    assert isinstance(backend, LMStudioBackend)
    assert backend.can_load  # not known before a poll
    await backend.poll(time.time())
    # Known now: never offered for a load (dashboard, placement, available_on), and why.
    assert not backend.can_load and not backend.can_unload
    assert backend.no_load_reason is not None and "before 0.4" in backend.no_load_reason
    with pytest.raises(NotSupported, match="lms"):
        await backend.load("gemma-2b")
    with pytest.raises(NotSupported, match="lms"):
        await backend.unload("qwen-7b", "qwen-7b")


async def test_v0_detected_at_load_before_any_poll(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    backend = make_backend(cluster, "old")
    with pytest.raises(NotSupported, match="lms"):
        await backend.load("gemma-2b")
    assert cluster.node("old").loaded_models() == ["qwen-7b"]


async def test_config_slots_override(cluster: SimCluster, make_backend: MakeBackend) -> None:
    obs = await make_backend(cluster, "new", slots=6).poll(time.time())
    assert [i.slots_total for i in obs.instances or ()] == [6]


async def test_v0_node_reprobes_v1_after_coming_back(
    cluster: SimCluster, make_backend: MakeBackend, http: httpx.AsyncClient
) -> None:
    backend = make_backend(cluster, "old", timeout=0.5, lean=False)
    sent: list[str] = http.sent  # type: ignore[attr-defined]
    now = time.time()
    await backend.poll(now)
    await cluster.node("old").set_down(True)
    with pytest.raises(BackendUnreachable):
        await backend.poll(now + 1)
    await cluster.node("old").set_down(False)
    sent.clear()
    obs = await backend.poll(now + 2)
    # A restart is when upgrades happen: v1 is asked again at once.
    assert sent == ["/api/v1/models", "/api/v0/models"]
    assert obs.version == "<0.4"


async def test_v1_answered_with_200_unexpected_endpoint_falls_back_and_says_so_once(
    cluster: SimCluster, make_backend: MakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # The 0.3 simulator answers /api/v1/models as real LM Studio does: HTTP 200 and
    # {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}, not 404.
    backend = make_backend(cluster, "old")
    caplog.set_level("WARNING", logger="lmtui.backends.lmstudio")
    now = time.time()
    for k in range(3):
        obs = await backend.poll(now + k * (V1_REPROBE_S + 1))  # re-probes v1 each time
        assert obs.version == "<0.4" and [i.model for i in obs.instances or ()] == ["qwen-7b"]
    warnings = [r for r in caplog.records if r.name == "lmtui.backends.lmstudio"]
    assert len(warnings) == 1
    assert "old" in warnings[0].getMessage() and "Unexpected endpoint" in warnings[0].getMessage()
    with pytest.raises(NotSupported, match=r"older than 0\.4"):
        await backend.load("gemma-2b")


async def test_commands_on_an_unpolled_0_3_server_know_it_has_no_v1(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    with pytest.raises(NotSupported, match=r"older than 0\.4"):
        await make_backend(cluster, "old").load("gemma-2b")


class _FakeLms:
    """``LmsCli``'s interface; ``ps`` answers or fails as told, and counts its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.fail: str | None = None

    async def ps(self) -> list[Any]:
        from lmtui.backends.base import BackendBadResponse
        from lmtui.backends.lms import parse_ps

        self.runs += 1
        if self.fail:
            raise BackendBadResponse(self.fail)
        return parse_ps('[{"identifier": "qwen-7b", "modelKey": "qwen-7b", "sizeBytes": 7}]')


async def test_lms_ps_runs_at_most_every_few_seconds_and_backs_off_when_it_fails(
    cluster: SimCluster, make_backend: MakeBackend
) -> None:
    """lms is a Node.js program: a process start on the host per run. Polls reuse its
    answer for LMS_PS_EVERY_S, and a host without lms is asked again after LMS_RETRY_S."""
    from lmtui.backends.lmstudio import LMS_PS_EVERY_S, LMS_RETRY_S

    backend = make_backend(cluster, "old")
    assert isinstance(backend, LMStudioBackend)
    fake = _FakeLms()
    backend.lms = fake  # type: ignore[assignment]
    now = time.time()
    for dt in (0.0, 0.5, LMS_PS_EVERY_S - 0.1):
        obs = await backend.poll(now + dt)
        assert obs.instances is not None and obs.instances[0].size_bytes == 7  # from lms
    assert fake.runs == 1
    await backend.poll(now + LMS_PS_EVERY_S)
    assert fake.runs == 2 and backend.can_load
    fake.fail = "lms: command not found"
    t = now + 2 * LMS_PS_EVERY_S
    obs = await backend.poll(t)
    assert fake.runs == 3 and backend.lms_error is not None and not backend.can_load
    assert obs.instances is not None and obs.instances[0].size_bytes is None  # HTTP view
    await backend.poll(t + LMS_RETRY_S - 1)
    assert fake.runs == 3  # not asked again yet
    fake.fail = None
    await backend.poll(t + LMS_RETRY_S)
    assert fake.runs == 4 and backend.lms_error is None and backend.can_load
