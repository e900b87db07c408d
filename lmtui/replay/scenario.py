"""What a replay runs on: the nodes, the models, the service setting, and the model rule.

The **default scenario** is the benchmark of issue 10: three nodes of 512, 192 and 64 GB
with 20 GB reserved each, 8 slots per loaded model, loads taking 1 s + size / 2 GB/s, and
each request served in ``tokens_in / 1000 + tokens_out / 50`` seconds (1,000 prompt tokens/s,
50 generated tokens/s per slot: about 5 s for the Azure conversation trace's mean request,
so ~30 requests in flight at its rate of ~5.5 per second). Sizes are binary GB (GiB), as
everywhere in lmtui.

**Model assignment** when the trace names no model (:func:`assign_zipf`): N models named
``m01`` … ``mNN`` by popularity rank; a request asks for rank k with probability
proportional to ``1 / k**s``. From one ``random.Random(seed)``, first each model's size is
drawn uniformly from the size range (rank order, rounded to 0.1 GB), then each request's
model in trace order. The same seed gives the same assignment on every machine.

**Service settings**: ``busy`` (the default) holds a slot for the request's service time,
and an instance with a request in flight cannot be evicted; ``instant`` serves any number
of requests at once in no time, so only loads make anyone wait: that isolates eviction.

``--cluster FILE`` takes lmtui's own ``config.toml`` (:func:`from_config`): its nodes'
``memory_gb`` (required here), ``reserved_gb``, ``slots`` and hosts (nodes on one machine
share its budget, ``config/hosts.py``); ``[pool]`` ``reserved_gb``, ``min_residency`` and
``placement``; ``[router]`` ``strategy``, ``queue_depth`` and ``queue_timeout``;
its models' ``size_gb``, ``pinned``, ``priority`` and ``slots``. The physics that a config
does not hold (load and token speeds) are the same for every node, from the command line.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any, Literal

from lmtui.config import GB, Config
from lmtui.config.hosts import host_keys
from lmtui.replay.trace import TraceRequest

Service = Literal["busy", "instant"]
#: Slots an instant instance has: enough that no request ever waits for one.
UNLIMITED_SLOTS = 1 << 30


class ScenarioError(Exception):
    """The cluster or model rule cannot be replayed; ``str()`` says what to change."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the replayed cluster and how fast it is."""

    name: str
    memory_gb: float
    reserved_gb: float = 20.0
    #: Concurrent requests per loaded model.
    slots: int = 8
    #: Seconds any load takes regardless of size.
    load_fixed_s: float = 1.0
    #: Load throughput, GB per second.
    disk_gb_s: float = 2.0
    #: Prompt tokens processed per second, per request.
    prefill_tps: float = 1000.0
    #: Tokens generated per second, per request (each slot at full speed).
    decode_tps: float = 50.0

    @property
    def budget_bytes(self) -> int:
        return max(0, int(self.memory_gb * GB) - int(self.reserved_gb * GB))

    def load_s(self, size_bytes: int) -> float:
        """Seconds to load ``size_bytes`` of model on this node."""
        return self.load_fixed_s + size_bytes / (self.disk_gb_s * GB)

    def service_s(self, req: TraceRequest) -> float:
        """Seconds ``req`` holds a slot on this node."""
        if req.service_s is not None:
            return req.service_s
        return req.tokens_in / self.prefill_tps + req.tokens_out / self.decode_tps


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the replay."""

    name: str
    size_bytes: int
    pinned: bool = False
    priority: str = "normal"
    #: Slots per instance, overriding the node's.
    slots: int | None = None
    #: Where the size came from: "drawn" (seeded rule) or "config".
    size_from: str = "drawn"


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a replay needs besides the trace and the policy."""

    nodes: tuple[NodeSpec, ...]
    models: tuple[ModelSpec, ...] = ()
    service: Service = "busy"
    strategy: str = "efficiency"
    #: Among nodes where a load fits, which takes it (``[pool] placement``).
    placement: str = "spread"
    #: Node -> host key for nodes that share one machine's memory (``config/hosts.py``).
    hosts: dict[str, str] = field(default_factory=dict)
    #: Never evict a model loaded less than this long ago (``[pool] min_residency``).
    min_residency_s: float = 30.0
    #: Requests that may wait per model before 429s; None: no limit.
    queue_depth: int | None = None
    #: Seconds a request may wait before a 504; None: no deadline.
    queue_timeout_s: float | None = None
    #: Where the cluster came from, for the report.
    cluster: str = "default (issue 10 benchmark)"
    #: The model rule, for the report (None: the trace named the models).
    assignment: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def describe(self) -> dict[str, Any]:
        """The scenario as plain data, for ``--json`` and the report's header."""
        return {
            "cluster": self.cluster,
            "nodes": [
                {
                    "name": n.name,
                    "memory_gb": n.memory_gb,
                    "reserved_gb": n.reserved_gb,
                    "slots": n.slots,
                    "load_s": f"{n.load_fixed_s:g} s + size / {n.disk_gb_s:g} GB/s",
                    "service_s": (f"tokens_in / {n.prefill_tps:g} + tokens_out / {n.decode_tps:g}"),
                }
                for n in self.nodes
            ],
            "service": self.service,
            "strategy": self.strategy,
            "placement": self.placement,
            "hosts": dict(self.hosts),
            "min_residency_s": self.min_residency_s,
            "queue_depth": self.queue_depth,
            "queue_timeout_s": self.queue_timeout_s,
            "assignment": self.assignment,
            "models": [
                {"name": m.name, "size_gb": round(m.size_bytes / GB, 2), "size_from": m.size_from}
                | ({"pinned": True} if m.pinned else {})
                | ({"priority": m.priority} if m.priority != "normal" else {})
                for m in self.models
            ],
            **self.extra,
        }


