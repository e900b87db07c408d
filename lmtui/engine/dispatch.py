"""The dispatcher: carries out the scheduler's decisions for live requests.

A request asks for a *lease* on a slot of some replica of its model. The pure scheduler
(``lmtui.core.scheduler.schedule``) decides; the dispatcher acts:

- ``Route``: take a slot now (lmtui's in-flight count is the authority on slots);
- ``Load``: start one load task for (node, model) — evicting first if the plan says so — and
  queue the request; concurrent requests for the same model see the pending load and wait
  on it instead of starting their own;
- ``Wait``: queue the request (FIFO per model, depth limit → 429, deadline → 504);
- ``Reject``: fail now (404 unknown model, 503 can never fit).

Whenever something changes — a lease is released, a load finishes, a poll lands — the
queue heads are offered to the scheduler again, so the first replica anywhere that frees a
slot takes the oldest waiting request. A client that disconnects leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

from lmtui.backends.base import Backend, BackendError, LoadDeferred
from lmtui.core.events import Event, EventKind, Level
from lmtui.core.lifetime import wanted_ttl
from lmtui.core.model import CircuitState, InstanceKey, InstanceState
from lmtui.core.queue import Rejected as QueueRejected
from lmtui.core.queue import RequestQueue
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
from lmtui.engine.store import Store

log = logging.getLogger(__name__)

#: After a load fails on a node, requests for that model avoid the node this long.
LOAD_FAILURE_COOLOFF_S = 30.0
#: After a node refuses a load for now (LoadDeferred), first wait before asking again; it
#: doubles per further refusal up to DEFER_MAX_S. A request released on that node (a model
#: there got idle) asks again at once. One load request a second at most: never a storm.
DEFER_FIRST_S = 1.0
DEFER_MAX_S = 8.0
#: Retry-After for a 503 "cannot be served now" (the cluster may change within it).
RETRY_AFTER_S = 10.0
#: How often a waiting streaming client is told what it waits for (an SSE comment).
PROGRESS_EVERY_S = 2.0
#: Loads whose request gave its own ``ttl`` that are remembered (node, model) at most.
MAX_LOAD_TTLS = 1024


class DispatchError(Exception):
    """A request cannot be served; ``status`` is the HTTP status to answer."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestRejected(DispatchError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = "model_not_found" if status == 404 else "service_unavailable"
        #: A 503 says when to try again: the cluster (a load failing, a node coming back)
        #: may well change by then. None for a 404.
        self.retry_after_s: float | None = RETRY_AFTER_S if status == 503 else None


