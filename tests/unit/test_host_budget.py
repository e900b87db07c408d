"""Memory per host (core/hosts.py, core/placement.py, config/hosts.py): nodes on one machine
share its budget, the host's own figure counts memory used outside lmtui's models, and no
plan (placement, upkeep, rebalance) ever goes past a node's or a host's budget at any step
or unloads a pinned or busy instance."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.config.hosts import host_keys
from lmtui.config.schema import Config, NodeConfig, SshConfig
from lmtui.core.hosts import host_budget, other_use_bytes
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
from lmtui.core.placement import (
    PLACEMENT_RULES,
    Placement,
    PoolSettings,
    footprint_bytes,
    free_bytes,
    place,
)
from lmtui.core.rebalance import plan_rebalance
from lmtui.core.scheduler import SchedulerSettings

NOW = 10_000.0
G = GiB


def node(name: str, total_gb: float = 64, **kw: object) -> Node:
    kw.setdefault("health", Health.HEALTHY)
    kw.setdefault("memory", HostMemory(int(total_gb * G), int(total_gb * G), "config"))
    return Node(name, NodeKind.LMSTUDIO, f"http://mac:1/{name}", **kw)  # type: ignore[arg-type]


def inst(node_: str, model: str, size_gb: float, **kw: object) -> Instance:
    kw.setdefault("first_seen", 0.0)
    kw.setdefault("last_used", 0.0)
    return Instance(node_, model, model, size_bytes=int(size_gb * G), **kw)  # type: ignore[arg-type]


def snap(nodes: list[Node], instances: list[Instance] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
    )


def pool(
    sizes: dict[str, float], hosts: dict[str, str] | None = None, **kw: object
) -> PoolSettings:
    return PoolSettings(  # type: ignore[arg-type]
        size_overrides=MappingProxyType({m: int(gb * G) for m, gb in sizes.items()}),
        hosts=MappingProxyType(hosts or {}),
        min_residency_s=0.0,
        **kw,
    )


ONE_MAC = {"a": "host:mac", "b": "host:mac"}


# -- which nodes share a host -------------------------------------------------------------


def cfg(*nodes: NodeConfig) -> Config:
    return Config(nodes=list(nodes))


def test_two_ports_of_one_address_share_a_host() -> None:
    keys = host_keys(
        cfg(
            NodeConfig(name="a", kind=NodeKind.LMSTUDIO, url="http://Mac1.local:1234"),
            NodeConfig(name="b", kind=NodeKind.LMSTUDIO, url="http://mac1.local:1235"),
            NodeConfig(name="c", kind=NodeKind.OLLAMA, url="http://mac2.local:11434"),
        )
    )
    assert keys == {"a": "addr:mac1.local", "b": "addr:mac1.local"}  # c: a host of its own


def test_an_ssh_node_and_a_plain_node_at_its_address_share_a_host() -> None:
    keys = host_keys(
        cfg(
            NodeConfig(
                name="a",
                kind=NodeKind.LMSTUDIO,
                url="http://10.0.0.5:1234",
                ssh=SshConfig(host="mac1"),
            ),
            NodeConfig(name="b", kind=NodeKind.OLLAMA, url="http://mac1:11434"),
            # Another SSH port on one address may be another machine behind a gateway.
            NodeConfig(
                name="c", kind=NodeKind.OLLAMA, url="http://mac1:1", ssh=SshConfig(port=2222)
            ),
        )
    )
    assert keys == {"a": "addr:mac1", "b": "addr:mac1"}


def test_loopback_shares_only_when_its_memory_is_read_here() -> None:
    sims = cfg(
        NodeConfig(name="s1", kind=NodeKind.OLLAMA, url="http://127.0.0.1:1", memory_gb=64),
        NodeConfig(name="s2", kind=NodeKind.OLLAMA, url="http://127.0.0.1:2", memory_gb=64),
    )
    assert host_keys(sims) == {}
    local = cfg(
        NodeConfig(name="l1", kind=NodeKind.OLLAMA, url="http://localhost:1"),
        NodeConfig(name="l2", kind=NodeKind.LLAMACPP, url="http://127.0.0.1:2"),
    )
    assert host_keys(local) == {"l1": "addr:localhost", "l2": "addr:localhost"}


def test_an_explicit_host_wins() -> None:
    keys = host_keys(
        cfg(
            NodeConfig(name="a", kind=NodeKind.OLLAMA, url="http://gw:1", host="Studio"),
            NodeConfig(name="b", kind=NodeKind.OLLAMA, url="http://gw:2", host="studio"),
            NodeConfig(name="c", kind=NodeKind.OLLAMA, url="http://gw:3", host="other"),
        )
    )
    assert keys == {"a": "host:studio", "b": "host:studio"}


# -- the host's budget ---------------------------------------------------------------------


def test_a_load_on_one_node_counts_against_the_other() -> None:
    s = snap([node("a", 64), node("b", 64)], [inst("a", "big", 40)])
    alone = pool({"m": 30})
    shared = pool({"m": 30}, ONE_MAC)
    assert free_bytes(s, "b", alone) == 64 * G
    assert free_bytes(s, "b", shared) == 24 * G
    # A load pending on a counts on b too.
    assert free_bytes(s, "b", shared, frozenset({("a", "m")})) == -6 * G
    p = place(s, "m", NOW, shared)
    assert isinstance(p, Placement)  # b's own 64 GB are free, but the host has 24 GB: evict
    assert p.evict == (("a", "big"),)


def test_host_budget_is_the_smallest_of_its_nodes() -> None:
    s = snap([node("a", 64, reserved_bytes=8 * G), node("b", 64, reserved_bytes=4 * G)])
    assert host_budget(s, ("a", "b")) == 56 * G


def test_an_eviction_may_take_the_victim_on_the_other_node_of_the_host() -> None:
    # b holds nothing it could evict; the host is full because of a's idle model.
    s = snap(
        [node("a", 64), node("b", 64)],
        [inst("a", "old", 40), inst("b", "hot", 20, in_flight=1, slots_busy=1)],
    )
    p = place(s, "new", NOW, pool({"new": 20}, ONE_MAC), exclude=frozenset({"a"}))
    assert isinstance(p, Placement) and p.node == "b"
    assert p.evict == (("a", "old"),)
    assert "host" in p.reason


def test_busy_and_pinned_instances_on_the_other_node_are_never_taken() -> None:
    s = snap(
        [node("a", 64), node("b", 64)],
        [inst("a", "busy", 40, in_flight=1, slots_busy=1), inst("b", "pin", 20, pinned=True)],
    )
    p = place(s, "new", NOW, pool({"new": 20}, ONE_MAC))
    assert not isinstance(p, Placement)


# -- the host's own figure -----------------------------------------------------------------


def measured(total_gb: float, used_gb: float, at: float = 100.0, **kw: object) -> dict[str, object]:
    mem = HostMemory(int(total_gb * G), int((total_gb - used_gb) * G), "ssh-macos")
    return {"memory": mem, "memory_at": at, **kw}


def test_memory_used_outside_lmtuis_models_counts_as_used() -> None:
    s = snap([node("a", **measured(64, 30))], [inst("a", "m", 10)])
    assert other_use_bytes(s, ("a",)) == 20 * G
    assert free_bytes(s, "a", pool({})) == (64 - 10 - 20) * G


@pytest.mark.parametrize(
    "memory",
    [
        HostMemory(64 * G, 10 * G, "config"),  # a figure from the config is no measurement
        HostMemory(64 * G, 10 * G, "backend"),
        HostMemory(0, 0, "psutil"),
        HostMemory(64 * G, 80 * G, "psutil"),  # more available than there is
        HostMemory(64 * G, -1, "psutil"),
        HostMemory(1 << 62, 0, "psutil"),  # an exabyte machine: garbage
    ],
)
def test_a_missing_or_garbage_figure_leaves_the_estimates_alone(memory: HostMemory) -> None:
    s = snap([node("a", memory=memory, memory_at=100.0)], [inst("a", "m", 10)])
    assert other_use_bytes(s, ("a",)) == 0


def test_a_figure_read_before_the_instances_changed_is_not_trusted() -> None:
    # Read at 100, a model unloaded at 105: the figure still holds it.
    s = snap([node("a", **measured(64, 50, at=100.0, instances_at=105.0))], [inst("a", "m", 10)])
    assert other_use_bytes(s, ("a",)) == 0


def test_other_use_is_never_more_than_the_budget() -> None:
    s = snap([node("a", reserved_bytes=8 * G, **measured(64, 64))])
    assert other_use_bytes(s, ("a",)) == 56 * G
    assert free_bytes(s, "a", pool({})) == 0


def test_other_use_is_counted_once_for_a_host_of_two_nodes() -> None:
    s = snap(
        [node("a", **measured(64, 40, at=100.0)), node("b", **measured(64, 41, at=90.0))],
        [inst("a", "x", 10), inst("b", "y", 10)],
    )
    # The freshest reading (a's, 40 GB used) less both nodes' models (20 GB).
    assert other_use_bytes(s, ("a", "b")) == 20 * G
    assert free_bytes(s, "a", pool({}, ONE_MAC)) == (64 - 20 - 20) * G


# -- the rule among nodes that fit ---------------------------------------------------------


def test_the_placement_rules_choose_differently() -> None:
    s = snap([node("big", 128), node("small", 32)], [inst("small", "hot", 8)])
    sizes = {"m": 20}
    rates = MappingProxyType({"hot": 1.0})
    chosen = {
        r: place(s, "m", NOW, pool(sizes, placement=r, request_rate=rates)) for r in PLACEMENT_RULES
    }
    assert all(isinstance(p, Placement) for p in chosen.values())
    assert chosen["most-free"].node == "big"  # type: ignore[union-attr]
    assert chosen["best-fit"].node == "small"  # type: ignore[union-attr]  # 4 GB left
    assert chosen["spread"].node == "big"  # type: ignore[union-attr]  # small holds hot


# -- properties: no plan goes past a budget, none unloads what it must not -----------------

SIZES = st.sampled_from([2, 4, 8, 12, 20, 30])


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Snapshot, dict[str, str], dict[str, float]]:
    n_nodes = draw(st.integers(1, 4))
    names = [f"n{i}" for i in range(n_nodes)]
    hosts_of = {n: f"h{draw(st.integers(0, 1))}" for n in names}
    nodes = []
    for name in names:
        total = draw(st.sampled_from([32, 48, 64]))
        kw: dict[str, object] = {"reserved_bytes": draw(st.sampled_from([0, 4])) * G}
        if draw(st.booleans()):
            kw |= measured(total, draw(st.integers(0, total)), at=100.0)
        nodes.append(node(name, total, **kw))
    s = snap(nodes)
    sizes: dict[str, float] = {}
    instances = []
    hosts = {n: k for n, k in hosts_of.items()}
    p = pool({}, hosts)
    for i in range(draw(st.integers(0, 8))):
        model = f"m{i}"
        size = draw(SIZES)
        target = draw(st.sampled_from(names))
        sizes[model] = size
        free = free_bytes(s, target, pool(sizes, hosts))
        if free is None or free < size * G:
            continue  # the starting point itself keeps every budget
        busy = draw(st.integers(0, 1))
        instances.append(
            inst(target, model, size, pinned=draw(st.booleans()), in_flight=busy, slots_busy=busy)
        )
        s = snap(nodes, instances)
    del p
    for i in range(3):
        sizes.setdefault(f"new{i}", draw(SIZES))
    return s, hosts, sizes


def _within_budgets(s: Snapshot, p: PoolSettings) -> None:
    """Counted here from the instances themselves, not through placement's own sums."""
    used = {n: sum(i.size_bytes or 0 for i in s.instances.values() if i.node == n) for n in s.nodes}
    for name, n in s.nodes.items():
        assert n.budget_bytes is not None and used[name] <= n.budget_bytes, f"{name} over budget"
    for key in set(p.hosts.values()):
        peers = [n for n in s.nodes if p.hosts.get(n) == key]
        budget = min(s.nodes[n].budget_bytes or 0 for n in peers)
        total = sum(used[n] for n in peers) + other_use_bytes(s, peers)
        assert total <= budget, f"host {key} ({', '.join(peers)}) over its budget"


