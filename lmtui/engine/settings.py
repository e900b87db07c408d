"""Turn the config into the plain settings the pure scheduler takes, and the model catalogue."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from lmtui.backends.base import Backend
from lmtui.config import GB, Config
from lmtui.config.hosts import host_keys
from lmtui.core.lifetime import Lifetimes
from lmtui.core.model import InstanceState, Snapshot
from lmtui.core.placement import PoolSettings
from lmtui.core.preload import PreloadSettings
from lmtui.core.scheduler import SchedulerSettings

if TYPE_CHECKING:
    from lmtui.engine.peers import Peers


def scheduler_settings(
    config: Config,
    no_load: frozenset[str],
    pinned: frozenset[str] | None = None,
    *,
    no_unload: frozenset[str] = frozenset(),
) -> SchedulerSettings:
    """``pinned``: every pinned model (the config's and the operator's, less what was
    unpinned: ``RunState.pinned``); None means the config's own pins. ``no_load`` /
    ``no_unload``: nodes whose backends cannot load / unload (``no_load_nodes``,
    ``no_unload_nodes``)."""
    models = config.models
    if pinned is None:
        pinned = frozenset(m.name for m in models if m.pinned)
    return SchedulerSettings(
        session_affinity=config.router.session_affinity,
        max_replicas=config.router.max_replicas,
        replica_queue_threshold=config.router.replica_queue_threshold,
        min_replicas=MappingProxyType({m.name: m.min_replicas for m in models if m.min_replicas}),
        aliases=MappingProxyType({a: m.name for m in models for a in m.aliases}),
        known_models=frozenset(m.name for m in models),
        pool=PoolSettings(
            size_overrides=MappingProxyType(
                {m.name: int(m.size_gb * GB) for m in models if m.size_gb is not None}
            ),
            eviction_policy=config.pool.eviction,
            pinned=pinned,
            priorities=MappingProxyType({m.name: m.priority for m in models}),
            min_residency_s=config.pool.min_residency,
            no_load_nodes=no_load,
            no_unload_nodes=no_unload,
            lifetimes=lifetimes(config),
            hosts=MappingProxyType(host_keys(config)),
            placement=config.pool.placement,
        ),
    )


def lifetimes(config: Config) -> Lifetimes:
    """The idle TTLs of ``[pool]`` and ``[[models]]`` (``core/lifetime.py``)."""
    return Lifetimes(
        idle_ttl_s=config.pool.idle_ttl,
        by_priority=MappingProxyType(
            {str(k): v for k, v in config.pool.idle_ttl_by_priority.items()}
        ),
        per_model=MappingProxyType({m.name: m.ttl for m in config.models if m.ttl is not None}),
    )


def preload_settings(config: Config) -> PreloadSettings:
    """``[pool] preload*`` as the pure preload planner takes them."""
    pool = config.pool
    return PreloadSettings(
        enabled=pool.preload,
        max_models=pool.preload_max,
        keep_free=pool.preload_keep_free,
        min_rate_per_h=pool.preload_min_rate,
    )


def no_load_nodes(backends: dict[str, Backend]) -> frozenset[str]:
    """Nodes that cannot load models (as far as their backends know now)."""
    return frozenset(n for n, b in backends.items() if not b.can_load)


def no_unload_nodes(backends: dict[str, Backend]) -> frozenset[str]:
    """Nodes that cannot unload models (an ``openai`` node, a single-model llama.cpp)."""
    return frozenset(n for n, b in backends.items() if not b.can_unload)


def model_catalogue(
    snap: Snapshot, config: Config, peers: Peers | None = None
) -> list[dict[str, Any]]:
    """``GET /v1/models``: every model the cluster has or can load, with where it is, and
    the ``[[peers]]`` that may take its requests (those a peer names, not its wildcards)."""
    loaded: dict[str, list[str]] = {}
    available: dict[str, list[str]] = {}
    for inst in snap.instances.values():
        if inst.state is InstanceState.LOADED:
            loaded.setdefault(inst.model, []).append(inst.node)
    for node in snap.nodes.values():
        if node.no_load is not None:  # listed there, but lmtui cannot load it there
            continue
        for a in node.available:
            available.setdefault(a.key, []).append(node.name)
    aliases = {m.name: m.aliases for m in config.models}
    by_peer = peers.named_models() if peers else {}
    names = sorted(set(loaded) | set(available) | set(aliases) | set(by_peer))
    return [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "lmtui",
            "loaded_on": sorted(loaded.get(name, [])),
            "available_on": sorted(available.get(name, [])),
            "aliases": list(aliases.get(name, [])),
            **({"peers": by_peer[name]} if name in by_peer else {}),
        }
        for name in names
    ]
