"""The router's decisions: route, load, wait or reject, under each strategy."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
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
)
from lmtui.core.placement import PoolSettings
from lmtui.core.scheduler import (
    Load,
    Reject,
    RequestInfo,
    Route,
    SchedulerSettings,
    Strategy,
    Wait,
    replica_deficits,
    schedule,
)

NOW = 5_000.0
CAT = (AvailableModel("m", 4 * GiB), AvailableModel("other", 4 * GiB))
BASE = SchedulerSettings(pool=PoolSettings(min_residency_s=0.0))
ALL_STRATEGIES = list(Strategy)


def mk_node(name: str, total_gb: float = 32, **kw: object) -> Node:
    mem = HostMemory(int(total_gb * GiB), int(total_gb * GiB))
    fields: dict[str, object] = {"health": Health.HEALTHY, "memory": mem, "available": CAT}
    fields.update(kw)
    return Node(name, NodeKind.LMSTUDIO, f"http://127.0.0.1:1/{name}", **fields)  # type: ignore[arg-type]


def mk_inst(node: str, model: str = "m", **kw: object) -> Instance:
    fields: dict[str, object] = {"size_bytes": 4 * GiB, "slots_total": 4}
    fields.update(kw)
    return Instance(node, model, f"{model}@{node}", **fields)  # type: ignore[arg-type]


def mk_snap(
    nodes: Iterable[Node], instances: Iterable[Instance] = (), queue: Mapping[str, int] = {}
) -> Snapshot:
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
        queue_depth=MappingProxyType(dict(queue)),
    )


def req(model: str = "m", rid: str = "r1", **kw: object) -> RequestInfo:
    return RequestInfo(model, request_id=rid, **kw)  # type: ignore[arg-type]


def bump(snap: Snapshot, key: tuple[str, str], **changes: object) -> Snapshot:
    """The router's bookkeeping after a decision, as the store would publish it."""
    insts = dict(snap.instances)
    insts[key] = dataclasses.replace(insts[key], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(snap, instances=MappingProxyType(insts))


@pytest.mark.parametrize("in_flight", [0, 1])
def test_equal_replicas_take_turns_regardless_of_node_size(in_flight: int) -> None:
    nodes = [mk_node("n24", 24), mk_node("n16", 16), mk_node("n8", 8)]
    snap = mk_snap(nodes, [mk_inst(n.name, in_flight=in_flight) for n in nodes])
    picks: Counter[str] = Counter()
    for call in range(9):
        d = schedule(snap, req(rid=f"r{call}"), now=NOW + call, settings=BASE)
        assert isinstance(d, Route), d
        picks[d.instance_key[0]] += 1
        snap = bump(snap, d.instance_key, last_used=NOW + call)  # request done, stamped
    assert set(picks) == {"n24", "n16", "n8"}
    assert min(picks.values()) >= 2


def test_fewest_in_flight_wins_over_recency() -> None:
    nodes = [mk_node("a"), mk_node("b")]
    snap = mk_snap(
        nodes, [mk_inst("a", in_flight=2, last_used=1.0), mk_inst("b", in_flight=1, last_used=9.0)]
    )
    d = schedule(snap, req(), settings=BASE, now=NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "b"


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
@pytest.mark.parametrize("busy", [{"in_flight": 1}, {"slots_busy": 1}])
def test_serial_instance_never_gets_a_second_request(strategy: Strategy, busy: dict) -> None:
    snap = mk_snap([mk_node("a")], [mk_inst("a", slots_total=1, **busy)])
    d = schedule(snap, req(), strategy, BASE, NOW)
    assert isinstance(d, Wait), d
    assert "busy" in d.reason
    # Even with another node free, the busy instance is not the answer.
    snap2 = mk_snap([mk_node("a"), mk_node("b")], [mk_inst("a", slots_total=1, **busy)])
    d = schedule(snap2, req(), strategy, BASE, NOW)
    assert not isinstance(d, Route)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_concurrent_requests_for_an_unloaded_model_cause_one_load(strategy: Strategy) -> None:
    snap = mk_snap([mk_node("a"), mk_node("b", 16)])
    first = schedule(snap, req(rid="r1"), strategy, BASE, NOW)
    assert isinstance(first, Load) and first.model == "m" and first.node == "a"
    pending = frozenset({(first.node, first.model)})
    for i in range(2, 6):
        d = schedule(snap, req(rid=f"r{i}"), strategy, BASE, NOW, pending_loads=pending)
        assert isinstance(d, Wait) and "loading" in d.reason
    # Once the store shows it LOADING, still one load.
    loading = mk_snap(snap.nodes.values(), [mk_inst("a", state=InstanceState.LOADING)])
    assert isinstance(schedule(loading, req(), strategy, BASE, NOW), Wait)


def test_efficiency_loads_only_when_no_node_has_the_model() -> None:
    nodes = [mk_node("a", 16), mk_node("b", 64)]
    busy = mk_snap(nodes, [mk_inst("a", slots_total=1, in_flight=1)])
    d = schedule(busy, req(), Strategy.EFFICIENCY, BASE, NOW)
    assert isinstance(d, Wait)
    empty = mk_snap(nodes)
    d = schedule(empty, req(), Strategy.EFFICIENCY, BASE, NOW)
    assert isinstance(d, Load) and d.node == "b" and "no node has m" in d.reason


def test_spread_adds_replicas_up_to_max_replicas() -> None:
    settings_ = dataclasses.replace(BASE, max_replicas=2)
    nodes = [mk_node("a"), mk_node("b"), mk_node("c")]
    # One replica, busy but with a free slot: route now and add a replica alongside.
    one = mk_snap(nodes, [mk_inst("a", in_flight=1)])
    d = schedule(one, req(), Strategy.SPREAD, settings_, NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "a"
    assert d.preload is not None and d.preload.node in {"b", "c"}
    # An idle replica exists: no new one.
    idle = mk_snap(nodes, [mk_inst("a", in_flight=1), mk_inst("b")])
    d = schedule(idle, req(), Strategy.SPREAD, settings_, NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "b" and d.preload is None
    # Every replica full: the load is the decision.
    full = mk_snap(nodes, [mk_inst("a", slots_total=1, in_flight=1)])
    d = schedule(full, req(), Strategy.SPREAD, settings_, NOW)
    assert isinstance(d, Load) and d.node in {"b", "c"}
    # A replica already on its way: wait for it rather than start a second load.
    d = schedule(full, req(), Strategy.SPREAD, settings_, NOW, frozenset({("b", "m")}))
    assert isinstance(d, Wait) and "loading on b" in d.reason
    loading_b = mk_snap(
        nodes, [*full.instances.values(), mk_inst("b", state=InstanceState.LOADING)]
    )
    assert isinstance(schedule(loading_b, req(), Strategy.SPREAD, settings_, NOW), Wait)
    # At max_replicas: wait.
    at_max = mk_snap(
        nodes, [mk_inst("a", slots_total=1, in_flight=1), mk_inst("b", slots_total=1, in_flight=1)]
    )
    assert isinstance(schedule(at_max, req(), Strategy.SPREAD, settings_, NOW), Wait)
    # Efficiency never spreads.
    d = schedule(full, req(), Strategy.EFFICIENCY, settings_, NOW)
    assert isinstance(d, Wait)


def test_replicas_strategy_keeps_min_replicas() -> None:
    settings_ = dataclasses.replace(BASE, min_replicas={"m": 2})
    nodes = [mk_node("a"), mk_node("b")]
    one = mk_snap(nodes, [mk_inst("a")])
    d = schedule(one, req(), Strategy.REPLICAS, settings_, NOW)
    assert isinstance(d, Route) and d.preload is not None and d.preload.node == "b"
    two = mk_snap(nodes, [mk_inst("a"), mk_inst("b")])
    d = schedule(two, req(), Strategy.REPLICAS, settings_, NOW)
    assert isinstance(d, Route) and d.preload is None
    # The pool manager keeps the minimum with no traffic at all.
    loads = replica_deficits(one, settings_, NOW)
    assert [(x.node, x.model) for x in loads] == [("b", "m")]
    assert replica_deficits(one, settings_, NOW, frozenset({("b", "m")})) == ()
    assert replica_deficits(two, settings_, NOW) == ()


def test_replicas_strategy_adds_one_while_the_queue_is_deep() -> None:
    settings_ = dataclasses.replace(BASE, replica_queue_threshold=3)
    nodes = [mk_node("a"), mk_node("b")]
    full = [mk_inst("a", slots_total=1, in_flight=1)]
    shallow = mk_snap(nodes, full, queue={"m": 3})
    assert isinstance(schedule(shallow, req(queued=True), Strategy.REPLICAS, settings_, NOW), Wait)
    deep = mk_snap(nodes, full, queue={"m": 4})
    d = schedule(deep, req(queued=True), Strategy.REPLICAS, settings_, NOW)
    assert isinstance(d, Load) and d.node == "b"
    three = mk_snap([*nodes, mk_node("c")], full, queue={"m": 4})
    d = schedule(
        three, req(queued=True), Strategy.REPLICAS, settings_, NOW, frozenset({("b", "m")})
    )
    assert isinstance(d, Wait)


def test_affinity_sticks_while_free_and_moves_when_busy() -> None:
    on = dataclasses.replace(BASE, session_affinity=True)
    nodes = [mk_node("a"), mk_node("b")]
    aff = {"alice": ("b", "m@b")}
    # b was used more recently and is busier; alice still goes back to it.
    snap = mk_snap(
        nodes,
        [mk_inst("a", last_used=1.0), mk_inst("b", slots_total=2, in_flight=1, last_used=9.0)],
    )
    d = schedule(snap, req(user="alice"), settings=on, now=NOW, affinity=aff)
    assert isinstance(d, Route) and d.instance_key == ("b", "m@b") and "affinity" in d.reason
    # Without the setting, or for another user, normal choice applies.
    d = schedule(snap, req(user="alice"), settings=BASE, now=NOW, affinity=aff)
    assert isinstance(d, Route) and d.instance_key[0] == "a"
    d = schedule(snap, req(user="bob"), settings=on, now=NOW, affinity=aff)
    assert isinstance(d, Route) and d.instance_key[0] == "a"
    # b has no free slot: alice moves.
    full = bump(snap, ("b", "m@b"), in_flight=2)
    d = schedule(full, req(user="alice"), settings=on, now=NOW, affinity=aff)
    assert isinstance(d, Route) and d.instance_key[0] == "a"


@pytest.mark.parametrize(
    "bad", [{"drained": True}, {"health": Health.DOWN}], ids=["drained", "down"]
)
@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_drained_and_down_nodes_are_never_chosen(bad: dict, strategy: Strategy) -> None:
    nodes = [mk_node("bad", 128, **bad), mk_node("ok", 16)]
    snap = mk_snap(nodes, [mk_inst("bad", last_used=0.0)])
    for i in range(6):
        d = schedule(snap, req(rid=f"r{i}"), strategy, BASE, NOW)
        assert isinstance(d, Load) and d.node == "ok"
    both = mk_snap(nodes, [mk_inst("bad"), mk_inst("ok", in_flight=3, last_used=NOW)])
    d = schedule(both, req(), strategy, BASE, NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "ok"


def test_suspect_node_only_when_no_healthy_one() -> None:
    nodes = [mk_node("shaky", health=Health.SUSPECT), mk_node("fine")]
    snap = mk_snap(
        nodes, [mk_inst("shaky"), mk_inst("fine", slots_total=2, in_flight=1, last_used=NOW)]
    )
    d = schedule(snap, req(), settings=BASE, now=NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "fine"
    full = bump(snap, ("fine", "m@fine"), in_flight=2)
    d = schedule(full, req(), settings=BASE, now=NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "shaky"


@pytest.mark.parametrize(
    "state", [InstanceState.LOADING, InstanceState.UNLOADING, InstanceState.FAILED]
)
def test_instances_not_loaded_are_not_routable(state: InstanceState) -> None:
    snap = mk_snap([mk_node("a")], [mk_inst("a", state=state)])
    d = schedule(snap, req(), settings=BASE, now=NOW)
    assert not isinstance(d, Route)


def test_unknown_model_is_404_and_aliases_resolve() -> None:
    snap = mk_snap([mk_node("a")], [mk_inst("a")])
    d = schedule(snap, req("nope"), settings=BASE, now=NOW)
    assert isinstance(d, Reject) and d.status == 404 and "nope" in d.reason
    aliased = dataclasses.replace(BASE, aliases={"gpt-4o": "m"})
    d = schedule(snap, req("gpt-4o"), settings=aliased, now=NOW)
    assert isinstance(d, Route) and d.instance_key == ("a", "m@a")
    # A node with an unknown (empty) catalogue may have it: try a load there.
    blank = mk_snap([mk_node("a", available=())])
    assert isinstance(schedule(blank, req("nope"), settings=BASE, now=NOW), Load)


def test_nothing_can_ever_fit_is_503_and_busy_memory_is_wait() -> None:
    big = dataclasses.replace(BASE, pool=PoolSettings(size_overrides={"m": 40 * GiB}))
    d = schedule(mk_snap([mk_node("a", 32)]), req(), settings=big, now=NOW)
    assert isinstance(d, Reject) and d.status == 503
    busy = mk_snap([mk_node("a", 8)], [mk_inst("a", "other", size_bytes=6 * GiB, in_flight=1)])
    d = schedule(busy, req(), settings=BASE, now=NOW)
    assert isinstance(d, Wait) and "free up" in d.reason


def test_load_evicts_an_idle_model_when_needed() -> None:
    snap = mk_snap([mk_node("a", 8)], [mk_inst("a", "other", size_bytes=6 * GiB, last_used=1.0)])
    d = schedule(snap, req(), settings=BASE, now=NOW)
    assert isinstance(d, Load) and d.evict == (("a", "other@a"),)
    assert d.footprint_bytes == 4 * GiB


def test_fresh_request_does_not_overtake_the_queue() -> None:
    snap = mk_snap([mk_node("a")], [mk_inst("a")], queue={"m": 2})
    d = schedule(snap, req(), settings=BASE, now=NOW)
    assert isinstance(d, Wait) and "queued" in d.reason
    d = schedule(snap, req(queued=True), settings=BASE, now=NOW)
    assert isinstance(d, Route)


def test_excluded_replica_is_skipped_on_retry() -> None:
    snap = mk_snap([mk_node("a"), mk_node("b")], [mk_inst("a"), mk_inst("b", last_used=NOW)])
    d = schedule(snap, req(exclude=frozenset({("a", "m@a")})), settings=BASE, now=NOW)
    assert isinstance(d, Route) and d.instance_key[0] == "b"


def test_nodes_to_avoid_get_no_load_and_an_instance_key_is_not_a_node() -> None:
    snap = mk_snap([mk_node("a", 64), mk_node("b", 16)], [])
    d = schedule(snap, req(avoid_nodes=frozenset({"a"})), settings=BASE, now=NOW)
    assert isinstance(d, Load) and d.node == "b"
    # An excluded replica's instance id says nothing about where to load.
    d = schedule(snap, req(exclude=frozenset({("c", "a")})), settings=BASE, now=NOW)
    assert isinstance(d, Load) and d.node == "a"
    d = schedule(snap, req(avoid_nodes=frozenset({"a", "b"})), settings=BASE, now=NOW)
    assert isinstance(d, Reject) and d.status == 503


def test_every_strategy_name_is_accepted_as_a_string() -> None:
    snap = mk_snap([mk_node("a")], [mk_inst("a")])
    for name in ("efficiency", "spread", "replicas"):
        assert isinstance(schedule(snap, req(), name, BASE, NOW), Route)


inst_st = st.builds(
    lambda node, i, state, slots, busy, last: Instance(
        node,
        "m",
        f"i{i}",
        state=state,
        size_bytes=4 * GiB,
        slots_total=slots,
        in_flight=busy,
        last_used=last,
    ),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 3),
    st.sampled_from(list(InstanceState)),
    st.integers(1, 4),
    st.integers(0, 4),
    st.none() | st.floats(0, NOW),
)
node_st = st.fixed_dictionaries(
    {
        "health": st.sampled_from(list(Health)),
        "drained": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(inst_st, max_size=6, unique_by=lambda i: i.key),
    st.tuples(node_st, node_st, node_st),
    st.sampled_from(ALL_STRATEGIES),
    st.text(max_size=4),
)
def test_routes_only_to_loaded_instances_with_a_free_slot_on_routable_nodes(
    instances: list[Instance], node_kw: tuple[dict, ...], strategy: Strategy, rid: str
) -> None:
    nodes = [mk_node(n, **kw) for n, kw in zip("abc", node_kw, strict=True)]
    snap = mk_snap(nodes, instances)
    d = schedule(snap, req(rid=rid), strategy, BASE, NOW)
    if isinstance(d, Route):
        inst = snap.instances[d.instance_key]
        assert inst.state is InstanceState.LOADED and inst.free_slots > 0
        assert snap.nodes[inst.node].routable
        if d.preload is not None:
            assert snap.nodes[d.preload.node].routable
    elif isinstance(d, Load):
        assert snap.nodes[d.node].routable
    assert d.reason


def test_a_server_that_serializes_across_models_gets_one_request_at_a_time() -> None:
    # LM Studio before 0.4: one request at a time for the whole server, even with two
    # models loaded, each with its own single slot.
    node = mk_node("old", server_slots=1)
    busy = mk_inst("old", "m", slots_total=1, in_flight=1, slots_busy=1)
    idle = mk_inst("old", "other", slots_total=1)
    snap = mk_snap([node], [busy, idle])
    d = schedule(snap, RequestInfo("other"), Strategy.EFFICIENCY, BASE, NOW)
    assert isinstance(d, Wait)
    # ...and once the first request ends, the other model's instance gets the next one.
    freed = mk_snap([node], [dataclasses.replace(busy, in_flight=0, slots_busy=0), idle])
    d = schedule(freed, RequestInfo("other"), Strategy.EFFICIENCY, BASE, NOW)
    assert isinstance(d, Route) and d.instance_key == idle.key
