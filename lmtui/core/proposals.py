"""Proposals: changes ``r`` offers that the pool manager never makes by itself.

Upkeep (``rebalance.plan_upkeep``) restores what the configuration asks for; these are
judgement calls about where models would serve better, so the operator sees them, with their
reasons and cost, and confirms. Each is a ``PlanStep`` with ``proposed=True``:

- ``drain_move``: a model on a drained node that no undrained node holds is loaded on
  another node (with the evictions that needs), and the drained node's idle instance is
  unloaded once another replica exists or is planned. A busy one is left to finish its
  requests; ``r`` proposes its unload later.
- ``spread``: a model with requests queued, or every replica's slots busy, gets one more
  replica on a node that serves nothing now and has the free memory for it, without
  evicting anything, up to ``[router] max_replicas``.
- ``consolidate``: a cold model — several replicas, every one idle for ``COLD_S`` — keeps
  the most recently used one (or ``min_replicas`` of them) and the others are unloaded,
  freeing their memory for what is asked for.

Proposals build on the upkeep plan given as ``after``: its loads count as pending and its
unloads as gone, so the two never plan the same load twice. Like upkeep they never hold a
step a backend cannot do (``no_load_nodes``, ``no_unload_nodes``).
"""

from __future__ import annotations

from lmtui.core.model import Instance, InstanceKey, InstanceState, Snapshot
from lmtui.core.placement import PendingLoads, Placement, place, stable_seed
from lmtui.core.plan import PlanStep, RebalancePlan, eviction_steps, make_plan, without
from lmtui.core.scheduler import SchedulerSettings

_PRESENT = (InstanceState.LOADED, InstanceState.LOADING)

#: A model whose every replica has been idle this long is cold: its extra replicas only hold
#: memory. 10 minutes is the demand half-life (``core/demand.py``): a model not asked for in
#: that long is unlikely to need several replicas in the next one.
COLD_S = 600.0


def _idle(inst: Instance) -> bool:
    return inst.state is InstanceState.LOADED and inst.busy == 0 and inst.in_flight == 0


def plan_proposals(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    *,
    pending_loads: PendingLoads = frozenset(),
    after: RebalancePlan | None = None,
) -> RebalancePlan:
    """The proposals for ``snapshot``, after the upkeep plan ``after`` (see the module)."""
    planned: set[tuple[str, str]] = set(pending_loads)
    removed: set[InstanceKey] = set()
    if after is not None:
        planned.update((s.node, s.model) for s in after.steps if s.action == "load")
        removed.update(s.key for s in after.steps if s.action == "unload" and s.key is not None)
    steps: list[PlanStep] = []
    _drain_moves(snapshot, settings, now, planned, removed, steps)
    _spreads(snapshot, settings, now, planned, removed, steps)
    _consolidations(snapshot, settings, now, planned, removed, steps)
    return make_plan(steps, settings.pool)


def _drain_moves(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    planned: set[tuple[str, str]],
    removed: set[InstanceKey],
    steps: list[PlanStep],
) -> None:
    pool = settings.pool
    nodes = snapshot.nodes
    for node in sorted(n.name for n in nodes.values() if n.drained):
        for inst in sorted(snapshot.instances_on(node), key=lambda i: i.key):
            if inst.key in removed or inst.state is not InstanceState.LOADED:
                continue
            model = inst.model
            elsewhere = any(
                i.node != node
                and i.key not in removed
                and i.state in _PRESENT
                and i.node in nodes
                and not nodes[i.node].drained
                for i in snapshot.instances_of(model)
            ) or any(m == model and n != node for n, m in planned)
            if not elsewhere:
                p = place(
                    without(snapshot, removed),
                    model,
                    now,
                    pool,
                    pending_loads=frozenset(planned),
                    exclude=frozenset(i.node for i in snapshot.instances_of(model)),
                    seed=stable_seed(model, node),
                )
                if not isinstance(p, Placement):
                    continue  # nowhere to go: it stays where it is
                removed.update(p.evict)
                steps.extend(eviction_steps(snapshot, p.evict, model, proposed=True))
                steps.append(
                    PlanStep(
                        "load",
                        p.node,
                        model,
                        f"move {model} off drained {node}; {p.reason}",
                        p.footprint_bytes,
                        code="drain_move",
                        proposed=True,
                    )
                )
                planned.add((p.node, model))
            if node in pool.no_unload_nodes or not _idle(inst):
                continue  # cannot unload there, or requests still run: later
            removed.add(inst.key)
            steps.append(
                PlanStep(
                    "unload",
                    node,
                    model,
                    f"{node} is drained and {model} is served elsewhere",
                    inst.size_bytes or 0,
                    inst.instance_id,
                    "drain_move",
                    proposed=True,
                )
            )


