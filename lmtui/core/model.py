"""The cluster data model: nodes, host memory, model instances and the snapshot.

Everything here is immutable and pure. The store (``lmtui.engine.store``) is the only place
that builds new snapshots; everyone else reads them.

Times are ``float`` seconds on the engine's clock (``time.time()`` in production, a virtual
clock in tests and replays); no function here reads a clock itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Literal, TypeVar

GiB = 1024**3

T = TypeVar("T")

#: Where a size figure came from, best first: ``server`` (the node's own figure for the
#: model, e.g. llama.cpp ``meta.size``), ``seen`` (the node reported it earlier, while the
#: model was loaded, and no longer does), ``config`` (``[[models]] size_gb``). ``None`` with
#: no size means unknown: placement then assumes a default footprint.
SizeSource = Literal["server", "seen", "config"]


def with_load(inst: Instance, in_flight: int, slots_busy: int, last_used: float | None) -> Instance:
    """``inst`` with new load figures: ``evolve`` for the router's two updates per request,
    positional and generated once (~1.0 µs against ~1.5 µs through keyword ``evolve``)."""
    return _with_load(inst, in_flight, slots_busy, last_used)


def evolve(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the frozen, slotted classes here, without its per-call
    field introspection: the router updates an instance twice per request, so this is on
    the hot path. The copy is a function generated once per class (one straight-line
    assignment per field), measured ~0.9 µs against ~2.8 µs for ``replace``."""
    copier = _COPIERS.get(type(obj))
    if copier is None:
        copier = _COPIERS[type(obj)] = _make_copier(type(obj))
    return copier(obj, changes)


_COPIERS: dict[type, Any] = {}


def _make_copier(cls: type) -> Any:
    names = cls.__slots__  # type: ignore[attr-defined]
    lines = ["def copy(obj, changes):", "    new = new_(cls)"]
    for name in names:
        lines.append(
            f"    set_(new, {name!r}, changes[{name!r}] if {name!r} in changes else obj.{name})"
        )
    lines.append("    return new")
    scope: dict[str, Any] = {"new_": object.__new__, "set_": object.__setattr__, "cls": cls}
    # Code built from the class's own field names only.
    exec("\n".join(lines), scope)
    return scope["copy"]


def _make_with_load() -> Any:
    changed = ("in_flight", "slots_busy", "last_used")
    lines = ["def with_load(obj, in_flight, slots_busy, last_used):", "    new = new_(cls)"]
    for name in Instance.__slots__:
        lines.append(f"    set_(new, {name!r}, {name if name in changed else 'obj.' + name})")
    lines.append("    return new")
    scope: dict[str, Any] = {"new_": object.__new__, "set_": object.__setattr__, "cls": Instance}
    exec("\n".join(lines), scope)  # built from the class's own field names only
    return scope["with_load"]


class NodeKind(StrEnum):
    """The kinds of server lmtui knows how to read (and, for some, control)."""

    LMSTUDIO = "lmstudio"
    OLLAMA = "ollama"
    LLAMACPP = "llamacpp"
    LLAMACPP_POOL = "llamacpp-pool"
    OPENAI = "openai"


class Health(StrEnum):
    """Node health as the poll loop sees it.

    ``unknown`` until the first poll answers; ``suspect`` after the first failure (still
    routable, but last choice); ``down`` after repeated failures, polled only by a
    half-open probe with backoff until one answer brings it back to ``healthy``.
    """

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"


class InstanceState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HostMemory:
    """Memory of one host, in bytes.

    ``available_bytes`` is what the OS could hand out now (Linux ``MemAvailable``; macOS
    free + inactive + speculative pages). ``source`` says where the figure came from
    (``psutil``, ``ssh-linux``, ``ssh-macos``, ``config``, ``backend``).
    """

    total_bytes: int
    available_bytes: int
    source: str = "unknown"
    #: macOS ``memory_pressure -Q`` free percentage, when known.
    pressure_free_pct: float | None = None
    #: Sum over GPUs (nvidia-smi), when present.
    gpu_total_bytes: int | None = None
    gpu_used_bytes: int | None = None

    @property
    def used_bytes(self) -> int:
        return max(0, self.total_bytes - self.available_bytes)

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.total_bytes if self.total_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class AvailableModel:
    """A model a node could load (downloaded, or in a llama.cpp router's models dir)."""

    key: str
    size_bytes: int | None = None
    kind: str = "llm"  # llm | embedding | vlm | decision
    max_context_length: int | None = None
    #: Where ``size_bytes`` came from (see :data:`SizeSource`); None: the adapter did not
    #: say, so a size given is the server's own figure, and no size is unknown.
    size_source: SizeSource | None = None


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    """Counters and gauges a node reports about its own work (llama.cpp /metrics, vLLM)."""

    requests_processing: int | None = None
    requests_waiting: int | None = None
    prompt_tokens_total: float | None = None
    predicted_tokens_total: float | None = None
    #: The server's own average generation rate, when it reports one.
    predicted_tokens_per_second: float | None = None
    kv_cache_usage: float | None = None


