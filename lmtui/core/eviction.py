"""Which idle instances to unload to make room for a load, as a pure plan.

An instance may be evicted only when nothing depends on it right now: it is ``loaded``,
has no request in flight, no busy slot and nothing queued inside the server, is not pinned,
is not of a higher priority than the model that needs the room, and has been resident for at
least ``min_residency_s`` (so two models fighting over one node cannot thrash it).

Three policies order the candidates:

- ``lru``: ``low`` priority first, then least recently used first.
- ``cost``: the expected reload time we would pay, per byte freed. The chance that a model
  is asked for again within a horizon comes from its request rate (when the engine knows it)
  or from how long it has been idle; the reload time from its size. Large, rarely used
  models go first; small hot ones stay.
- ``gdsf``: GreedyDual-Size-Frequency. A candidate's value is its request rate × the
  seconds a reload of it would take on that node / its size: the reload seconds per second
  that each byte it holds saves. The lowest value goes first; ties (no rate known, e.g. a
  model not asked for since lmtui started) go as ``lru`` orders them, so with no history
  at all ``gdsf`` is ``lru``. The rate is a decayed count (``lmtui.core.demand``),
  which is where GDSF's inflation clock went: GDSF ages old popularity by raising a clock
  ``L`` on every eviction and giving each access the current ``L``; a decayed count gives
  each request a weight that grows with the time it came (``exp(t / tau)``, relative to
  now), which is the same aging driven by time instead of by evictions, and keeps no
  per-instance state (LRFU, Lee et al. 2001, is the same idea without sizes). A model
  asked for often stays even when big; one asked for once an hour goes first.

  ``gdsf`` also *waits* rather than evict an instance worth far more than what frees up
  soon. Room held by loads under way, by requests in flight and by instances younger than
  the minimum residency comes free by itself, usually within seconds; if the plan that
  could use it (those instances counted as candidates at their own value) costs at most a
  :data:`DEFER_FACTOR`-th of the plan possible now, the node plans nothing and the load
  waits for it (``place`` then tries the other nodes, and the request waits when none has a
  plan). Without it a burst of misses for rarely used models, each holding memory while it
  loads, leaves only popular models evictable, and evicting those makes more misses: on the
  replay benchmark (instant, seeds 1-5) 2,544 of 20,451 loads were of the ten most
  requested models (the most requested, ~1 request/s, 220 times), most of them reloaded
  within seconds of their eviction; with waiting, 297 of 17,828 (and 5: once per seed).
  Waiting is safe from starvation: what it waits for becomes evictable, or goes, by
  itself; and it changes only *whether* the node plans now, never which instances a plan
  takes. A load under way is seen where the node shows it ``loading`` (llama.cpp routers
  and pool nodes, as ``lmtui replay`` models them); LM Studio and Ollama show a model only
  once it is loaded, so there ``gdsf`` waits only for busy and young instances.

A caller may also pass its own ``order`` (a sort key per candidate, smallest evicted first),
which replaces the policy's: ``lmtui replay`` ranks by each model's next use in the trace for
its clairvoyant reference, through the same candidates and the same plan-trimming as above.

Either way the plan takes candidates in order until enough is freed, then drops any it took
that turned out unnecessary (a small LRU instance taken before one big one that alone
suffices), because every eviction costs somebody a reload.

"Enough" has two measures: bytes, and places under the node's instance limit (a llama.cpp
router's ``--models-max``: at the limit, a load needs one instance gone whatever the memory).
A plan satisfies both. An instance of unknown size frees a place but no bytes we can count,
so it is taken only where a place is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lmtui.core.model import GiB, Instance, InstanceKey, InstanceState, Snapshot
from lmtui.core.units import fmt_bytes

EvictionPolicy = Literal["lru", "cost", "gdsf"]
#: A caller's own eviction order: ``order(instance, now)`` is a candidate's sort key, the
#: smallest evicted first. It replaces the policy's order (see the module docstring).
EvictionOrder = Callable[[Instance, float], float]

#: ``low`` idles out first; ``high`` is never evicted to make room for a lower one.
PRIORITY_RANK: Mapping[str, int] = {"low": 0, "normal": 1, "high": 2}
#: How much more (or less) a cost-policy reload hurts for each priority.
_PRIORITY_WEIGHT: Mapping[str, float] = {"low": 0.5, "normal": 1.0, "high": 2.0}
#: ``gdsf`` waits for room that frees up soon when the plan using it would cost at most a
#: third of the plan possible now (see the module docstring). Chosen on the replay benchmark
#: (Azure trace, bench/README.md, seeds 1-5, instant service): the mean ratio to the
#: clairvoyant reference's reload seconds is 1.19x without waiting, 1.11x at a factor of 5,
#: 1.08x at 4, 1.04x at 3, 1.00x at 2.5, 0.93x at 2, and cold loads 17%, 22%, 24%, 27%,
#: 30%, 35% fewer than LRU's. Each step down lowers the mean queue wait (4.3 s without,
#: 3.2 s at 3) but raises the worst seed's p99 (the request that waits pays the load it
#: waits for, then its own): 22.9 s without, 23.1, 23.9, 27.2, 28.4, 33.5 s (LRU's: 22.9 s).
#: 3 is the largest factor that meets the benchmark's goals (at most 1.15x the reference,
#: 25% fewer cold loads than LRU).
DEFER_FACTOR = 3.0
#: Policies that may wait for room freeing up soon although a plan exists now: for them a
#: bigger model's wait does not follow from a smaller one's (``lmtui replay`` relies on
#: that for the others).
WAITING_POLICIES: frozenset[str] = frozenset({"gdsf"})
#: Why an instance cannot be evicted *now* although it will be soon, by itself (a load
#: under way ends, requests in flight finish, a minimum residency runs out).
_SOON = frozenset({InstanceState.LOADING.value, "busy", "resident too briefly"})


@dataclass(frozen=True, slots=True)
class CostModel:
    """Figures the ``cost`` policy uses to estimate what an eviction costs."""

    #: Seconds any load takes regardless of size (process start, graph build, warm-up).
    load_fixed_s: float = 3.0
    #: Load throughput; 1 GiB/s is a typical NVMe read plus a copy to (unified) GPU memory.
    load_bytes_per_s: float = float(GiB)
    #: How far ahead we care whether the model is needed again.
    horizon_s: float = 600.0

    def reload_s(self, size_bytes: int) -> float:
        """Estimated seconds to load ``size_bytes`` of model again."""
        return self.load_fixed_s + size_bytes / self.load_bytes_per_s


#: Measured seconds the last load of a model took on a node, by ``(node, model)``.
LoadSeconds = Mapping[tuple[str, str], float]


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    """Instances to unload on ``node``, freeing ``frees_bytes`` in total."""

    node: str
    evict: tuple[InstanceKey, ...]
    frees_bytes: int
    reason: str
    #: What the plan is expected to cost, comparable across nodes (``gdsf``: reload
    #: seconds per second the victims' requests will cause); None when the policy has no
    #: such measure (``lru``, a caller's order).
    loss: float | None = None


def is_pinned(inst: Instance, pinned: frozenset[str] | set[str]) -> bool:
    """Pinned by the instance itself (run-time pin) or by its model's configuration."""
    return inst.pinned or inst.model in pinned


