"""Operator commands: load, unload, evict, pin, drain, strategy, rebalance — and the pool manager.

The UI (through ``EngineClient``) and the control API call these; each checks what it is
asked against the current snapshot, records an event with its reason, and persists run-time
choices (pins, strategy, drained nodes) to the overrides file — never to the user's config.

The pool manager is the same planner on a timer: it reloads pinned models that disappeared,
keeps ``min_replicas``, and unloads models idle past ``[pool] idle_ttl``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lmtui.backends.base import BackendError
from lmtui.config import Overrides
from lmtui.config.overrides import save_overrides
from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import Instance, InstanceKey
from lmtui.core.placement import Placement, place, stable_seed
from lmtui.core.rebalance import RebalancePlan, plan_rebalance
from lmtui.core.scheduler import Load, SchedulerSettings, Strategy
from lmtui.engine.settings import no_load_nodes

if TYPE_CHECKING:
    from lmtui.engine.dispatch import Dispatcher
    from lmtui.engine.engine import Engine

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A command that cannot be carried out; ``status`` is its HTTP status in the API."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Controller:
    def __init__(self, engine: Engine, overrides: Overrides, overrides_path: Path | None) -> None:
        self.engine = engine
        self.overrides = overrides
        self.overrides_path = overrides_path
        self._task: asyncio.Task[None] | None = None

    # -- helpers ----------------------------------------------------------------------------

    @property
    def _dispatcher(self) -> Dispatcher:
        d = self.engine.dispatcher
        if d is None:
            raise CommandError("the engine is not running", 503)
        return d

    def _event(
        self,
        message: str,
        *,
        node: str | None = None,
        model: str | None = None,
        kind: EventKind = EventKind.COMMAND,
        level: Level = Level.INFO,
    ) -> None:
        self.engine.store.record(
            Event(self.engine.clock(), kind, message, node=node, model=model, level=level)
        )

    def _node(self, name: str) -> None:
        if name not in self.engine.store.snapshot.nodes:
            raise CommandError(f"no node named {name!r}", 404)

    def _instance(self, node: str, instance_id: str) -> Instance:
        inst = self.engine.store.snapshot.instances.get((node, instance_id))
        if inst is None:
            raise CommandError(f"no instance {instance_id!r} on node {node!r}", 404)
        return inst

    def _save(self) -> None:
        if self.overrides_path is None:
            return
        try:
            save_overrides(self.overrides_path, self.overrides)
        except OSError as e:  # the command took effect; only its persistence failed
            self._event(
                f"could not save overrides to {self.overrides_path}: {e}",
                level=Level.ERROR,
                kind=EventKind.ERROR,
            )

    # -- commands ---------------------------------------------------------------------------

    async def load(self, model: str, node: str | None = None) -> str:
        d = self._dispatcher
        model = self.engine.resolve_model(model)
        snap = self.engine.store.snapshot
        if node is not None:
            self._node(node)
            if any(i.node == node for i in snap.instances_of(model)):
                raise CommandError(f"{model} is already on {node}")
            exclude = frozenset(snap.nodes) - {node}  # there and nowhere else
        else:
            exclude = frozenset(i.node for i in snap.instances_of(model))  # one more replica
        plan = place(
            snap,
            model,
            self.engine.clock(),
            d.settings.pool,
            pending_loads=d.pending_loads,
            exclude=exclude,
            seed=stable_seed(model),
        )
        if not isinstance(plan, Placement):
            raise CommandError(f"cannot load {model}: {plan.reason}")
        d.start_load(
            Load(
                plan.node, model, plan.evict, f"operator asked; {plan.reason}", plan.footprint_bytes
            )
        )
        return f"loading {model} on {plan.node}"

    async def unload(self, node: str, instance_id: str, *, force: bool = False) -> str:
        inst = self._instance(node, instance_id)
        if inst.in_flight and not force:
            raise CommandError(
                f"{inst.model} on {node} has {inst.in_flight} request(s) in "
                "flight; drain it first or unload with force"
            )
        await self._unload(inst.key, f"operator unloaded {inst.model} from {node}")
        return f"unloaded {inst.model} from {node}"

    async def evict(self, node: str, instance_id: str) -> str:
        inst = self._instance(node, instance_id)
        if inst.pinned:
            raise CommandError(f"{inst.model} is pinned; unpin it first")
        if inst.busy:
            raise CommandError(f"{inst.model} on {node} is busy; evict only takes idle models")
        await self._unload(inst.key, f"operator evicted {inst.model} from {node}")
        return f"evicted {inst.model} from {node}"

    async def _unload(self, key: InstanceKey, reason: str) -> None:
        inst = self.engine.store.snapshot.instances[key]
        try:
            await self._dispatcher.unload_instance(key, reason, kind=EventKind.UNLOAD)
        except BackendError as e:
            raise CommandError(f"unloading {inst.model} from {inst.node} failed: {e}", 502) from e
        await self.engine.poller.poll_once(inst.node)

    async def pin(self, model: str, pinned: bool = True) -> str:
        model = self.engine.resolve_model(model)
        config_pinned = any(m.name == model and m.pinned for m in self.engine.config.models)
        self.overrides = self.overrides.set_pinned(model, pinned, config_pinned=config_pinned)
        self._save()
        self.engine.apply_pins(self.engine.config.apply_overrides(self.overrides).pinned)
        verb = "pinned" if pinned else "unpinned"
        self._event(f"{model} {verb}", model=model)
        return f"{model} {verb}"

    async def drain(self, node: str, drained: bool = True) -> str:
        self._node(node)
        self.overrides = self.overrides.set_drained(node, drained)
        self._save()
        self.engine.store.set_drained(node, drained, self.engine.clock())
        return f"{node} {'drained: no new requests' if drained else 'back in rotation'}"

    async def set_strategy(self, name: str) -> str:
        try:
            strategy = Strategy(name)
        except ValueError as e:
            choices = ", ".join(s.value for s in Strategy)
            raise CommandError(f"unknown strategy {name!r} (choose {choices})", 400) from e
        self._dispatcher.strategy = strategy
        self.overrides = self.overrides.set_strategy(strategy.value)
        self._save()
        self._event(f"strategy set to {strategy.value}")
        return f"strategy: {strategy.value}"

    def plan(self) -> RebalancePlan:
        d = self._dispatcher
        return plan_rebalance(
            self.engine.store.snapshot,
            d.settings,
            self.engine.clock(),
            idle_ttl_s=self.engine.config.pool.idle_ttl,
            pending_loads=d.pending_loads,
        )

    async def rebalance(self, *, apply: bool = False) -> RebalancePlan:
        plan = self.plan()
        if apply and not plan.empty:
            self._event(f"rebalance: {plan.summary()}")
            await self._carry_out(plan)
        return plan

    async def _carry_out(self, plan: RebalancePlan) -> None:
        d = self._dispatcher
        for step in plan.steps:
            if step.action == "unload" and step.key is not None:
                inst = self.engine.store.snapshot.instances.get(step.key)
                if inst is None or inst.busy:  # the plan went stale: skip, plan again later
                    continue
                try:
                    await self._unload(
                        step.key, f"unloading {step.model} from {step.node}: {step.reason}"
                    )
                except CommandError as e:
                    self._event(
                        e.message,
                        node=step.node,
                        model=step.model,
                        kind=EventKind.ERROR,
                        level=Level.ERROR,
                    )
            elif step.action == "load":
                d.start_load(Load(step.node, step.model, (), step.reason, step.bytes))

    # -- the pool manager -------------------------------------------------------------------

    def _refresh_capabilities(self) -> None:
        """A llama.cpp node is known to be single-model (unable to load) only once polled."""
        d = self._dispatcher
        nodes = no_load_nodes(self.engine.backends)
        if nodes != d.settings.pool.no_load_nodes:
            d.settings = replace(d.settings, pool=replace(d.settings.pool, no_load_nodes=nodes))

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
            # Act only on a picture where every node has answered at least once: before
            # that, "loaded nowhere" may just mean "not polled yet".
            if any(n.last_poll_at is None for n in self.engine.store.snapshot.nodes.values()):
                continue
            try:
                self._refresh_capabilities()
                plan = self.plan()
                if not plan.empty:
                    await self._carry_out(plan)
            except Exception:
                log.exception("pool manager step failed")


def with_pins(settings: SchedulerSettings, pinned: frozenset[str]) -> SchedulerSettings:
    """Scheduler settings with ``pinned`` as the pool's pinned set."""
    return replace(settings, pool=replace(settings.pool, pinned=pinned))
