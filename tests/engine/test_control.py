"""Operator commands through both EngineClient implementations (in-process and HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from _routing import MSG, client, eventually, routed

from lmtui.config import ModelConfig, PoolConfig, RouterConfig
from lmtui.config.overrides import load_overrides
from lmtui.core.model import NodeKind
from lmtui.engine.client import EngineClient, HttpEngineClient, InProcessClient
from lmtui.engine.commands import CommandError
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

JSON = {"Content-Type": "application/json"}
MODELS = [SimModel("m1", 10.0), SimModel("m2", 10.0), SimModel("m3", 10.0)]


def spec(name: str, loaded: list[str]) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=MODELS,
        loaded=loaded,
        parallel=2,
        version="0.4.2",
    )


@asynccontextmanager
async def engine_client(
    kind: str, **kw
) -> AsyncIterator[  # type: ignore[no-untyped-def]
    tuple[SimCluster, Engine, EngineClient]
]:
    async with routed([spec("a", ["m1"]), spec("b", [])], **kw) as (cluster, engine):
        if kind == "inprocess":
            yield cluster, engine, InProcessClient(engine)
        else:
            assert engine.router_url is not None
            c = HttpEngineClient(engine.router_url)
            await c.connect()
            try:
                yield cluster, engine, c
            finally:
                await c.aclose()


KINDS = ["inprocess", "http"]


@pytest.mark.parametrize("kind", KINDS)
async def test_load_and_unload_a_model_on_a_chosen_node(kind: str) -> None:
    async with engine_client(kind) as (cluster, engine, c):
        msg = await c.load("m2", "b")
        assert "m2" in msg and "b" in msg
        await eventually(lambda: cluster.node("b").loaded_models() == ["m2"])
        await eventually(lambda: ("b", "m2") in engine.store.snapshot.instances)
        await c.unload("b", "m2")
        assert cluster.node("b").loaded_models() == []
        assert ("b", "m2") not in engine.store.snapshot.instances


@pytest.mark.parametrize("kind", KINDS)
async def test_commands_refuse_what_makes_no_sense(kind: str) -> None:
    async with engine_client(kind) as (_cluster, _engine, c):
        with pytest.raises(CommandError, match="no node named"):
            await c.drain("nope")
        with pytest.raises(CommandError, match="unknown strategy"):
            await c.set_strategy("fastest")
        with pytest.raises(CommandError, match="no instance"):
            await c.evict("a", "m9")
        # A pin of a model nobody knows could never hold: it used to answer "pinned".
        with pytest.raises(CommandError, match="no model 'm9' is known") as e:
            await c.pin("m9")
        assert e.value.status == 404
        await c.pin("m1")
        with pytest.raises(CommandError, match="pinned"):
            await c.evict("a", "m1")


@pytest.mark.parametrize("kind", KINDS)
async def test_drain_stops_routing_to_a_node(kind: str) -> None:
    async with engine_client(kind) as (cluster, engine, c):
        await c.load("m1", "b")
        await eventually(lambda: ("b", "m1") in engine.store.snapshot.instances)
        await c.drain("a")
        assert engine.store.snapshot.nodes["a"].drained
        before = len(cluster.node("a").records)
        oc = client(engine)
        for _ in range(4):
            await oc.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        assert len(cluster.node("a").records) == before
        await c.drain("a", False)
        assert not engine.store.snapshot.nodes["a"].drained


@pytest.mark.parametrize("kind", KINDS)
async def test_strategy_switch_and_watch(kind: str) -> None:
    async with engine_client(kind) as (_cluster, engine, c):
        assert await c.strategy() == "efficiency"
        await c.set_strategy("spread")
        assert engine.dispatcher is not None and engine.dispatcher.strategy.value == "spread"
        assert await c.strategy() == "spread"
        seen = []

        async def follow() -> None:
            async for u in c.watch():
                seen.extend(e.message for e in u.events)
                if any("drained" in m for m in seen):
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await c.drain("b")
        async with asyncio.timeout(5):
            await task
        assert c.snapshot().nodes["b"].drained


async def test_run_time_choices_persist_in_the_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "overrides.toml"
    async with SimCluster([spec("a", ["m1"])], time_scale=0.01) as cluster:
        from lmtui.config import Config, NodeConfig

        cfg = Config(
            nodes=[NodeConfig(name="a", kind=NodeKind.LMSTUDIO, url=cluster.url("a"), memory_gb=64)]
        )
        async with Engine(cfg, overrides_path=path) as engine:
            c = InProcessClient(engine)
            await engine.poller.poll_once("a")  # m2 is known once the node has said so
            await c.pin("m2")
            await c.drain("a")
            await c.set_strategy("replicas")
        ov = load_overrides(path, strict=True)
        assert ov.pinned == ["m2"] and ov.drained == ["a"] and ov.strategy == "replicas"
        # ...and come back at the next start, without touching the user's config
        engine2 = Engine(cfg, overrides_path=path)
        assert engine2.controller.state.pinned == frozenset({"m2"})
        assert engine2.store.snapshot.nodes["a"].drained
        assert engine2.controller.state.strategy.value == "replicas"


def test_a_config_pin_unpinned_at_run_time_stays_unpinned_after_a_restart(
    tmp_path: Path,
) -> None:
    """The overrides file records the unpin; the store and the scheduler must both start
    from it (they used to add the config's pins back on top, so the model stayed pinned —
    never evicted, reloaded by the pool manager — until the next pin command)."""
    from lmtui.config import Config, NodeConfig, Overrides
    from lmtui.config.overrides import save_overrides

    path = tmp_path / "overrides.toml"
    save_overrides(path, Overrides(unpinned=["m1"]))
    cfg = Config(
        nodes=[NodeConfig(name="a", kind=NodeKind.LMSTUDIO, url="http://127.0.0.1:9")],
        models=[ModelConfig(name="m1", pinned=True), ModelConfig(name="m2", pinned=True)],
    )
    engine = Engine(cfg, overrides_path=path)
    assert engine.controller.state.pinned == frozenset({"m2"})
    assert engine.store.ctx.pinned == frozenset({"m2"})
    assert engine.dispatcher.settings.pool.pinned == frozenset({"m2"})


async def test_rebalance_plans_then_applies_pins_and_idle_ttl() -> None:
    async with routed(
        [spec("a", ["m1", "m2"])],
        models=[ModelConfig(name="m3", pinned=True)],
        pool=PoolConfig(idle_ttl=0.2, min_residency=0, reserved_gb=0),
    ) as (cluster, engine):
        await engine.controller.stop()  # drive the pool by hand, not on its timer
        await asyncio.sleep(0.3)  # m1, m2 idle past the TTL
        await engine.poller.poll_once("a")
        c = InProcessClient(engine)
        plan = await c.rebalance()
        actions = {(s.action, s.model) for s in plan.steps}
        assert ("load", "m3") in actions
        assert ("unload", "m1") in actions and ("unload", "m2") in actions
        assert cluster.node("a").loaded_models() == ["m1", "m2"]  # a plan changes nothing
        await c.rebalance(apply=True)
        await eventually(lambda: cluster.node("a").loaded_models() == ["m3"])


async def test_pool_manager_reloads_a_pinned_model_unloaded_by_hand() -> None:
    async with routed([spec("a", ["m1"])], models=[ModelConfig(name="m1", pinned=True)]) as (
        cluster,
        engine,
    ):
        async with httpx.AsyncClient() as h:
            r = await h.post(cluster.url("a") + "/api/v1/models/unload", json={"instance_id": "m1"})
            assert r.status_code == 200
        await eventually(lambda: cluster.node("a").loaded_models() == [], timeout=5)
        await eventually(lambda: cluster.node("a").loaded_models() == ["m1"], timeout=10)
        msgs = [e.message for e in engine.store.events]
        assert any("no longer loaded" in m for m in msgs)
        assert any("pinned but loaded nowhere" in m for m in msgs)


async def test_control_api_needs_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMTUI_ADMIN", "admin-secret")
    async with routed([spec("a", ["m1"])], router=RouterConfig(admin_token_env="LMTUI_ADMIN")) as (
        _c,
        engine,
    ):
        url = f"{engine.router_url}/lmtui/v1"
        async with httpx.AsyncClient() as h:
            assert (await h.get(f"{url}/state")).status_code == 401
            r = await h.post(
                f"{url}/drain", json={"node": "a"}, headers={"Authorization": "Bearer wrong"}
            )
            assert r.status_code == 401
            r = await h.get(f"{url}/state", headers={"Authorization": "Bearer admin-secret"})
            assert r.status_code == 200 and r.json()["snapshot"]["nodes"][0]["name"] == "a"
            r = await h.post(
                f"{url}/drain",
                content=b"[1]",
                headers={
                    "Authorization": "Bearer admin-secret",
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code == 400


async def test_read_only_client_refuses_commands() -> None:
    async with routed([spec("a", ["m1"])]) as (_c, engine):
        c = InProcessClient(engine, read_only=True)
        with pytest.raises(CommandError, match="read-only"):
            await c.drain("a")
        plan = await c.rebalance()  # looking at a plan is fine
        assert plan.empty and plan.summary().startswith("nothing to do")
        with pytest.raises(CommandError, match="read-only"):
            await c.rebalance(apply=True)  # carrying it out is not


async def test_metrics_endpoint_counts_requests() -> None:
    async with routed([spec("a", ["m1"])]) as (_c, engine):
        await client(engine).chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        async with httpx.AsyncClient() as h:
            text = (await h.get(f"{engine.router_url}/metrics")).text
        assert 'lmtui_requests_total{model="m1",node="a",outcome="ok"} 1.0' in text
        assert "lmtui_in_flight" in text


async def test_an_event_recorded_while_the_stream_writes_arrives_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event that lands while the event stream is busy writing (here: while it encodes
    a snapshot) is sent on the next round, not after the 15 s keep-alive."""
    import lmtui.engine.control_api as api
    from lmtui.core.events import Event, EventKind

    async with routed([spec("a", ["m1"])]) as (_cluster, engine):
        await engine.poller.stop()  # a quiet cluster: nothing else wakes the stream
        await engine.controller.stop()  # and no pool-manager rounds either
        real = api.snapshot_to_builtins
        calls = 0

        def encode_and_record(snap):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 2:
                engine.store.record(Event(0.0, EventKind.COMMAND, "during-the-write"))
            return real(snap)

        monkeypatch.setattr(api, "snapshot_to_builtins", encode_and_record)
        async with httpx.AsyncClient(timeout=10) as h:
            url = f"{engine.router_url}/lmtui/v1/events"
            async with h.stream("GET", url) as r:
                lines = r.aiter_lines()
                assert (await anext(lines)).startswith("event: snapshot")
                engine.store.set_drained("a", True, 0.0)  # a new version: a second round
                async with asyncio.timeout(3):  # far below the 15 s keep-alive
                    async for line in lines:
                        if "during-the-write" in line:
                            break