@dataclass(frozen=True, slots=True)
class InstanceObservation:
    """One loaded (or loading) model instance as a poll saw it."""

    model: str
    instance_id: str
    state: InstanceState = InstanceState.LOADED
    size_bytes: int | None = None
    context_length: int | None = None
    #: Concurrent requests the instance serves; None when the backend does not say.
    slots_total: int | None = None
    #: Busy slots as polled (llama.cpp /slots, lms ps status); includes clients that bypass lmtui.
    slots_busy: int | None = None
    #: Requests waiting inside the server (``lms ps`` ``queued``), when known.
    queued: int | None = None
    last_used: float | None = None
    #: When the server will unload it by itself (Ollama ``expires_at``, LM Studio TTL).
    expires_at: float | None = None
    load_progress: float | None = None
    error: str | None = None
    #: Where this instance is served when that is not the node's URL: a server a
    #: ``llamacpp-pool`` node started on a port of its own. None means the node's URL.
    url: str | None = None
    #: Where ``size_bytes`` came from (see :data:`SizeSource`); None: the adapter did not
    #: say, so a size given is the server's own figure, and no size is unknown.
    size_source: SizeSource | None = None


@dataclass(frozen=True, slots=True)
class NodeObservation:
    """A successful poll of one node. ``None`` fields mean "this poll did not learn it"."""

    node: str
    at: float
    latency_s: float
    instances: tuple[InstanceObservation, ...] | None = None
    available: tuple[AvailableModel, ...] | None = None
    memory: HostMemory | None = None
    metrics: NodeMetrics | None = None
    version: str | None = None
    #: Default slots per instance the server advertises (llama.cpp total_slots ...).
    slots_default: int | None = None
    #: Requests the whole server runs at once, across all its instances, when it has such a
    #: limit: LM Studio before 0.4 serializes everything (1), even with two models loaded.
    server_slots: int | None = None
    #: How many instances the server keeps resident at once, when it has such a limit (a
    #: llama.cpp router's ``--models-max``, read from ``GET /props``). None: not learnt.
    max_instances: int | None = None
    #: Why lmtui cannot load models on this node (an LM Studio before 0.4 without SSH, an
    #: ``openai`` node, a single-model llama-server); None: it can.
    no_load: str | None = None


@dataclass(frozen=True, slots=True)
class PollFailure:
    """A poll that failed: refused, timed out, or answered something unusable."""

    node: str
    at: float
    latency_s: float
    error: str


@dataclass(frozen=True, slots=True)
class MemoryObservation:
    """Host memory read out-of-band (SSH, psutil), independent of the HTTP poll."""

    node: str
    at: float
    memory: HostMemory | None
    error: str | None = None


Observation = NodeObservation | PollFailure | MemoryObservation


@dataclass(frozen=True, slots=True)
class Node:
    """One server in the cluster, as of one snapshot."""

    name: str
    kind: NodeKind
    url: str
    health: Health = Health.UNKNOWN
    memory: HostMemory | None = None
    #: Memory lmtui keeps free on this node (config ``[pool] reserved``), in bytes.
    reserved_bytes: int = 0
    version: str | None = None
    available: tuple[AvailableModel, ...] = ()
    metrics: NodeMetrics | None = None
    #: Tokens generated per second, from the difference of two polls of a counter.
    tokens_per_second: float | None = None
    slots_default: int | None = None
    #: Server-wide concurrency limit across instances (see NodeObservation.server_slots).
    server_slots: int | None = None
    #: Instances the server keeps resident at once (a llama.cpp router's ``--models-max``);
    #: None: no limit known. A load at the limit needs an eviction first.
    max_instances: int | None = None
    #: Why lmtui cannot load models here (see NodeObservation.no_load); None: it can. The
    #: dashboard offers no load on such a node and says why.
    no_load: str | None = None
    last_poll_at: float | None = None
    last_ok_at: float | None = None
    poll_latency_s: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    memory_error: str | None = None
    #: When ``memory`` was last read (engine clock); None: never, or it comes from config.
    memory_at: float | None = None
    #: When a poll last changed which instances the node has, their states or sizes. A
    #: host figure read before it may still count a model just unloaded (or miss one just
    #: loaded), so placement trusts its correction only when read after (``core/hosts.py``).
    instances_at: float | None = None
    drained: bool = False
    #: Ids of this node's instances in the snapshot (kept by the fold, so that a poll of
    #: one node touches that node's instances only, not every instance of the cluster).
    instance_ids: tuple[str, ...] = ()

    @property
    def budget_bytes(self) -> int | None:
        """Memory lmtui may fill with models: total minus reserved."""
        if self.memory is None:
            return None
        return max(0, self.memory.total_bytes - self.reserved_bytes)

    @property
    def routable(self) -> bool:
        return self.health in (Health.HEALTHY, Health.SUSPECT) and not self.drained