def eviction_blocker(
    inst: Instance,
    now: float,
    *,
    pinned: frozenset[str] | set[str] = frozenset(),
    min_residency_s: float = 0.0,
    priorities: Mapping[str, str] | None = None,
    requester_priority: str = "normal",
) -> str | None:
    """Why ``inst`` may not be evicted now, or ``None`` when it may."""
    if inst.state is not InstanceState.LOADED:
        return inst.state.value
    if inst.busy > 0 or inst.in_flight > 0 or inst.queued > 0:
        return "busy"
    if is_pinned(inst, pinned):
        return "pinned"
    prio = (priorities or {}).get(inst.model, "normal")
    if PRIORITY_RANK.get(prio, 1) > PRIORITY_RANK.get(requester_priority, 1):
        return f"{prio} priority"
    # first_seen is when lmtui first saw it loaded; unknown means it predates lmtui.
    if inst.first_seen is not None and now - inst.first_seen < min_residency_s:
        return "resident too briefly"
    return None


def permanent_instances(
    snapshot: Snapshot,
    node: str,
    *,
    pinned: frozenset[str] | set[str] = frozenset(),
    priorities: Mapping[str, str] | None = None,
    requester_priority: str = "normal",
) -> list[Instance]:
    """Instances on ``node`` that no amount of waiting will remove for this requester.

    Busy and young instances free up eventually; pinned and higher-priority ones never do.
    The scheduler uses this to tell "wait for room" from "this can never fit here".
    """
    rank = PRIORITY_RANK.get(requester_priority, 1)
    return [
        inst
        for inst in snapshot.instances_on(node)
        if is_pinned(inst, pinned)
        or PRIORITY_RANK.get((priorities or {}).get(inst.model, "normal"), 1) > rank
    ]


def permanent_bytes(snapshot: Snapshot, node: str, **kw: Any) -> int:
    """Bytes of :func:`permanent_instances` (memory that never frees for this requester)."""
    return sum(i.size_bytes or 0 for i in permanent_instances(snapshot, node, **kw))