async def test_only_a_pool_node_lists_processes() -> None:
    async with routed([spec("a", ["m1"])]) as (_cluster, engine), httpx.AsyncClient() as h:
        r = await h.get(f"{engine.router_url}/lmtui/v1/nodes/a/processes")
        assert r.status_code == 404 and "run no processes" in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_field_that_is_wrong_is_named_and_a_name_is_bounded(kind: str) -> None:
    async with engine_client(kind) as (_cluster, engine, c):
        with pytest.raises(CommandError, match=r"length <= 256") as e:
            await c.load("m" * 10_000)
        assert e.value.status == 400
        assert not any("m" * 300 in ev.message for ev in engine.store.events)
        with pytest.raises(CommandError, match=r"length >= 1"):
            await c.drain("")


async def test_the_api_decodes_bodies_into_the_command_structs() -> None:
    async with routed([spec("a", ["m1"])]) as (_c, engine):
        url = f"{engine.router_url}/lmtui/v1"
        async with httpx.AsyncClient() as h:
            r = await h.post(f"{url}/unload", json={"node": "a"})
            assert r.status_code == 400
            assert r.json()["error"]["message"] == (
                "unload: Object missing required field `instance_id`"
            )
            r = await h.post(f"{url}/unload", json={"node": "a", "instance_id": 7})
            assert r.status_code == 400 and "`$.instance_id`" in r.json()["error"]["message"]
            r = await h.post(f"{url}/pin", content=b'{"model": "m\xff"}', headers=JSON)
            assert r.status_code == 400 and "utf-8" in r.json()["error"]["message"]
            deep = b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
            r = await h.post(f"{url}/pin", content=deep, headers=JSON)
            assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
            r = await h.post(f"{url}/rebalance", content=b"", headers=JSON)  # the defaults
            assert r.status_code == 200 and r.json()["applied"] is False
            assert r.json()["message"].startswith("nothing to do")


