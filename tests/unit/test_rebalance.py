"""Rebalance plans: upkeep the pool manager applies by itself, never a step a backend
cannot carry out."""

from __future__ import annotations

from types import MappingProxyType

from lmtui.core.model import GiB, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.core.placement import PoolSettings
from lmtui.core.rebalance import plan_rebalance
from lmtui.core.scheduler import SchedulerSettings

NOW = 10_000.0


def mk_node(name: str, total_gb: float = 32, kind: NodeKind = NodeKind.OLLAMA) -> Node:
    from lmtui.core.model import Health

    mem = HostMemory(int(total_gb * GiB), int(total_gb * GiB))
    return Node(name, kind, f"http://127.0.0.1:1/{name}", health=Health.HEALTHY, memory=mem)


def mk_inst(node: str, model: str, size_gb: float = 4, **kw: object) -> Instance:
    kw.setdefault("last_used", NOW - 3_600)
    return Instance(node, model, f"{model}@{node}", size_bytes=int(size_gb * GiB), **kw)  # type: ignore[arg-type]


def mk_snap(nodes: list[Node], instances: list[Instance] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def settings(**pool: object) -> SchedulerSettings:
    return SchedulerSettings(pool=PoolSettings(min_residency_s=0.0, **pool))  # type: ignore[arg-type]


def test_idle_ttl_proposes_nothing_on_a_node_that_cannot_unload() -> None:
    snap = mk_snap(
        [mk_node("vllm", kind=NodeKind.OPENAI), mk_node("ol")],
        [mk_inst("vllm", "big"), mk_inst("ol", "small")],
    )
    s = settings(no_load_nodes=frozenset({"vllm"}), no_unload_nodes=frozenset({"vllm"}))
    plan = plan_rebalance(snap, s, NOW, idle_ttl_s=60)
    assert [(st.action, st.node, st.model) for st in plan.steps] == [("unload", "ol", "small")]


def test_a_pinned_load_never_evicts_on_a_node_that_cannot_unload() -> None:
    # The only node that could take "p" is full of an idle model it cannot unload.
    snap = mk_snap([mk_node("n", 8)], [mk_inst("n", "x", 8)])
    s = settings(pinned=frozenset({"p"}), no_unload_nodes=frozenset({"n"}))
    plan = plan_rebalance(snap, s, NOW)
    assert plan.empty
    # ...while a node that can unload would have made room.
    plan = plan_rebalance(snap, settings(pinned=frozenset({"p"})), NOW)
    assert [(st.action, st.code) for st in plan.steps] == [
        ("unload", "make_room"),
        ("load", "pinned"),
    ]


def test_pinned_and_min_replicas_loads_never_go_to_a_node_that_cannot_load() -> None:
    snap = mk_snap([mk_node("vllm", 64, NodeKind.OPENAI), mk_node("ol", 64)])
    s = SchedulerSettings(
        min_replicas=MappingProxyType({"r": 2}),
        pool=PoolSettings(
            pinned=frozenset({"p"}),
            no_load_nodes=frozenset({"vllm"}),
            no_unload_nodes=frozenset({"vllm"}),
        ),
    )
    plan = plan_rebalance(snap, s, NOW)
    assert plan.steps and all(st.node == "ol" for st in plan.steps)
    assert {(st.model, st.code) for st in plan.steps} == {("p", "pinned"), ("r", "min_replicas")}