def holds_place(inst: Instance) -> bool:
    """Does ``inst`` count against its node's instance limit? Loading, loaded and unloading
    ones do (the server counts a process until it is gone); a failed one has exited."""
    return inst.state is not InstanceState.FAILED


def permanent_count(snapshot: Snapshot, node: str, **kw: Any) -> int:
    """Places under an instance limit that :func:`permanent_instances` hold for good."""
    return sum(1 for i in permanent_instances(snapshot, node, **kw) if holds_place(i))


def _last_activity(inst: Instance) -> float:
    if inst.last_used is not None:
        return inst.last_used
    if inst.first_seen is not None:
        return inst.first_seen
    return -math.inf


def _expected_reload_cost(
    inst: Instance,
    now: float,
    request_rate: Mapping[str, float],
    priorities: Mapping[str, str],
    cost: CostModel,
) -> float:
    """Expected seconds of reload we would cause by evicting ``inst``."""
    size = inst.size_bytes or 0
    rate = request_rate.get(inst.model)
    if rate is None:
        # No measured rate: use recency as a proxy, one request per idle period.
        last = _last_activity(inst)
        idle = now - last if math.isfinite(last) else cost.horizon_s
        rate = 1.0 / max(idle, 1.0)
    p_needed = 1.0 - math.exp(-max(rate, 0.0) * cost.horizon_s)
    weight = _PRIORITY_WEIGHT.get(priorities.get(inst.model, "normal"), 1.0)
    return weight * p_needed * cost.reload_s(size)


def _frequency_value(
    inst: Instance,
    request_rate: Mapping[str, float],
    priorities: Mapping[str, str],
    cost: CostModel,
    load_s: LoadSeconds,
) -> float:
    """GDSF's value of keeping ``inst``: rate × reload seconds / size (see the docstring)."""
    size = inst.size_bytes or 0
    reload = load_s.get((inst.node, inst.model)) if load_s else None
    if reload is None:
        reload = cost.reload_s(size)
    weight = _PRIORITY_WEIGHT.get(priorities.get(inst.model, "normal"), 1.0)
    return weight * request_rate.get(inst.model, 0.0) * reload / max(size, 1)


def _take_until(ordered: list[Instance], need: int, count: int = 0) -> list[Instance] | None:
    """Take from ``ordered`` until ``need`` bytes and ``count`` instances are freed, then
    drop the superfluous (from the most valuable, taken last, to the least)."""
    return _trim(_prefix(ordered, need, count), need, count)


def _prefix(ordered: list[Instance], need: int, count: int) -> list[Instance]:
    """The shortest prefix of ``ordered`` (less instances of no known size once no place is
    needed) that frees ``need`` bytes and ``count`` places, or all of it."""
    taken: list[Instance] = []
    freed = 0
    for inst in ordered:
        if freed >= need and len(taken) >= count:
            break
        if not inst.size_bytes and len(taken) >= count:
            continue  # frees no bytes we can count, and no place is needed any more
        taken.append(inst)
        freed += inst.size_bytes or 0
    return taken


def _trim(prefix: list[Instance], need: int, count: int) -> list[Instance] | None:
    """``prefix`` less what it need not evict, or None when it frees too little."""
    freed = sum(i.size_bytes or 0 for i in prefix)
    if freed < need or len(prefix) < count:
        return None
    taken = list(prefix)
    for inst in reversed(prefix):
        size = inst.size_bytes or 0
        if freed - size >= need and len(taken) - 1 >= count:
            taken.remove(inst)
            freed -= size
    return taken


#: ``gdsf``'s sort key: value, then as ``lru`` orders (priority, last activity), then key.
_GdsfRank = tuple[float, int, float, InstanceKey]


def _gdsf_rank(inst: Instance, value: float, prios: Mapping[str, str]) -> _GdsfRank:
    rank = PRIORITY_RANK.get(prios.get(inst.model, "normal"), 1)
    return (value, rank, _last_activity(inst), inst.key)


def _loss_of_waiting(
    ordered: list[Instance],
    soon: list[Instance],
    rank: Mapping[InstanceKey, _GdsfRank],
    need_bytes: int,
    need_count: int,
) -> float | None:
    """The ``gdsf`` loss of the plan possible once ``soon`` (instances that cannot be
    evicted now but will be by themselves) can be, with ``ordered`` (the candidates in
    ``gdsf`` order); None when even that plan frees too little."""
    merged = sorted(ordered + soon, key=lambda i: rank[i.key])  # two sorted runs
    taken = _take_until(merged, need_bytes, need_count)
    if taken is None:
        return None
    return sum(rank[i.key][0] * (i.size_bytes or 0) for i in taken)


