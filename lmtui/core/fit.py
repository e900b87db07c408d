"""Will a load of a model on a node fit, and what would it evict? The load dialogs' preview.

It asks the engine's own placement (``place``, restricted to that one node, exactly as the
``load`` command does) rather than a copy of its rules, so the preview says what the load
would do: fit in free memory, evict these idle instances first (the eviction policy's
choice, ``plan_eviction``), wait for busy or young ones, or never fit because pinned or
higher-priority models leave too little. For the last two it names what is in the way
(``eviction_blocker``'s reason per instance). ``replica_fit`` previews one more replica
placed wherever the engine would place it (``load_exclude``, as the ``load`` command does
without a node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmtui.core.eviction import eviction_blocker
from lmtui.core.model import InstanceKey, Snapshot
from lmtui.core.placement import (
    NoPlacement,
    PendingLoads,
    Placement,
    PoolSettings,
    footprint_bytes,
    load_exclude,
    place,
    stable_seed,
)
from lmtui.core.units import fmt_bytes

#: ``fits``: in free memory; ``evicts``: after unloading ``evict``; ``later``: not now
#: (busy, loading or young instances may free up); ``never``: not on this node as it is.
Verdict = Literal["fits", "evicts", "later", "never"]
#: At most this many instances are named as "in the way" (a node may hold dozens).
MAX_NAMED = 6


@dataclass(frozen=True, slots=True)
class LoadFit:
    """The preview of loading ``model`` on ``node``; ``node`` is None when a load placed
    by the engine (``replica_fit``) finds no node at all."""

    model: str
    node: str | None
    verdict: Verdict
    #: What the load takes there.
    footprint_bytes: int
    #: The instances the engine would unload first (``evicts`` only).
    evict: tuple[InstanceKey, ...] = ()
    #: One line for the dialog: the outcome and why.
    detail: str = ""

    @property
    def short(self) -> str:
        """A few words for the dialog's list, next to the model's name."""
        if self.verdict == "evicts":
            return f"evicts {len(self.evict)}"
        return {"fits": "fits", "later": "no room now", "never": "cannot fit"}[self.verdict]


def load_fit(
    snapshot: Snapshot,
    model: str,
    node: str,
    now: float,
    pool: PoolSettings,
    pending_loads: PendingLoads = frozenset(),
) -> LoadFit:
    """What loading ``model`` on ``node`` would do now, by the engine's placement rules."""
    fp = footprint_bytes(snapshot, model, node, pool)
    if node not in snapshot.nodes:
        return LoadFit(model, node, "never", fp, detail=f"no node {node!r}")
    if any(i.node == node for i in snapshot.instances_of(model)):
        return LoadFit(model, node, "never", fp, detail=f"{model} is already on {node}")
    plan = place(
        snapshot,
        model,
        now,
        pool,
        pending_loads=pending_loads,
        exclude=load_exclude(snapshot, model, node),
        seed=stable_seed(model),
    )
    if isinstance(plan, NoPlacement):
        verdict: Verdict = "later" if plan.may_fit_later else "never"
        detail = plan.reason
        in_way = _in_the_way(snapshot, model, node, now, pool)
        if in_way:
            detail += f"; in the way: {in_way}"
        return LoadFit(model, node, verdict, fp, detail=detail)
    return _placed(snapshot, model, plan)


def replica_fit(
    snapshot: Snapshot,
    model: str,
    now: float,
    pool: PoolSettings,
    pending_loads: PendingLoads = frozenset(),
) -> LoadFit:
    """What loading one more replica of ``model`` would do now, placed by the engine: on
    which node (``LoadFit.node``), after evicting what; or why no node can take it (``node``
    None, ``later`` or ``never``). The same ``place`` call as the ``load`` command's
    without a node, so the preview names the node the command would choose. A node whose
    backend cannot load (``Node.no_load``) is left out too: the engine's ``pool`` names it
    in ``no_load_nodes``, but an attached dashboard's default ``pool`` does not."""
    cannot_load = frozenset(n.name for n in snapshot.nodes.values() if n.no_load is not None)
    plan = place(
        snapshot,
        model,
        now,
        pool,
        pending_loads=pending_loads,
        exclude=load_exclude(snapshot, model, None) | cannot_load,
        seed=stable_seed(model),
    )
    if isinstance(plan, NoPlacement):
        verdict: Verdict = "later" if plan.may_fit_later else "never"
        fp = footprint_bytes(snapshot, model, None, pool)
        return LoadFit(model, None, verdict, fp, detail=plan.reason)
    return _placed(snapshot, model, plan)


def _placed(snapshot: Snapshot, model: str, plan: Placement) -> LoadFit:
    """The preview of a placement the engine found."""
    if not plan.evict:
        return LoadFit(model, plan.node, "fits", plan.footprint_bytes, detail=plan.reason)
    victims = [snapshot.instances[k] for k in plan.evict if k in snapshot.instances]
    names = ", ".join(f"{i.model} ({fmt_bytes(i.size_bytes or 0)})" for i in victims)
    return LoadFit(
        model,
        plan.node,
        "evicts",
        plan.footprint_bytes,
        plan.evict,
        f"unloads {names} first; {model} needs {fmt_bytes(plan.footprint_bytes)}",
    )


def _in_the_way(snapshot: Snapshot, model: str, node: str, now: float, pool: PoolSettings) -> str:
    """The instances on ``node`` that may not be evicted for ``model``, and why."""
    requester = pool.priorities.get(model, "normal")
    named = []
    for inst in sorted(snapshot.instances_on(node), key=lambda i: i.model):
        why = eviction_blocker(
            inst,
            now,
            pinned=pool.pinned,
            min_residency_s=pool.min_residency_s,
            priorities=pool.priorities,
            requester_priority=requester,
        )
        if why is None and node in pool.no_unload_nodes:
            why = "its backend cannot unload"
        if why is not None:
            named.append(f"{inst.model} ({fmt_bytes(inst.size_bytes or 0)}, {why})")
    more = len(named) - MAX_NAMED
    return ", ".join(named[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")
