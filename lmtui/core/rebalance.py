"""Rebalance plans: what the pool manager would load and unload, and what it costs.

A plan is computed, shown, and only then carried out (the UI asks to confirm). The pool
manager also carries out the same plan on its own every few seconds, so pinned models come
back after a manual unload, ``min_replicas`` holds without traffic, and idle models past
their TTL make room.

Each step says why. Loads come with the evictions their placement needs (as unload steps
before them); unloads free memory; the plan's ``reload_seconds`` estimates the time to load
back what it unloads, the cost of being wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmtui.core.model import Instance, InstanceKey, InstanceState, Snapshot
from lmtui.core.placement import PendingLoads, Placement, place, stable_seed
from lmtui.core.scheduler import SchedulerSettings, replica_deficits
from lmtui.core.units import fmt_bytes


@dataclass(frozen=True, slots=True)
class PlanStep:
    action: str  # "load" | "unload"
    node: str
    model: str
    reason: str
    bytes: int = 0
    #: The instance an unload step removes.
    instance_id: str | None = None
    #: Why, as a short fixed code for metrics: ``pinned`` and ``min_replicas`` (loads),
    #: ``make_room`` and ``idle_ttl`` (unloads).
    code: str = ""

    @property
    def key(self) -> InstanceKey | None:
        return (self.node, self.instance_id) if self.instance_id is not None else None


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    steps: tuple[PlanStep, ...] = ()
    frees_bytes: int = 0
    loads_bytes: int = 0
    reload_seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.steps

    def summary(self) -> str:
        if not self.steps:
            return "nothing to do: the cluster already matches pins, replicas and TTLs"
        loads = sum(1 for s in self.steps if s.action == "load")
        unloads = len(self.steps) - loads
        return (
            f"{loads} load(s) ({fmt_bytes(self.loads_bytes)}), {unloads} unload(s) "
            f"freeing {fmt_bytes(self.frees_bytes)}; reloading what is unloaded would "
            f"take about {self.reload_seconds:.0f}s"
        )


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
    """Loads for pinned models missing everywhere and for ``min_replicas`` shortfalls, and
    unloads of unpinned instances idle longer than ``idle_ttl_s`` (0 = never; ``low``
    priority models idle out at half the TTL)."""
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
        for key in evict:
            inst = snapshot.instances[key]
            removed.add(key)
            steps.append(
                PlanStep(
                    "unload",
                    inst.node,
                    inst.model,
                    f"make room for {model}",
                    inst.size_bytes or 0,
                    inst.instance_id,
                    "make_room",
                )
            )
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
            snapshot, model, now, pool, pending_loads=frozenset(planned), seed=stable_seed(model)
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

    for load in replica_deficits(snapshot, settings, now, frozenset(planned)):
        if (load.node, load.model) not in planned:
            add_load(
                load.node,
                load.model,
                load.evict,
                load.footprint_bytes,
                load.reason,
                "min_replicas",
            )

    if idle_ttl_s > 0:
        for inst in sorted(snapshot.instances.values(), key=lambda i: i.key):
            if inst.key in removed or not _idle(inst) or inst.pinned or inst.model in pool.pinned:
                continue
            if inst.node in pool.no_unload_nodes:
                continue  # the backend cannot unload (an ``openai`` node): never plan it
            prio = pool.priorities.get(inst.model, "normal")
            if prio == "high":
                continue
            ttl = idle_ttl_s / 2 if prio == "low" else idle_ttl_s
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

    frees = sum(s.bytes for s in steps if s.action == "unload")
    return RebalancePlan(
        steps=tuple(steps),
        frees_bytes=frees,
        loads_bytes=sum(s.bytes for s in steps if s.action == "load"),
        reload_seconds=sum(pool.cost.reload_s(s.bytes) for s in steps if s.action == "unload"),
    )
