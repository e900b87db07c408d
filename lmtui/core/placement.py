"""Where a new model load goes: footprints, free memory per node, and node choice.

A node is eligible for a load when it is routable (healthy or suspect, not drained), its
backend can load at all, and it has the model: its catalogue (``Node.available``) lists it,
or the catalogue is empty, which means "unknown", so we assume it can. Among eligible nodes
where the footprint fits in ``budget - loaded - pending``, the one with the most free memory
wins; healthy nodes come before suspect ones. Exact ties rotate by a seed rather than by
name or size, so equal nodes share the work instead of the biggest one taking everything.
When nothing fits as is, evictions are planned on the best node that can make room. A
policy that prices its plans (``gdsf``: the reload seconds per second its victims' requests
will cost) is asked on every node that can make room and the cheapest plan wins, ties in
the same node order: the node with the most free memory may hold only models that are
asked for all the time (on the replay benchmark this choice alone took ``gdsf`` from 1.40×
to 1.24× the clairvoyant reference's reload seconds, seed 1, instant).

A node with an instance limit (``Node.max_instances``, a llama.cpp router's ``--models-max``)
fits only when it also has a place left: its loaded and loading instances plus the loads
pending there stay under the limit. At the limit a load needs an eviction even with memory
to spare, planned with the same policy and candidates; with nothing evictable now (busy,
loading, young), the load waits (``may_fit_later``) rather than being refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from lmtui.core.eviction import (
    CostModel,
    EvictionOrder,
    EvictionPlan,
    EvictionPolicy,
    LoadSeconds,
    eviction_blocker,
    holds_place,
    permanent_instances,
    plan_eviction,
)
from lmtui.core.hosts import host_budget, host_nodes, other_use_bytes
from lmtui.core.lifetime import Lifetimes
from lmtui.core.model import GiB, Health, InstanceKey, InstanceState, Node, Snapshot
from lmtui.core.units import fmt_bytes

#: (node name, model) pairs whose load the engine has started and not yet seen finish.
PendingLoads = frozenset[tuple[str, str]]

#: How a load chooses among the nodes where it fits (``[pool] placement``, see ``place``).
PlacementRule = Literal["best-fit", "most-free", "spread"]
PLACEMENT_RULES: tuple[str, ...] = get_args(PlacementRule)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What placement and eviction need from the ``[pool]`` and ``[[models]]`` config."""

    #: Model footprints in bytes that override what the backends report (``size_gb``).
    size_overrides: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Footprint assumed when nobody reports a size. 8 GiB is a 7–8B model at Q8 plus
    #: context: big enough that an unknown model is not squeezed onto a full node.
    default_footprint_bytes: int = 8 * GiB
    #: Added to file sizes (not to sizes a server reports for a loaded instance, which
    #: already include it) for the KV cache and compute buffers.
    context_overhead_bytes: int = 0
    eviction_policy: EvictionPolicy = "lru"
    #: Models pinned by configuration (instances can also be pinned at run time).
    pinned: frozenset[str] = frozenset()
    #: ``low`` / ``normal`` / ``high`` per model; missing means ``normal``.
    priorities: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Never evict an instance loaded less than this many seconds ago.
    min_residency_s: float = 30.0
    #: Requests per second per model, for the ``cost`` and ``gdsf`` eviction policies: the
    #: decayed counts of ``lmtui.core.demand``, pushed in by the pool manager every tick.
    request_rate: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: Measured seconds of each model's last load per node, ``(node, model)``, which the
    #: ``gdsf`` policy prefers to ``cost``'s estimate (the replay fills it; empty: estimate).
    load_s: LoadSeconds = field(default_factory=lambda: MappingProxyType({}))
    #: Nodes whose backend cannot load models (``Backend.can_load`` is false).
    no_load_nodes: frozenset[str] = frozenset()
    #: Nodes whose backend cannot unload models (``Backend.can_unload`` is false): no plan
    #: evicts there, and idle models there never time out.
    no_unload_nodes: frozenset[str] = frozenset()
    cost: CostModel = field(default_factory=CostModel)
    #: An eviction order that replaces ``eviction_policy``'s (see ``plan_eviction``): the
    #: replay's clairvoyant reference. None in the engine.
    eviction_order: EvictionOrder | None = None
    #: Idle TTLs per model, priority and load (``core/lifetime.py``).
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    #: Node name -> host key, for nodes that share one machine's memory (``core/hosts.py``);
    #: a node not named is a host of its own.
    hosts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Among nodes where a load fits, which one takes it (see ``place``).
    placement: PlacementRule = "spread"


