"""Rebalance plans: upkeep the pool manager applies by itself, proposals only the operator
confirms, and never a step a backend cannot carry out."""

from __future__ import annotations

from types import MappingProxyType

from lmtui.core.model import GiB, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.core.placement import PoolSettings
from lmtui.core.proposals import plan_proposals
from lmtui.core.rebalance import plan_rebalance, plan_upkeep
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


# -- proposals: never automatic ------------------------------------------------------------


def with_queue(snap: Snapshot, **depth: int) -> Snapshot:
    return Snapshot(nodes=snap.nodes, instances=snap.instances, queue_depth=MappingProxyType(depth))


def drained(node: Node) -> Node:
    from dataclasses import replace

    return replace(node, drained=True)


def test_a_hot_model_is_proposed_on_an_idle_node_that_fits_it_never_as_upkeep() -> None:
    hot = mk_inst("a", "m", slots_total=2, in_flight=2, slots_busy=2)
    busy_other = mk_inst("b", "x", slots_total=2, in_flight=1, slots_busy=1)
    snap = mk_snap(
        [mk_node("a"), mk_node("b"), mk_node("small", 2), mk_node("idle")], [hot, busy_other]
    )
    s = settings()
    assert plan_upkeep(snap, s, NOW).empty  # the pool manager leaves it alone
    plan = plan_rebalance(snap, s, NOW)
    assert [(st.action, st.node, st.model, st.code, st.proposed) for st in plan.steps] == [
        ("load", "idle", "m", "spread", True)
    ]
    assert "all 1 replica(s) busy" in plan.steps[0].reason
    assert "1 proposed" in plan.summary()


def test_queued_requests_make_a_model_hot_but_max_replicas_caps_the_spread() -> None:
    snap = with_queue(mk_snap([mk_node("a"), mk_node("b")], [mk_inst("a", "m")]), m=3)
    plan = plan_proposals(snap, settings(), NOW)
    assert [(st.node, st.code) for st in plan.steps] == [("b", "spread")]
    assert "3 request(s) queued" in plan.steps[0].reason
    capped = SchedulerSettings(max_replicas=1, pool=PoolSettings())
    assert plan_proposals(snap, capped, NOW).empty
    quiet = mk_snap([mk_node("a"), mk_node("b")], [mk_inst("a", "m")])
    assert plan_proposals(quiet, settings(), NOW).empty  # not hot: nothing to spread


def test_a_spread_never_evicts_and_never_goes_where_memory_is_unknown() -> None:
    hot = mk_inst("a", "m", 8, in_flight=1, slots_busy=1)
    full = mk_inst("b", "old", 30)
    snap = mk_snap([mk_node("a"), mk_node("b")], [hot, full])
    assert plan_proposals(snap, settings(), NOW).empty


def test_a_drained_nodes_models_are_proposed_elsewhere_then_unloaded() -> None:
    snap = mk_snap([drained(mk_node("a")), mk_node("b")], [mk_inst("a", "m")])
    s = settings()
    plan = plan_rebalance(snap, s, NOW)
    assert [(st.action, st.node, st.code, st.proposed) for st in plan.steps] == [
        ("load", "b", "drain_move", True),
        ("unload", "a", "drain_move", True),
    ]
    # Already served elsewhere: only the unload.
    twice = mk_snap([drained(mk_node("a")), mk_node("b")], [mk_inst("a", "m"), mk_inst("b", "m")])
    assert [(st.action, st.node) for st in plan_proposals(twice, s, NOW).steps] == [("unload", "a")]
    # Busy there, or a node that cannot unload: the load only.
    busy = mk_snap(
        [drained(mk_node("a")), mk_node("b")], [mk_inst("a", "m", in_flight=1, slots_busy=1)]
    )
    assert [st.action for st in plan_proposals(busy, s, NOW).steps] == ["load"]
    stuck = settings(no_unload_nodes=frozenset({"a"}))
    assert [st.action for st in plan_proposals(snap, stuck, NOW).steps] == ["load"]


def test_proposals_do_not_repeat_an_upkeep_load() -> None:
    # m wants one replica and has one only on a drained node, which min_replicas does not
    # count: upkeep loads it elsewhere; the proposal adds the unload, not a second load.
    snap = mk_snap([drained(mk_node("a")), mk_node("b"), mk_node("c")], [mk_inst("a", "m")])
    s = SchedulerSettings(min_replicas=MappingProxyType({"m": 1}), pool=PoolSettings())
    plan = plan_rebalance(snap, s, NOW)
    loads = [st for st in plan.steps if st.action == "load"]
    assert [(st.code, st.proposed) for st in loads] == [("min_replicas", False)]
    assert [(st.action, st.code) for st in plan.proposals] == [("unload", "drain_move")]


def test_a_cold_models_extra_replicas_are_proposed_for_unloading() -> None:
    recent = mk_inst("a", "m", last_used=NOW - 700)
    older = mk_inst("b", "m", last_used=NOW - 900)
    oldest = mk_inst("c", "m", last_used=NOW - 1_000)
    snap = mk_snap([mk_node("a"), mk_node("b"), mk_node("c")], [recent, older, oldest])
    plan = plan_proposals(snap, settings(), NOW)
    assert [(st.action, st.node, st.code, st.proposed) for st in plan.steps] == [
        ("unload", "b", "consolidate", True),
        ("unload", "c", "consolidate", True),
    ]
    keep2 = SchedulerSettings(min_replicas=MappingProxyType({"m": 2}), pool=PoolSettings())
    assert [st.node for st in plan_proposals(snap, keep2, NOW).steps] == ["c"]
    # One replica used a minute ago: not cold.
    warm = mk_snap([mk_node("a"), mk_node("b")], [mk_inst("a", "m", last_used=NOW - 60), older])
    assert plan_proposals(warm, settings(), NOW).empty
    # A replica on a node that cannot unload is the one kept.
    stuck = settings(no_unload_nodes=frozenset({"c"}))
    assert [st.node for st in plan_proposals(snap, stuck, NOW).steps] == ["a", "b"]
