"""The mutable heart of one simulated server: loaded instances, slots, counters and timers.

Kind-specific HTTP code (``lmtui.sim.kinds``) asks this object to load, unload and run
requests; it never decides *policy* itself beyond what ``physics`` says. Everything runs on
one event loop, so plain attributes need no locks.

Times: ``clock()`` is the loop's monotonic clock (real seconds); simulated durations from
``physics`` go through ``real()`` which multiplies by ``time_scale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from lmtui.sim import physics
from lmtui.sim.faults import Faults
from lmtui.sim.slots import SlotPool
from lmtui.sim.spec import SimModel, SimNodeSpec


class SimLoadError(Exception):
    """A load the simulated server refuses (does not fit, too many models)."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"cannot load {model!r}: {reason}")
        self.model = model
        self.reason = reason


@dataclass
class Counters:
    """Monotonic totals, as llama.cpp and vLLM export them."""

    requests_total: int = 0
    prompt_tokens_total: int = 0
    prompt_seconds_total: float = 0.0
    tokens_predicted_total: int = 0
    tokens_predicted_seconds_total: float = 0.0
    n_decode_total: int = 0
    n_tokens_max: int = 0


@dataclass(eq=False)
class Job:
    """One request inside the server; kept afterwards as a record tests can inspect.

    Times are ``loop.time()`` seconds: ``arrived`` when the server took the request,
    ``started`` when it got a slot, ``first_token`` after prompt processing, ``finished``
    when the last token (or the error) went out.
    """

    id: int
    model: str
    instance_id: str
    prompt_tokens: int
    completion_tokens: int
    arrived: float
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    decoded: int = 0
    slot: int = -1
    outcome: str = "running"  # running | ok | cancelled | dropped | error


@dataclass(eq=False)
class SimInstance:
    """A loaded (or loading) copy of a model."""

    instance_id: str
    model: SimModel
    pool: SlotPool[Job]
    context_length: int
    state: str = "loading"  # loading | loaded
    #: Idle seconds (simulated) before the server unloads it by itself; None = never.
    ttl_s: float | None = None
    #: Loaded just-in-time by a request (LM Studio auto-evict only touches these).
    jit: bool = False
    last_used: float = 0.0
    loaded_at_wall: float = field(default_factory=time.time)
    load_time_s: float = 0.0
    #: Requests holding or waiting for one of its slots.
    jobs: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: This instance's own totals (a llama.cpp router reports per-model metrics).
    counters: Counters = field(default_factory=lambda: Counters())
    #: Asked to unload and still exiting (a llama.cpp router's child process): it takes no
    #: new requests, but holds its memory and its place under the instance limit.
    stopping: bool = False

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def busy(self) -> bool:
        return self.jobs > 0