def default_nodes(**physics: Any) -> tuple[NodeSpec, ...]:
    """The benchmark's three nodes: 512, 192 and 64 GB, 20 GB reserved each."""
    return tuple(NodeSpec(f"mac-{gb}", float(gb), **physics) for gb in (512, 192, 64))


def nodes_of_sizes(sizes_gb: Sequence[float], **physics: Any) -> tuple[NodeSpec, ...]:
    """Nodes of the given memory sizes (``--nodes 512,192,64``), named by size and order."""
    return tuple(NodeSpec(f"n{i}-{gb:g}", float(gb), **physics) for i, gb in enumerate(sizes_gb, 1))


def draw_size(rng: random.Random, size_range_gb: tuple[float, float]) -> int:
    lo, hi = size_range_gb
    return int(round(rng.uniform(lo, hi), 1) * GB)


def assign_zipf(
    requests: Sequence[TraceRequest],
    *,
    n_models: int = 60,
    s: float = 1.0,
    size_range_gb: tuple[float, float] = (4.0, 40.0),
    seed: int = 1,
) -> tuple[list[TraceRequest], tuple[ModelSpec, ...], dict[str, Any]]:
    """Give every request a model by the seeded Zipf rule (see the module docstring).

    Returns the requests with models, the models, and the rule as data for the report.
    """
    if n_models < 1:
        raise ScenarioError("--models must be at least 1")
    lo, hi = size_range_gb
    if not 0 < lo <= hi:
        raise ScenarioError(f"size range {lo:g}-{hi:g} GB: expected 0 < low <= high")
    rng = random.Random(seed)
    width = len(str(n_models))
    names = [f"m{k:0{max(2, width)}d}" for k in range(1, n_models + 1)]
    models = tuple(ModelSpec(name, draw_size(rng, size_range_gb)) for name in names)
    cum = list(accumulate(1.0 / k**s for k in range(1, n_models + 1)))
    chosen = rng.choices(names, cum_weights=cum, k=len(requests))
    out = [r._replace(model=m) for r, m in zip(requests, chosen, strict=True)]
    rule = {
        "rule": f"zipf(s={s:g}) over {n_models} models, m01 most popular; sizes uniform "
        f"in {lo:g}-{hi:g} GB; random.Random({seed}): sizes first, then one model per "
        "request in trace order",
        "models": n_models,
        "zipf_s": s,
        "sizes_gb": [lo, hi],
        "seed": seed,
    }
    return out, models, rule


def models_of_trace(
    requests: Sequence[TraceRequest],
    known: dict[str, ModelSpec],
    *,
    size_range_gb: tuple[float, float] = (4.0, 40.0),
    seed: int = 1,
) -> tuple[ModelSpec, ...]:
    """The models a trace names, in name order: ``known`` ones (from a config) as they
    are, and a size drawn from ``random.Random(seed)`` for each one without a size."""
    rng = random.Random(seed)
    names = sorted({r.model for r in requests if r.model is not None})
    out = []
    for name in names:
        spec = known.get(name, ModelSpec(name, 0))
        if spec.size_bytes <= 0:
            spec = replace(spec, size_bytes=draw_size(rng, size_range_gb), size_from="drawn")
        out.append(spec)
    return tuple(out)


def from_config(config: Config, source: str, **physics: Any) -> Scenario:
    """A scenario for the cluster in lmtui's own config (see the module docstring).

    ``physics`` are :class:`NodeSpec` fields for every node (``slots`` only where the node
    sets none). Models come later, from the trace (:func:`config_models`).
    """
    if not config.nodes:
        raise ScenarioError(f"{source}: no [[nodes]] to replay on")
    nodes = []
    for n in config.nodes:
        if n.memory_gb is None:
            raise ScenarioError(
                f"{source}: node {n.name!r} has no memory_gb; the replay cannot ask the "
                "node, so set memory_gb for every node"
            )
        spec = NodeSpec(
            n.name,
            n.memory_gb,
            config.reserved_bytes(n) / GB,
            **physics,
        )
        nodes.append(replace(spec, slots=n.slots) if n.slots is not None else spec)
    return Scenario(
        nodes=tuple(nodes),
        strategy=config.router.strategy,
        placement=config.pool.placement,
        hosts=host_keys(config),
        min_residency_s=config.pool.min_residency,
        queue_depth=config.router.queue_depth,
        queue_timeout_s=config.router.queue_timeout,
        cluster=source,
    )


def config_models(config: Config) -> dict[str, ModelSpec]:
    """The config's ``[[models]]``, by name; size 0 where it gives no ``size_gb`` (drawn
    later by :func:`models_of_trace`)."""
    return {
        m.name: ModelSpec(
            m.name,
            int(m.size_gb * GB) if m.size_gb is not None else 0,
            pinned=m.pinned,
            priority=m.priority,
            slots=m.slots,
            size_from="config",
        )
        for m in config.models
    }