def _apply_unload(s: Snapshot, key: tuple[str, str], p: PoolSettings) -> Snapshot:
    victim = s.instances[key]
    assert victim.busy == 0 and victim.in_flight == 0, f"unloads busy {victim}"
    assert not (victim.pinned or victim.model in p.pinned), f"unloads pinned {victim}"
    insts = {k: v for k, v in s.instances.items() if k != key}
    return snap(list(s.nodes.values()), list(insts.values()))


def _apply_load(s: Snapshot, node_: str, model: str, p: PoolSettings) -> Snapshot:
    size = footprint_bytes(s, model, node_, p)
    new = Instance(node_, model, model, size_bytes=size, first_seen=NOW, last_used=NOW)
    return snap(list(s.nodes.values()), [*s.instances.values(), new])


def _baseline(s: Snapshot, p: PoolSettings) -> bool:
    return all((free_bytes(s, n, p) or 0) >= 0 for n in s.nodes)


@settings(max_examples=200, deadline=None)
@given(clusters(), st.sampled_from(PLACEMENT_RULES), st.sampled_from(["lru", "cost", "gdsf"]))
def test_placements_keep_every_node_and_host_budget(
    cluster: tuple[Snapshot, dict[str, str], dict[str, float]], rule: str, policy: str
) -> None:
    s, hosts, sizes = cluster
    p = pool(sizes, hosts, placement=rule, eviction_policy=policy)
    if not _baseline(s, p):  # other use alone past a budget: nothing may load there
        return
    for model in ("new0", "new1", "new2"):
        d = place(s, model, NOW, p)
        if not isinstance(d, Placement):
            continue
        for key in d.evict:  # every step, not only the end
            s = _apply_unload(s, key, p)
            _within_budgets(s, p)
        s = _apply_load(s, d.node, model, p)
        _within_budgets(s, p)


@settings(max_examples=150, deadline=None)
@given(clusters(), st.sets(st.sampled_from(["new0", "new1", "new2"])))
def test_upkeep_and_rebalance_plans_keep_every_budget(
    cluster: tuple[Snapshot, dict[str, str], dict[str, float]], pins: set[str]
) -> None:
    s, hosts, sizes = cluster
    pinned = frozenset(pins)
    p = pool(sizes, hosts, pinned=pinned)
    if not _baseline(s, p):
        return
    settings_ = SchedulerSettings(
        pool=p, min_replicas=MappingProxyType({"new0": 1}), known_models=frozenset(sizes)
    )
    plan = plan_rebalance(s, settings_, NOW)
    for step in plan.steps:
        if step.action == "unload":
            assert step.instance_id is not None
            s = _apply_unload(s, (step.node, step.instance_id), p)
        else:
            s = _apply_load(s, step.node, step.model, p)
        _within_budgets(s, p)


def test_loading_instances_count_until_they_are_gone() -> None:
    s = snap([node("a", 64), node("b", 64)], [inst("a", "x", 40, state=InstanceState.LOADING)])
    assert free_bytes(s, "b", pool({}, ONE_MAC)) == 24 * G
