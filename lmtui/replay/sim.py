"""The replay's event loop: lmtui's scheduler, placement and eviction in virtual time.

The loop plays the engine's dispatcher (``lmtui/engine/dispatch.py``) with a clock that jumps
from event to event (arrival, load done, request done), and asks the real pure core for
every decision: ``schedule`` for each arriving request and for the head of each model's
queue whenever something changes for it, which calls ``place`` and ``plan_eviction`` when a
model must be loaded. Queues are the core's ``RequestQueue``. What the engine would do with
a decision, the loop does:

- ``Route``: take a slot (in-flight +1, as the store counts it) until the request's service
  time has passed; finishing stamps ``last_used``. In the ``instant`` setting a request
  starts and finishes at once.
- ``Load``: unload the plan's victims at once (an unload takes no time here), and charge the
  load as pending, its instance ``loading`` in the snapshot (as a llama.cpp router's poll
  shows it a moment after the load starts), until its load time has passed; then the
  instance is ``loaded``. Policies see what is loading: ``gdsf`` waits for it rather than
  evict a popular model (``lmtui.core.eviction``).
- ``Wait``: the request waits in its model's queue. A model that needs a load but has no
  room (busy, loading or too recently loaded instances hold it) is *stalled* until an event
  may have made room: an instance going idle, a load finishing, a residency running out.

Demand, as in the engine: every request is counted in a ``DemandRates``
(``lmtui.core.demand``, the engine's object) at its arrival, and every ``RATE_TICK_S`` of
virtual time the decayed rates, with each model's measured load seconds per node, are put
into the pool settings, as the pool manager does every tick; the ``cost`` and ``gdsf``
policies read them. (The engine counts a request when it ends, under its arrival time: a
few seconds later, against a half-life of minutes.)

As in the engine, the heads are offered again when something changed for them; models
stalled for room are offered again after any event that can make room. Everything is
deterministic: no clock, no hash order, ties broken by the core's seeded rotation.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, get_args

from lmtui.core.demand import DemandRates
from lmtui.core.eviction import WAITING_POLICIES, EvictionOrder, EvictionPolicy, is_pinned
from lmtui.core.model import (
    Health,
    HostMemory,
    Instance,
    InstanceKey,
    InstanceState,
    Node,
    NodeKind,
    Snapshot,
    evolve,
    with_load,
)
from lmtui.core.placement import PoolSettings
from lmtui.core.queue import Rejected, RequestQueue
from lmtui.core.rebalance import plan_upkeep
from lmtui.core.scheduler import (
    Load,
    Reject,
    RequestInfo,
    Route,
    SchedulerSettings,
    Strategy,
    Wait,
    schedule,
)
from lmtui.replay.scenario import UNLIMITED_SLOTS, NodeSpec, Scenario
from lmtui.replay.trace import TraceRequest

#: Event kinds, in the order they run at equal times: a finished request or load frees
#: room before a wake-up looks for it.
_DONE, _LOADED, _WAKE = 0, 1, 2

#: The core's eviction policies: a policy added there is replayed with no change here.
POLICIES: tuple[str, ...] = get_args(EvictionPolicy)
#: A wake-up lands this much after a residency ends, so that float rounding of
#: ``first_seen + min_residency`` never leaves the instance a hair too young.
_EPS = 1e-6
#: How often the rates are pushed into the settings: the engine's pool manager tick with
#: the default 1 s poll interval (``max(1, 2 × [poll] interval)``).
RATE_TICK_S = 2.0

Progress = Callable[[int, int], None]


class ReplayInvariantError(AssertionError):
    """An audited replay saw the core plan something it must never plan."""


@dataclass(slots=True)
class NodeStats:
    """What one node did over the replay."""

    requests: int = 0
    loads: int = 0
    load_s: float = 0.0
    evictions: int = 0
    #: Integrals over virtual time: seconds with a request running, request-seconds, and
    #: byte-seconds of memory held by loaded and loading models.
    busy_s: float = 0.0
    request_s: float = 0.0
    byte_s: float = 0.0
    in_flight: int = 0
    used_bytes: int = 0
    since: float = 0.0

    def advance(self, now: float) -> None:
        dt = now - self.since
        if dt > 0:
            if self.in_flight:
                self.busy_s += dt
                self.request_s += self.in_flight * dt
            self.byte_s += self.used_bytes * dt
        self.since = now


@dataclass(slots=True)
class RunResult:
    """The raw outcome of one replay; :mod:`lmtui.replay.report` turns it into figures."""

    policy: str
    requests: int = 0
    served: int = 0
    rejected: int = 0
    expired: int = 0
    hits: int = 0
    loads: int = 0
    #: Loads of a model never loaded before: no policy can avoid them.
    first_loads: int = 0
    load_s: float = 0.0
    evictions: int = 0
    stalls: int = 0
    stall_s: float = 0.0
    waits: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    wall_s: float = 0.0
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)


def _node(spec: NodeSpec) -> Node:
    total = int(spec.memory_gb * (1 << 30))
    return Node(
        spec.name,
        NodeKind.LLAMACPP,
        f"replay://{spec.name}",
        health=Health.HEALTHY,
        memory=HostMemory(total, total, "config"),
        reserved_bytes=total - spec.budget_bytes,
        slots_default=spec.slots,
    )


class Replay:
    """One replay of ``requests`` (each with a model) on ``scenario`` with one policy.

    ``policy`` names the core's eviction policy (``lru``, ``cost``, ``gdsf``); ``order``
    replaces its ranking (the clairvoyant reference), with ``policy`` then only a label.
    ``audit`` checks after every load that the plan kept the node within its budget and
    unloaded only idle, unpinned instances (for tests; it costs a scan per load).
    ``half_life_s`` replaces the demand's default half-life
    (``lmtui.core.demand.HALF_LIFE_S``), for tuning.
    """

    def __init__(
        self,
        scenario: Scenario,
        requests: Sequence[TraceRequest],
        policy: str = "lru",
        *,
        order: EvictionOrder | None = None,
        audit: bool = False,
        progress: Progress | None = None,
        half_life_s: float | None = None,
    ) -> None:
        self.sc = scenario
        self.reqs = requests
        self.audit = audit
        self.progress = progress
        self.instant = scenario.service == "instant"
        self.specs = {n.name: n for n in scenario.nodes}
        self.nodes = MappingProxyType({n.name: _node(n) for n in scenario.nodes})
        self.models = {m.name: m for m in scenario.models}
        if order is None and policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
        missing = {r.model or "" for r in requests} - set(self.models)
        if missing:
            raise ValueError(f"requests name models the scenario lacks: {sorted(missing)[:5]}")
        pinned = frozenset(m.name for m in scenario.models if m.pinned)
        pool = PoolSettings(
            size_overrides=MappingProxyType({m.name: m.size_bytes for m in scenario.models}),
            eviction_policy=policy if order is None else "lru",  # type: ignore[arg-type]
            pinned=pinned,
            priorities=MappingProxyType(
                {m.name: m.priority for m in scenario.models if m.priority != "normal"}
            ),
            min_residency_s=scenario.min_residency_s,
            eviction_order=order,
            hosts=MappingProxyType(dict(scenario.hosts)),
            placement=scenario.placement,  # type: ignore[arg-type]
        )
        self.settings = SchedulerSettings(known_models=frozenset(self.models), pool=pool)
        self.strategy = Strategy(scenario.strategy)
        self.queue = RequestQueue(max_depth=scenario.queue_depth or (1 << 62))
        self.timeout = scenario.queue_timeout_s
        self.result = RunResult(
            policy,
            nodes={n: NodeStats() for n in self.specs},
            budgets={n.name: n.budget_bytes for n in scenario.nodes},
        )
        self.now = 0.0
        self.insts: dict[InstanceKey, Instance] = {}
        self.loaded: dict[str, int] = {}  # model -> loaded instances
        self.pending: dict[tuple[str, str], int] = {}  # (node, model) -> footprint
        self.pending_keys: frozenset[tuple[str, str]] = frozenset()
        self.depth: dict[str, int] = {}
        self.waiting: dict[str, tuple[int, float]] = {}  # request id -> (index, enqueued)
        self.stalled: dict[str, float] = {}  # model -> since when
        self.ever_loaded: set[str] = set()
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self._snap: Snapshot | None = None
        self._version = 0
        #: See :meth:`_pump_stalled`; tests turn it off to check it changes nothing.
        self.skip_bigger = order is not None or policy not in WAITING_POLICIES
        self.demand = DemandRates(half_life_s) if half_life_s else DemandRates()
        self.load_s: dict[tuple[str, str], float] = {}
        self.next_tick = -math.inf

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        res = self.result
        reqs = self.reqs
        heap = self.heap
        total = len(reqs)
        res.requests = total
        step = max(1, total // 200)
        self._preload()
        i = 0
        while i < total or heap:
            if heap and (i >= total or heap[0][0] <= reqs[i].at):
                t, kind, _seq, arg = heapq.heappop(heap)
                self._advance(t)
                if kind == _DONE:
                    self._done(arg)
                elif kind == _LOADED:
                    self._loaded(arg)
                elif self.stalled:
                    self._pump_stalled()
            else:
                self._advance(reqs[i].at)
                self._arrive(i)
                i += 1
                if self.progress is not None and i % step == 0:
                    self.progress(i, total)
        # Whatever still waits never got served (a model that fits nowhere any more).
        for rid in list(self.waiting):
            self.queue.cancel(rid)
            res.rejected += 1
        for model in list(self.stalled):
            self._unstall(model)
        for st in res.nodes.values():
            st.advance(self.now)
        res.duration_s = self.now
        res.wall_s = time.perf_counter() - started
        return res

    def _preload(self) -> None:
        """What the pool manager loads before any traffic: pinned models (and, under the
        ``replicas`` strategy, ``min_replicas``), from the core's upkeep plan."""
        plan = plan_upkeep(self._snapshot(), self.settings, self.now)
        for step in plan.steps:
            if step.action == "load":
                self._start_load(Load(step.node, step.model, (), step.reason, step.bytes))

    def _advance(self, t: float) -> None:
        self.now = t
        if t >= self.next_tick:
            self._tick(math.floor(t / RATE_TICK_S) * RATE_TICK_S)
        if self.timeout is not None:
            deadline = self.queue.next_deadline()
            if deadline is not None and deadline <= t:
                for rid in self.queue.expire(t):
                    _i, _enq = self.waiting.pop(rid)
                    self.result.expired += 1
                    self._sync_depth(self.reqs[_i].model or "")

    def _tick(self, at: float) -> None:
        """The pool manager's tick at ``at``: the rates and load times into the settings."""
        self.next_tick = at + RATE_TICK_S
        pool = replace(
            self.settings.pool,
            request_rate=self.demand.rates(at),
            load_s=MappingProxyType(dict(self.load_s)),
        )
        self.settings = replace(self.settings, pool=pool)

    def _push(self, t: float, kind: int, arg: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, arg))

    # -- the engine's side ---------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        snap = self._snap
        if snap is None:
            self._version += 1
            snap = self._snap = Snapshot(
                self._version,
                self.now,
                self.nodes,
                MappingProxyType(dict(self.insts)),
                MappingProxyType(dict(self.depth)),
            )
        return snap

    def _put(self, inst: Instance) -> None:
        """A new load figure for an existing instance (the router's two updates per request):
        the next snapshot keeps the model index, as the store's does."""
        self.insts[inst.key] = inst
        if self._snap is not None:
            self._snap = self._snap.with_instance(inst)

    def _decide(self, rid: str, model: str, queued: bool) -> Route | Load | Wait | Reject:
        return schedule(
            self._snapshot(),
            RequestInfo(model, request_id=rid, queued=queued),
            self.strategy,
            self.settings,
            self.now,
            self.pending_keys,
        )

    def _arrive(self, i: int) -> None:
        req = self.reqs[i]
        model = req.model or ""
        self.demand.note(model, req.at)
        if self.loaded.get(model):
            self.result.hits += 1
        rid = str(i)
        d = self._decide(rid, model, False)
        if isinstance(d, Route):
            self._grant(d, i, self.now)
            return
        if isinstance(d, Reject):
            self.result.rejected += 1
            return
        if isinstance(d, Load):
            self._start_load(d)
        deadline = self.now + self.timeout if self.timeout is not None else math.inf
        adm = self.queue.admit(rid, model, self.now, deadline)
        if isinstance(adm, Rejected):
            self.result.rejected += 1
            return
        self.waiting[rid] = (i, self.now)
        if self.timeout is not None:
            self._push(deadline, _WAKE, None)  # its 504 comes on time, not at the next event
        self._sync_depth(model)
        if isinstance(d, Wait):
            self._maybe_stall(model)

    def _pump(self, model: str) -> None:
        """Offer ``model``'s oldest waiting requests to the scheduler until one must wait."""
        q = self.queue
        while (head := q.peek(model)) is not None:
            d = self._decide(head.request_id, model, True)
            if isinstance(d, Route):
                q.next_for(model)
                i, enq = self.waiting.pop(head.request_id)
                self._grant(d, i, enq)
                continue
            if isinstance(d, Reject):
                q.fail(head.request_id)
                self.waiting.pop(head.request_id)
                self.result.rejected += 1
                continue
            if isinstance(d, Load):
                self._start_load(d)
            else:
                self._maybe_stall(model)
            break
        self._sync_depth(model)

    def _pump_stalled(self) -> None:
        """Offer the heads of models stalled for room again, oldest stall first.

        A stalled model has no replica and no load under way, so ``schedule`` goes straight
        to ``place``, which makes it wait only when no node can make room for its footprint
        now. Then a model at least as big, of the same priority, waits too (the same
        candidates, more bytes to free), and nothing later in the pass makes more room (a
        load only takes some). So those are not asked: the same decisions, and a congested
        replay runs ~4x faster (seed 2, busy: 10 of 13 s went to asking them). Not for a
        policy that may wait although it has a plan (``WAITING_POLICIES``): a smaller model
        waiting for cheap room that frees up soon says nothing about a bigger one.
        """
        waited: dict[str, int] = {}  # priority -> smallest footprint that had to wait
        for model in sorted(self.stalled, key=self.stalled.__getitem__):
            if model not in self.stalled:
                continue
            spec = self.models[model]
            if self.skip_bigger and spec.size_bytes >= waited.get(spec.priority, 1 << 62):
                continue
            self._pump(model)
            if model in self.stalled:
                waited[spec.priority] = min(spec.size_bytes, waited.get(spec.priority, 1 << 62))

    def _sync_depth(self, model: str) -> None:
        n = self.queue.depth(model)
        if self.depth.get(model, 0) != n:
            if n:
                self.depth[model] = n
            else:
                self.depth.pop(model, None)
            snap = self._snap
            if snap is not None:  # same instances: the copy keeps the snapshot's model index
                self._snap = evolve(
                    snap, version=snap.version + 1, queue_depth=MappingProxyType(dict(self.depth))
                )

    def _maybe_stall(self, model: str) -> None:
        """``model`` waits with no replica and no load under way: it waits for room."""
        if model in self.stalled or self.loaded.get(model):
            return
        if any(m == model for _n, m in self.pending):
            return
        self.stalled[model] = self.now
        self.result.stalls += 1

    def _unstall(self, model: str) -> None:
        since = self.stalled.pop(model, None)
        if since is not None:
            self.result.stall_s += self.now - since

    def _grant(self, d: Route, i: int, enqueued: float) -> None:
        res = self.result
        res.served += 1
        res.waits.append(self.now - enqueued)
        key = d.instance_key
        inst = self.insts[key]
        st = res.nodes[inst.node]
        st.requests += 1
        if self.instant:
            self._put(with_load(inst, inst.in_flight, inst.slots_busy, self.now))
        else:
            n = inst.in_flight + 1
            last = inst.last_used if inst.last_used is not None else self.now
            self._put(with_load(inst, n, n, last))
            st.advance(self.now)
            st.in_flight += 1
            self._push(self.now + self.specs[inst.node].service_s(self.reqs[i]), _DONE, key)
        if d.preload is not None:
            self._start_load(d.preload)

    def _done(self, key: InstanceKey) -> None:
        inst = self.insts[key]
        n = inst.in_flight - 1
        self._put(with_load(inst, n, n, self.now))
        st = self.result.nodes[inst.node]
        st.advance(self.now)
        st.in_flight -= 1
        self._pump(inst.model)
        if self.stalled and self.insts[key].in_flight == 0:
            self._pump_stalled()  # an idle instance may be evicted now

    def _start_load(self, d: Load) -> None:
        key = (d.node, d.model)
        if key in self.pending:
            return
        res = self.result
        st = res.nodes[d.node]
        st.advance(self.now)
        for victim in d.evict:
            inst = self.insts[victim]
            if self.audit:
                self._check_victim(inst)
            del self.insts[victim]
            self.loaded[inst.model] -= 1
            vst = res.nodes[inst.node]  # a victim may be on another node of the host
            vst.advance(self.now)
            vst.used_bytes -= inst.size_bytes or 0
            vst.evictions += 1
            res.evictions += 1
        spec = self.specs[d.node]
        size = self.models[d.model].size_bytes
        duration = spec.load_s(size)
        self.pending[key] = size
        self.pending_keys = frozenset(self.pending)
        st.used_bytes += size
        m = self.models[d.model]
        self.insts[key] = Instance(
            d.node,
            d.model,
            d.model,
            InstanceState.LOADING,
            size_bytes=size,
            slots_total=UNLIMITED_SLOTS if self.instant else (m.slots or spec.slots),
            size_source="config",
        )
        st.loads += 1
        st.load_s += duration
        res.loads += 1
        res.load_s += duration
        if d.model not in self.ever_loaded:
            self.ever_loaded.add(d.model)
            res.first_loads += 1
        self._snap = None
        self._unstall(d.model)
        if self.audit:
            self._check_budgets(d)
        self._push(self.now + duration, _LOADED, key)

    def _loaded(self, key: tuple[str, str]) -> None:
        node, model = key
        size = self.pending.pop(key)
        self.load_s[key] = self.specs[node].load_s(size)  # what the engine would measure
        self.pending_keys = frozenset(self.pending)
        m = self.models[model]
        slots = UNLIMITED_SLOTS if self.instant else (m.slots or self.specs[node].slots)
        self.insts[(node, model)] = Instance(
            node,
            model,
            model,
            InstanceState.LOADED,
            size_bytes=m.size_bytes,
            slots_total=slots,
            first_seen=self.now,
            size_source="config",
        )
        self.loaded[model] = self.loaded.get(model, 0) + 1
        self._snap = None
        self._pump(model)
        if self.stalled:
            self._pump_stalled()  # with no residency to wait for, it may be evicted now
        if self.sc.min_residency_s > 0:
            # The moment this instance may be evicted: a model stalled by then looks again.
            self._push(self.now + self.sc.min_residency_s + _EPS, _WAKE, None)

    def _check_budgets(self, d: Load) -> None:
        """After a load is planned: no node and no host over its budget."""
        nodes = self.result.nodes
        spec = self.specs[d.node]
        if nodes[d.node].used_bytes > spec.budget_bytes:
            raise ReplayInvariantError(
                f"{d.node} holds {nodes[d.node].used_bytes} bytes over its budget of "
                f"{spec.budget_bytes} after planning {d.model}: {d.reason}"
            )
        key = self.sc.hosts.get(d.node)
        if key is None:
            return
        peers = [n for n, k in self.sc.hosts.items() if k == key and n in self.specs]
        used = sum(nodes[n].used_bytes for n in peers)
        budget = min(self.specs[n].budget_bytes for n in peers)
        if used > budget:
            raise ReplayInvariantError(
                f"host of {', '.join(peers)} holds {used} bytes over its budget of {budget} "
                f"after planning {d.model} on {d.node}: {d.reason}"
            )

    def _check_victim(self, inst: Instance) -> None:
        pinned = self.settings.pool.pinned
        if inst.state is not InstanceState.LOADED or inst.busy or inst.in_flight:
            raise ReplayInvariantError(f"evicting a busy or unloaded instance: {inst}")
        if is_pinned(inst, pinned):
            raise ReplayInvariantError(f"evicting a pinned instance: {inst}")