def _spreads(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    planned: set[tuple[str, str]],
    removed: set[InstanceKey],
    steps: list[PlanStep],
) -> None:
    pool = settings.pool
    nodes = snapshot.nodes
    # A node "serves nothing now" when none of its instances is busy and no load is on
    # its way there; it must know its memory, so "fits" is a fact, not a hope.
    working = {n for n, _ in planned} | {
        i.node for i in snapshot.instances.values() if i.busy or i.in_flight
    }
    unfit = frozenset(n.name for n in nodes.values() if n.name in working or n.budget_bytes is None)
    for model in sorted({i.model for i in snapshot.instances.values()}):
        instances = list(snapshot.instances_of(model))
        live = [
            i
            for i in instances
            if i.key not in removed
            and i.state is InstanceState.LOADED
            and i.node in nodes
            and nodes[i.node].routable
        ]
        if not live or any(m == model for _, m in planned):
            continue  # not served here yet (requests load it), or a load is on its way
        if sum(1 for i in instances if i.state in _PRESENT) >= settings.max_replicas:
            continue
        queued = snapshot.queue_depth.get(model, 0) + sum(i.queued for i in live)
        if not queued and not all(i.busy >= i.slots_total for i in live):
            continue
        p = place(
            without(snapshot, removed),
            model,
            now,
            pool,
            pending_loads=frozenset(planned),
            exclude=unfit | {i.node for i in instances},
            allow_eviction=False,
            seed=stable_seed(model),
        )
        if not isinstance(p, Placement):
            continue
        hot = f"{queued} request(s) queued" if queued else f"all {len(live)} replica(s) busy"
        steps.append(
            PlanStep(
                "load",
                p.node,
                model,
                f"{model} is hot ({hot}); {p.node} serves nothing now: {p.reason}",
                p.footprint_bytes,
                code="spread",
                proposed=True,
            )
        )
        planned.add((p.node, model))
        unfit |= {p.node}


def _consolidations(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    planned: set[tuple[str, str]],
    removed: set[InstanceKey],
    steps: list[PlanStep],
) -> None:
    pool = settings.pool
    for model in sorted({i.model for i in snapshot.instances.values()}):
        if any(m == model for _, m in planned):
            continue  # a load of it is on its way: not cold
        replicas = [
            i for i in snapshot.instances_of(model) if i.key not in removed and i.state in _PRESENT
        ]
        keep = max(1, settings.min_replicas.get(model, 0))
        if len(replicas) <= keep or not all(_idle(i) for i in replicas):
            continue

        def last(i: Instance) -> float:
            t = i.last_used if i.last_used is not None else i.first_seen
            return t if t is not None else now

        if any(now - last(i) < COLD_S for i in replicas):
            continue
        # Keep the most recently used, and those on nodes that cannot unload anyway.
        ranked = sorted(replicas, key=lambda i: (i.node not in pool.no_unload_nodes, -last(i)))
        for inst in ranked[keep:]:
            if inst.node in pool.no_unload_nodes:
                continue
            removed.add(inst.key)
            steps.append(
                PlanStep(
                    "unload",
                    inst.node,
                    model,
                    f"{model} is cold (idle {now - last(inst):.0f}s on all "
                    f"{len(replicas)} replicas); keep {keep}",
                    inst.size_bytes or 0,
                    inst.instance_id,
                    "consolidate",
                    proposed=True,
                )
            )
