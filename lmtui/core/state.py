"""Folding observations into snapshots: the pure half of the store.

``fold(snapshot, observation, ctx) -> (snapshot, events)`` is a pure function, so the rules
(how health moves, which memory figure wins, what survives a re-poll) are unit-tested without
asyncio and replayable in virtual time. The engine's ``Store`` wraps it with versioning and
notification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.health import HealthPolicy, health_after_failure, health_after_success
from lmtui.core.model import (
    Health,
    HostMemory,
    Instance,
    InstanceKey,
    InstanceObservation,
    InstanceState,
    MemoryObservation,
    Node,
    NodeObservation,
    Observation,
    PollFailure,
    SizeSource,
    Snapshot,
)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What config says about one node that changes how observations are read."""

    #: Slots per instance, overriding what the server reports (Ollama's NUM_PARALLEL).
    slots: int | None = None
    #: Host memory in bytes, overriding measurement; available = total − loaded models.
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class FoldContext:
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    node_settings: Mapping[str, NodeSettings] = field(default_factory=lambda: MappingProxyType({}))
    pinned: frozenset[str] = frozenset()
    #: Size override per model in bytes (config ``size_gb``).
    model_sizes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Slots per instance of a model (config ``[[models]] slots``), over the node's.
    model_slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: (node, model) loads lmtui itself is running. The engine tells their story (one
    #: "loading" event, one "loaded in N s"), so the fold does not add "loading on",
    #: "loaded on" and "loading → loaded" events of its own for them; failures still show.
    own_loads: frozenset[tuple[str, str]] = frozenset()


def fold(snap: Snapshot, obs: Observation, ctx: FoldContext) -> tuple[Snapshot, list[Event]]:
    """Apply one observation; return the new snapshot (version + 1) and the events it caused."""
    node = snap.nodes.get(obs.node)
    if node is None:
        return snap, []  # a node removed from config while its poll was in flight
    events: list[Event] = []
    instances = snap.instances
    if isinstance(obs, NodeObservation):
        node, instances = _fold_ok(snap, node, obs, ctx, events)
    elif isinstance(obs, PollFailure):
        node = _fold_failure(node, obs, ctx, events)
    elif isinstance(obs, MemoryObservation):
        if (
            obs.memory is not None
            and ctx.node_settings.get(node.name, NodeSettings()).memory_bytes is None
        ):
            node = replace(node, memory=obs.memory, memory_error=None, memory_at=obs.at)
        elif obs.error is not None:
            node = replace(node, memory_error=obs.error)
    return with_node(snap, node, instances, at=obs.at), events


def with_node(
    snap: Snapshot,
    node: Node,
    instances: Mapping[InstanceKey, Instance] | None = None,
    *,
    at: float | None = None,
) -> Snapshot:
    nodes = dict(snap.nodes)
    nodes[node.name] = node
    return replace(
        snap,
        version=snap.version + 1,
        at=snap.at if at is None else max(snap.at, at),
        nodes=MappingProxyType(nodes),
        instances=snap.instances if instances is None else instances,
    )


def _fold_failure(node: Node, obs: PollFailure, ctx: FoldContext, events: list[Event]) -> Node:
    failures = node.consecutive_failures + 1
    health = health_after_failure(failures, ctx.policy)
    if health != node.health:
        level = Level.ERROR if health is Health.DOWN else Level.WARNING
        events.append(
            Event(
                obs.at,
                EventKind.NODE_HEALTH,
                f"{node.name} is {health}: {obs.error}",
                node=node.name,
                level=level,
            )
        )
    return replace(
        node,
        health=health,
        consecutive_failures=failures,
        last_error=obs.error,
        last_poll_at=obs.at,
        poll_latency_s=obs.latency_s,
    )


def _fold_ok(
    snap: Snapshot,
    node: Node,
    obs: NodeObservation,
    ctx: FoldContext,
    events: list[Event],
) -> tuple[Node, Mapping[InstanceKey, Instance]]:
    settings = ctx.node_settings.get(node.name, NodeSettings())
    health = health_after_success()
    if health != node.health:
        was = "" if node.health is Health.UNKNOWN else f" (was {node.health})"
        events.append(
            Event(obs.at, EventKind.NODE_HEALTH, f"{node.name} is {health}{was}", node=node.name)
        )
    tps = node.tokens_per_second
    if obs.metrics is not None:
        tps = _rate(node, obs)
    node = replace(
        node,
        health=health,
        consecutive_failures=0,
        last_error=None,
        last_poll_at=obs.at,
        last_ok_at=obs.at,
        poll_latency_s=obs.latency_s,
        version=obs.version or node.version,
        available=obs.available if obs.available is not None else node.available,
        metrics=obs.metrics if obs.metrics is not None else node.metrics,
        slots_default=obs.slots_default or node.slots_default,
        server_slots=obs.server_slots,
        # Read rarely (the limit changes only when the server restarts): None keeps it.
        max_instances=obs.max_instances if obs.max_instances is not None else node.max_instances,
        no_load=obs.no_load,
        tokens_per_second=tps,
    )
    instances = snap.instances
    if obs.instances is not None:
        before = _memory_shape(snap.instances, node)
        instances = _merge_instances(snap, node, obs, settings, ctx, events)
        node = replace(
            node, instance_ids=tuple(dict.fromkeys(i.instance_id for i in obs.instances))
        )
        if _memory_shape(instances, node) != before:
            node = replace(node, instances_at=obs.at)
    loaded = sum(instances[(node.name, i)].size_bytes or 0 for i in node.instance_ids)
    if settings.memory_bytes is not None:
        node = replace(
            node,
            memory=HostMemory(
                total_bytes=settings.memory_bytes,
                available_bytes=max(0, settings.memory_bytes - loaded),
                source="config",
            ),
        )
    elif obs.memory is not None and (node.memory is None or node.memory.source == "backend"):
        node = replace(node, memory=obs.memory, memory_at=obs.at)
    return node, instances


def _memory_shape(
    instances: Mapping[InstanceKey, Instance], node: Node
) -> frozenset[tuple[str, InstanceState, int | None]]:
    """What of a node's instances its host's memory follows: which, their states, sizes."""
    out = set()
    for iid in node.instance_ids:
        inst = instances.get((node.name, iid))
        if inst is not None:
            out.add((iid, inst.state, inst.size_bytes))
    return frozenset(out)


def _rate(node: Node, obs: NodeObservation) -> float | None:
    """Tokens/s from two successive polls of the predicted-tokens counter."""
    new = obs.metrics.predicted_tokens_total if obs.metrics else None
    old = node.metrics.predicted_tokens_total if node.metrics else None
    if new is None or old is None or node.last_ok_at is None:
        return None
    dt = obs.at - node.last_ok_at
    if dt <= 0:
        return node.tokens_per_second
    return max(0.0, new - old) / dt  # a counter reset (server restart) reads as 0, not negative


def _merge_instances(
    snap: Snapshot,
    node: Node,
    obs: NodeObservation,
    settings: NodeSettings,
    ctx: FoldContext,
    events: list[Event],
) -> Mapping[InstanceKey, Instance]:
    assert obs.instances is not None
    # Only this node's entries change: copy the mapping (fast, in C) and replace them,
    # rather than filtering every instance of the cluster in Python on every poll.
    out = dict(snap.instances)
    old = [(node.name, i) for i in node.instance_ids]
    for key in old:
        out.pop(key, None)
    seen: set[InstanceKey] = set()
    for io in obs.instances:
        key = (node.name, io.instance_id)
        seen.add(key)
        prev = snap.instances.get(key)
        inst = _instance(node, io, prev, settings, ctx, obs.at)
        out[key] = inst
        if (node.name, io.model) in ctx.own_loads and inst.state in _OWN_LOAD_STATES:
            continue  # the engine reports its own load
        if prev is None:
            verb = "loading" if inst.state.value == "loading" else "loaded"
            events.append(
                Event(
                    obs.at,
                    EventKind.INSTANCE_UP,
                    f"{io.model} {verb} on {node.name}",
                    node=node.name,
                    model=io.model,
                )
            )
        elif prev.state != inst.state:
            events.append(
                Event(
                    obs.at,
                    EventKind.INSTANCE_STATE,
                    f"{io.model} on {node.name}: {prev.state} → {inst.state}",
                    node=node.name,
                    model=io.model,
                    level=Level.ERROR if inst.error else Level.INFO,
                )
            )
    for key in old:
        prev = snap.instances.get(key)
        if prev is not None and key not in seen:
            if prev.state is InstanceState.UNLOADING:
                continue  # lmtui's own unload: the engine has told it already
            # Not asked for by lmtui: someone unloaded it by hand, or the server's TTL or
            # auto-evict did.
            events.append(
                Event(
                    obs.at,
                    EventKind.INSTANCE_DOWN,
                    f"{prev.model} is no longer loaded on {node.name}",
                    node=node.name,
                    model=prev.model,
                    level=Level.WARNING,
                )
            )
    return MappingProxyType(out)


#: States of an instance lmtui is loading whose changes the engine reports itself.
_OWN_LOAD_STATES = frozenset({InstanceState.LOADING, InstanceState.LOADED})


def _instance(
    node: Node,
    io: InstanceObservation,
    prev: Instance | None,
    settings: NodeSettings,
    ctx: FoldContext,
    at: float,
) -> Instance:
    slots = ctx.model_slots.get(io.model) or settings.slots or io.slots_total
    slots = slots or node.slots_default or 1
    last_used = io.last_used
    if prev is not None and prev.last_used is not None:
        last_used = max(prev.last_used, last_used or 0.0)
    size, source = _size(io, ctx)
    in_flight = prev.in_flight if prev else 0
    # The node's busy count includes lmtui's own requests; what is beyond them comes from
    # clients that bypass lmtui. Kept apart so that when lmtui's request ends the slot reads
    # free at once, not one poll later (which would idle a serial node for a poll interval).
    external = max(0, (io.slots_busy or 0) - in_flight)
    state = io.state
    if prev is not None and prev.state is InstanceState.UNLOADING and state is InstanceState.LOADED:
        state = InstanceState.UNLOADING  # lmtui is unloading it; the server has not finished
    return Instance(
        node=node.name,
        model=io.model,
        instance_id=io.instance_id,
        state=state,
        size_bytes=size,
        context_length=io.context_length,
        slots_total=slots,
        slots_busy=in_flight + external,
        in_flight=in_flight,
        external_busy=external,
        queued=io.queued or 0,
        last_used=last_used,
        expires_at=io.expires_at,
        pinned=io.model in ctx.pinned,
        load_progress=io.load_progress,
        error=io.error,
        first_seen=prev.first_seen if prev else at,
        url=io.url,
        size_source=source,
    )


def _size(io: InstanceObservation, ctx: FoldContext) -> tuple[int | None, SizeSource | None]:
    """The instance's size and where it came from. ``size_gb`` in config wins: it is there
    because the backend's figure is wrong or missing. An adapter that names no source gives
    the server's own figure (Ollama's ``/api/ps`` size, LM Studio's ``size_bytes``)."""
    override = ctx.model_sizes.get(io.model)
    if override is not None:
        return override, "config"
    if io.size_bytes is None:
        return None, None
    return io.size_bytes, io.size_source or "server"
