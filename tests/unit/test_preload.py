"""The preload decision (core/preload.py): the most requested models onto free memory, never
evicting, never past a node's or a host's budget, never where a load cannot happen, and the
same answer for the same inputs."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.core.lifetime import Lifetimes
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
from lmtui.core.placement import PoolSettings, footprint_bytes
from lmtui.core.preload import PreloadSettings, host_budget, plan_preload

NOW = 50_000.0
PER_H = 1 / 3600  # one request an hour, in requests per second


def node(name: str, total_gb: float = 32, **kw: object) -> Node:
    kw.setdefault("health", Health.HEALTHY)
    kw.setdefault("memory", HostMemory(int(total_gb * GiB), int(total_gb * GiB)))
    return Node(name, NodeKind.OLLAMA, f"http://127.0.0.1:1/{name}", **kw)  # type: ignore[arg-type]


def inst(node_: str, model: str, size_gb: float = 4, **kw: object) -> Instance:
    return Instance(node_, model, model, size_bytes=int(size_gb * GiB), **kw)  # type: ignore[arg-type]


def snap(nodes: list[Node], instances: list[Instance] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def pool(sizes: dict[str, float], **kw: object) -> PoolSettings:
    return PoolSettings(
        size_overrides=MappingProxyType({m: int(gb * GiB) for m, gb in sizes.items()}), **kw
    )  # type: ignore[arg-type]


PRE = PreloadSettings(keep_free=0.0, min_rate_per_h=0.0)


def steps_of(plan: tuple) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(s.node, s.model) for s in plan]


def test_the_most_requested_model_loaded_nowhere_goes_onto_free_memory() -> None:
    s = snap([node("a", 32)], [inst("a", "hot", 4)])
    rates = {"hot": 100 * PER_H, "warm": 50 * PER_H, "cold": 5 * PER_H}
    plan = plan_preload(s, pool({"hot": 4, "warm": 8, "cold": 8}), PRE, NOW, rates=rates)
    # One per node per pass, the best first; "hot" is loaded already.
    assert steps_of(plan) == [("a", "warm")]
    step = plan[0]
    assert step.action == "load" and step.code == "preload"
    assert "preload: warm on a (rank 2, 50 req/h)" in step.reason


def test_it_never_evicts_even_for_a_far_more_requested_model() -> None:
    s = snap([node("a", 16)], [inst("a", "idle", 12, last_used=NOW - 9_000)])
    plan = plan_preload(s, pool({"idle": 12, "hot": 8}), PRE, NOW, rates={"hot": 1000 * PER_H})
    assert plan == ()


def test_it_leaves_the_free_share_and_goes_where_it_fits() -> None:
    s = snap([node("a", 40), node("b", 20)])
    p = pool({"m": 15})
    # a: 40 - 15 = 25 left; keep 30% = 12: fits on a (the most free).
    assert steps_of(plan_preload(s, p, PreloadSettings(keep_free=0.3), NOW, rates={"m": 1})) == [
        ("a", "m")
    ]
    # keep 70%: a would keep 25 of 40 (62%) and b 5 of 20: neither.
    assert plan_preload(s, p, PreloadSettings(keep_free=0.7), NOW, rates={"m": 1}) == ()


def test_nodes_that_cannot_load_are_never_chosen() -> None:
    nodes = [
        node("drained", 64, drained=True),
        node("down", 64, health=Health.DOWN),
        node("openai", 64),
        node("unknown", 64, memory=None),
        node("ok", 16),
    ]
    p = pool({"m": 8}, no_load_nodes=frozenset({"openai"}))
    plan = plan_preload(snap(nodes), p, PRE, NOW, rates={"m": 1})
    assert steps_of(plan) == [("ok", "m")]
    # Without "ok" nothing is left that may take it.
    plan = plan_preload(snap(nodes[:-1]), p, PRE, NOW, rates={"m": 1})
    assert plan == ()


def test_a_node_without_the_model_in_its_catalogue_is_skipped() -> None:
    has = (AvailableModel("m", 8 * GiB),)
    other = (AvailableModel("x", 8 * GiB),)
    s = snap([node("big", 64, available=other), node("small", 16, available=has)])
    assert steps_of(plan_preload(s, pool({}), PRE, NOW, rates={"m": 1})) == [("small", "m")]


def test_two_nodes_on_one_host_share_its_budget() -> None:
    # Two servers on one 32 GB machine, each reporting the whole machine: 20 GB loaded
    # on one leaves 12 GB for both, so a 16 GB model fits on neither.
    s = snap([node("p1", 32), node("p2", 32)], [inst("p1", "x", 20)])
    p = pool({"x": 20, "m": 16})
    hosts = {"p1": "mac", "p2": "mac"}
    assert plan_preload(s, p, PRE, NOW, rates={"m": 1}, hosts=hosts) == ()
    # As separate machines p2 has room.
    assert steps_of(plan_preload(s, p, PRE, NOW, rates={"m": 1})) == [("p2", "m")]


def test_lowest_priority_is_the_first_left_out() -> None:
    s = snap([node("a", 20), node("b", 20)])
    p = pool({"lo": 16, "hi": 16}, priorities=MappingProxyType({"lo": "low", "hi": "high"}))
    # "lo" is asked for far more, but "hi" outranks it: "hi" gets the best node first.
    plan = plan_preload(s, p, PRE, NOW, rates={"lo": 100 * PER_H, "hi": 2 * PER_H})
    assert [m for _n, m in steps_of(plan)] == ["hi", "lo"]
    # With room for one only, "lo" is the one left out.
    plan = plan_preload(snap([node("a", 20)]), p, PRE, NOW, rates={"lo": 1, "hi": 1e-3})
    assert steps_of(plan) == [("a", "hi")]


def test_only_the_top_n_and_only_models_asked_for_often_enough() -> None:
    s = snap([node(f"n{i}", 64) for i in range(4)])
    rates = {"a": 30 * PER_H, "b": 20 * PER_H, "c": 10 * PER_H, "d": 0.5 * PER_H}
    p = pool({m: 4 for m in rates})
    two = PreloadSettings(max_models=2, keep_free=0, min_rate_per_h=1)
    assert sorted(m for _n, m in steps_of(plan_preload(s, p, two, NOW, rates=rates))) == [
        "a",
        "b",
    ]
    floor = PreloadSettings(max_models=10, keep_free=0, min_rate_per_h=1)
    assert "d" not in [m for _n, m in steps_of(plan_preload(s, p, floor, NOW, rates=rates))]
    off = PreloadSettings(enabled=False)
    assert plan_preload(s, p, off, NOW, rates=rates) == ()


def test_pinned_loading_and_pending_models_are_left_to_others() -> None:
    s = snap([node("a", 64), node("b", 64)], [inst("a", "loading", 4, state=InstanceState.LOADING)])
    p = pool({"pin": 4, "loading": 4, "pending": 4, "m": 4}, pinned=frozenset({"pin"}))
    rates = {"pin": 1.0, "loading": 1.0, "pending": 1.0, "m": 0.5}
    plan = plan_preload(s, p, PRE, NOW, rates=rates, pending_loads=frozenset({("b", "pending")}))
    # "a" and "b" are both busy loading something: nothing goes there this pass.
    assert plan == ()
    plan = plan_preload(snap([node("c", 64)]), p, PRE, NOW, rates=rates)
    # Where nothing loads it yet, the best ranked goes first (rate, then name).
    assert steps_of(plan) == [("c", "loading")]


def test_a_model_idle_past_its_own_ttl_is_not_preloaded_back() -> None:
    s = snap([node("a", 64)])
    p = pool({"m": 4}, lifetimes=Lifetimes(idle_ttl_s=600))
    last = {"m": NOW - 700}
    assert plan_preload(s, p, PRE, NOW, rates={"m": 1}, last_request=last) == ()
    last = {"m": NOW - 100}
    assert steps_of(plan_preload(s, p, PRE, NOW, rates={"m": 1}, last_request=last)) == [("a", "m")]


# -- properties ---------------------------------------------------------------------------

MODELS = [f"m{i}" for i in range(8)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Snapshot, PoolSettings, dict[str, float], dict[str, str]]:
    n_nodes = draw(st.integers(1, 5))
    nodes = []
    for i in range(n_nodes):
        nodes.append(
            node(
                f"n{i}",
                draw(st.sampled_from([8, 16, 24, 48, 64])),
                reserved_bytes=draw(st.sampled_from([0, 2 * GiB])),
                health=draw(
                    st.sampled_from([Health.HEALTHY, Health.HEALTHY, Health.SUSPECT, Health.DOWN])
                ),
                drained=draw(st.booleans()) and draw(st.booleans()),
                max_instances=draw(st.sampled_from([None, None, 1, 2])),
            )
        )
    sizes = {m: draw(st.sampled_from([2, 4, 6, 12, 20])) for m in MODELS}
    instances = []
    for nd in nodes:
        for m in draw(st.lists(st.sampled_from(MODELS), max_size=3, unique=True)):
            instances.append(inst(nd.name, m, sizes[m], last_used=NOW - 100))
    rates = {m: draw(st.floats(0, 2)) for m in draw(st.lists(st.sampled_from(MODELS), unique=True))}
    hosts = {nd.name: draw(st.sampled_from(["h0", "h1", f"own{nd.name}"])) for nd in nodes}
    no_load = frozenset(nd.name for nd in nodes if draw(st.integers(0, 4)) == 0)
    p = pool(
        sizes,
        no_load_nodes=no_load,
        pinned=frozenset(draw(st.sets(st.sampled_from(MODELS), max_size=2))),
    )
    return snap(nodes, instances), p, rates, hosts


@settings(max_examples=300, deadline=None)
@given(clusters(), st.sampled_from([0.0, 0.1, 0.3]))
def test_a_preload_plan_keeps_every_rule_at_every_step(
    cluster: tuple[Snapshot, PoolSettings, dict[str, float], dict[str, str]], keep_free: float
) -> None:
    s, p, rates, hosts = cluster
    pre = PreloadSettings(keep_free=keep_free, min_rate_per_h=0.0)
    plan = plan_preload(s, p, pre, NOW, rates=rates, hosts=hosts)
    # Deterministic: the same inputs, the same plan.
    assert plan == plan_preload(s, p, pre, NOW, rates=rates, hosts=hosts)
    used = {n: s.node_loaded_bytes(n) for n in s.nodes}
    count = {n: sum(1 for _ in s.instances_on(n)) for n in s.nodes}
    seen: set[str] = set()
    for step in plan:
        # Never evicts; only loads of models loaded nowhere, each once, not pinned.
        assert step.action == "load" and step.code == "preload"
        assert step.model not in seen and step.model not in p.pinned
        assert not any(True for _ in s.instances_of(step.model))
        assert rates.get(step.model, 0) > 0
        seen.add(step.model)
        nd = s.nodes[step.node]
        # Only where a load can happen.
        assert nd.routable and step.node not in p.no_load_nodes and nd.budget_bytes is not None
        fp = footprint_bytes(s, step.model, step.node, p)
        assert step.bytes == fp
        used[step.node] += fp
        count[step.node] += 1
        # Never past the node's budget (less the share kept free) ...
        assert used[step.node] <= nd.budget_bytes * (1 - keep_free) + 1
        if nd.max_instances is not None:
            assert count[step.node] <= nd.max_instances
        # ... nor its host's, at every step.
        peers = tuple(n for n in s.nodes if hosts[n] == hosts[step.node])
        hb = host_budget(s, peers)
        assert hb is not None
        assert sum(used[n] for n in peers) <= hb * (1 - keep_free) + 1
    # One preload per node per pass.
    assert len({st_.node for st_ in plan}) == len(plan)
