"""The cluster store: the one mutable piece of shared state.

It folds observations into immutable, versioned snapshots (the rules live in
``lmtui.core.state``) and tells subscribers. Subscribers read snapshots and never mutate them.

Two ways to listen:

- ``subscribe(callback)``: called synchronously after every change, with the snapshot and the
  events it caused. For cheap consumers (metrics, the event log).
- ``watch()``: an async iterator that yields the *latest* snapshot whenever the version moved,
  coalescing bursts, so a slow consumer (the UI redrawing a table) never falls behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from types import MappingProxyType

from lmtui.core.events import Event, EventKind
from lmtui.core.model import (
    CircuitState,
    Instance,
    InstanceKey,
    InstanceState,
    Node,
    NodeMetrics,
    NodeObservation,
    Observation,
    PeerState,
    Snapshot,
    with_load,
)
from lmtui.core.state import FoldContext, fold, with_node

log = logging.getLogger(__name__)

Listener = Callable[[Snapshot, list[Event]], None]


class Store:
    def __init__(
        self, nodes: Iterable[Node], ctx: FoldContext | None = None, *, event_history: int = 500
    ) -> None:
        self.ctx = ctx or FoldContext()
        self._snap = Snapshot(nodes=MappingProxyType({n.name: n for n in nodes}))
        self._listeners: list[Listener] = []
        self._waiters: set[asyncio.Event] = set()
        self.events: deque[Event] = deque(maxlen=event_history)
        self._routed_tokens: dict[str, int] = {}
        #: Requests lmtui started, per (node, model), ever: the history's requests/s is the
        #: difference between two samples (``engine/history.py``). Bounded by the models
        #: that were loaded somewhere, not by what clients ask for.
        self.requests_started: dict[tuple[str, str], int] = {}
        #: Set while lmtui routes requests: nodes that count no tokens themselves then show
        #: the tokens/s of the traffic lmtui proxied to them.
        self.count_routed_tokens = False

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def apply(self, obs: Observation) -> Snapshot:
        if (
            self.count_routed_tokens
            and isinstance(obs, NodeObservation)
            and (obs.metrics is None or obs.metrics.predicted_tokens_total is None)
        ):
            # The node counts no generated tokens (LM Studio, Ollama): use what lmtui itself
            # proxied there, so its tokens/s shows the traffic that goes through lmtui.
            metrics = obs.metrics or NodeMetrics()
            obs = replace(
                obs,
                metrics=replace(
                    metrics, predicted_tokens_total=float(self._routed_tokens.get(obs.node, 0))
                ),
            )
        snap, events = fold(self._snap, obs, self.ctx)
        self._publish(snap, events)
        return snap

    def add_generated(self, node: str, tokens: int) -> None:
        """Count tokens generated on ``node`` for a request lmtui proxied (its ``usage``)."""
        self._routed_tokens[node] = self._routed_tokens.get(node, 0) + tokens

    def record(self, event: Event) -> None:
        """Record an event that changes no state (a routing decision, a command)."""
        self._publish(self._snap, [event])

    def set_drained(self, node: str, drained: bool, at: float) -> None:
        n = self._snap.nodes[node]
        if n.drained == drained:
            return
        verb = "drained" if drained else "undrained"
        self._publish(
            with_node(self._snap, replace(n, drained=drained), at=at),
            [Event(at, EventKind.COMMAND, f"{node} {verb}", node=node)],
        )

    def own_load(self, node: str, model: str, running: bool) -> None:
        """lmtui starts (``running``) or has finished loading ``model`` on ``node``: while it
        runs, polls add no load events of their own for it (see ``FoldContext.own_loads``)."""
        loads = self.ctx.own_loads
        self.ctx = replace(
            self.ctx, own_loads=loads | {(node, model)} if running else loads - {(node, model)}
        )

    def set_pinned(self, pinned: frozenset[str], at: float) -> None:
        self.ctx = replace(self.ctx, pinned=pinned)
        insts = {
            k: (replace(i, pinned=i.model in pinned) if i.pinned != (i.model in pinned) else i)
            for k, i in self._snap.instances.items()
        }
        self._publish(
            replace(self._snap, version=self._snap.version + 1, instances=MappingProxyType(insts)),
            [],
        )

    def add_in_flight(
        self, key: InstanceKey, delta: int, at: float, event: Event | None = None
    ) -> Instance | None:
        """lmtui started (+1) or finished (-1) a request on an instance; returns it updated.

        Finishing also stamps ``last_used``, so idle replicas take turns (LRU tie-break).
        ``event`` (the routing decision) is published with the change, in one notification.
        """
        inst = self._snap.instances.get(key)
        if inst is None:
            return None
        if delta > 0:
            started = self.requests_started
            k = (inst.node, inst.model)
            started[k] = started.get(k, 0) + delta
        n = inst.in_flight + delta
        if n < 0:
            n = 0
        inst = with_load(
            inst,
            n,
            n + inst.external_busy,
            at if delta < 0 or inst.last_used is None else inst.last_used,
        )
        self._publish(self._snap.with_instance(inst), [event] if event is not None else [])
        return inst

    def set_instance_state(self, key: InstanceKey, state: InstanceState) -> None:
        inst = self._snap.instances.get(key)
        if inst is not None and inst.state is not state:
            self._put_instance(replace(inst, state=state))

    def set_queue_depth(self, model: str, depth: int) -> None:
        if self._snap.queue_depth.get(model, 0) == depth:
            return
        q = dict(self._snap.queue_depth)
        if depth:
            q[model] = depth
        else:
            q.pop(model, None)
        self._publish(
            replace(self._snap, version=self._snap.version + 1, queue_depth=MappingProxyType(q)), []
        )

    def set_circuits(self, circuits: Iterable[CircuitState]) -> None:
        """The replicas whose circuit is open or half-open now (the dispatcher's
        ``circuit_states``), published only when they changed."""
        new = {c.key: c for c in circuits}
        if new == dict(self._snap.circuits):
            return
        self._publish(
            replace(self._snap, version=self._snap.version + 1, circuits=MappingProxyType(new)),
            [],
        )

    def set_peers(self, peers: Iterable[PeerState]) -> None:
        """The ``[[peers]]``' counters now, published only when they changed."""
        new = {p.name: p for p in peers}
        if new == dict(self._snap.peers):
            return
        self._publish(
            replace(self._snap, version=self._snap.version + 1, peers=MappingProxyType(new)), []
        )

    def _put_instance(self, inst: Instance, events: list[Event] | None = None) -> None:
        self._publish(self._snap.with_instance(inst), events or [])

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def watch(self, since: int = -1) -> AsyncIterator[Snapshot]:
        """Yield the latest snapshot each time the version moves past what was last yielded."""
        wake = asyncio.Event()
        self._waiters.add(wake)
        try:
            seen = since
            while True:
                if self._snap.version != seen:
                    seen = self._snap.version
                    yield self._snap
                    continue
                wake.clear()
                await wake.wait()
        finally:
            self._waiters.discard(wake)

    def _publish(self, snap: Snapshot, events: list[Event]) -> None:
        self._snap = snap
        self.events.extend(events)
        for listener in list(self._listeners):
            try:
                listener(snap, events)
            except Exception:  # one bad subscriber must not stop polling
                log.exception("store listener failed")
        for w in self._waiters:
            w.set()
