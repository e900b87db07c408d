"""Operator commands, carried out — and the pool manager.

``Controller.execute`` takes one of the command structs of ``commands.py`` (the UI sends
them through ``EngineClient``, the control API decodes them from JSON), checks it against
the current snapshot, records an event with its reason, and changes the run-time state
(``RunState``: pins, strategy, drained nodes), which it owns. Each change is pushed to the
components that act on it — the dispatcher's settings and strategy, the store's pins and
drained flags — and saved to the overrides file, never to the user's config.

The pool manager carries out the *upkeep* plan on a timer (``core/rebalance.py``): it reloads
pinned models that disappeared, keeps ``min_replicas``, and unloads models idle past
``[pool] idle_ttl``, each step an event. A step a node refuses is reported once and retried
with a backoff (``core/retry.py``), quietly. *Proposals* (spread a hot model to an idle node,
move models off a drained node, unload a cold model's extra replicas: ``core/proposals.py``)
are never automatic: ``rebalance`` (``r``) shows them with the upkeep not yet done and
carries them out only with ``apply``.
Each tick the pool manager also puts the models' request rates (``Demand``,
``engine/demand.py``) into the dispatcher's settings, for the ``cost`` and ``gdsf`` eviction
policies.

Two more upkeep chores run on the tick. **Preload** (``core/preload.py``, ``[pool] preload``):
at start, when a node comes back healthy or is undrained, and after an eviction or unload
frees room, the most requested models loaded nowhere go onto free memory, never evicting
anything (load origin ``preload``); each preload that lands tries the next one. A model the
operator unloaded is not preloaded back for ``PRELOAD_HOLD_S`` unless asked for again.
**Lifetimes** (``core/lifetime.py``): where the node keeps a model's lifetime itself (Ollama
``keep_alive``) and reports an expiry sooner than lmtui wants (a pinned model, or one with a
TTL), the lifetime is set again on the loaded model, at most once per
``LIFETIME_REFRESH_S`` per instance (or per half the time left, when that is shorter).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable
from functools import partial

from lmtui.backends.base import BackendError
from lmtui.config import Config
from lmtui.core.events import Event, EventKind, Level
from lmtui.core.lifetime import lifetime_refreshes
from lmtui.core.model import Health, Instance, InstanceKey
from lmtui.core.placement import Placement, load_exclude, place, stable_seed
from lmtui.core.plan import make_plan
from lmtui.core.preload import plan_preload
from lmtui.core.rebalance import PlanStep, RebalancePlan, plan_rebalance, plan_upkeep
from lmtui.core.retry import StepBackoff, StepKey
from lmtui.core.scheduler import Load, Strategy
from lmtui.engine import commands as cmd
from lmtui.engine.commands import CommandError, Result
from lmtui.engine.demand import Demand
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.poller import Poller
from lmtui.engine.runtime import RunState, with_no_load_nodes, with_pinned, with_request_rate
from lmtui.engine.settings import host_keys, no_load_nodes, no_unload_nodes, preload_settings
from lmtui.engine.store import Store

log = logging.getLogger(__name__)

#: A model the operator unloaded or evicted is not preloaded back for this long, unless a
#: request asks for it meanwhile (then it is simply in demand again).
PRELOAD_HOLD_S = 600.0
#: Set a node-held lifetime again at most this often per instance (or, when the node would
#: unload it sooner, every half of the time left): a server that ignores it, or a client
#: resetting it after every request, must not cause a call every tick.
LIFETIME_REFRESH_S = 30.0


class Controller:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        poller: Poller,
        config: Config,
        state: RunState,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.poller = poller
        self.config = config
        #: The run-time choices; this controller is the only one that changes them.
        self.state = state
        self.clock = clock
        #: How often each model is asked for; the pool manager pushes its rates every tick.
        self.demand = Demand()
        #: Plan steps that failed, and when the pool manager may try each again.
        self._backoff = StepBackoff()
        self._task: asyncio.Task[None] | None = None
        #: ``[pool] preload*``; a preload pass is due (armed) at start, when a node comes
        #: back, and when room frees up.
        self.preload = preload_settings(config)
        self._preload_armed = self.preload.enabled
        #: Node health as the last tick saw it, to notice a node coming back.
        self._health: dict[str, Health] = {}
        #: Models the operator unloaded, and when: not preloaded back for a while.
        self._held: dict[str, float] = {}
        #: Nodes sharing one host's memory (``[nodes.ssh]`` host): node -> host key.
        self.hosts = host_keys(config)
        #: When each instance's node-held lifetime was last set again.
        self._kept: dict[InstanceKey, float] = {}

    # -- the one entry point ------------------------------------------------------------------

    async def execute(self, command: cmd.Command) -> Result:
        """Carry out ``command``; raises CommandError with the reason when it cannot be."""
        cmd.validate(command)
        match command:
            case cmd.Load(model=model, node=node):
                return Result(self._load(self.config.resolve_model(model), node))
            case cmd.Unload(node=node, instance_id=iid, force=force):
                return Result(await self._unload_command(node, iid, force=force))
            case cmd.Evict(node=node, instance_id=iid):
                return Result(await self._evict(node, iid))
            case cmd.Pin(model=model):
                return Result(self._pin(self.config.resolve_model(model), True))
            case cmd.Unpin(model=model):
                return Result(self._pin(self.config.resolve_model(model), False))
            case cmd.Drain(node=node):
                self._drain(node, True)
                return Result(f"{node} drained: no new requests")
            case cmd.Undrain(node=node):
                self._drain(node, False)
                return Result(f"{node} back in rotation")
            case cmd.SetStrategy(strategy=name):
                return Result(self._set_strategy(name))
            case cmd.Rebalance(apply=apply):
                plan = await self.rebalance(apply=apply)
                return Result(plan.summary(), plan)
        raise CommandError(f"unknown command {type(command).__name__}", 400)

    # -- helpers ------------------------------------------------------------------------------

    def _event(
        self,
        message: str,
        *,
        node: str | None = None,
        model: str | None = None,
        kind: EventKind = EventKind.COMMAND,
        level: Level = Level.INFO,
    ) -> None:
        self.store.record(Event(self.clock(), kind, message, node=node, model=model, level=level))

    def _node(self, name: str) -> None:
        if name not in self.store.snapshot.nodes:
            raise CommandError(f"no node named {name!r}", 404)

    def _instance(self, node: str, instance_id: str) -> Instance:
        inst = self.store.snapshot.instances.get((node, instance_id))
        if inst is None:
            raise CommandError(f"no instance {instance_id!r} on node {node!r}", 404)
        return inst

    def _changed(self) -> None:
        """The run-time state changed: push what derives from it, then save it."""
        d = self.dispatcher
        d.settings = with_pinned(d.settings, self.state.pinned)
        d.strategy = self.state.strategy
        if self.store.ctx.pinned != self.state.pinned:
            self.store.set_pinned(self.state.pinned, self.clock())
        try:
            self.state.save()
        except OSError as e:  # the command took effect; only its persistence failed
            self._event(
                f"could not save overrides to {self.state.path}: {e}",
                level=Level.ERROR,
                kind=EventKind.ERROR,
            )

    # -- commands -----------------------------------------------------------------------------

    def _load(self, model: str, node: str | None) -> str:
        d = self.dispatcher
        snap = self.store.snapshot
        if node is not None:
            self._node(node)
            if any(i.node == node for i in snap.instances_of(model)):
                raise CommandError(f"{model} is already on {node}")
        plan = place(
            snap,
            model,
            self.clock(),
            d.settings.pool,
            pending_loads=d.pending_loads,
            exclude=load_exclude(snap, model, node),
            seed=stable_seed(model),
        )
        if not isinstance(plan, Placement):
            raise CommandError(f"cannot load {model}: {plan.reason}")
        d.start_load(
            Load(
                plan.node,
                model,
                plan.evict,
                f"operator asked; {plan.reason}",
                plan.footprint_bytes,
                "operator",
            )
        )
        return f"loading {model} on {plan.node}"

    async def _unload_command(self, node: str, instance_id: str, *, force: bool) -> str:
        inst = self._instance(node, instance_id)
        if inst.in_flight and not force:
            raise CommandError(
                f"{inst.model} on {node} has {inst.in_flight} request(s) in "
                "flight; drain it first or unload with force"
            )
        await self._unload(inst.key, f"operator unloaded {inst.model} from {node}")
        self._held[inst.model] = self.clock()
        return f"unloaded {inst.model} from {node}"

    async def _evict(self, node: str, instance_id: str) -> str:
        inst = self._instance(node, instance_id)
        if inst.pinned:
            raise CommandError(f"{inst.model} is pinned; unpin it first")
        if inst.busy:
            raise CommandError(f"{inst.model} on {node} is busy; evict only takes idle models")
        self._held[inst.model] = self.clock()
        await self._unload(
            inst.key, f"operator evicted {inst.model} from {node}", eviction="operator"
        )
        return f"evicted {inst.model} from {node}"

    async def _unload(
        self, key: InstanceKey, reason: str, *, eviction: str | None = None, quiet: bool = False
    ) -> None:
        inst = self.store.snapshot.instances[key]
        try:
            await self.dispatcher.unload_instance(
                key, reason, kind=EventKind.UNLOAD, eviction=eviction, quiet=quiet
            )
        except BackendError as e:
            raise CommandError(f"unloading {inst.model} from {inst.node} failed: {e}", 502) from e
        await self.poller.poll_once(inst.node)

    def _pin(self, model: str, pinned: bool) -> str:
        if pinned and not self._known(model):
            raise CommandError(
                f"no model {model!r} is known: it is in no [[models]] entry, loaded nowhere "
                "and offered by no node",
                404,
            )
        self.state.set_pinned(model, pinned)
        self._changed()
        verb = "pinned" if pinned else "unpinned"
        self._event(f"{model} {verb}", model=model)
        return f"{model} {verb}"

    def _known(self, model: str) -> bool:
        """Does the config or any node know ``model`` (so a pin of it can ever hold)?"""
        if self.config.model(model) is not None:
            return True
        snap = self.store.snapshot
        return any(True for _ in snap.instances_of(model)) or any(
            a.key == model for n in snap.nodes.values() for a in n.available
        )

    def _drain(self, node: str, drained: bool) -> None:
        self._node(node)
        self.state.set_drained(node, drained)
        self._changed()
        self.store.set_drained(node, drained, self.clock())
        if not drained:
            self._arm_preload()

    def _set_strategy(self, name: str) -> str:
        try:
            strategy = Strategy(name)
        except ValueError as e:
            choices = ", ".join(s.value for s in Strategy)
            raise CommandError(f"unknown strategy {name!r} (choose {choices})", 400) from e
        self.state.set_strategy(strategy)
        self._changed()
        self._event(f"strategy set to {strategy.value}")
        return f"strategy: {strategy.value}"

    def plan(self) -> RebalancePlan:
        """What ``r`` shows: the upkeep not yet done, then the proposals."""
        return self._plan(plan_rebalance)

    def upkeep_plan(self) -> RebalancePlan:
        """What the pool manager carries out by itself: pins, ``min_replicas``, idle TTL."""
        return self._plan(plan_upkeep)

    def _plan(self, planner: Callable[..., RebalancePlan]) -> RebalancePlan:
        self._refresh_capabilities()  # never plan a step a backend cannot carry out
        d = self.dispatcher
        return planner(
            self.store.snapshot,
            d.settings,
            self.clock(),
            pending_loads=d.pending_loads,
        )

    async def rebalance(self, *, apply: bool = False) -> RebalancePlan:
        """The plan ``r`` shows (upkeep not yet done and proposals), carried out with
        ``apply``: the operator's confirmation is what proposals wait for."""
        plan = self.plan()
        if apply and not plan.empty:
            self._event(f"rebalance: {plan.summary()}")
            await self._carry_out(plan, automatic=False)
        return plan

    def _situation(self, step: PlanStep) -> Hashable:
        """What a step's failure depends on: when it changes (the node is healthy again,
        drained or undrained; the instance is a new one), a failure is news again."""
        node = self.store.snapshot.nodes.get(step.node)
        if node is None:
            return None
        return (node.health is Health.HEALTHY, node.drained, step.instance_id)

    async def _carry_out(self, plan: RebalancePlan, *, automatic: bool) -> None:
        """Carry out ``plan``'s steps in order. ``automatic`` (the pool manager): a step
        that failed waits out its backoff (``core/retry.py``) and a failure already reported
        is not reported again. The operator's confirmed plan tries every step and reports
        every failure; both teach the backoff."""
        d = self.dispatcher
        now = self.clock()
        no_room: set[str] = set()  # nodes where a make-room unload did not happen
        for step in plan.steps:
            key = (step.action, step.node, step.model)
            situation = self._situation(step)
            quiet = automatic and self._backoff.reported(key, situation)
            if automatic and not self._backoff.due(key, now, situation):
                if step.code == "make_room":
                    no_room.add(step.node)
                continue
            if step.action == "unload" and step.key is not None:
                inst = self.store.snapshot.instances.get(step.key)
                if inst is None or inst.busy:  # the plan went stale: skip, plan again later
                    if step.code == "make_room":
                        no_room.add(step.node)
                    continue
                try:
                    await self._unload(
                        step.key,
                        f"unloading {step.model} from {step.node}: {step.reason}",
                        eviction=step.code or "rebalance",
                        quiet=quiet,
                    )
                except CommandError as e:
                    if step.code == "make_room":
                        no_room.add(step.node)
                    self._step_failed(key, situation, e.message, quiet=quiet, automatic=automatic)
                else:
                    self._backoff.succeeded(key)
            elif step.action == "load":
                if step.node in no_room:
                    continue  # without the room its evictions were to make, it cannot fit
                task = d.start_load(
                    Load(step.node, step.model, (), step.reason, step.bytes, step.code or "pool"),
                    quiet=quiet,
                )
                task.add_done_callback(partial(self._load_done, key, situation))
                if step.code == "preload":
                    task.add_done_callback(self._preload_landed)

    def _step_failed(
        self, key: StepKey, situation: Hashable, message: str, *, quiet: bool, automatic: bool
    ) -> None:
        self._backoff.failed(key, self.clock(), situation, message)
        if quiet:
            log.info("%s (already reported)", message)
            return
        if automatic:
            f = self._backoff.get(key)
            wait = f.delay_s if f is not None else 0.0
            message += (
                f"; the pool manager tries again in {wait:.0f}s, then less often, "
                "without reporting it again"
            )
        _action, node, model = key
        self._event(message, node=node, model=model, kind=EventKind.ERROR, level=Level.ERROR)

    def _load_done(
        self, key: StepKey, situation: Hashable, task: asyncio.Task[bool | None]
    ) -> None:
        """A load the plan started ended: the dispatcher reported it; teach the backoff."""
        if task.cancelled() or task.exception() is not None:
            return
        ok = task.result()
        if ok:
            self._backoff.succeeded(key)
        elif ok is False:
            self._backoff.failed(key, self.clock(), situation, "the node refused the load")

    # -- preload and lifetimes ------------------------------------------------------------------

    def _arm_preload(self) -> None:
        if self.preload.enabled:
            self._preload_armed = True

    def room_freed(self, node: str) -> None:
        """An eviction or unload on ``node`` freed memory: a preload pass is due."""
        self._arm_preload()

    def _preload_landed(self, task: asyncio.Task[bool | None]) -> None:
        """A preload finished loading: the next model may fit too (one per node a pass)."""
        if not task.cancelled() and task.exception() is None and task.result():
            self._arm_preload()

    def _watch_health(self) -> None:
        """Arm a preload pass when a node comes back healthy."""
        for name, node in self.store.snapshot.nodes.items():
            prev = self._health.get(name)
            if node.health is Health.HEALTHY and prev is not None and prev is not Health.HEALTHY:
                self._arm_preload()
            self._health[name] = node.health

    def preload_plan(self) -> tuple[PlanStep, ...]:
        """The preloads due now (``core/preload.py``), for the demand as it is."""
        self._refresh_capabilities()
        d = self.dispatcher
        pool = d.settings.pool
        now = self.clock()
        last = self.demand.last_request()
        for model, at in list(self._held.items()):
            if now - at >= PRELOAD_HOLD_S or last.get(model, -math.inf) > at:
                del self._held[model]  # the hold is over, or it was asked for again
        rates = pool.request_rate
        if self._held:
            rates = {m: r for m, r in rates.items() if m not in self._held}
        return plan_preload(
            self.store.snapshot,
            pool,
            self.preload,
            now,
            rates=rates,
            last_request=last,
            pending_loads=d.pending_loads,
            hosts=self.hosts,
        )

    async def _preload(self) -> None:
        self._preload_armed = False
        steps = self.preload_plan()
        if steps:
            await self._carry_out(make_plan(steps, self.dispatcher.settings.pool), automatic=True)

    async def keep_lifetimes(self) -> None:
        """Set the lifetime again of instances their node would unload too soon."""
        d = self.dispatcher
        pool = d.settings.pool
        now = self.clock()
        snap = self.store.snapshot
        nodes = frozenset(n for n, b in d.backends.items() if b.sets_lifetime) - pool.no_load_nodes
        if not nodes:
            return
        for key in [k for k in self._kept if k not in snap.instances]:
            del self._kept[key]
        for inst, ttl, why in lifetime_refreshes(
            snap.instances.values(), pool.lifetimes, pool.priorities, pool.pinned, now, nodes=nodes
        ):
            # At most every LIFETIME_REFRESH_S, sooner when the node would unload it first.
            left = inst.expires_at - now if inst.expires_at is not None else 0.0
            if now - self._kept.get(inst.key, -math.inf) < min(LIFETIME_REFRESH_S, left / 2):
                continue
            first = inst.key not in self._kept
            self._kept[inst.key] = now
            what = "to stay loaded (pinned)" if ttl is None else f"an idle TTL of {ttl:.0f}s"
            message = f"lifetime: {inst.model} on {inst.node}: {why}; setting {what} again"
            if first:
                self._event(message, node=inst.node, model=inst.model, kind=EventKind.LOAD)
            else:
                log.info("%s", message)
            try:
                await d.backends[inst.node].set_lifetime(inst.model, inst.instance_id, ttl)
            except BackendError as e:
                text = f"setting the lifetime of {inst.model} on {inst.node} failed: {e}"
                if first:
                    self._event(
                        text,
                        node=inst.node,
                        model=inst.model,
                        kind=EventKind.ERROR,
                        level=Level.ERROR,
                    )
                else:
                    log.info("%s", text)
                continue
            await self.poller.poll_once(inst.node)

    # -- the pool manager ---------------------------------------------------------------------

    def _refresh_capabilities(self) -> None:
        """A llama.cpp node is known to be single-model (unable to load or unload) only once
        polled; the engine starts the settings with what it knew before the first poll."""
        d = self.dispatcher
        d.settings = with_no_load_nodes(
            d.settings, no_load_nodes(d.backends), no_unload_nodes(d.backends)
        )

    def start(self, interval_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(interval_s), name="pool-manager"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            d = self.dispatcher
            d.settings = with_request_rate(d.settings, self.demand.rates(self.clock()))
            # Act only on a picture where every node has answered at least once: before
            # that, "loaded nowhere" may just mean "not polled yet".
            if any(n.last_poll_at is None for n in self.store.snapshot.nodes.values()):
                continue
            try:
                plan = self.upkeep_plan()  # proposals wait for the operator (``r``)
                if not plan.empty:
                    await self._carry_out(plan, automatic=True)
                await self.keep_lifetimes()
                self._watch_health()
                # After the upkeep's own loads: a preload never races a load in progress.
                if self._preload_armed and not d.pending_loads:
                    await self._preload()
            except Exception:
                log.exception("pool manager step failed")
