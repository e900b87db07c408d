"""The load dialog's memory-fit preview: fits, what it evicts, or why it cannot."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from lmtui.core.fit import load_fit, replica_fit
from lmtui.core.model import GiB, Health, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.core.placement import PoolSettings
from lmtui.core.units import fmt_bytes

NOW = 1_000.0
POOL = PoolSettings(min_residency_s=0.0)


def mk_snap(total_gb: float, *instances: Instance, other_gb: float = 64) -> Snapshot:
    nodes = [
        Node(
            name,
            NodeKind.OLLAMA,
            f"http://127.0.0.1:1/{name}",
            health=Health.HEALTHY,
            memory=HostMemory(int(gb * GiB), int(gb * GiB)),
        )
        for name, gb in (("box", total_gb), ("other", other_gb))
    ]
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def inst(model: str, size_gb: float, *, node: str = "box", **kw: object) -> Instance:
    return Instance(
        node,
        model,
        f"{model}@{node}",
        size_bytes=int(size_gb * GiB),
        **{"last_used": NOW - 60, **kw},
    )  # type: ignore[arg-type]


def sized(gb: float) -> PoolSettings:
    return PoolSettings(min_residency_s=0.0, size_overrides={"new": int(gb * GiB)})


def test_a_model_that_fits_in_free_memory_evicts_nothing() -> None:
    fit = load_fit(mk_snap(32, inst("a", 8)), "new", "box", NOW, sized(16))
    assert fit.verdict == "fits" and fit.evict == () and fit.short == "fits"
    assert (
        f"box has {fmt_bytes(24 * GiB)} free" in fit.detail
        and f"needs {fmt_bytes(16 * GiB)}" in fit.detail
    )


def test_it_names_what_the_engines_policy_would_evict() -> None:
    # lru: "old" was used longest ago, and alone frees enough; "recent" stays.
    snap = mk_snap(32, inst("old", 12, last_used=NOW - 900), inst("recent", 12))
    fit = load_fit(snap, "new", "box", NOW, sized(16))
    assert fit.verdict == "evicts" and fit.short == "evicts 1"
    assert fit.evict == (next(snap.instances_of("old")).key,)
    assert f"unloads old ({fmt_bytes(12 * GiB)})" in fit.detail and "recent" not in fit.detail


def test_only_the_chosen_node_counts_even_when_another_has_room() -> None:
    snap = mk_snap(32, inst("old", 24), other_gb=128)
    fit = load_fit(snap, "new", "box", NOW, sized(16))
    assert fit.verdict == "evicts" and fit.node == "box"


def test_busy_models_in_the_way_mean_not_now_and_are_named() -> None:
    snap = mk_snap(32, inst("busy", 24, in_flight=2))
    fit = load_fit(snap, "new", "box", NOW, sized(16))
    assert fit.verdict == "later" and fit.short == "no room now"
    assert f"busy ({fmt_bytes(24 * GiB)}, busy)" in fit.detail


def test_pinned_models_in_the_way_mean_it_never_fits() -> None:
    snap = mk_snap(32, inst("kept", 24, pinned=True))
    fit = load_fit(snap, "new", "box", NOW, sized(16))
    assert fit.verdict == "never" and fit.short == "cannot fit"
    assert f"kept ({fmt_bytes(24 * GiB)}, pinned)" in fit.detail


def test_a_model_pinned_by_the_config_is_in_the_way_too() -> None:
    pool = PoolSettings(
        min_residency_s=0.0, size_overrides={"new": 16 * GiB}, pinned=frozenset({"kept"})
    )
    fit = load_fit(mk_snap(32, inst("kept", 24)), "new", "box", NOW, pool)
    assert fit.verdict == "never"


def test_bigger_than_the_node_never_fits() -> None:
    fit = load_fit(mk_snap(32), "new", "box", NOW, sized(40))
    assert fit.verdict == "never" and "does not fit" in fit.detail


def test_a_load_pending_on_the_node_takes_its_memory() -> None:
    pool = PoolSettings(min_residency_s=0.0, size_overrides={"new": 16 * GiB, "p": 20 * GiB})
    fit = load_fit(mk_snap(32), "new", "box", NOW, pool, frozenset({("box", "p")}))
    assert fit.verdict == "later"


def test_already_there_or_an_unknown_node_is_said_plainly() -> None:
    snap = mk_snap(32, inst("a", 8))
    assert load_fit(snap, "a", "box", NOW, POOL).detail == "a is already on box"
    assert load_fit(snap, "a", "nowhere", NOW, POOL).verdict == "never"


# -- one more replica, placed by the engine ("anywhere") -------------------------------------


def test_a_replica_goes_to_a_node_that_holds_none_even_when_its_own_has_room() -> None:
    snap = mk_snap(64, inst("new", 16), other_gb=32)  # box has more room, but holds one
    fit = replica_fit(snap, "new", NOW, sized(16))
    assert (fit.node, fit.verdict, fit.short) == ("other", "fits", "fits")
    assert "other has" in fit.detail


def test_a_replica_that_needs_room_names_the_engines_evictions() -> None:
    snap = mk_snap(32, inst("old", 24, node="box"), inst("new", 16, node="other"))
    fit = replica_fit(snap, "new", NOW, sized(16))
    assert (fit.node, fit.verdict) == ("box", "evicts")
    assert fit.evict == (next(snap.instances_of("old")).key,)
    assert f"unloads old ({fmt_bytes(24 * GiB)})" in fit.detail


def test_no_node_for_a_replica_has_no_node_and_says_why() -> None:
    snap = mk_snap(32, inst("new", 16, node="box"), inst("new", 16, node="other"))
    fit = replica_fit(snap, "new", NOW, sized(16))
    assert (fit.node, fit.verdict) == (None, "never")
    assert fit.detail == "no healthy, undrained node that can load new"


def test_a_replica_is_never_placed_where_the_backend_cannot_load() -> None:
    """An attached dashboard's pool does not know ``no_load_nodes``; the node does."""
    snap = mk_snap(32, inst("new", 16, node="box"), other_gb=64)
    other = replace(snap.nodes["other"], no_load="LM Studio before 0.4 cannot load")
    snap = replace(snap, nodes=MappingProxyType({**snap.nodes, "other": other}))
    assert replica_fit(snap, "new", NOW, sized(16)).node is None