class SimState:
    """Instances, slots, counters, the TTL reaper and the request log of one node."""

    def __init__(
        self,
        spec: SimNodeSpec,
        *,
        time_scale: float,
        rng: random.Random,
        faults: Faults | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.spec = spec
        #: The node's fault switches (``memory_gb`` shrinks what loads may use).
        self.faults = faults or Faults()
        self.time_scale = time_scale
        self.rng = rng
        self.instances: dict[str, SimInstance] = {}
        # LM Studio before 0.4: one request at a time across the whole server.
        self.server_pool: SlotPool[Job] | None = SlotPool(1) if spec.serial else None
        self.counters = Counters()
        self.records: deque[Job] = deque(maxlen=2000)
        #: Bumped whenever the set or state of instances changes; keys payload caches.
        self.layout_version = 0
        #: Requests inside the server that do not hold a slot yet (queued or loading).
        self.waiting = 0
        self._job_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    # --- clocks -----------------------------------------------------------------------

    @staticmethod
    def clock() -> float:
        return asyncio.get_running_loop().time()

    def real(self, simulated_s: float) -> float:
        """Real seconds for a simulated duration."""
        return simulated_s * self.time_scale

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the TTL reaper (call from the running loop)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop())

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._reaper] if self._reaper else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the caller's cancel propagates
        self._tasks.clear()
        self._reaper = None

    # --- queries ----------------------------------------------------------------------

    def instances_of(self, key: str) -> list[SimInstance]:
        return [i for i in self.instances.values() if i.key == key]

    def pick_instance(self, key: str) -> SimInstance | None:
        """The loaded instance of ``key`` with the fewest requests (else a loading one);
        one on its way out (``stopping``) takes no new work."""
        cands = [i for i in self.instances_of(key) if not i.stopping]
        if not cands:
            return None
        return min(cands, key=lambda i: (i.state != "loaded", i.jobs, i.last_used))

    def memory_used_gb(self) -> float:
        return sum(i.model.size_gb for i in self.instances.values())

    def in_flight(self) -> int:
        return sum(i.jobs for i in self.instances.values())

    def processing(self) -> int:
        return sum(i.pool.in_use for i in self.instances.values())

    def expires_at_wall(self, inst: SimInstance) -> float | None:
        """Wall-clock time the reaper will unload ``inst`` if nothing uses it."""
        if inst.ttl_s is None:
            return None
        now = self.clock()
        start = now if inst.busy else inst.last_used
        return time.time() + max(0.0, start + self.real(inst.ttl_s) - now)

    # --- loading ----------------------------------------------------------------------

    def plan(
        self,
        model: SimModel,
        *,
        evict_for_memory: bool = False,
        evict_for_count: bool = False,
        max_count: int = 0,
    ) -> physics.RoomPlan:
        residents = [
            physics.Resident(
                i.instance_id,
                i.model.size_gb,
                i.busy or i.state != "loaded" or i.stopping,
                i.last_used,
            )
            for i in self.instances.values()
        ]
        return physics.plan_room(
            residents,
            model.size_gb,
            self.memory_gb,
            max_count=max_count,
            evict_for_memory=evict_for_memory,
            evict_for_count=evict_for_count,
        )

    @property
    def memory_gb(self) -> float:
        """GB loads may use: the spec's, or less under the ``memory_gb`` fault."""
        real = self.faults.memory_gb
        return self.spec.memory_gb if real is None else min(real, self.spec.memory_gb)

    def new_instance_id(self, key: str) -> str:
        """LM Studio style ids: the key, then ``key:2``, ``key:3`` for extra copies."""
        if key not in self.instances:
            return key
        for n in itertools.count(2):
            if f"{key}:{n}" not in self.instances:
                return f"{key}:{n}"
        raise AssertionError("unreachable")

    def begin_load(
        self,
        model: SimModel,
        plan: physics.RoomPlan,
        *,
        ttl_s: float | None = None,
        jit: bool = False,
        context_length: int | None = None,
        parallel: int | None = None,
        instant: bool = False,
    ) -> SimInstance:
        """Unload the plan's victims and start loading ``model`` in the background.

        The load runs as its own task so a client that gives up does not abort it, as
        with a real server. Raises :class:`SimLoadError` when the plan refused.
        """
        if plan.refused is not None:
            raise SimLoadError(model.key, plan.refused)
        for victim in plan.evict:
            self.unload(victim)
        inst = SimInstance(
            instance_id=self.new_instance_id(model.key),
            model=model,
            pool=SlotPool(parallel or self.spec.parallel),
            context_length=min(context_length or 4096, model.max_context),
            ttl_s=ttl_s,
            jit=jit,
            last_used=self.clock(),
            load_time_s=physics.load_time_s(model.size_gb, self.spec.disk_gb_per_s),
        )
        self.instances[inst.instance_id] = inst
        self.layout_version += 1
        if instant:
            self._mark_loaded(inst)
        else:
            self.spawn(self._load(inst))
        return inst

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a background task of this server, cancelled by :meth:`stop`."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load(self, inst: SimInstance) -> None:
        await asyncio.sleep(self.real(inst.load_time_s))
        if self.instances.get(inst.instance_id) is inst:
            self._mark_loaded(inst)

    def _mark_loaded(self, inst: SimInstance) -> None:
        inst.state = "loaded"
        inst.loaded_at_wall = time.time()
        inst.last_used = self.clock()
        inst.ready.set()
        self.layout_version += 1
        self._wake.set()

    async def wait_ready(self, inst: SimInstance) -> SimInstance:
        """Wait until ``inst`` finished loading; SimLoadError if it was unloaded meanwhile."""
        await inst.ready.wait()
        if self.instances.get(inst.instance_id) is not inst:
            raise SimLoadError(inst.key, "unloaded while loading")
        return inst

    def unload(self, instance_id: str) -> SimInstance | None:
        """Remove an instance now. Requests already running on it finish normally."""
        inst = self.instances.pop(instance_id, None)
        if inst is not None:
            inst.ready.set()  # wake anyone waiting for a load that will not finish
            self.layout_version += 1
        return inst

    def touch(
        self, inst: SimInstance, ttl_s: float | None = None, *, set_ttl: bool = False
    ) -> None:
        """Mark ``inst`` used now (restarting its idle timer), optionally with a new TTL."""
        inst.last_used = self.clock()
        if set_ttl:
            inst.ttl_s = ttl_s
        self._wake.set()

    # --- requests ---------------------------------------------------------------------

    def new_job(self, inst: SimInstance, prompt_tokens: int, completion_tokens: int) -> Job:
        return Job(
            id=next(self._job_ids),
            model=inst.key,
            instance_id=inst.instance_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            arrived=self.clock(),
        )

    @contextlib.asynccontextmanager
    async def occupy(self, inst: SimInstance, job: Job) -> AsyncIterator[Job]:
        """Hold a slot of ``inst`` (and the server-wide slot of a serial server) for ``job``."""
        inst.jobs += 1
        self.waiting += 1
        counted = True
        server_slot = slot = -1
        try:
            if self.server_pool is not None:
                server_slot = await self.server_pool.acquire(job)
            slot = await inst.pool.acquire(job)
            self.waiting -= 1
            counted = False
            job.slot = slot
            job.started = self.clock()
            self.counters.requests_total += 1
            inst.counters.requests_total += 1
            yield job
            job.outcome = "ok"
        except asyncio.CancelledError:
            job.outcome = "cancelled"
            raise
        except BaseException as e:
            # An exception may say what happened (the HTTP layer's dropped stream does).
            job.outcome = str(getattr(e, "outcome", "error"))
            raise
        finally:
            if counted:
                self.waiting -= 1
            if slot >= 0:
                inst.pool.release(slot)
            if server_slot >= 0 and self.server_pool is not None:
                self.server_pool.release(server_slot)
            inst.jobs -= 1
            job.finished = self.clock()
            self.records.append(job)
            self.touch(inst)

    async def prefill(self, inst: SimInstance, job: Job) -> None:
        """Process the prompt: sleep for the time to first token."""
        sim_s = physics.prefill_time_s(job.prompt_tokens, self.spec.prefill_tok_per_s)
        await asyncio.sleep(self.real(sim_s))
        for c in (self.counters, inst.counters):
            c.prompt_tokens_total += job.prompt_tokens
            c.prompt_seconds_total += sim_s
            c.n_decode_total += 1
        job.first_token = self.clock()

    async def decode(
        self, inst: SimInstance, job: Job, *, min_interval_s: float = 0.1, min_chunks: int = 8
    ) -> AsyncIterator[int]:
        """Generate ``job.completion_tokens``, yielding how many tokens each chunk holds.

        The rate is re-read before every chunk, so a slot slows down when others start.
        """
        total = job.completion_tokens
        remaining = total
        while remaining > 0:
            rate = physics.per_slot_decode_rate(self.spec.decode_tok_per_s, inst.pool.in_use)
            real_rate = rate / self.time_scale
            k = physics.chunk_tokens(
                real_rate, remaining, total, min_interval_s=min_interval_s, min_chunks=min_chunks
            )
            await asyncio.sleep(k / real_rate)
            remaining -= k
            job.decoded += k
            for c in (self.counters, inst.counters):
                c.tokens_predicted_total += k
                c.tokens_predicted_seconds_total += k / rate
                c.n_decode_total += k
                c.n_tokens_max = max(c.n_tokens_max, job.prompt_tokens + job.decoded)
            yield k

    # --- the TTL reaper ---------------------------------------------------------------

    async def _reap_loop(self) -> None:
        """Unload idle instances whose TTL ran out; sleeps until the next deadline."""
        while True:
            self._wake.clear()
            now = self.clock()
            next_deadline: float | None = None
            for inst in list(self.instances.values()):
                if inst.state != "loaded" or inst.ttl_s is None or inst.busy:
                    continue
                deadline = inst.last_used + self.real(inst.ttl_s)
                if deadline <= now:
                    self.unload(inst.instance_id)
                elif next_deadline is None or deadline < next_deadline:
                    next_deadline = deadline
            timeout = None if next_deadline is None else max(0.0, next_deadline - now)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # races with the event being set, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
