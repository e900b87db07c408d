"""Placement of new loads: eligible nodes, footprints, free memory, ties, evictions."""

from __future__ import annotations

from types import MappingProxyType

import pytest

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