InstanceKey = tuple[str, str]  # (node name, instance id)


@dataclass(frozen=True, slots=True)
class Instance:
    """A model instance on a node.

    ``slots_busy`` is the larger of what the node reports and what lmtui itself has in
    flight there: lmtui's count is authoritative for requests that pass through it, the
    polled count adds clients that bypass lmtui.
    """

    node: str
    model: str
    instance_id: str
    state: InstanceState = InstanceState.LOADED
    size_bytes: int | None = None
    context_length: int | None = None
    slots_total: int = 1
    #: Busy slots: lmtui's own in-flight requests plus ``external_busy``.
    slots_busy: int = 0
    #: Requests lmtui itself has in flight on this instance (authoritative).
    in_flight: int = 0
    #: Busy slots the node reported beyond lmtui's own requests: clients that bypass lmtui.
    external_busy: int = 0
    queued: int = 0
    last_used: float | None = None
    expires_at: float | None = None
    pinned: bool = False
    load_progress: float | None = None
    error: str | None = None
    first_seen: float | None = None
    #: The instance's own base URL (a pool node's spawned server); None: the node's URL.
    url: str | None = None
    #: Where ``size_bytes`` came from (see :data:`SizeSource`); None: the size is unknown.
    size_source: SizeSource | None = None

    @property
    def key(self) -> InstanceKey:
        return (self.node, self.instance_id)

    @property
    def busy(self) -> int:
        return max(self.slots_busy, self.in_flight)

    @property
    def free_slots(self) -> int:
        return max(0, self.slots_total - self.busy)

    def ttl_left(self, now: float) -> float | None:
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class CircuitState:
    """A replica whose circuit breaker is open or half-open (``engine/dispatch.py``): lmtui
    routes around it after failed requests in a row, whatever its polls say.

    ``open_until`` is when one trial request may go again; at or past it the circuit is
    half-open (``trial``: that request is on its way). Closed circuits are not listed.
    """

    node: str
    instance_id: str
    #: Failed requests in a row so far.
    failures: int
    #: When the circuit last opened (engine clock).
    opened_at: float
    open_until: float
    trial: bool = False

    @property
    def key(self) -> InstanceKey:
        return (self.node, self.instance_id)

    def half_open(self, now: float) -> bool:
        """Past the wait: the next request (or the one under way) is the trial."""
        return self.trial or now >= self.open_until


@dataclass(frozen=True, slots=True)
class PeerState:
    """A ``[[peers]]`` service (``lmtui/engine/peers.py``) as the dashboard shows it."""

    name: str
    #: Requests it has in flight now.
    in_flight: int = 0
    #: Requests it served since lmtui started.
    served: int = 0
    #: Requests it failed (before or after its first byte) since lmtui started.
    failed: int = 0
    #: Requests counted against its budget in the window now (0 without a budget).
    budget_used: int = 0
    #: Its budget per window (0: none).
    budget: int = 0
    budget_window_s: float = 0.0
    #: When it last took a request (engine clock), 0 when never.
    last_used: float = 0.0
    #: Its last failure, bounded; None once it answered well again.
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterTotals:
    nodes: int
    healthy: int
    down: int
    memory_total: int
    memory_used: int
    instances: int
    loaded_bytes: int
    in_flight: int
    queued: int
    tokens_per_second: float


