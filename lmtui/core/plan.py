"""A plan's steps and totals: what ``r`` shows and the pool manager carries out.

The planners are ``rebalance.py`` (upkeep, and ``plan_rebalance``, what ``r`` shows) and
``proposals.py`` (changes only the operator confirms).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from lmtui.core.model import InstanceKey, Snapshot
from lmtui.core.placement import PoolSettings
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
    #: ``make_room`` and ``idle_ttl`` (unloads) for upkeep; ``spread`` (a load) and
    #: ``drain_move`` (a load elsewhere and the unload from a drained node) and
    #: ``consolidate`` (unloads of a cold model's extra replicas) for proposals.
    code: str = ""
    #: A proposal: carried out only when the operator confirms, never by the pool manager.
    proposed: bool = False

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

    @property
    def upkeep(self) -> tuple[PlanStep, ...]:
        """The steps the pool manager carries out by itself."""
        return tuple(s for s in self.steps if not s.proposed)

    @property
    def proposals(self) -> tuple[PlanStep, ...]:
        """The steps carried out only when the operator confirms."""
        return tuple(s for s in self.steps if s.proposed)

    def summary(self) -> str:
        if not self.steps:
            return (
                "nothing to do: the cluster already matches pins, replicas and TTLs, "
                "and nothing is worth proposing"
            )
        loads = sum(1 for s in self.steps if s.action == "load")
        unloads = len(self.steps) - loads
        proposed = sum(1 for s in self.steps if s.proposed)
        kinds = (
            f"; {proposed} proposed (applied only on confirmation), "
            f"{len(self.steps) - proposed} upkeep the pool manager also does by itself"
            if proposed
            else ""
        )
        return (
            f"{loads} load(s) ({fmt_bytes(self.loads_bytes)}), {unloads} unload(s) "
            f"freeing {fmt_bytes(self.frees_bytes)}; reloading what is unloaded would "
            f"take about {self.reload_seconds:.0f}s{kinds}"
        )


def make_plan(steps: Iterable[PlanStep], pool: PoolSettings) -> RebalancePlan:
    """A plan of ``steps`` with its totals."""
    steps = tuple(steps)
    return RebalancePlan(
        steps=steps,
        frees_bytes=sum(s.bytes for s in steps if s.action == "unload"),
        loads_bytes=sum(s.bytes for s in steps if s.action == "load"),
        reload_seconds=sum(pool.cost.reload_s(s.bytes) for s in steps if s.action == "unload"),
    )


def eviction_steps(
    snapshot: Snapshot, evict: tuple[InstanceKey, ...], model: str, *, proposed: bool = False
) -> list[PlanStep]:
    """The unload steps that make room for a load of ``model``."""
    out = []
    for key in evict:
        inst = snapshot.instances[key]
        out.append(
            PlanStep(
                "unload",
                inst.node,
                inst.model,
                f"make room for {model}",
                inst.size_bytes or 0,
                inst.instance_id,
                "make_room",
                proposed,
            )
        )
    return out


def without(snapshot: Snapshot, removed: Iterable[InstanceKey]) -> Snapshot:
    """``snapshot`` as the planner's next step sees it: the instances earlier steps unload
    gone. Placing on the snapshot as it was would count their memory free once per load
    (two loads evicting the same victim, past the budget at the second)."""
    gone = set(removed)
    if not gone.intersection(snapshot.instances):
        return snapshot
    kept = {k: v for k, v in snapshot.instances.items() if k not in gone}
    return Snapshot(
        snapshot.version,
        snapshot.at,
        snapshot.nodes,
        MappingProxyType(kept),
        snapshot.queue_depth,
        snapshot.circuits,
    )