async def test_every_command_has_an_endpoint_a_description_and_an_execute_branch() -> None:
    from lmtui.engine.commands import COMMANDS

    async with routed([spec("a", ["m1"])]) as (_c, engine):
        async with httpx.AsyncClient() as h:
            doc = (await h.get(f"{engine.router_url}/lmtui/v1/openapi.json")).json()
        assert doc["openapi"] == "3.1.0"
        for name, kind in COMMANDS.items():
            op = doc["paths"][f"/lmtui/v1/{name}"]["post"]
            assert op["operationId"] == name and op["summary"]
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            component = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            assert set(component["properties"]) == set(kind.__struct_fields__)
            # Each struct reaches a branch of its own: the catch-all says "unknown command".
            fields = {f: "zz" for f in kind.__struct_fields__ if f not in ("force", "apply")}
            try:
                await engine.controller.execute(kind(**fields))
            except CommandError as e:
                assert "unknown command" not in e.message


async def test_stopping_ends_every_event_stream_instead_of_waiting_the_drain_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attached dashboard (``--connect``) follows /lmtui/v1/events, which never ends by
    itself: SIGTERM used to wait the whole drain bound for it (~20 s). With the bound at
    60 s here, stopping must not come anywhere near it."""
    import lmtui.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "SHUTDOWN_DRAIN_S", 60.0)
    async with routed([spec("a", ["m1"])]) as (_c, engine):
        c = HttpEngineClient(engine.router_url or "")
        await c.connect()
        updates = 0

        async def follow() -> None:
            nonlocal updates
            async for _ in c.watch():
                updates += 1

        watcher = asyncio.create_task(follow())
        await eventually(lambda: updates > 0)
        async with asyncio.timeout(20):
            await engine.stop()
            await watcher  # the stream ended cleanly: the watcher's loop is over
        await c.aclose()


async def test_an_openai_node_is_never_asked_to_unload_an_idle_model() -> None:
    """An OpenAI-compatible server (vLLM) cannot unload: an idle TTL plans nothing there,
    so neither ``r`` nor the pool manager tries (it used to retry the refusal forever)."""
    vllm = SimNodeSpec(
        name="v", kind=NodeKind.OPENAI, memory_gb=64, models=MODELS, loaded=["m1"], parallel=2
    )
    async with routed(
        [vllm, spec("a", ["m2"])], pool=PoolConfig(idle_ttl=0.2, min_residency=0, reserved_gb=0)
    ) as (cluster, engine):
        await engine.controller.stop()
        await asyncio.sleep(0.3)  # both models idle past the TTL
        await engine.poller.poll_once("a")
        plan = await InProcessClient(engine).rebalance()
        assert [(s.action, s.node, s.model) for s in plan.steps] == [("unload", "a", "m2")]
        engine.controller.start(0.05)
        await eventually(lambda: cluster.node("a").loaded_models() == [])
        await asyncio.sleep(0.3)
        assert cluster.node("v").loaded_models() == ["m1"]
        assert not [e for e in engine.store.events if e.node == "v" and e.level.value == "error"]


async def test_a_step_the_node_refuses_is_reported_once_not_every_tick() -> None:
    """A node that refuses an idle-TTL unload and a pinned model's load: many pool-manager
    ticks give one error event each; the retries wait 30 s, then longer, and stay quiet; a
    retry that succeeds is carried out as usual."""
    from lmtui.backends.base import BackendError

    async with routed(
        [spec("a", ["m1"])],
        models=[ModelConfig(name="m3", pinned=True)],
        pool=PoolConfig(idle_ttl=0.2, min_residency=0, reserved_gb=0),
    ) as (cluster, engine):
        ctl = engine.controller
        await ctl.stop()
        backend = engine.dispatcher.backends["a"]
        real_unload = backend.unload
        tries = {"load": 0, "unload": 0}
        refuse = True

        async def unload(model: str, instance_id: str) -> None:
            tries["unload"] += 1
            if refuse:
                raise BackendError("HTTP 500: busy")
            await real_unload(model, instance_id)

        async def load(model: str, **kw: object) -> str:
            tries["load"] += 1
            raise BackendError("no such model file")

        backend.unload = unload  # type: ignore[method-assign]
        backend.load = load  # type: ignore[method-assign]
        skew = 0.0
        ctl.clock = lambda: time.time() + skew
        await asyncio.sleep(0.3)  # m1 idle past the TTL

        def errors() -> list[str]:
            return [e.message for e in engine.store.events if e.level.value == "error"]

        ctl.start(0.02)
        await asyncio.sleep(0.6)  # ~30 ticks
        assert tries == {"load": 1, "unload": 1}
        assert len(errors()) == 2, errors()
        assert any("tries again in 30s" in m for m in errors())
        skew = 31.0  # past the first wait: tried again, quietly
        await eventually(lambda: tries == {"load": 2, "unload": 2})
        await asyncio.sleep(0.3)
        assert tries == {"load": 2, "unload": 2} and len(errors()) == 2
        refuse = False
        skew = 31.0 + 61.0  # the wait doubled; this time the node lets go of m1
        await eventually(lambda: cluster.node("a").loaded_models() == [])
        assert len(errors()) == 2


async def test_proposals_wait_for_the_operator_while_upkeep_runs_by_itself() -> None:
    """Moving a model off a drained node is proposed, not done: the pool manager's ticks
    leave it; ``r`` shows it beside the codes; confirming carries it out."""
    async with routed([spec("a", ["m1"]), spec("b", [])]) as (cluster, engine):
        await engine.controller.stop()
        engine.controller.start(0.02)  # the pool manager, ticking fast
        c = InProcessClient(engine)
        await c.drain("a")
        await asyncio.sleep(0.4)  # ~20 pool-manager ticks
        assert cluster.node("a").loaded_models() == ["m1"]
        assert cluster.node("b").loaded_models() == []
        plan = await c.rebalance()
        assert [(s.action, s.node, s.code, s.proposed) for s in plan.steps] == [
            ("load", "b", "drain_move", True),
            ("unload", "a", "drain_move", True),
        ]
        assert "proposed" in plan.summary()
        await c.rebalance(apply=True)
        await eventually(lambda: cluster.node("b").loaded_models() == ["m1"])
        await eventually(lambda: cluster.node("a").loaded_models() == [])
