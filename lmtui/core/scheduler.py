"""The router's decision for one request: route it, load a model, wait, or reject.

``schedule`` is pure: it reads a snapshot and the engine's own bookkeeping (loads in
progress, session affinity) and returns a :data:`Decision` with a human-readable reason,
which the engine records as an event. The router carries the decision out:

- :class:`Route`: proxy to that instance now (and start ``preload`` in the background, when
  the strategy wants another replica while this request can still be served at once);
- :class:`Load`: unload ``evict``, load the model on ``node``, and queue the request for the
  model; whichever replica frees a slot first serves it;
- :class:`Wait`: queue the request and ask again when the snapshot changes;
- :class:`Reject`: answer ``status`` (404 unknown model, 503 it can never be served).

The three strategies differ only in when they add a replica (:func:`_extra_replica`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from lmtui.core.model import Health, Instance, InstanceKey, InstanceState, Snapshot
from lmtui.core.placement import (
    NoPlacement,
    PendingLoads,
    Placement,
    PoolSettings,
    free_bytes,
    place,
    rotation,
    stable_seed,
)
from lmtui.core.plan import without


class Strategy(StrEnum):
    """When to add replicas; see ``docs/architecture.md`` → Strategies."""

    EFFICIENCY = "efficiency"
    SPREAD = "spread"
    REPLICAS = "replicas"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the scheduler needs to know about one request."""

    #: The model name as the client asked for it (an alias is resolved here).
    model: str
    #: The OpenAI ``user`` field, for session affinity.
    user: str | None = None
    #: Varies tie-breaks between requests; any unique string.
    request_id: str | None = None
    #: True when this request comes from the head of lmtui's queue. A fresh request must
    #: not overtake requests already waiting for the same model.
    queued: bool = False
    #: Replicas not to use, e.g. the one that just failed this request before its first byte.
    exclude: frozenset[InstanceKey] = frozenset()
    #: Nodes not to load the model on, e.g. where a load of it failed moments ago.
    avoid_nodes: frozenset[str] = frozenset()
    #: The request's own ``ttl`` (seconds): the idle TTL of a load it causes, as LM Studio's
    #: JIT loading defines it (``core/lifetime.py``). None: the configured one.
    ttl_s: float | None = None
    #: Nodes that must not serve this request at all, neither a replica there nor a load:
    #: they lack its API path (``/v1/rerank`` on a server without reranking), or another
    #: node holds the state it refers to (a ``previous_response_id``).
    skip_nodes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Load:
    """Load ``model`` on ``node`` after unloading ``evict``."""

    node: str
    model: str
    evict: tuple[InstanceKey, ...]
    reason: str
    footprint_bytes: int = 0
    #: Who asked, as a short fixed code for metrics: ``on_demand`` (a request needs it),
    #: ``replica`` (a busy model spreads), ``min_replicas``, ``pinned``, ``operator``,
    #: ``preload``.
    origin: str = "on_demand"
    #: The idle TTL a request asked for with its ``ttl`` (None: the configured one).
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Send the request to ``instance_key`` now; start ``preload`` alongside, if any."""

    instance_key: InstanceKey
    reason: str
    preload: Load | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Queue the request; the snapshot will change (a slot frees, a load finishes)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the client with an error ``status`` now."""

    status: int
    reason: str


Decision = Route | Load | Wait | Reject


def _map() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """The router's knobs as plain values (core may not import ``lmtui.config``).

    The engine builds it from ``[router]`` (``session_affinity``, ``max_replicas``,
    ``replica_queue_threshold``) and ``[[models]]`` (``min_replicas``, ``aliases``, names
    into ``known_models``); ``pool`` from ``[pool]`` and the models' ``pinned``,
    ``priority`` and ``size_gb``.
    """

    #: Send the same ``user`` to the same replica while it has a free slot.
    session_affinity: bool = False
    #: Most replicas of one model the ``spread`` and ``replicas`` strategies create.
    max_replicas: int = 4
    #: Queue depth above which the ``replicas`` strategy adds a replica.
    replica_queue_threshold: int = 4
    #: ``min_replicas`` per model, for the ``replicas`` strategy.
    min_replicas: Mapping[str, int] = field(default_factory=_map)
    #: Alias → model name.
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Models named in the configuration: known even when no node lists them yet.
    known_models: frozenset[str] = frozenset()
    pool: PoolSettings = field(default_factory=PoolSettings)


def _known(snapshot: Snapshot, model: str, settings: SchedulerSettings) -> bool:
    if model in settings.known_models or any(True for _ in snapshot.instances_of(model)):
        return True
    for node in snapshot.nodes.values():
        if any(a.key == model for a in node.available):
            return True
        # An empty catalogue on a node that can load means "unknown": it may have it.
        if not node.available and node.name not in settings.pool.no_load_nodes:
            return True
    return False


