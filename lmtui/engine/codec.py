"""Snapshots, events and plans as JSON, and back: the control API's wire format.

The HTTP ``EngineClient`` rebuilds the very same ``Snapshot`` objects the in-process one
hands out, so the UI cannot tell which engine it is attached to.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import msgspec

from lmtui.core.events import Event
from lmtui.core.model import CircuitState, Instance, Node, PeerState, Snapshot
from lmtui.core.rebalance import RebalancePlan

_encoder = msgspec.json.Encoder()


def snapshot_to_builtins(snap: Snapshot) -> dict[str, Any]:
    return {
        "version": snap.version,
        "at": snap.at,
        "nodes": [msgspec.to_builtins(n) for n in snap.nodes.values()],
        "instances": [msgspec.to_builtins(i) for i in snap.instances.values()],
        "queue_depth": dict(snap.queue_depth),
        "circuits": [msgspec.to_builtins(c) for c in snap.circuits.values()],
        "peers": [msgspec.to_builtins(p) for p in snap.peers.values()],
    }


class _SnapshotWire(msgspec.Struct):
    """A snapshot as JSON: checked by msgspec, so any other shape is a ValidationError."""

    version: int = 0
    at: float = 0.0
    nodes: list[Node] = msgspec.field(default_factory=list)
    instances: list[Instance] = msgspec.field(default_factory=list)
    queue_depth: dict[str, int] = msgspec.field(default_factory=dict)
    # An engine from before circuits were in the snapshot sends none: all closed.
    circuits: list[CircuitState] = msgspec.field(default_factory=list)
    # Nor peers, from before they were.
    peers: list[PeerState] = msgspec.field(default_factory=list)


def snapshot_from_builtins(d: Any) -> Snapshot:
    """The snapshot in ``d``; ``msgspec.ValidationError`` (a ValueError) for another shape."""
    w = msgspec.convert(d, _SnapshotWire)
    return Snapshot(
        version=w.version,
        at=w.at,
        nodes=MappingProxyType({n.name: n for n in w.nodes}),
        instances=MappingProxyType({i.key: i for i in w.instances}),
        queue_depth=MappingProxyType(w.queue_depth),
        circuits=MappingProxyType({c.key: c for c in w.circuits}),
        peers=MappingProxyType({p.name: p for p in w.peers}),
    )


def event_to_builtins(e: Event) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(e)
    return out


def event_from_builtins(d: Any) -> Event:
    return msgspec.convert(d, Event)


def plan_to_builtins(plan: RebalancePlan) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(plan)
    out["summary"] = plan.summary()
    return out


def plan_from_builtins(d: Any) -> RebalancePlan:
    """The plan in ``d``; ``msgspec.ValidationError`` (a ValueError) for another shape."""
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k != "summary"}
    return msgspec.convert(d, RebalancePlan)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)
