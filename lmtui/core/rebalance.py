"""Rebalance plans: what to load and unload, why, and what it costs.

A plan has two kinds of steps:

- **upkeep** (``plan_upkeep``): pinned models loaded nowhere, ``min_replicas`` shortfalls
  and models idle past their TTL. The pool manager carries these out by itself every few
  seconds, each step an event, so pinned models come back after a manual unload,
  ``min_replicas`` holds without traffic and idle models make room.
- **proposals** (``plan_proposals`` in ``proposals.py``, ``PlanStep.proposed``): changes
  that are a judgement call — spread a hot model to an idle node, move models off a drained
  node, unload a cold model's extra replicas. Never automatic: ``r`` (``plan_rebalance``,
  upkeep not yet done plus proposals) shows them and carries them out only when the
  operator confirms.

Each step says why. Loads come with the evictions their placement needs (as unload steps
before them); unloads free memory; the plan's ``reload_seconds`` estimates the time to load
back what it unloads, the cost of being wrong. No plan holds a step a backend cannot carry
out: loads skip ``no_load_nodes``, unloads and evictions ``no_unload_nodes``.
"""

from __future__ import annotations

from dataclasses import replace

from lmtui.core.model import Instance, InstanceKey, InstanceState, Snapshot
from lmtui.core.placement import PendingLoads, Placement, place, stable_seed
from lmtui.core.plan import PlanStep, RebalancePlan, eviction_steps, make_plan, without
from lmtui.core.proposals import plan_proposals
from lmtui.core.scheduler import SchedulerSettings, replica_deficits

__all__ = ["PlanStep", "RebalancePlan", "plan_rebalance", "plan_upkeep"]


def _idle(inst: Instance) -> bool:
    return inst.state is InstanceState.LOADED and inst.busy == 0 and inst.in_flight == 0


def plan_rebalance(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    *,
    idle_ttl_s: float = 0.0,
    pending_loads: PendingLoads = frozenset(),
) -> RebalancePlan:
    """What ``r`` shows: the upkeep not yet done (``plan_upkeep``), then the proposals
    (``plan_proposals``), which build on it (they see its loads as pending and its unloads
    as gone)."""
    upkeep = plan_upkeep(
        snapshot, settings, now, idle_ttl_s=idle_ttl_s, pending_loads=pending_loads
    )
    proposals = plan_proposals(snapshot, settings, now, pending_loads=pending_loads, after=upkeep)
    if not proposals.steps:
        return upkeep
    return make_plan(upkeep.steps + proposals.steps, settings.pool)


def plan_upkeep(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    *,
    idle_ttl_s: float = 0.0,
    pending_loads: PendingLoads = frozenset(),
) -> RebalancePlan:
    """What the pool manager does by itself: loads for pinned models missing everywhere and
    for ``min_replicas`` shortfalls, and unloads of unpinned instances idle longer than
    their TTL (``pool.lifetimes``, ``core/lifetime.py``: per load, model, priority, then
    the default). ``idle_ttl_s`` > 0 replaces the settings' default TTL (``low`` priority
    models idle out at half of it, ``high`` ones never)."""
    pool = settings.pool
    steps: list[PlanStep] = []
    planned = set(pending_loads)
    removed: set[InstanceKey] = set()

    def add_load(
        node: str,
        model: str,
        evict: tuple[InstanceKey, ...],
        footprint: int,
        reason: str,
        code: str,
    ) -> None:
        removed.update(evict)
        steps.extend(eviction_steps(snapshot, evict, model))
        steps.append(PlanStep("load", node, model, reason, footprint, code=code))
        planned.add((node, model))

    for model in sorted(pool.pinned):
        present = [
            i
            for i in snapshot.instances_of(model)
            if i.state in (InstanceState.LOADED, InstanceState.LOADING)
        ]
        if present or any(m == model for _, m in planned):
            continue
        p = place(
            without(snapshot, removed),
            model,
            now,
            pool,
            pending_loads=frozenset(planned),
            seed=stable_seed(model),
        )
        if isinstance(p, Placement):
            add_load(
                p.node,
                model,
                p.evict,
                p.footprint_bytes,
                f"{model} is pinned but loaded nowhere; {p.reason}",
                "pinned",
            )

    for load in replica_deficits(without(snapshot, removed), settings, now, frozenset(planned)):
        if (load.node, load.model) not in planned and not removed.intersection(load.evict):
            add_load(
                load.node,
                load.model,
                load.evict,
                load.footprint_bytes,
                load.reason,
                "min_replicas",
            )

    lifetimes = pool.lifetimes
    if idle_ttl_s > 0:  # a caller's own default TTL (tests, replay) over the settings'
        lifetimes = replace(lifetimes, idle_ttl_s=idle_ttl_s)
    for inst in sorted(snapshot.instances.values(), key=lambda i: i.key):
        if inst.key in removed or not _idle(inst) or inst.pinned or inst.model in pool.pinned:
            continue
        if inst.node in pool.no_unload_nodes:
            continue  # the backend cannot unload (an ``openai`` node): never plan it
        prio = pool.priorities.get(inst.model, "normal")
        ttl = lifetimes.ttl_for(inst.model, prio, inst.node)
        if ttl is None:
            continue
        last = inst.last_used if inst.last_used is not None else inst.first_seen
        if last is None or now - last < ttl:
            continue
        others = [
            i
            for i in snapshot.instances_of(inst.model)
            if i.key != inst.key and i.key not in removed
        ]
        if len(others) + 1 <= settings.min_replicas.get(inst.model, 0):
            continue
        removed.add(inst.key)
        steps.append(
            PlanStep(
                "unload",
                inst.node,
                inst.model,
                f"idle {now - last:.0f}s (TTL {ttl:.0f}s)",
                inst.size_bytes or 0,
                inst.instance_id,
                "idle_ttl",
            )
        )

    return make_plan(steps, pool)