@dataclass(frozen=True, slots=True)
class Placement:
    """Load the model on ``node``, after unloading ``evict`` (possibly empty)."""

    node: str
    footprint_bytes: int
    evict: tuple[InstanceKey, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class NoPlacement:
    """No node can take the load now. ``may_fit_later``: busy or young instances, or a node
    still waiting for its first poll, may make room later; otherwise it never fits."""

    reason: str
    may_fit_later: bool


def can_host(node: Node, model: str) -> bool:
    """The node has the model, or its catalogue is unknown (empty), so it may."""
    return not node.available or any(a.key == model for a in node.available)


def load_exclude(snapshot: Snapshot, model: str, node: str | None) -> frozenset[str]:
    """The nodes a load of ``model`` asked for by an operator may not go to: every other
    node when it names ``node`` (there and nowhere else), else the nodes that already hold
    a replica (one more replica, wherever ``place`` puts it). The ``load`` command and its
    previews (``core/fit.py``) share it, so a preview names the node the command picks."""
    if node is not None:
        return frozenset(snapshot.nodes) - {node}
    return frozenset(i.node for i in snapshot.instances_of(model))


def footprint_bytes(snapshot: Snapshot, model: str, node: str | None, pool: PoolSettings) -> int:
    """Memory a load of ``model`` takes (on ``node``, whose catalogue may know its size).

    Order of trust: the user's override; the size of a loaded instance of the model (what
    the server really used, context included); the catalogue's file size on that node, then
    on any node, plus context overhead; the default.
    """
    if model in pool.size_overrides:
        return pool.size_overrides[model]
    for inst in snapshot.instances_of(model):
        if inst.size_bytes and inst.state is InstanceState.LOADED:
            return inst.size_bytes
    nodes = list(snapshot.nodes.values())
    if node is not None and node in snapshot.nodes:
        nodes.sort(key=lambda n: n.name != node)  # that node's catalogue first
    for n in nodes:
        for avail in n.available:
            if avail.key == model and avail.size_bytes:
                return avail.size_bytes + pool.context_overhead_bytes
    return pool.default_footprint_bytes + pool.context_overhead_bytes


def node_used_bytes(
    snapshot: Snapshot, node: str, pool: PoolSettings, pending_loads: PendingLoads = frozenset()
) -> int:
    """Bytes loaded on ``node`` plus the footprints of loads pending there that are not yet
    visible as instances (a model already present is not charged twice)."""
    used = snapshot.node_loaded_bytes(node)
    if pending_loads:
        present = {i.model for i in snapshot.instances_on(node)}
        for pnode, pmodel in pending_loads:
            if pnode == node and pmodel not in present:
                used += footprint_bytes(snapshot, pmodel, node, pool)
    return used


def host_free_bytes(
    snapshot: Snapshot,
    nodes: tuple[str, ...],
    pool: PoolSettings,
    pending_loads: PendingLoads = frozenset(),
) -> int | None:
    """Budget left on the host of ``nodes`` (``core/hosts.py``): its budget less what every
    node on it holds or is loading, less the other use its own figure shows. None when no
    node of it knows its memory."""
    budget = host_budget(snapshot, nodes)
    if budget is None:
        return None
    used = sum(node_used_bytes(snapshot, n, pool, pending_loads) for n in nodes)
    return budget - used - other_use_bytes(snapshot, nodes)


def free_bytes(
    snapshot: Snapshot,
    node: str,
    pool: PoolSettings,
    pending_loads: PendingLoads = frozenset(),
) -> int | None:
    """Budget left on ``node`` for new loads, or ``None`` when its memory is unknown: the
    smaller of the node's own and its host's (which the host's other nodes and the memory
    used outside lmtui's models take from too; ``host_free_bytes``).

    Pending loads not yet visible as instances are charged their footprint, so two loads
    started in quick succession do not both count on the same free memory.
    """
    n = snapshot.nodes.get(node)
    if n is None or n.budget_bytes is None:
        return None
    free = n.budget_bytes - node_used_bytes(snapshot, node, pool, pending_loads)
    group = host_nodes(snapshot, node, pool.hosts)
    if len(group) == 1:  # a host of its own (the router's hot path): no second sum
        return free - other_use_bytes(snapshot, group)
    host = host_free_bytes(snapshot, group, pool, pending_loads)
    return free if host is None else min(free, host)


def places_needed(snapshot: Snapshot, node: str, pending_loads: PendingLoads = frozenset()) -> int:
    """Instances to remove from ``node`` before one more load fits under its instance
    limit (0 when it has no limit or a place is free). Loads pending there count, so two
    loads started in quick succession do not both count on the same place."""
    n = snapshot.nodes.get(node)
    if n is None or n.max_instances is None:
        return 0
    resident = [i for i in snapshot.instances_on(node) if holds_place(i)]
    present = {i.model for i in resident}
    pending = sum(1 for pnode, pmodel in pending_loads if pnode == node and pmodel not in present)
    return max(0, len(resident) + pending + 1 - n.max_instances)


def rotation(names: Iterable[str], seed: int) -> dict[str, int]:
    """A tie-break rank per name: the name-sorted list rotated by ``seed``.

    Different seeds put a different name first, and no name is favoured for its size.
    """
    ordered = sorted(set(names))
    n = len(ordered) or 1
    return {name: (i - seed) % n for i, name in enumerate(ordered)}


def stable_seed(*parts: str | float | None) -> int:
    """A seed that is the same across processes (``hash()`` of a str is not)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _tier(node: Node) -> int:
    return 0 if node.health is Health.HEALTHY else 1


def _demand(snapshot: Snapshot, node: str, pool: PoolSettings, pending: PendingLoads) -> float:
    """Requests per second for the models on ``node`` (resident or pending there)."""
    models = {i.model for i in snapshot.instances_on(node)}
    models.update(m for n, m in pending if n == node)
    return sum(pool.request_rate.get(m, 0.0) for m in models)


def place(
    snapshot: Snapshot,
    model: str,
    now: float,
    pool: PoolSettings,
    *,
    pending_loads: PendingLoads = frozenset(),
    exclude: frozenset[str] = frozenset(),
    allow_eviction: bool = True,
    seed: int = 0,
) -> Placement | NoPlacement:
    """Choose the node for a new load of ``model``, planning evictions if needed.

    ``exclude`` names nodes not to use (e.g. ones that already hold a replica). Among the
    nodes where it fits as is, ``pool.placement`` chooses: ``best-fit`` the one it leaves
    the least free memory on (big gaps stay whole for big models), ``most-free`` the one
    with the most free memory, ``spread`` the one whose models are asked for least (the
    decayed request rates), so hot models do not share a node's slots; healthy before
    suspect always, then the least busy, then the seeded rotation.
    """
    requester = pool.priorities.get(model, "normal")
    candidates = [
        n
        for n in snapshot.nodes.values()
        if n.name not in exclude and n.name not in pool.no_load_nodes and can_host(n, model)
    ]
    eligible = [n for n in candidates if n.routable]
    if not eligible:
        # A node that has not answered its first poll yet may still become eligible.
        waiting = [n.name for n in candidates if n.health is Health.UNKNOWN and not n.drained]
        if waiting:
            return NoPlacement(f"waiting for the first poll of {', '.join(waiting)}", True)
        return NoPlacement(f"no healthy, undrained node that can load {model}", False)

    rot = rotation((n.name for n in eligible), seed)
    info = {
        n.name: (
            footprint_bytes(snapshot, model, n.name, pool),
            free_bytes(snapshot, n.name, pool, pending_loads),
            sum(i.busy for i in snapshot.instances_on(n.name)),
        )
        for n in eligible
    }
    places = {n.name: places_needed(snapshot, n.name, pending_loads) for n in eligible}

    def rank(n: Node) -> tuple[int, bool, int, int, int]:
        _fp, free, busy = info[n.name]
        # Known memory before unknown; then most free; then least busy; then rotation.
        return (_tier(n), free is None, -(free or 0), busy, rot[n.name])

    def fit_rank(n: Node) -> tuple[int, bool, float, int, int, int]:
        fp, free, busy = info[n.name]
        if free is None:
            return (_tier(n), True, 0.0, 0, busy, rot[n.name])
        if pool.placement == "best-fit":
            return (_tier(n), False, float(free - fp), 0, busy, rot[n.name])
        if pool.placement == "spread":
            demand = _demand(snapshot, n.name, pool, pending_loads)
            return (_tier(n), False, demand, -free, busy, rot[n.name])
        return (_tier(n), False, float(-free), 0, busy, rot[n.name])

    ranked = sorted(eligible, key=rank)
    fits = [
        n
        for n in ranked
        if places[n.name] == 0 and ((free := info[n.name][1]) is None or info[n.name][0] <= free)
    ]
    if fits:
        n = min(fits, key=fit_rank)
        fp, free, _ = info[n.name]
        room = "unknown free memory" if free is None else f"{fmt_bytes(free)} free"
        why = f"{n.name} has {room}, {model} needs {fmt_bytes(fp)}"
        if len(fits) > 1 and free is not None:
            why += f" ({pool.placement} of {len(fits)} nodes where it fits)"
        return Placement(n.name, fp, (), why)

    may_fit_later = False
    best: tuple[float, Placement] | None = None
    for n in ranked:
        fp, free, _ = info[n.name]
        need_places = places[n.name]
        budget = n.budget_bytes
        if (free is None or budget is None) and need_places == 0:
            continue  # unknown memory was accepted in the loop above
        group = host_nodes(snapshot, n.name, pool.hosts)
        stuck = permanent_instances(
            snapshot,
            n.name,
            pinned=pool.pinned,
            priorities=pool.priorities,
            requester_priority=requester,
        )
        if budget is not None and fp > budget - sum(i.size_bytes or 0 for i in stuck):
            continue  # pinned / higher-priority models leave too little, forever
        held = sum(1 for i in stuck if holds_place(i))
        if n.max_instances is not None and held + 1 > n.max_instances:
            continue  # pinned / higher-priority models hold every place, forever
        if free is not None and _host_too_small(snapshot, group, fp, pool, requester):
            continue  # the host's pinned models and other use leave too little
        may_fit_later = True
        if not allow_eviction or n.name in pool.no_unload_nodes:
            continue
        plan = _room_plan(
            snapshot, n, group, fp, free, need_places, now, pool, model, pending_loads
        )
        if plan is None:
            continue
        found = Placement(n.name, fp, plan.evict, plan.reason)
        if plan.loss is None:
            return found
        # A policy that prices its plans (gdsf): the cheapest plan on any node, not the
        # first node's (the first node may hold only models that are asked for a lot).
        if best is None or plan.loss < best[0]:
            best = (plan.loss, found)
    if best is not None:
        return best[1]

    fp_any = max(info[n.name][0] for n in eligible)
    if may_fit_later:
        why = "busy, loading or recently loaded instances" if allow_eviction else "loaded models"
        return NoPlacement(f"no room for {model} ({fmt_bytes(fp_any)}) until {why} free up", True)
    return NoPlacement(
        f"{model} ({fmt_bytes(fp_any)}) does not fit on any eligible node "
        f"even after evicting everything unpinned",
        False,
    )


def _host_too_small(
    snapshot: Snapshot, group: tuple[str, ...], fp: int, pool: PoolSettings, requester: str
) -> bool:
    """Does the host of ``group`` lack room for ``fp`` even with every evictable instance on
    it gone: its budget less its pinned and higher-priority models and its other use."""
    if len(group) == 1 and not other_use_bytes(snapshot, group):
        return False  # the node's own check said it all
    budget = host_budget(snapshot, group)
    if budget is None:
        return False
    stuck = sum(
        i.size_bytes or 0
        for name in group
        for i in permanent_instances(
            snapshot,
            name,
            pinned=pool.pinned,
            priorities=pool.priorities,
            requester_priority=requester,
        )
    )
    return fp > budget - stuck - other_use_bytes(snapshot, group)


def _plan_on(
    snapshot: Snapshot,
    node: str,
    need: int,
    count: int,
    now: float,
    pool: PoolSettings,
    model: str,
) -> EvictionPlan | None:
    return plan_eviction(
        snapshot,
        node,
        need,
        now,
        pool.eviction_policy,
        pool.pinned,
        pool.min_residency_s,
        pool.priorities,
        request_rate=pool.request_rate,
        requester_priority=pool.priorities.get(model, "normal"),
        keep_model=model,
        cost=pool.cost,
        need_count=count,
        order=pool.eviction_order,
        load_s=pool.load_s,
    )


def _room_plan(
    snapshot: Snapshot,
    n: Node,
    group: tuple[str, ...],
    fp: int,
    free: int | None,
    need_places: int,
    now: float,
    pool: PoolSettings,
    model: str,
    pending_loads: PendingLoads,
) -> EvictionPlan | None:
    """The evictions that make room for ``fp`` on ``n``: bytes on the node itself for its
    own budget, and bytes anywhere on its host for the host's budget.

    The node's own victims free both; a victim on another node of the host frees only the
    host's memory. So: every victim on ``n`` (the first choice), or, when ``n`` alone
    cannot free enough for the host, what ``n`` must free for itself plus the rest from the
    host's other nodes. A priced policy takes the cheaper of the two.
    """
    if free is None or n.budget_bytes is None:
        return _plan_on(snapshot, n.name, 0, need_places, now, pool, model)
    need = fp - free  # the larger of the node's and the host's shortfall
    local = _plan_on(snapshot, n.name, need, need_places, now, pool, model)
    others = [o for o in group if o != n.name and o not in pool.no_unload_nodes]
    if not others or (local is not None and local.loss is None):
        return local
    own = fp - (n.budget_bytes - node_used_bytes(snapshot, n.name, pool, pending_loads))
    first = _plan_on(snapshot, n.name, max(0, own), need_places, now, pool, model)
    if first is None:
        return local
    evict = list(first.evict)
    freed = first.frees_bytes
    loss = first.loss
    for o in others:
        if freed >= need:
            break
        plan = _plan_on(snapshot, o, need - freed, 0, now, pool, model)
        if plan is None:  # take what that node can give, and look further
            plan = _plan_on(
                snapshot, o, _evictable_bytes(snapshot, o, now, pool, model), 0, now, pool, model
            )
            if plan is None:
                continue
        evict.extend(plan.evict)
        freed += plan.frees_bytes
        if loss is not None and plan.loss is not None:
            loss += plan.loss
    if freed < need:
        return local
    names = ", ".join(f"{snapshot.instances[k].model} on {k[0]}" for k in evict)
    host = EvictionPlan(
        n.name,
        tuple(evict),
        freed,
        f"evict {names} (its host's memory): frees {fmt_bytes(freed)}, {fmt_bytes(need)} needed",
        loss,
    )
    if local is None or (loss is not None and local.loss is not None and loss < local.loss):
        return host
    return local


def _evictable_bytes(
    snapshot: Snapshot, node: str, now: float, pool: PoolSettings, model: str
) -> int:
    """Bytes of the instances on ``node`` that may be evicted now for ``model``."""
    requester = pool.priorities.get(model, "normal")
    return sum(
        i.size_bytes or 0
        for i in snapshot.instances_on(node)
        if i.model != model
        and eviction_blocker(
            i,
            now,
            pinned=pool.pinned,
            min_residency_s=pool.min_residency_s,
            priorities=pool.priorities,
            requester_priority=requester,
        )
        is None
    )
