"""Preload: put the most requested models on memory nobody uses, before anyone asks.

A cold load costs the next user 3 to 30 seconds; free memory costs nothing to fill, as long
as filling it never pushes anything out. So the pool manager, at start, after a node comes
back and after an eviction or an unload frees room, loads the most requested models that are
loaded nowhere onto free memory (:func:`plan_preload`). The rules:

- **Which models**: the decayed request rates of ``lmtui.core.demand`` (the same figures the
  ``gdsf`` policy weighs), at least ``min_rate_per_h`` requests an hour, ranked by priority
  (``high`` first, ``low`` last: the lowest priority is the first left out when memory runs
  short), then by rate, then by name; only the first ``max_models`` of that ranking are
  considered, loaded or not. A pinned model is the upkeep's job, not a preload; a model idle
  longer than its own TTL is not preloaded (its TTL would unload it again at once).
- **Where**: by the placement rule (``core.placement.place``: routable, undrained nodes whose
  backend can load and that have the model, healthy before suspect, most free memory first)
  with eviction forbidden, and only where the load leaves ``keep_free`` of the node's budget
  free — and of its host's, when several nodes share one host (their loaded models add up
  against one machine's memory). A node of unknown memory is never preloaded onto: nothing
  could say it fits. One preload per node per pass, and none on a node that is already
  loading something: a preload never competes for a disk with a load somebody waits for.
- **Never evicts**: a plan holds only load steps.

Deterministic: the same inputs give the same plan (ties are broken by name and by
``stable_seed``). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from lmtui.core.eviction import PRIORITY_RANK
from lmtui.core.hosts import host_budget, host_groups, other_use_bytes
from lmtui.core.lifetime import wanted_ttl
from lmtui.core.model import InstanceState, Snapshot
from lmtui.core.placement import (
    PendingLoads,
    Placement,
    PoolSettings,
    node_used_bytes,
    place,
    stable_seed,
)
from lmtui.core.plan import PlanStep
from lmtui.core.units import fmt_bytes


@dataclass(frozen=True, slots=True)
class PreloadSettings:
    """``[pool] preload*``: whether and how much to preload."""

    enabled: bool = True
    #: Only the first this many models of the demand ranking are kept loaded by preloading.
    max_models: int = 8
    #: Fraction of a node's (and host's) budget a preload leaves free.
    keep_free: float = 0.10
    #: Models asked for less often than this (decayed requests per hour) are not preloaded.
    min_rate_per_h: float = 1.0


def ranking(
    rates: Mapping[str, float], pool: PoolSettings, settings: PreloadSettings
) -> list[tuple[str, float]]:
    """The models worth preloading, best first: ``(model, requests per second)``."""
    floor = settings.min_rate_per_h / 3600.0
    wanted = [(m, r) for m, r in rates.items() if r > 0 and r >= floor]
    wanted.sort(
        key=lambda mr: (-PRIORITY_RANK.get(pool.priorities.get(mr[0], "normal"), 1), -mr[1], mr[0])
    )
    return wanted[: max(0, settings.max_models)]


def plan_preload(
    snapshot: Snapshot,
    pool: PoolSettings,
    settings: PreloadSettings,
    now: float,
    *,
    rates: Mapping[str, float],
    last_request: Mapping[str, float] | None = None,
    pending_loads: PendingLoads = frozenset(),
    hosts: Mapping[str, str] | None = None,
) -> tuple[PlanStep, ...]:
    """The preload steps for now (loads only, code ``preload``); see the module docstring.

    ``rates`` are requests per second per model; ``last_request`` when each model was last
    asked for; ``hosts`` maps nodes to a host key (nodes on one machine share its memory),
    ``pool.hosts`` when not given.
    """
    if not settings.enabled or settings.max_models <= 0:
        return ()
    if hosts is not None and hosts != pool.hosts:  # placement must see the same hosts
        pool = replace(pool, hosts=MappingProxyType(dict(hosts)))
    groups = host_groups(snapshot, pool.hosts)
    host_of = {n: h for h, ns in groups.items() for n in ns}
    planned = set(pending_loads)
    # Already loading something (lmtui's load, or one the node shows): not now.
    busy_nodes = {n for n, _m in pending_loads}
    busy_nodes.update(
        i.node for i in snapshot.instances.values() if i.state is InstanceState.LOADING
    )
    steps: list[PlanStep] = []
    for rank, (model, rate) in enumerate(ranking(rates, pool, settings), start=1):
        if pool.pinned and model in pool.pinned:
            continue  # the upkeep loads pinned models
        present = [
            i
            for i in snapshot.instances_of(model)
            if i.state in (InstanceState.LOADED, InstanceState.LOADING)
        ]
        if present or any(m == model for _n, m in planned):
            continue
        prio = pool.priorities.get(model, "normal")
        ttl = wanted_ttl(pool.lifetimes, model, prio, pinned=False)
        last = (last_request or {}).get(model)
        if ttl is not None and last is not None and now - last >= ttl:
            continue  # idle past its own TTL: it would be unloaded again at once
        exclude = set(busy_nodes)
        for _ in range(len(snapshot.nodes)):
            p = place(
                snapshot,
                model,
                now,
                pool,
                pending_loads=frozenset(planned),
                exclude=frozenset(exclude),
                allow_eviction=False,
                seed=stable_seed(model),
            )
            if not isinstance(p, Placement):
                break
            why = _fits(snapshot, p, pool, settings, planned, groups[host_of[p.node]])
            if why is not None:
                exclude.add(p.node)
                continue
            reason = (
                f"preload: {model} on {p.node} (rank {rank}, {rate * 3600:.0f} req/h); {p.reason}"
            )
            steps.append(PlanStep("load", p.node, model, reason, p.footprint_bytes, code="preload"))
            planned.add((p.node, model))
            busy_nodes.add(p.node)
            break
    return tuple(steps)


def _fits(
    snapshot: Snapshot,
    p: Placement,
    pool: PoolSettings,
    settings: PreloadSettings,
    planned: set[tuple[str, str]],
    host_nodes: tuple[str, ...],
) -> str | None:
    """Why ``p`` breaks a preload rule (unknown memory, the free share of its node or
    host), or None when it keeps them all."""
    node = snapshot.nodes[p.node]
    budget = node.budget_bytes
    if budget is None:
        return f"{p.node}'s memory is unknown"
    frozen = frozenset(planned)
    left = budget - node_used_bytes(snapshot, p.node, pool, frozen) - p.footprint_bytes
    if left < settings.keep_free * budget:
        return f"{p.node} would keep only {fmt_bytes(max(0, left))} free"
    other = other_use_bytes(snapshot, host_nodes)
    if len(host_nodes) > 1 or other:
        hb = host_budget(snapshot, host_nodes)
        if hb is None:
            return "its host's memory is unknown"
        used = sum(node_used_bytes(snapshot, n, pool, frozen) for n in host_nodes) + other
        hleft = hb - used - p.footprint_bytes
        if hleft < settings.keep_free * hb:
            return f"its host would keep only {fmt_bytes(max(0, hleft))} free"
    return None