def _tier(snapshot: Snapshot, inst: Instance) -> int:
    """0 on a healthy node, 1 on a suspect one: suspect nodes are the last choice."""
    return 0 if snapshot.nodes[inst.node].health is Health.HEALTHY else 1


def choose_replica(
    snapshot: Snapshot, candidates: list[Instance], pool: PoolSettings, seed: int = 0
) -> Instance | None:
    """The best replica among ``candidates`` that has a free slot, or ``None``.

    Healthy before suspect; then fewest busy slots; then least recently used, so idle
    replicas take turns once the router stamps ``last_used``; then most free memory on
    the node; then a rotation by ``seed``, never by size or name alone.
    """
    usable = [i for i in candidates if snapshot.has_room(i)]
    if len(usable) <= 1:  # the common case on the router's hot path: nothing to rank
        return usable[0] if usable else None
    rot = rotation((f"{i.node}/{i.instance_id}" for i in usable), seed)

    def key(i: Instance) -> tuple[int, int, float, int, int]:
        free = free_bytes(snapshot, i.node, pool)
        last = i.last_used if i.last_used is not None else -math.inf
        return (_tier(snapshot, i), i.busy, last, -(free or 0), rot[f"{i.node}/{i.instance_id}"])

    return min(usable, key=key)


def _coming(snapshot: Snapshot, inst: Instance) -> bool:
    """A replica that will be routable soon: loading, or on a node not yet polled."""
    node = snapshot.nodes.get(inst.node)
    if node is None or node.drained:
        return False
    if inst.state is InstanceState.LOADING:
        return node.routable or node.health is Health.UNKNOWN
    return inst.state is InstanceState.LOADED and node.health is Health.UNKNOWN


def _extra_replica(
    snapshot: Snapshot,
    model: str,
    strategy: Strategy,
    settings: SchedulerSettings,
    now: float,
    live: list[Instance],
    replicas: int,
    occupied: frozenset[str],
    pending_loads: PendingLoads,
    seed: int,
) -> Load | None:
    """A further replica the strategy wants now, or ``None``.

    Only one load per model is in progress at a time (the caller checks), so a burst of
    requests adds one replica, sees it arrive, and only then considers another.
    """
    if not live or strategy is Strategy.EFFICIENCY:
        return None
    if strategy is Strategy.SPREAD:
        if replicas >= settings.max_replicas or any(i.busy == 0 for i in live):
            return None
        why, evict_ok = f"all {len(live)} replicas busy (spread)", False
    else:
        want = settings.min_replicas.get(model, 0)
        depth = snapshot.queue_depth.get(model, 0)
        if replicas < want:
            # A configured minimum is a promise: it may evict idle models to keep it.
            why, evict_ok = f"{replicas} of at least {want} replicas", True
        elif depth > settings.replica_queue_threshold and replicas < settings.max_replicas:
            # Extra capacity for a burst is a nicety; it never costs another model a reload.
            why = f"queue of {depth} > {settings.replica_queue_threshold}"
            evict_ok = False
        else:
            return None
    p = place(
        snapshot,
        model,
        now,
        settings.pool,
        pending_loads=pending_loads,
        exclude=occupied,
        allow_eviction=evict_ok,
        seed=seed,
    )
    if isinstance(p, NoPlacement):
        return None
    return Load(
        p.node,
        model,
        p.evict,
        f"add a replica of {model} on {p.node}: {why}; {p.reason}",
        p.footprint_bytes,
        "replica",
    )


def _seed(model: str, request: RequestInfo) -> int:
    """The tie-break seed of one request: only computed when a tie-break is needed."""
    return stable_seed(model, request.request_id, request.user)


def _route_reason(inst: Instance, n_free: int, via: str) -> str:
    others = f"; {n_free} replicas had a free slot" if n_free > 1 else ""
    return f"{inst.model} → {inst.node} ({inst.busy}/{inst.slots_total} busy): {via}{others}"