def plan_eviction(
    snapshot: Snapshot,
    node: str,
    need_bytes: int,
    now: float,
    policy: EvictionPolicy = "lru",
    pinned: frozenset[str] | set[str] = frozenset(),
    min_residency_s: float = 0.0,
    priorities: Mapping[str, str] | None = None,
    *,
    request_rate: Mapping[str, float] | None = None,
    requester_priority: str = "normal",
    keep_model: str | None = None,
    cost: CostModel = CostModel(),
    need_count: int = 0,
    order: EvictionOrder | None = None,
    load_s: LoadSeconds | None = None,
) -> EvictionPlan | None:
    """Plan which instances on ``node`` to unload to free at least ``need_bytes`` and at
    least ``need_count`` places under the node's instance limit.

    Returns ``None`` when the evictable instances together cannot free enough. Instances
    with an unknown size are chosen only to free a place (for bytes, evicting them might
    free nothing we can count). ``keep_model`` protects replicas of the model being loaded
    (evicting one to load another would be pointless). ``request_rate`` is requests per
    second per model; ``load_s`` the measured seconds of a model's last load on a node,
    which ``gdsf`` prefers to the cost model's estimate. ``order``, when given, replaces the
    policy's order of candidates.
    """
    need_bytes = max(need_bytes, 0)
    if need_bytes == 0 and need_count <= 0:
        return EvictionPlan(node, (), 0, f"fits on {node} without eviction")
    loss: float | None = None
    prios = priorities or {}
    rates = request_rate or {}
    candidates: list[Instance] = []
    soon: list[Instance] = []  # not evictable now, but will be by themselves
    for inst in snapshot.instances_on(node):
        if inst.model == keep_model or not ((inst.size_bytes or 0) > 0 or need_count > 0):
            continue
        why = eviction_blocker(
            inst,
            now,
            pinned=pinned,
            min_residency_s=min_residency_s,
            priorities=prios,
            requester_priority=requester_priority,
        )
        if why is None:
            candidates.append(inst)
        elif why in _SOON:
            soon.append(inst)
    if order is not None:
        ordered = sorted(candidates, key=lambda i: (order(i, now), i.key))
        taken = _take_until(ordered, need_bytes, need_count)
        how = "the caller's order"
    elif policy == "cost":
        costs = {i.key: _expected_reload_cost(i, now, rates, prios, cost) for i in candidates}
        ordered = sorted(candidates, key=lambda i: (costs[i.key] / (i.size_bytes or 1), i.key))
        taken = _take_until(ordered, need_bytes, need_count)
        # Greedy by cost per byte can miss one big instance that alone is cheaper.
        singles = [i for i in ordered if (i.size_bytes or 0) >= need_bytes]
        if singles and need_count <= 1:
            best = min(singles, key=lambda i: (costs[i.key], i.key))
            if taken is None or costs[best.key] < sum(costs[i.key] for i in taken):
                taken = [best]
        how = "lowest expected reload cost"
    elif policy == "gdsf":
        ls = load_s or {}
        rank = {
            i.key: _gdsf_rank(i, _frequency_value(i, rates, prios, cost, ls), prios)
            for i in candidates
        }
        ordered = sorted(candidates, key=lambda i: rank[i.key])
        prefix = _prefix(ordered, need_bytes, need_count)
        taken = _trim(prefix, need_bytes, need_count)
        how = "least requested per byte"
        if taken is not None:
            loss = sum(rank[i.key][0] * (i.size_bytes or 0) for i in taken)
            if soon and loss > 0:
                # Only what sorts before the last instance the greedy pass took can change
                # the plan: the pass over candidates and soon ones together never reaches
                # the rest.
                last = rank[prefix[-1].key] if prefix else None
                early = []
                for inst in soon:
                    r = _gdsf_rank(inst, _frequency_value(inst, rates, prios, cost, ls), prios)
                    if last is None or r < last:
                        rank[inst.key] = r
                        early.append(inst)
                later = (
                    _loss_of_waiting(ordered, early, rank, need_bytes, need_count)
                    if early
                    else None
                )
                if later is not None and later * DEFER_FACTOR <= loss:
                    return None  # wait for the room that frees up soon (module docstring)
    else:
        ordered = sorted(
            candidates,
            key=lambda i: (PRIORITY_RANK.get(prios.get(i.model, "normal"), 1), _last_activity(i)),
        )
        taken = _take_until(ordered, need_bytes, need_count)
        how = "least recently used"
    if taken is None:
        return None
    frees = sum(i.size_bytes or 0 for i in taken)
    names = ", ".join(i.model for i in taken)
    reason = (
        f"evict {names} on {node} ({how}): frees {fmt_bytes(frees)}, {fmt_bytes(need_bytes)} needed"
    )
    if need_count > 0:
        reason += f", and {need_count} place(s) under the node's instance limit"
    return EvictionPlan(node, tuple(i.key for i in taken), frees, reason, loss)
