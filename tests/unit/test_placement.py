"""Placement of new loads: eligible nodes, footprints, free memory, ties, evictions."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.core.model import (
    AvailableModel,
    GiB,
    Health,
    HostMemory,
    Instance,
    InstanceState,
    Node,
    NodeKind,
    Snapshot,
    evolve,
)
from lmtui.core.placement import (
    NoPlacement,
    Placement,
    PoolSettings,
    footprint_bytes,
    free_bytes,
    place,
    rotation,
)

NOW = 1_000.0
POOL = PoolSettings(min_residency_s=0.0)


def mk_node(
    name: str,
    total_gb: float | None = 32,
    *,
    health: Health = Health.HEALTHY,
    drained: bool = False,
    available: tuple[AvailableModel, ...] = (),
) -> Node:
    mem = None if total_gb is None else HostMemory(int(total_gb * GiB), int(total_gb * GiB))
    return Node(
        name,
        NodeKind.OLLAMA,
        f"http://127.0.0.1:1/{name}",
        health=health,
        memory=mem,
        drained=drained,
        available=available,
    )


def mk_inst(node: str, model: str, size_gb: float = 4, **kw: object) -> Instance:
    return Instance(node, model, f"{model}@{node}", size_bytes=int(size_gb * GiB), **kw)  # type: ignore[arg-type]


def mk_snap(nodes: list[Node], instances: list[Instance] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def test_most_free_memory_wins() -> None:
    snap = mk_snap(
        [mk_node("big", 64), mk_node("mid", 32)],
        [mk_inst("big", "x", 48)],  # big has 16 free, mid 32
    )
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "mid" and p.evict == ()
    assert "mid" in p.reason


def test_ties_are_not_always_the_largest_node() -> None:
    # 24 GB with 8 loaded and 16 GB empty: both have 16 GiB free.
    snap = mk_snap([mk_node("n24", 24), mk_node("n16", 16)], [mk_inst("n24", "x", 8)])
    chosen = set()
    for seed in range(10):
        p = place(snap, "m", NOW, POOL, seed=seed)
        assert isinstance(p, Placement)
        chosen.add(p.node)
    assert chosen == {"n24", "n16"}


def test_rotation_puts_every_name_first_for_some_seed() -> None:
    firsts = {min(r, key=r.__getitem__) for r in (rotation(["a", "b", "c"], s) for s in range(3))}
    assert firsts == {"a", "b", "c"}


@pytest.mark.parametrize(
    "bad",
    [
        {"health": Health.DOWN},
        {"health": Health.UNKNOWN},
        {"drained": True},
    ],
    ids=["down", "unknown", "drained"],
)
def test_unroutable_nodes_are_never_chosen(bad: dict[str, object]) -> None:
    snap = mk_snap([mk_node("bad", 128, **bad), mk_node("ok", 16)])  # type: ignore[arg-type]
    for seed in range(5):
        p = place(snap, "m", NOW, POOL, seed=seed)
        assert isinstance(p, Placement) and p.node == "ok"


def test_only_unknown_nodes_means_wait_for_the_first_poll() -> None:
    p = place(mk_snap([mk_node("new", 32, health=Health.UNKNOWN)]), "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and p.may_fit_later and "first poll" in p.reason
    p = place(mk_snap([mk_node("gone", 32, health=Health.DOWN)]), "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and not p.may_fit_later


def test_healthy_before_suspect() -> None:
    snap = mk_snap([mk_node("shaky", 128, health=Health.SUSPECT), mk_node("fine", 16)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "fine"
    snap = mk_snap([mk_node("shaky", 128, health=Health.SUSPECT)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "shaky"


def test_catalogue_decides_and_empty_catalogue_means_maybe() -> None:
    has = (AvailableModel("m", 4 * GiB),)
    other = (AvailableModel("x", 4 * GiB),)
    snap = mk_snap([mk_node("has", 16, available=has), mk_node("lacks", 64, available=other)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "has"
    snap = mk_snap([mk_node("unknown", 64), mk_node("lacks", 128, available=other)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "unknown"


def test_no_load_nodes_and_exclude_are_skipped() -> None:
    snap = mk_snap([mk_node("vllm", 128), mk_node("a", 32), mk_node("b", 16)])
    pool = PoolSettings(no_load_nodes=frozenset({"vllm"}))
    p = place(snap, "m", NOW, pool, exclude=frozenset({"a"}))
    assert isinstance(p, Placement) and p.node == "b"


def test_footprint_sources_in_order_of_trust() -> None:
    cat = (AvailableModel("m", 5 * GiB),)
    base = mk_snap([mk_node("a", 32, available=cat)])
    pool = PoolSettings(context_overhead_bytes=GiB, default_footprint_bytes=7 * GiB)
    assert footprint_bytes(base, "m", "a", pool) == 6 * GiB  # file size + overhead
    assert footprint_bytes(base, "zzz", "a", pool) == 8 * GiB  # default + overhead
    loaded = mk_snap([mk_node("a", 32, available=cat)], [mk_inst("a", "m", 5.5)])
    assert footprint_bytes(loaded, "m", "a", pool) == int(5.5 * GiB)  # what it really used
    over = PoolSettings(size_overrides={"m": 9 * GiB})
    assert footprint_bytes(loaded, "m", "a", over) == 9 * GiB


def test_pending_loads_are_charged_against_free_memory() -> None:
    cat = (AvailableModel("p", 10 * GiB), AvailableModel("m", 10 * GiB))
    snap = mk_snap([mk_node("a", 32, available=cat), mk_node("b", 24, available=cat)])
    assert free_bytes(snap, "a", POOL) == 32 * GiB
    pending = frozenset({("a", "p")})
    assert free_bytes(snap, "a", POOL, pending) == 22 * GiB
    p = place(snap, "m", NOW, POOL, pending_loads=pending)
    assert isinstance(p, Placement) and p.node == "b"


def test_unknown_memory_is_a_last_resort() -> None:
    snap = mk_snap([mk_node("mystery", None), mk_node("small", 8)])
    p = place(snap, "m", NOW, PoolSettings(default_footprint_bytes=4 * GiB))
    assert isinstance(p, Placement) and p.node == "small"
    p = place(snap, "m", NOW, PoolSettings(default_footprint_bytes=12 * GiB))
    assert isinstance(p, Placement) and p.node == "mystery"


def test_evicts_on_the_best_node_when_nothing_fits() -> None:
    cat = (AvailableModel("m", 10 * GiB),)
    snap = mk_snap(
        [mk_node("a", 16, available=cat), mk_node("b", 16, available=cat)],
        [
            mk_inst("a", "old", 12, last_used=1.0),
            mk_inst("b", "busy", 8, in_flight=1),
            mk_inst("b", "idle", 4, last_used=2.0),
        ],
    )
    # Both have 4 GiB free; b can free only its idle 4 GiB (the rest is busy), a 12 GiB.
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "a" and p.evict == (("a", "old@a"),)
    assert "old" in p.reason
    p = place(snap, "m", NOW, POOL, allow_eviction=False)
    assert isinstance(p, NoPlacement) and p.may_fit_later


def test_placement_plans_with_the_pools_eviction_order() -> None:
    snap = mk_snap(
        [mk_node("a", 16)],
        [mk_inst("a", "old", 8, last_used=1.0), mk_inst("a", "new", 8, last_used=2.0)],
    )
    pool = PoolSettings(
        min_residency_s=0.0, eviction_order=lambda i, now: 0.0 if i.model == "new" else 1.0
    )
    p = place(snap, "m", NOW, pool)
    assert isinstance(p, Placement) and p.evict == (("a", "new@a"),)


def test_busy_or_young_means_later_pinned_means_never() -> None:
    cat = (AvailableModel("m", 10 * GiB),)
    busy = mk_snap([mk_node("a", 16, available=cat)], [mk_inst("a", "x", 12, in_flight=2)])
    p = place(busy, "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and p.may_fit_later
    young = mk_snap([mk_node("a", 16, available=cat)], [mk_inst("a", "x", 12, first_seen=NOW)])
    p = place(young, "m", NOW, PoolSettings(min_residency_s=30))
    assert isinstance(p, NoPlacement) and p.may_fit_later
    pinned = mk_snap([mk_node("a", 16, available=cat)], [mk_inst("a", "x", 12, pinned=True)])
    p = place(pinned, "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and not p.may_fit_later
    huge = mk_snap([mk_node("a", 8, available=cat)])
    p = place(huge, "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and not p.may_fit_later
    assert "does not fit" in p.reason


def test_loading_instances_take_memory_too() -> None:
    snap = mk_snap(
        [mk_node("a", 16), mk_node("b", 12)],
        [mk_inst("a", "x", 8, state=InstanceState.LOADING)],
    )
    p = place(snap, "m", NOW, PoolSettings(default_footprint_bytes=6 * GiB))
    assert isinstance(p, Placement) and p.node == "b"


# --- the instance limit (a llama.cpp router's --models-max) --------------------------------


def limited(name: str, limit: int, total_gb: float | None = 64, **kw: object) -> Node:
    return evolve(mk_node(name, total_gb, **kw), max_instances=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["lru", "cost", "gdsf"])
def test_a_node_at_its_instance_limit_evicts_even_with_memory_to_spare(policy: str) -> None:
    snap = mk_snap(
        [limited("a", 2)],
        [mk_inst("a", "old", 4, last_used=NOW - 900), mk_inst("a", "new", 4, last_used=NOW - 1)],
    )
    pool = PoolSettings(min_residency_s=0.0, eviction_policy=policy)  # type: ignore[arg-type]
    p = place(snap, "m", NOW, pool)
    assert isinstance(p, Placement) and p.node == "a"
    assert p.evict == (("a", "old@a"),)
    assert "instance limit" in p.reason


def test_a_node_under_its_limit_needs_no_eviction() -> None:
    snap = mk_snap([limited("a", 3)], [mk_inst("a", "x", 4), mk_inst("a", "y", 4)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.evict == ()


def test_a_free_place_elsewhere_wins_over_an_eviction() -> None:
    snap = mk_snap(
        [limited("a", 1, 64), limited("b", 2, 32)],
        [mk_inst("a", "x", 4), mk_inst("b", "y", 4)],
    )
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.node == "b" and p.evict == ()


@pytest.mark.parametrize(
    "blocked",
    [
        {"in_flight": 1},
        {"slots_busy": 1},
        {"queued": 1},
        {"state": InstanceState.LOADING},
        {"first_seen": NOW - 1},
    ],
    ids=["in-flight", "busy-slot", "queued", "loading", "young"],
)
def test_at_the_limit_with_nothing_evictable_now_the_load_waits(blocked: dict[str, object]) -> None:
    snap = mk_snap([limited("a", 1)], [mk_inst("a", "x", 4, **blocked)])
    p = place(snap, "m", NOW, PoolSettings(min_residency_s=30.0))
    assert isinstance(p, NoPlacement) and p.may_fit_later


def test_at_the_limit_with_only_pinned_or_higher_priority_it_never_fits() -> None:
    pinned = mk_snap([limited("a", 1)], [mk_inst("a", "x", 4, pinned=True)])
    p = place(pinned, "m", NOW, POOL)
    assert isinstance(p, NoPlacement) and not p.may_fit_later
    high = mk_snap([limited("a", 1)], [mk_inst("a", "x", 4)])
    p = place(high, "m", NOW, PoolSettings(min_residency_s=0.0, priorities={"x": "high"}))
    assert isinstance(p, NoPlacement) and not p.may_fit_later


def test_pending_loads_take_a_place() -> None:
    snap = mk_snap([limited("a", 2)], [mk_inst("a", "x", 4, last_used=NOW - 60)])
    alone = place(snap, "m", NOW, POOL)
    assert isinstance(alone, Placement) and alone.evict == ()
    p = place(snap, "m", NOW, POOL, pending_loads=frozenset({("a", "z")}))
    assert isinstance(p, Placement) and p.evict == (("a", "x@a"),)


def test_unknown_memory_at_the_limit_still_evicts_for_a_place() -> None:
    snap = mk_snap([limited("a", 1, None)], [mk_inst("a", "x", 4)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.evict == (("a", "x@a"),)


def test_an_instance_of_unknown_size_can_free_a_place() -> None:
    snap = mk_snap([limited("a", 1)], [Instance("a", "x", "x@a", size_bytes=None)])
    p = place(snap, "m", NOW, POOL)
    assert isinstance(p, Placement) and p.evict == (("a", "x@a"),)


_inst_flags = st.fixed_dictionaries(
    {
        "size_gb": st.sampled_from([1.0, 4.0, 8.0, 16.0]),
        "busy": st.booleans(),
        "pinned": st.booleans(),
        "loading": st.booleans(),
        "last_used": st.floats(NOW - 3600, NOW),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    insts=st.lists(_inst_flags, max_size=6),
    limit=st.integers(1, 4),
    total_gb=st.sampled_from([16.0, 32.0, 64.0]),
    need_gb=st.sampled_from([2.0, 8.0, 20.0]),
    policy=st.sampled_from(["lru", "cost", "gdsf"]),
)
def test_a_placement_satisfies_memory_and_count_and_never_evicts_the_untouchable(
    insts: list[dict[str, object]], limit: int, total_gb: float, need_gb: float, policy: str
) -> None:
    instances = [
        mk_inst(
            "a",
            f"m{k}",
            float(f["size_gb"]),  # type: ignore[arg-type]
            in_flight=int(bool(f["busy"])),
            pinned=bool(f["pinned"]),
            state=InstanceState.LOADING if f["loading"] else InstanceState.LOADED,
            last_used=f["last_used"],
        )
        for k, f in enumerate(insts)
    ]
    snap = mk_snap([limited("a", limit, total_gb)], instances)
    pool = PoolSettings(
        min_residency_s=0.0,
        eviction_policy=policy,  # type: ignore[arg-type]
        size_overrides={"new": int(need_gb * GiB)},
    )
    p = place(snap, "new", NOW, pool)
    if isinstance(p, NoPlacement):
        movable = [
            i
            for i in instances
            if not i.pinned and i.in_flight == 0 and i.state is InstanceState.LOADED
        ]
        stuck = [i for i in instances if i not in movable]
        stuck_gb = sum((i.size_bytes or 0) for i in stuck) / GiB
        # Refusing now is right only when even evicting every movable instance would not do.
        assert len(stuck) + 1 > limit or stuck_gb + need_gb > total_gb
        # And it waits (rather than failing) whenever what blocks it can go away.
        pinned_n = sum(1 for i in instances if i.pinned)
        pinned_gb = sum((i.size_bytes or 0) for i in instances if i.pinned) / GiB
        assert p.may_fit_later == (pinned_n + 1 <= limit and pinned_gb + need_gb <= total_gb)
        return
    evicted = {k for _, k in p.evict}
    for inst in instances:
        if inst.instance_id in evicted:
            assert inst.state is InstanceState.LOADED and inst.in_flight == 0
            assert not inst.pinned
    kept = [i for i in instances if i.instance_id not in evicted]
    assert len(kept) + 1 <= limit
    assert sum((i.size_bytes or 0) for i in kept) + need_gb * GiB <= total_gb * GiB


def test_gdsf_evicts_on_the_node_where_it_costs_least() -> None:
    # "roomy" has the most free memory but holds only a model asked for all the time;
    # "tight" holds one nobody asks for. gdsf plans on both and takes the cheaper plan;
    # lru takes the first node that can make room.
    snap = mk_snap(
        [mk_node("roomy", 40), mk_node("tight", 24)],
        [mk_inst("roomy", "hot", 30, last_used=0.0), mk_inst("tight", "rare", 20, last_used=NOW)],
    )
    rates = MappingProxyType({"hot": 2.0, "rare": 0.001})
    big = MappingProxyType({"new": 16 * GiB})  # roomy has 10 GiB free, tight 4
    gdsf = place(
        snap,
        "new",
        NOW,
        PoolSettings(
            min_residency_s=0.0, eviction_policy="gdsf", request_rate=rates, size_overrides=big
        ),
    )
    assert isinstance(gdsf, Placement)
    assert (gdsf.node, gdsf.evict) == ("tight", (("tight", "rare@tight"),))
    lru = place(snap, "new", NOW, PoolSettings(min_residency_s=0.0, size_overrides=big))
    assert isinstance(lru, Placement) and lru.node == "roomy"