def schedule(
    snapshot: Snapshot,
    request: RequestInfo,
    strategy: Strategy | str = Strategy.EFFICIENCY,
    settings: SchedulerSettings = SchedulerSettings(),
    now: float = 0.0,
    pending_loads: PendingLoads = frozenset(),
    affinity: Mapping[str, InstanceKey] | None = None,
) -> Decision:
    """Decide what to do with ``request`` given the cluster in ``snapshot``.

    ``pending_loads`` are the (node, model) loads the engine has started and not yet seen
    finish; ``affinity`` maps a ``user`` to the replica that served it last.
    """
    strat = strategy if strategy.__class__ is Strategy else Strategy(strategy)
    model = settings.aliases.get(request.model, request.model)
    instances = list(snapshot.instances_of(model))
    if not instances and not _known(snapshot, model, settings):
        return Reject(404, f"model {request.model!r} is not loaded or available on any node")

    # One pass sorts the instances: the hot path (one loaded replica with a free slot) does
    # no more than this loop, the free-slot check and the reason text.
    nodes = snapshot.nodes
    exclude = request.exclude
    skip = request.skip_nodes
    live: list[Instance] = []
    coming: list[Instance] = []
    for i in instances:
        if skip and i.node in skip:
            continue
        node = nodes.get(i.node)
        if (
            i.state is InstanceState.LOADED
            and node is not None
            and node.routable
            and not (exclude and i.key in exclude)
        ):
            live.append(i)
        # Only a loading instance, or one on a node not yet polled, can be "coming".
        if (
            i.state is InstanceState.LOADING or (node is not None and node.health is Health.UNKNOWN)
        ) and _coming(snapshot, i):
            coming.append(i)
    pending = (
        {n for n, m in pending_loads if m == model and n not in skip} if pending_loads else set()
    )
    ahead = 0 if request.queued else snapshot.queue_depth.get(model, 0)

    extra = None
    if live and not coming and not pending and strat is not Strategy.EFFICIENCY:
        # Nothing loading or coming: the replicas are the live ones.
        extra = _extra_replica(
            snapshot,
            model,
            strat,
            settings,
            now,
            live,
            len(live),
            frozenset(i.node for i in instances),
            pending_loads,
            _seed(model, request),
        )

    if not ahead:
        free = [i for i in live if snapshot.has_room(i)]
        sticky = affinity.get(request.user) if affinity and request.user else None
        if settings.session_affinity and sticky is not None:
            best_tier = min((_tier(snapshot, i) for i in free), default=0)
            for inst in free:
                if inst.key == sticky and _tier(snapshot, inst) == best_tier:
                    via = f"session affinity for {request.user}"
                    return Route(inst.key, _route_reason(inst, len(free), via), extra)
        if len(free) == 1:
            chosen: Instance | None = free[0]
        else:
            chosen = choose_replica(snapshot, free, settings.pool, _seed(model, request))
        if chosen is not None:
            via = "least busy, least recently used"
            return Route(chosen.key, _route_reason(chosen, len(free), via), extra)

    if extra is not None:
        return extra
    if ahead:
        return Wait(f"{ahead} earlier request(s) for {model} are queued")
    where = ", ".join(sorted({i.node for i in coming} | pending))
    if live:
        busy = ", ".join(f"{i.node} {i.busy}/{i.slots_total}" for i in live)
        also = f"; another is loading on {where}" if where else ""
        return Wait(f"all {len(live)} replica(s) of {model} busy ({busy}){also}")
    if where:
        return Wait(f"{model} is loading on {where}")

    # Not on a node where the load just failed (the instance says so, or the engine does),
    # nor next to a replica that failed this request (a second instance on the same
    # troubled node).
    avoid = {i.node for i in instances if i.state is InstanceState.FAILED}
    avoid |= {node for node, _ in request.exclude}
    avoid |= request.avoid_nodes
    avoid |= skip
    p = place(
        snapshot,
        model,
        now,
        settings.pool,
        pending_loads=pending_loads,
        exclude=frozenset(avoid),
        seed=_seed(model, request),
    )
    if isinstance(p, Placement):
        return Load(
            p.node, model, p.evict, f"no node has {model} loaded; {p.reason}", p.footprint_bytes
        )
    if p.may_fit_later:
        return Wait(p.reason)
    return Reject(503, p.reason)


def replica_deficits(
    snapshot: Snapshot,
    settings: SchedulerSettings,
    now: float,
    pending_loads: PendingLoads = frozenset(),
) -> tuple[Load, ...]:
    """Loads that bring models below ``min_replicas`` one replica closer, for the pool
    manager to run without waiting for traffic. At most one per model per call."""
    loads: list[Load] = []
    evicted: set[InstanceKey] = set()
    for model, want in sorted(settings.min_replicas.items()):
        instances = list(snapshot.instances_of(model))
        pending = {n for n, m in pending_loads if m == model}
        have = [
            i
            for i in instances
            if i.state in (InstanceState.LOADED, InstanceState.LOADING)
            and snapshot.nodes.get(i.node) is not None
            and not snapshot.nodes[i.node].drained
            and snapshot.nodes[i.node].health is not Health.DOWN
        ]
        count = len(have) + len(pending - {i.node for i in have})
        if count >= want or pending or any(i.state is InstanceState.LOADING for i in have):
            continue
        occupied = frozenset({i.node for i in instances} | pending)
        p = place(
            without(snapshot, evicted),
            model,
            now,
            settings.pool,
            pending_loads=pending_loads,
            exclude=occupied,
            seed=stable_seed(model, now),
        )
        if isinstance(p, Placement):
            reason = f"{model} has {count} of at least {want} replicas; {p.reason}"
            loads.append(Load(p.node, model, p.evict, reason, p.footprint_bytes, "min_replicas"))
            # Later models see this load's memory as taken, and its victims as gone.
            pending_loads = pending_loads | {(p.node, model)}
            evicted.update(p.evict)
    return tuple(loads)