class QueueFull(DispatchError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueTimeout(DispatchError):
    status = 504
    code = "timeout"


#: Failed requests in a row that open a replica's circuit: lmtui routes around it, whatever
#: its polls say (a node can answer every request 500 behind a healthy ``/health``).
CIRCUIT_FAILURES = 3
#: How long a circuit first stays open; each failed trial after it doubles it, up to the max.
CIRCUIT_OPEN_S = 5.0
CIRCUIT_MAX_OPEN_S = 60.0


@dataclass(slots=True)
class _Circuit:
    """Request outcomes of one replica that has failed lately (others have none)."""

    failures: int = 0
    #: Until when requests go around it (0: closed). Past it, one trial request may go.
    open_until: float = 0.0
    backoff: float = CIRCUIT_OPEN_S
    #: A trial request is on it (half-open): the others still go around.
    trial: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot on one instance, held for the duration of one upstream request."""

    key: InstanceKey
    node: str
    #: The model name as the backend calls it.
    model: str
    queue_wait_s: float
    reason: str
    #: The instance's own base URL when it has one (a pool node's server), else None.
    url: str | None = None


@dataclass(slots=True)
class _Waiter:
    req: RequestInfo
    fut: asyncio.Future[Lease]
    enqueued_at: float


Progress = Callable[[str], Awaitable[None]]


_NO_LOADS: frozenset[tuple[str, str]] = frozenset()


class Dispatcher:
    def __init__(
        self,
        store: Store,
        backends: dict[str, Backend],
        settings: SchedulerSettings,
        *,
        strategy: Strategy = Strategy.EFFICIENCY,
        queue_depth: int = 256,
        refresh: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        on_load: Callable[[str, str, str, bool, float], None] | None = None,
        on_evict: Callable[[str, str, str], None] | None = None,
        on_route: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.backends = backends
        self.settings = settings
        self.strategy = strategy
        self.queue = RequestQueue(max_depth=queue_depth)
        self.refresh = refresh
        self.clock = clock
        self.on_load = on_load
        self.on_evict = on_evict
        self.on_route = on_route
        self._waiters: dict[str, _Waiter] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[bool | None]] = {}
        self._load_failed: dict[tuple[str, str], float] = {}
        #: Loads a node refused for now (LoadDeferred): (node, model) → (retry at, refusals,
        #: refused at). Until then the scheduler sees them as pending, so requests wait.
        self._deferred: dict[tuple[str, str], tuple[float, int, float]] = {}
        self._affinity: OrderedDict[str, InstanceKey] = OrderedDict()
        #: Replicas whose requests failed lately, for the circuit breaker (``report``).
        self._circuits: dict[InstanceKey, _Circuit] = {}
        #: Called with the node when a replica's circuit opens (a metric).
        self.on_circuit_open: Callable[[str], None] | None = None
        self._ids = itertools.count(1)
        self._pump_scheduled = False
        self._unsubscribe = store.subscribe(self._on_change)

    # -- the request side ----------------------------------------------------------------

    async def acquire(
        self, req: RequestInfo, *, deadline: float, progress: Progress | None = None
    ) -> Lease:
        """Wait for a slot for ``req`` until ``deadline`` (engine clock)."""
        if req.request_id is None:
            req = replace(req, request_id=f"r{next(self._ids)}")
        now = self.clock()
        if self._load_failed or self._circuits:
            req = self._with_exclusions(req, now)
        d = self._decide(req, now)
        if isinstance(d, Route):
            return self._grant(d, req, now, now)
        if isinstance(d, Reject):
            self.event(EventKind.REJECT, d.reason, model=req.model, level=Level.WARNING)
            raise RequestRejected(d.status, d.reason)
        if isinstance(d, Load):
            self.start_load(d)
        return await self._wait(req, now, deadline, progress, d)

    def report(self, key: InstanceKey, ok: bool | None) -> None:
        """How a request on replica ``key`` went: a failure before or instead of an answer
        (a 5xx, a reset, a first-byte timeout) counts towards opening its circuit; a
        success closes it; None (the client left) says nothing, but ends a trial."""
        c = self._circuits.get(key)
        if ok is None:
            if c is not None:
                c.trial = False
            return
        if ok:
            if c is not None:
                del self._circuits[key]
                if c.open_until:
                    self.event(
                        EventKind.NODE_HEALTH,
                        f"{key[1]} on {key[0]} answers again: its circuit is closed",
                        node=key[0],
                    )
            return
        if c is None:
            c = self._circuits[key] = _Circuit()
        c.failures += 1
        c.trial = False
        now = self.clock()
        if c.failures < CIRCUIT_FAILURES or now < c.open_until:
            return
        if c.open_until:  # the trial after an opening failed too: wait longer
            c.backoff = min(c.backoff * 2, CIRCUIT_MAX_OPEN_S)
        c.open_until = now + c.backoff
        self.event(
            EventKind.NODE_HEALTH,
            f"{key[1]} on {key[0]} failed {c.failures} requests in a row: routing around it "
            f"for {c.backoff:g}s, then one trial request",
            node=key[0],
            level=Level.WARNING,
        )
        if self.on_circuit_open is not None:
            self.on_circuit_open(key[0])

    def circuit_states(self) -> list[CircuitState]:
        """The replicas whose circuit is open or half-open, for the store's snapshot (and
        so the dashboard); read-only. Replicas that failed fewer than CIRCUIT_FAILURES
        requests in a row are closed and not listed."""
        return [
            CircuitState(
                node=key[0],
                instance_id=key[1],
                failures=c.failures,
                opened_at=c.open_until - c.backoff,
                open_until=c.open_until,
                trial=c.trial,
            )
            for key, c in self._circuits.items()
            if c.open_until
        ]

    def _open_circuits(self, now: float) -> frozenset[InstanceKey]:
        return frozenset(
            k for k, c in self._circuits.items() if c.trial or (c.open_until and now < c.open_until)
        )

    def release(self, lease: Lease) -> None:
        """Give the slot back (the request ended, however it ended)."""
        self.store.add_in_flight(lease.key, -1, self.clock())
        if self._deferred:
            self._retry_deferred_sooner(lease.node)
        self._schedule_pump()

    @property
    def pending_loads(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._pending)

    def close(self) -> None:
        self._unsubscribe()
        for t in self._pending.values():
            t.cancel()
        for w in self._waiters.values():
            if not w.fut.done():
                w.fut.set_exception(DispatchError("lmtui is shutting down"))

    # -- internals -----------------------------------------------------------------------

    def _decide(self, req: RequestInfo, now: float) -> Route | Load | Wait | Reject:
        pending = frozenset(self._pending) if self._pending else _NO_LOADS
        if self._deferred:
            pending = pending | self._deferred_now(now)
        d = schedule(
            self.store.snapshot, req, self.strategy, self.settings, now, pending, self._affinity
        )
        if req.ttl_s is not None and isinstance(d, Load):
            d = replace(d, ttl_s=req.ttl_s)  # LM Studio's JIT rule: the load it causes
        return d

    def _deferred_now(self, now: float) -> frozenset[tuple[str, str]]:
        """Refused loads not yet due to be asked again: the scheduler waits for them."""
        for key in [k for k, v in self._deferred.items() if v[0] < now - 4 * DEFER_MAX_S]:
            del self._deferred[key]  # long due and nobody asked again: the episode is over
        return frozenset(k for k, (at, _n, _t) in self._deferred.items() if at > now)

    def _retry_deferred_sooner(self, node: str) -> None:
        """A slot freed on a node that refused a load: a model there may be idle now, so ask
        again soon — but never sooner than DEFER_FIRST_S after the refusal."""
        now = self.clock()
        loop = asyncio.get_running_loop()
        for key, (at, refusals, refused) in list(self._deferred.items()):
            if key[0] == node and at > now:
                soon = max(now, refused + DEFER_FIRST_S)
                if soon < at:
                    self._deferred[key] = (soon, refusals, refused)
                    loop.call_later(soon - now, self._schedule_pump)

    def _defer(self, node: str, model: str, why: str) -> None:
        _at, refusals, _t = self._deferred.get((node, model), (0.0, 0, 0.0))
        wait = min(DEFER_MAX_S, DEFER_FIRST_S * 2**refusals)
        now = self.clock()
        self._deferred[(node, model)] = (now + wait, refusals + 1, now)
        if refusals == 0:  # one event per episode, not one per retry
            self.event(
                EventKind.LOAD,
                f"{node} cannot load {model} yet ({why}); its requests stay queued and the "
                "load is tried again when a model there is idle",
                node=node,
                model=model,
                level=Level.WARNING,
            )
        asyncio.get_running_loop().call_later(wait, self._schedule_pump)

    def _with_exclusions(self, req: RequestInfo, now: float) -> RequestInfo:
        """Avoid nodes where a load of this model failed recently (else we retry forever)."""
        model = self.settings.aliases.get(req.model, req.model)
        bad = {
            n
            for (n, m), t in self._load_failed.items()
            if m == model and now - t < LOAD_FAILURE_COOLOFF_S
        }
        if bad:
            req = replace(req, avoid_nodes=req.avoid_nodes | bad)
        if self._circuits and (open_ := self._open_circuits(now)):
            req = replace(req, exclude=req.exclude | open_)
        return req

    def _grant(self, d: Route, req: RequestInfo, now: float, enqueued_at: float) -> Lease:
        node, model = d.instance_key[0], self.settings.aliases.get(req.model, req.model)
        c = self._circuits.get(d.instance_key) if self._circuits else None
        if c is not None and c.open_until and now >= c.open_until:
            c.trial = True  # half-open: this request is the trial
        inst = self.store.add_in_flight(
            d.instance_key, +1, now, Event(now, EventKind.ROUTE, d.reason, node=node, model=model)
        )
        assert inst is not None, "the scheduler routed to an instance the store lacks"
        # Only while affinity is on: a bot with a new ``user`` per conversation would
        # otherwise fill the map (10,000 entries, ~2.5 MB) for nothing, and the soak saw
        # lmtui's RSS climb by that much with affinity off (bench/soak.py).
        if req.user is not None and self.settings.session_affinity:
            self._affinity[req.user] = d.instance_key
            self._affinity.move_to_end(req.user)
            if len(self._affinity) > 10_000:
                self._affinity.popitem(last=False)
        if d.preload is not None:
            self.start_load(d.preload)
        if self.on_route is not None:
            self.on_route(inst.model, inst.node, "queued" if req.queued else "direct")
        return Lease(d.instance_key, inst.node, inst.model, now - enqueued_at, d.reason, inst.url)

    async def _wait(
        self,
        req: RequestInfo,
        now: float,
        deadline: float,
        progress: Progress | None,
        why: Load | Wait,
    ) -> Lease:
        assert req.request_id is not None
        model = self.settings.aliases.get(req.model, req.model)
        # A request that comes back from a failed replica (``queued``) keeps its turn.
        adm = self.queue.admit(req.request_id, model, now, deadline, front=req.queued)
        if isinstance(adm, QueueRejected):
            self.event(
                EventKind.REJECT, f"queue full: {adm.reason}", model=model, level=Level.WARNING
            )
            raise QueueFull(adm.reason, adm.retry_after_s)
        fut: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[req.request_id] = _Waiter(replace(req, queued=True), fut, now)
        self._sync_depth(model)
        try:
            while True:
                if fut.done():  # granted (or refused) while progress() was being sent
                    return fut.result()
                left = deadline - self.clock()
                if left <= 0:
                    raise QueueTimeout(
                        f"no replica of {model} became free within {deadline - now:.0f}s "
                        f"(request deadline); {why.reason}"
                    )
                try:
                    async with asyncio.timeout(min(left, PROGRESS_EVERY_S)):
                        return await asyncio.shield(fut)
                except TimeoutError:
                    if progress is not None and not fut.done():
                        await progress(self._progress_text(model, now))
        except BaseException:
            # The client went away (cancelled, or its progress write failed): a lease
            # granted meanwhile must go back, or its slot would stay taken for good.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise
        finally:
            self._waiters.pop(req.request_id, None)
            if self.queue.cancel(req.request_id) is not None:
                self._sync_depth(model)

    def _progress_text(self, model: str, since: float) -> str:
        waited = self.clock() - since
        loading = [n for (n, m) in self._pending if m == model]
        if loading:
            node = loading[0]
            pct = ""
            for inst in self.store.snapshot.instances_of(model):
                if inst.node == node and inst.load_progress is not None:
                    pct = f", {inst.load_progress:.0%}"
            return f"loading model {model} on node {node}{pct} ({waited:.0f}s)"
        depth = self.queue.depth(model)
        return f"waiting for a free slot of {model}, {depth} queued ({waited:.0f}s)"

    def _on_change(self, _snap: object, _events: object) -> None:
        if self._waiters:
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._waiters:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Offer each model's oldest waiting request to the scheduler until one must wait."""
        self._pump_scheduled = False
        now = self.clock()
        for model in list(self.queue.depths()):
            while (head := self.queue.peek(model)) is not None:
                w = self._waiters.get(head.request_id)
                if w is None or w.fut.done():
                    self.queue.cancel(head.request_id)
                    continue
                req = self._with_exclusions(w.req, now)
                d = self._decide(req, now)
                if isinstance(d, Route):
                    self.queue.next_for(model)
                    w.fut.set_result(self._grant(d, req, now, w.enqueued_at))
                    continue
                if isinstance(d, Reject):
                    self.queue.fail(head.request_id)
                    w.fut.set_exception(RequestRejected(d.status, d.reason))
                    continue
                if isinstance(d, Load):
                    self.start_load(d)
                break
            self._sync_depth(model)

    def _sync_depth(self, model: str) -> None:
        self.store.set_queue_depth(model, self.queue.depth(model))

    def start_load(self, d: Load, *, quiet: bool = False) -> asyncio.Task[bool | None]:
        """Start loading ``d.model`` on ``d.node`` (with its evictions), or join the load of
        it already under way there. The task ends True once loaded, False when the node
        refused the load, None when it did not happen (deferred, or an eviction before it
        failed or went stale: those report themselves).
        ``quiet``: a retry of a failure the pool manager already reported, whose start and
        failure go to the log, not the events (its success is an event as always)."""
        key = (d.node, d.model)
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.get_running_loop().create_task(
                self._run_load(d, quiet), name=f"load:{d.model}@{d.node}"
            )
        return task

    async def _run_load(self, d: Load, quiet: bool = False) -> bool | None:
        t0 = self.clock()
        ok = False
        self.store.own_load(d.node, d.model, True)
        try:
            if not await self._evict(d):
                return None
            message = f"loading {d.model} on {d.node}: {d.reason}"
            if quiet:
                log.info("%s (retrying a failure already reported)", message)
            else:
                self.event(EventKind.LOAD, message, node=d.node, model=d.model)
            t_load = self.clock()
            try:
                # Returns once the node says the model is loaded (a router, a pool server
                # and LM Studio are polled or answer only then), so N below is the truth.
                # The idle TTL goes along for a node that keeps one itself (Ollama).
                await self.backends[d.node].load(d.model, ttl=self._load_ttl(d))
            except LoadDeferred as e:
                self._defer(d.node, d.model, str(e))
                return None
            except BackendError as e:
                self._load_failed[(d.node, d.model)] = self.clock()
                message = f"load of {d.model} on {d.node} failed: {e}"
                if quiet:
                    log.info("%s (already reported)", message)
                else:
                    self.event(
                        EventKind.ERROR, message, node=d.node, model=d.model, level=Level.ERROR
                    )
                return False
            ok = True
            self._remember_ttl(d)
            self._load_failed.pop((d.node, d.model), None)
            self._deferred.pop((d.node, d.model), None)
            self.event(
                EventKind.LOAD,
                f"{d.model} loaded on {d.node} in {self.clock() - t_load:.1f}s",
                node=d.node,
                model=d.model,
            )
            if self.refresh is not None:
                await self.refresh(d.node)  # see the new instance now, not a poll later
            return True
        finally:
            self.store.own_load(d.node, d.model, False)
            self._pending.pop((d.node, d.model), None)
            if self.on_load is not None:
                self.on_load(d.model, d.node, d.origin, ok, self.clock() - t0)
            self._schedule_pump()

    def _load_ttl(self, d: Load) -> float | None:
        """The idle TTL of the instance ``d`` loads: the request's own ``ttl`` when one
        caused it, else the configured one (None: for good, e.g. pinned)."""
        if d.ttl_s is not None:
            return d.ttl_s
        pool = self.settings.pool
        return wanted_ttl(
            pool.lifetimes,
            d.model,
            pool.priorities.get(d.model, "normal"),
            pinned=d.model in pool.pinned,
        )

    def _remember_ttl(self, d: Load) -> None:
        """A request's ``ttl`` holds for the instance it loaded, and only for that one: a
        later load of the model there without one goes back to the configured TTL."""
        pool = self.settings.pool
        held = pool.lifetimes.loaded_with
        key = (d.node, d.model)
        if d.ttl_s is None and key not in held:
            return
        changed = dict(held)
        if d.ttl_s is None:
            del changed[key]
        else:
            changed[key] = d.ttl_s
            while len(changed) > MAX_LOAD_TTLS:  # bounded: the oldest go first
                del changed[next(iter(changed))]
        lifetimes = replace(pool.lifetimes, loaded_with=MappingProxyType(changed))
        self.settings = replace(self.settings, pool=replace(pool, lifetimes=lifetimes))

    async def unload_instance(
        self,
        key: InstanceKey,
        reason: str,
        *,
        kind: EventKind = EventKind.EVICT,
        eviction: str | None = None,
        quiet: bool = False,
    ) -> None:
        """Unload one instance, telling why. It reads as ``unloading`` meanwhile, so nothing
        is routed to it; if the node refuses, it is ``loaded`` again and BackendError raised.
        ``eviction`` counts it as an eviction with that reason code (``make_room``,
        ``idle_ttl``, ``operator``); an operator's plain unload is none. ``quiet``: a retry
        of a failure already reported, told to the log only."""
        inst = self.store.snapshot.instances[key]
        self.store.set_instance_state(key, InstanceState.UNLOADING)
        if quiet:
            log.info("%s (retrying a failure already reported)", reason)
        else:
            self.event(kind, reason, node=inst.node, model=inst.model)
        try:
            await self.backends[inst.node].unload(inst.model, inst.instance_id)
        except BackendError:
            self.store.set_instance_state(key, InstanceState.LOADED)
            raise
        if eviction is not None and self.on_evict is not None:
            self.on_evict(inst.model, inst.node, eviction)

    async def _evict(self, d: Load) -> bool:
        """Unload what the plan evicts. False when the plan went stale (an instance got busy)."""
        for key in d.evict:
            inst = self.store.snapshot.instances.get(key)
            if inst is None:
                continue
            if inst.busy > 0 or inst.in_flight > 0:
                self.event(
                    EventKind.EVICT,
                    f"not evicting {inst.model} on {inst.node}: it became busy; planning again",
                    node=inst.node,
                    model=inst.model,
                )
                return False
            try:
                await self.unload_instance(
                    key,
                    f"evicting {inst.model} from {inst.node} to make room for {d.model}",
                    eviction="make_room",
                )
            except BackendError as e:
                self.event(
                    EventKind.ERROR,
                    f"evicting {inst.model} from {inst.node} failed: {e}",
                    node=inst.node,
                    model=inst.model,
                    level=Level.ERROR,
                )
                return False
        if d.evict and self.refresh is not None:
            await self.refresh(d.node)
        return True

    def event(
        self,
        kind: EventKind,
        message: str,
        *,
        node: str | None = None,
        model: str | None = None,
        level: Level = Level.INFO,
    ) -> None:
        self.store.record(Event(self.clock(), kind, message, node=node, model=model, level=level))