def _frozen(d: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole cluster at one version. Never mutated; the store publishes a new one."""

    version: int = 0
    at: float = 0.0
    nodes: Mapping[str, Node] = field(default_factory=_frozen)
    instances: Mapping[InstanceKey, Instance] = field(default_factory=_frozen)
    #: Requests waiting in lmtui's own queue, per model.
    queue_depth: Mapping[str, int] = field(default_factory=_frozen)
    #: Replicas whose circuit is open or half-open (none when every circuit is closed).
    circuits: Mapping[InstanceKey, CircuitState] = field(default_factory=_frozen)
    #: The ``[[peers]]`` requests may go to, by name (none when none are configured).
    peers: Mapping[str, PeerState] = field(default_factory=_frozen)
    #: Cache: model -> keys of its instances, built on first use. Not state: two snapshots
    #: with the same instances are equal whether or not either has built it.
    _by_model: dict[str, tuple[InstanceKey, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def instances_on(self, node: str) -> Iterator[Instance]:
        return (i for i in self.instances.values() if i.node == node)

    def instances_of(self, model: str) -> Iterator[Instance]:
        """This model's instances: found through an index, not a scan of every instance
        (the router asks once per request, and a cluster may hold hundreds)."""
        index = self._by_model
        if index is None:
            built: dict[str, list[InstanceKey]] = {}
            for key, inst in self.instances.items():
                built.setdefault(inst.model, []).append(key)
            index = {m: tuple(keys) for m, keys in built.items()}
            object.__setattr__(self, "_by_model", index)
        insts = self.instances
        return (insts[k] for k in index.get(model, ()))

    def with_instance(self, inst: Instance) -> Snapshot:
        """The next version with ``inst`` replacing the instance of the same key and model
        (the router's in-flight updates): the model index carries over unchanged."""
        insts = dict(self.instances)
        old = insts.get(inst.key)
        insts[inst.key] = inst
        new = Snapshot(
            self.version + 1,
            self.at,
            self.nodes,
            MappingProxyType(insts),
            self.queue_depth,
            self.circuits,
            self.peers,
        )
        if old is not None and old.model == inst.model:
            object.__setattr__(new, "_by_model", self._by_model)
        return new

    def node_busy(self, node: str) -> int:
        return sum(i.busy for i in self.instances_on(node))

    def has_room(self, inst: Instance) -> bool:
        """Can ``inst`` take one more request now: a free slot of its own, and room under its
        server's own limit when the server serializes across models."""
        if inst.free_slots <= 0:
            return False
        node = self.nodes.get(inst.node)
        limit = node.server_slots if node is not None else None
        return limit is None or self.node_busy(inst.node) < limit

    def node_loaded_bytes(self, node: str) -> int:
        return sum(i.size_bytes or 0 for i in self.instances_on(node))

    def totals(self) -> ClusterTotals:
        nodes = self.nodes.values()
        mem_total = sum(n.memory.total_bytes for n in nodes if n.memory)
        mem_used = sum(n.memory.used_bytes for n in nodes if n.memory)
        # The dashboard asks once per update, 4,000 instances at 200 nodes: each figure is
        # one C loop over the instances (map of an attrgetter), ~4x a Python loop's speed.
        insts = list(self.instances.values())
        loaded = list(map(_STATE, insts)).count(InstanceState.LOADED)
        loaded_bytes = sum(filter(None, map(_SIZE, insts)))
        in_flight = sum(map(_IN_FLIGHT, insts))
        queued = sum(map(_QUEUED, insts))
        return ClusterTotals(
            nodes=len(self.nodes),
            healthy=sum(1 for n in nodes if n.health is Health.HEALTHY),
            down=sum(1 for n in nodes if n.health is Health.DOWN),
            memory_total=mem_total,
            memory_used=mem_used,
            instances=loaded,
            loaded_bytes=loaded_bytes,
            in_flight=in_flight,
            queued=sum(self.queue_depth.values()) + queued,
            tokens_per_second=sum(n.tokens_per_second or 0.0 for n in nodes),
        )


_STATE, _SIZE = attrgetter("state"), attrgetter("size_bytes")
_IN_FLIGHT, _QUEUED = attrgetter("in_flight"), attrgetter("queued")
_SLOTS_BUSY = attrgetter("slots_busy")


def busy_total(instances: Collection[Instance]) -> int:
    """The sum of the instances' ``busy``, in C loops (the header and the node table add
    it up for every node each update)."""
    return sum(map(max, map(_SLOTS_BUSY, instances), map(_IN_FLIGHT, instances)))


def queued_total(instances: Iterable[Instance]) -> int:
    """The sum of the instances' ``queued``, in one C loop."""
    return sum(map(_QUEUED, instances))


def node_queued(node: Node, instances: Iterable[Instance]) -> int:
    """Requests waiting inside a node's server, not in lmtui's own queue (the dashboard's
    Queued column and the history's per-node queue depth)."""
    queued = queued_total(instances)
    reported = node.metrics.requests_waiting if node.metrics else None
    return max(queued, reported or 0)


_with_load = _make_with_load()
