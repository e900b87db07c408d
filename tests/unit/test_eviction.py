"""Eviction plans: who may be unloaded, in what order, and when it cannot be done."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.core.demand import DemandRates
from lmtui.core.eviction import (
    DEFER_FACTOR,
    eviction_blocker,
    permanent_bytes,
    permanent_count,
    plan_eviction,
)
from lmtui.core.model import (
    GiB,
    Health,
    HostMemory,
    Instance,
    InstanceState,
    Node,
    NodeKind,
    Snapshot,
)

NOW = 10_000.0


def mk_inst(model: str, size_gb: float = 4, node: str = "n1", **kw: object) -> Instance:
    fields: dict[str, object] = {
        "node": node,
        "model": model,
        "instance_id": model,
        "size_bytes": int(size_gb * GiB),
        "first_seen": 0.0,
    }
    fields.update(kw)
    return Instance(**fields)  # type: ignore[arg-type]


def mk_snap(*instances: Instance, total_gb: int = 64) -> Snapshot:
    nodes = {
        name: Node(
            name,
            NodeKind.LMSTUDIO,
            f"http://127.0.0.1:1/{name}",
            health=Health.HEALTHY,
            memory=HostMemory(total_gb * GiB, total_gb * GiB),
        )
        for name in {i.node for i in instances} | {"n1"}
    }
    return Snapshot(
        nodes=MappingProxyType(nodes),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def test_lru_evicts_least_recently_used_first() -> None:
    snap = mk_snap(
        mk_inst("recent", last_used=NOW - 10),
        mk_inst("oldest", last_used=NOW - 3000),
        mk_inst("older", last_used=NOW - 2000),
    )
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "lru")
    assert plan is not None
    assert plan.evict == (("n1", "oldest"), ("n1", "older"))
    assert plan.frees_bytes == 8 * GiB
    assert "oldest" in plan.reason


def test_lru_takes_only_what_is_needed() -> None:
    snap = mk_snap(
        mk_inst("small-old", 2, last_used=NOW - 3000),
        mk_inst("big", 12, last_used=NOW - 1000),
        mk_inst("hot", 12, last_used=NOW - 1),
    )
    plan = plan_eviction(snap, "n1", 10 * GiB, NOW, "lru")
    # The small one alone is not enough and the big one alone is: don't evict both.
    assert plan is not None and plan.evict == (("n1", "big"),)


def test_cannot_free_enough_returns_none() -> None:
    snap = mk_snap(mk_inst("a", 4), mk_inst("b", 4))
    assert plan_eviction(snap, "n1", 9 * GiB, NOW, "lru") is None
    assert plan_eviction(snap, "n1", 9 * GiB, NOW, "cost") is None


@pytest.mark.parametrize("policy", ["lru", "cost", "gdsf"])
@pytest.mark.parametrize(
    "blocked",
    [
        {"pinned": True},
        {"in_flight": 1},
        {"slots_busy": 1, "slots_total": 4},
        {"queued": 2},
        {"state": InstanceState.LOADING},
        {"first_seen": NOW - 5},  # younger than min residency
    ],
    ids=["pinned", "in-flight", "slot-busy", "queued", "loading", "young"],
)
def test_blocked_instance_is_never_evicted(policy: str, blocked: dict[str, Any]) -> None:
    snap = mk_snap(
        mk_inst("blocked", 16, last_used=NOW - 9999, **blocked),
        mk_inst("other", 4, last_used=NOW),
    )
    # Only the blocked one could free 10 GiB: no plan at all rather than touching it.
    assert plan_eviction(snap, "n1", 10 * GiB, NOW, policy, min_residency_s=30) is None  # type: ignore[arg-type]
    plan = plan_eviction(snap, "n1", 3 * GiB, NOW, policy, min_residency_s=30)  # type: ignore[arg-type]
    assert plan is not None and plan.evict == (("n1", "other"),)


def test_pinned_by_config_and_high_priority_are_protected() -> None:
    snap = mk_snap(
        mk_inst("cfg-pinned", 8, last_used=0.0),
        mk_inst("vip", 8, last_used=0.0),
        mk_inst("normal", 8, last_used=NOW),
    )
    plan = plan_eviction(
        snap,
        "n1",
        6 * GiB,
        NOW,
        "lru",
        pinned={"cfg-pinned"},
        priorities={"vip": "high"},
    )
    assert plan is not None and plan.evict == (("n1", "normal"),)
    # Only a high-priority requester may displace another high-priority model.
    busy = mk_snap(
        mk_inst("cfg-pinned", 8, last_used=0.0),
        mk_inst("vip", 8, last_used=0.0),
        mk_inst("normal", 8, last_used=NOW, in_flight=1),
    )
    args = (busy, "n1", 6 * GiB, NOW, "lru", {"cfg-pinned"}, 0, {"vip": "high"})
    assert plan_eviction(*args) is None  # type: ignore[arg-type]
    plan = plan_eviction(*args, requester_priority="high")  # type: ignore[arg-type]
    assert plan is not None and plan.evict == (("n1", "vip"),)
    assert permanent_bytes(snap, "n1", pinned={"cfg-pinned"}, priorities={"vip": "high"}) == (
        16 * GiB
    )


def test_low_priority_goes_first_under_lru() -> None:
    snap = mk_snap(
        mk_inst("old-normal", 8, last_used=0.0),
        mk_inst("fresh-low", 8, last_used=NOW),
    )
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "lru", priorities={"fresh-low": "low"})
    assert plan is not None and plan.evict == (("n1", "fresh-low"),)


def test_keep_model_protects_replicas_of_the_model_being_loaded() -> None:
    snap = mk_snap(mk_inst("same", 8, last_used=0.0), mk_inst("other", 8, last_used=NOW))
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "lru", keep_model="same")
    assert plan is not None and plan.evict == (("n1", "other"),)


def test_cost_policy_keeps_the_hot_model_and_drops_the_cold_one() -> None:
    snap = mk_snap(
        mk_inst("hot", 8, last_used=NOW - 5000),
        mk_inst("cold", 8, last_used=NOW - 100),
    )
    rates = {"hot": 1.0, "cold": 0.0001}  # requests per second
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "cost", request_rate=rates)
    assert plan is not None and plan.evict == (("n1", "cold"),)
    # LRU would have taken the hot one: it was used longer ago.
    lru = plan_eviction(snap, "n1", 6 * GiB, NOW, "lru")
    assert lru is not None and lru.evict == (("n1", "hot"),)


def test_cost_policy_without_rates_uses_recency() -> None:
    snap = mk_snap(
        mk_inst("just-used", 8, last_used=NOW - 2),
        mk_inst("idle-hour", 8, last_used=NOW - 3600),
    )
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "cost")
    assert plan is not None and plan.evict == (("n1", "idle-hour"),)


def test_nothing_needed_is_an_empty_plan() -> None:
    plan = plan_eviction(mk_snap(mk_inst("a")), "n1", 0, NOW)
    assert plan is not None and plan.evict == () and plan.frees_bytes == 0


def test_blocker_reasons() -> None:
    assert eviction_blocker(mk_inst("a", in_flight=1), NOW) == "busy"
    assert eviction_blocker(mk_inst("a", pinned=True), NOW) == "pinned"
    assert eviction_blocker(mk_inst("a"), NOW) is None


inst_st = st.builds(
    lambda i, size, busy, pinned, last, seen, node: mk_inst(
        f"m{i}",
        size,
        node=node,
        in_flight=busy,
        pinned=pinned,
        last_used=last,
        first_seen=seen,
    ),
    st.integers(0, 30),
    st.integers(1, 20),
    st.integers(0, 2),
    st.booleans(),
    st.none() | st.floats(0, NOW),
    st.none() | st.floats(0, NOW),
    st.sampled_from(["n1", "n2"]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(inst_st, max_size=8, unique_by=lambda i: i.key),
    st.integers(1, 60),
    st.sampled_from(["lru", "cost", "gdsf"]),
)
def test_plans_only_free_idle_unpinned_instances_on_the_node(
    instances: list[Instance], need_gb: int, policy: str
) -> None:
    snap = mk_snap(*instances)
    plan = plan_eviction(snap, "n1", need_gb * GiB, NOW, policy, min_residency_s=60)  # type: ignore[arg-type]
    evictable = [
        i
        for i in instances
        if i.node == "n1"
        and i.busy == 0
        and not i.pinned
        and (i.first_seen is None or NOW - i.first_seen >= 60)
    ]
    if plan is None:
        assert sum(i.size_bytes or 0 for i in evictable) < need_gb * GiB
        return
    chosen = [snap.instances[k] for k in plan.evict]
    assert all(i in evictable for i in chosen)
    assert len(set(plan.evict)) == len(plan.evict)
    assert plan.frees_bytes == sum(i.size_bytes or 0 for i in chosen) >= need_gb * GiB


@pytest.mark.parametrize("policy", ["lru", "cost", "gdsf"])
def test_a_place_under_the_instance_limit_is_freed_with_no_bytes_needed(policy: str) -> None:
    snap = mk_snap(
        mk_inst("old", 2, last_used=NOW - 3000),
        mk_inst("hot", 2, last_used=NOW - 5),
        mk_inst("busy", 2, last_used=NOW - 9000, in_flight=1),
    )
    plan = plan_eviction(snap, "n1", 0, NOW, policy, need_count=1)  # type: ignore[arg-type]
    assert plan is not None and plan.evict == (("n1", "old"),)
    assert "instance limit" in plan.reason
    two = plan_eviction(snap, "n1", 0, NOW, policy, need_count=2)  # type: ignore[arg-type]
    assert two is not None and set(two.evict) == {("n1", "old"), ("n1", "hot")}
    assert plan_eviction(snap, "n1", 0, NOW, policy, need_count=3) is None  # type: ignore[arg-type]


def test_bytes_and_places_are_both_satisfied() -> None:
    # 10 GiB is needed: "big" alone frees it, and one place is needed: still just "big".
    snap = mk_snap(
        mk_inst("small", 2, last_used=NOW - 3000), mk_inst("big", 12, last_used=NOW - 100)
    )
    plan = plan_eviction(snap, "n1", 10 * GiB, NOW, "lru", need_count=1)
    assert plan is not None and plan.evict == (("n1", "big"),)
    # Two places: both go, whatever the bytes.
    plan = plan_eviction(snap, "n1", 1 * GiB, NOW, "lru", need_count=2)
    assert plan is not None and len(plan.evict) == 2


def test_unknown_sizes_are_evicted_for_a_place_never_for_bytes() -> None:
    snap = mk_snap(
        mk_inst("unknown", last_used=NOW - 9000, size_bytes=None),
        mk_inst("known", 8, last_used=NOW - 10),
    )
    plan = plan_eviction(snap, "n1", 4 * GiB, NOW, "lru")
    assert plan is not None and plan.evict == (("n1", "known"),)
    plan = plan_eviction(snap, "n1", 0, NOW, "lru", need_count=1)
    assert plan is not None and plan.evict == (("n1", "unknown"),)


def test_permanent_count_is_pinned_and_higher_priority() -> None:
    snap = mk_snap(mk_inst("p", pinned=True), mk_inst("h"), mk_inst("n"))
    assert permanent_count(snap, "n1", priorities={"h": "high"}) == 2
    assert permanent_count(snap, "n1", priorities={"h": "high"}, requester_priority="high") == 1


@pytest.mark.parametrize("policy", ["lru", "cost", "gdsf"])
def test_a_callers_order_replaces_the_policys(policy: str) -> None:
    # LRU would take "old"; the caller's order (the replay's clairvoyant reference says
    # "new" is needed furthest ahead) takes "new", and still never a busy one.
    snap = mk_snap(
        mk_inst("old", 8, last_used=NOW - 3000),
        mk_inst("new", 8, last_used=NOW - 10),
        mk_inst("busy", 8, last_used=NOW - 9000, in_flight=1),
    )
    rank = {"old": 2.0, "new": 1.0, "busy": 0.0}
    plan = plan_eviction(
        snap,
        "n1",
        8 * GiB,
        NOW,
        policy,
        order=lambda i, now: rank[i.model],  # type: ignore[arg-type]
    )
    assert plan is not None and plan.evict == (("n1", "new"),)
    assert "the caller's order" in plan.reason


# -- gdsf: request rate × reload seconds / size --------------------------------------------


def test_gdsf_keeps_a_frequently_used_small_model_over_a_rarely_used_big_one() -> None:
    # The small one was used longest ago, so LRU would take it; by value per byte it is
    # worth keeping: 1 request/s against one every ~17 minutes.
    snap = mk_snap(
        mk_inst("small-hot", 4, last_used=NOW - 600),
        mk_inst("big-rare", 30, last_used=NOW - 5),
        total_gb=64,
    )
    rates = {"small-hot": 1.0, "big-rare": 0.001}
    plan = plan_eviction(snap, "n1", 3 * GiB, NOW, "gdsf", request_rate=rates)
    assert plan is not None and plan.evict == (("n1", "big-rare"),)
    assert "least requested per byte" in plan.reason
    assert plan.loss == pytest.approx(0.001 * (3.0 + 30))  # rate × reload seconds
    lru = plan_eviction(snap, "n1", 3 * GiB, NOW, "lru")
    assert lru is not None and lru.evict == (("n1", "small-hot"),)


def test_gdsf_prefers_measured_load_seconds_to_the_estimate() -> None:
    # Same size, same rate: the one that reloads fast on this node goes.
    snap = mk_snap(mk_inst("slow", 8, last_used=NOW), mk_inst("fast", 8, last_used=NOW))
    rates = {"slow": 0.1, "fast": 0.1}
    load_s = {("n1", "slow"): 60.0, ("n1", "fast"): 2.0}
    plan = plan_eviction(snap, "n1", 6 * GiB, NOW, "gdsf", request_rate=rates, load_s=load_s)
    assert plan is not None and plan.evict == (("n1", "fast"),)


def test_gdsf_without_history_is_lru() -> None:
    snap = mk_snap(
        mk_inst("recent", last_used=NOW - 10),
        mk_inst("oldest", last_used=NOW - 3000),
        mk_inst("low", last_used=NOW, first_seen=0.0),
        mk_inst("older", last_used=NOW - 2000),
    )
    prios = {"low": "low"}
    for need in (3, 6, 10):
        g = plan_eviction(snap, "n1", need * GiB, NOW, "gdsf", priorities=prios)
        lru = plan_eviction(snap, "n1", need * GiB, NOW, "lru", priorities=prios)
        assert g is not None and lru is not None and g.evict == lru.evict


def test_an_aged_popular_model_eventually_goes() -> None:
    """Popular two hours ago, nothing since: its decayed rate falls below that of a model
    asked for now and then, and gdsf takes it (it kept it while it was popular)."""
    demand = DemandRates(half_life_s=600)
    snap = mk_snap(mk_inst("was-hot", 8, last_used=599.0), mk_inst("steady", 8, last_used=7080.0))

    def victim(now: float) -> str:
        plan = plan_eviction(snap, "n1", 6 * GiB, now, "gdsf", request_rate=demand.rates(now))
        assert plan is not None
        return snap.instances[plan.evict[0]].model

    for k in range(600):  # one request a second for ten minutes
        demand.note("was-hot", k)
    for k in range(0, 7200, 120):  # one every two minutes, all along
        demand.note("steady", k)
        if k == 600:
            assert victim(600.0) == "steady"
    assert victim(7200.0) == "was-hot"


def test_gdsf_is_deterministic() -> None:
    insts = [mk_inst(f"m{i}", 4 + i % 3, last_used=NOW - i) for i in range(8)]
    rates = {f"m{i}": 0.01 * (i % 4) for i in range(8)}
    plans = {
        plan_eviction(mk_snap(*order), "n1", 9 * GiB, NOW, "gdsf", request_rate=rates)
        for order in (insts, list(reversed(insts)))
    }
    assert len(plans) == 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(inst_st, max_size=8, unique_by=lambda i: i.key),
    st.integers(1, 40),
    st.dictionaries(st.sampled_from([f"m{i}" for i in range(31)]), st.floats(0, 10)),
    st.sampled_from(["low", "normal", "high"]),
)
def test_gdsf_never_takes_busy_pinned_young_or_higher_priority(
    instances: list[Instance], need_gb: int, rates: dict[str, float], requester: str
) -> None:
    prios = {i.model: ("high" if k % 3 == 0 else "low") for k, i in enumerate(instances)}
    snap = mk_snap(*instances)
    plan = plan_eviction(
        snap,
        "n1",
        need_gb * GiB,
        NOW,
        "gdsf",
        min_residency_s=60,
        priorities=prios,
        request_rate=rates,
        requester_priority=requester,
    )
    if plan is None:
        return
    rank = {"low": 0, "normal": 1, "high": 2}
    for key in plan.evict:
        i = snap.instances[key]
        assert i.node == "n1" and i.busy == 0 and not i.pinned
        assert i.first_seen is None or NOW - i.first_seen >= 60
        assert rank[prios[i.model]] <= rank[requester]


# -- gdsf waits for room that frees up soon rather than evict a hot model -----------------

#: What frees up by itself, and how it looks on an instance: a load under way, a request in
#: flight, a residency not yet over (the tests below use min_residency_s=30).
SOON = {
    "loading": {"state": InstanceState.LOADING},
    "busy": {"in_flight": 1},
    "young": {"first_seen": NOW - 5},
}


@pytest.mark.parametrize("how", sorted(SOON))
def test_gdsf_waits_for_cheap_room_that_frees_up_soon(how: str) -> None:
    # 12 GB on a 12 GB node: "hot" (1 request/s) is the only instance evictable now;
    # "rare" (one request in ~17 minutes) is loading, busy or young. Evicting hot costs
    # ~6 reload seconds per second; waiting for rare, ~1/1000 of that: gdsf waits.
    rare = mk_inst("rare", 8, **SOON[how])  # type: ignore[arg-type]
    snap = mk_snap(mk_inst("hot", 4, last_used=NOW - 1), rare, total_gb=12)
    rates = {"hot": 1.0, "rare": 0.001}
    kw: dict[str, Any] = {"min_residency_s": 30, "request_rate": rates}
    assert plan_eviction(snap, "n1", 3 * GiB, NOW, "gdsf", **kw) is None
    lru = plan_eviction(snap, "n1", 3 * GiB, NOW, "lru", min_residency_s=30)
    assert lru is not None and lru.evict == (("n1", "hot"),)
    # Once it is free, rare goes.
    free = mk_inst("rare", 8, first_seen=0.0, last_used=NOW)
    plan = plan_eviction(
        mk_snap(snap.instances[("n1", "hot")], free), "n1", 3 * GiB, NOW, "gdsf", **kw
    )
    assert plan is not None and plan.evict == (("n1", "rare"),)


def test_gdsf_does_not_wait_when_waiting_saves_too_little() -> None:
    # Waiting for "other" would lose half as much as evicting "a" now: not worth a wait.
    snap = mk_snap(mk_inst("a", 4), mk_inst("other", 4, state=InstanceState.LOADING))
    rates = {"a": 0.02, "other": 0.02 / 2}
    plan = plan_eviction(snap, "n1", 3 * GiB, NOW, "gdsf", request_rate=rates)
    assert plan is not None and plan.evict == (("n1", "a"),)
    assert DEFER_FACTOR > 2


@pytest.mark.parametrize(
    "forever", [{"pinned": True}, {"state": InstanceState.FAILED}, {"model": "loading-me"}]
)
def test_gdsf_never_waits_for_what_does_not_free_up_by_itself(forever: dict[str, Any]) -> None:
    # Pinned never goes; a failed instance is no room to wait for; nor is a replica of
    # the model being loaded. "hot" must go now (or the load would wait for ever).
    fields: dict[str, Any] = {"model": "rare", "instance_id": "rare"} | forever
    fields["instance_id"] = fields["model"]
    rare = mk_inst(fields.pop("model"), 8, **fields)
    snap = mk_snap(mk_inst("hot", 4), rare, total_gb=12)
    rates = {"hot": 1.0, "rare": 0.0, "loading-me": 0.0}
    plan = plan_eviction(
        snap, "n1", 3 * GiB, NOW, "gdsf", request_rate=rates, keep_model="loading-me"
    )
    assert plan is not None and plan.evict == (("n1", "hot"),)


def _released(inst: Instance) -> Instance:
    """``inst`` once what held it has passed: loaded, idle and old enough."""
    return replace(
        inst, state=InstanceState.LOADED, in_flight=0, slots_busy=0, queued=0, first_seen=0.0
    )


soon_inst_st = st.builds(
    lambda i, size, kind, last: mk_inst(
        f"m{i}",
        size,
        last_used=last,
        **(
            {"first_seen": 0.0}
            | (
                {"state": InstanceState.LOADING}
                if kind == 1
                else {"in_flight": 1}
                if kind == 2
                else {"first_seen": NOW - 5}
                if kind == 3
                else {"pinned": True}
                if kind == 4
                else {}
            )
        ),
    ),
    st.integers(0, 12),
    st.integers(1, 20),
    st.integers(0, 4),
    st.floats(0, NOW),  # always used once: releasing an instance keeps its LRU rank
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(soon_inst_st, max_size=8, unique_by=lambda i: i.key),
    st.integers(1, 40),
    st.dictionaries(st.sampled_from([f"m{i}" for i in range(13)]), st.floats(0, 10)),
)
def test_gdsf_waits_only_for_a_plan_cheaper_by_the_factor_and_otherwise_plans_as_before(
    instances: list[Instance], need_gb: int, rates: dict[str, float]
) -> None:
    """Waiting changes whether gdsf plans, never what: with what frees up soon left out of
    the snapshot it plans the same; and when it waits, that plan exists and the plan once
    everything has freed up costs at most 1/DEFER_FACTOR of it."""
    kw: dict[str, Any] = {"min_residency_s": 30, "request_rate": rates}
    need = need_gb * GiB
    soon = [
        i
        for i in instances
        if eviction_blocker(i, NOW, min_residency_s=30)
        in {"loading", "busy", "resident too briefly"}
    ]
    now_only = mk_snap(*(i for i in instances if i not in soon))
    base = plan_eviction(now_only, "n1", need, NOW, "gdsf", **kw)
    got = plan_eviction(mk_snap(*instances), "n1", need, NOW, "gdsf", **kw)
    if got is not None:
        assert got == base
        return
    if base is None:
        return  # nothing to plan even now
    assert soon and base.loss is not None
    later = plan_eviction(
        mk_snap(*(i for i in instances if i not in soon), *map(_released, soon)),
        "n1",
        need,
        NOW,
        "gdsf",
        **kw,
    )
    assert later is not None and later.loss is not None
    assert later.loss * DEFER_FACTOR <= base.loss + 1e-9
