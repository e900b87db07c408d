"""Memory per host: nodes on one machine share its budget, and its own figure corrects ours.

Two servers on one Mac (LM Studio on ports 1234 and 1235, or Ollama next to llama.cpp) each
report, or are configured with, the whole machine's memory; budgeting each alone promises
the machine twice. Which nodes share a host is decided once from the config
(``engine.settings.host_keys``) and reaches the core as ``PoolSettings.hosts``, node name ->
host key; a node it does not name is a host of its own.

A host's **budget** is the smallest budget of its nodes (each sees the whole machine, less
its own reserve). What it **uses** is the sum, over its nodes, of the backends' sizes of
their instances and the loads pending there, plus **other use**: memory the host's own
figure (SSH or psutil, ``HostMemory.source``) shows in use beyond those sizes — a model
loaded by hand, another program, a server's buffers the backend does not count. Other use
is trusted only when it can be: a host figure (not ``config`` or a backend's guess), with
sane numbers, read after the last poll that changed the host's instances (a reading taken
before an unload still holds the model unloaded, which would count twice); it is never
more than the host's budget. Otherwise it is 0: the estimates alone, as before.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from lmtui.core.model import HostMemory, Node, Snapshot

#: ``HostMemory.source`` values that measure the machine itself (``hostmem.py``).
HOST_SOURCES = frozenset({"psutil", "ssh-linux", "ssh-macos"})


def host_of(node: str, hosts: Mapping[str, str]) -> str:
    """The host key of ``node``: the one ``hosts`` gives, else a host of its own."""
    return hosts.get(node, f"node:{node}")


def host_groups(snapshot: Snapshot, hosts: Mapping[str, str]) -> Mapping[str, tuple[str, ...]]:
    """Host key -> the nodes on it (name order); a node ``hosts`` does not name is a host of
    its own."""
    groups: dict[str, list[str]] = {}
    for name in sorted(snapshot.nodes):
        groups.setdefault(host_of(name, hosts), []).append(name)
    return MappingProxyType({k: tuple(v) for k, v in groups.items()})


def host_nodes(snapshot: Snapshot, node: str, hosts: Mapping[str, str]) -> tuple[str, ...]:
    """The nodes on ``node``'s host, itself included (name order)."""
    if not hosts or node not in hosts:
        return (node,)
    key = hosts[node]
    return tuple(sorted(n for n in snapshot.nodes if hosts.get(n) == key)) or (node,)


def host_budget(snapshot: Snapshot, nodes: Iterable[str]) -> int | None:
    """The budget of a host holding ``nodes``: each of them reports the whole machine, so
    the smallest of their budgets (None when none is known)."""
    budgets = [
        b for n in nodes if (node := snapshot.nodes.get(n)) and (b := node.budget_bytes) is not None
    ]
    return min(budgets) if budgets else None


def _sane(mem: HostMemory) -> bool:
    return (
        mem.source in HOST_SOURCES
        and 0 < mem.total_bytes < 1 << 60  # an exabyte: no machine, a garbage figure
        and 0 <= mem.available_bytes <= mem.total_bytes
    )


def host_reading(snapshot: Snapshot, nodes: Iterable[str]) -> tuple[Node, HostMemory] | None:
    """The freshest sane host figure among ``nodes``, with the node that read it."""
    best: tuple[Node, HostMemory] | None = None
    for name in nodes:
        n = snapshot.nodes.get(name)
        if n is None or n.memory is None or n.memory_at is None or not _sane(n.memory):
            continue
        if best is None or n.memory_at > (best[0].memory_at or 0.0):
            best = (n, n.memory)
    return best


def estimated_bytes(snapshot: Snapshot, nodes: Iterable[str]) -> int:
    """What the backends say the instances on ``nodes`` take."""
    return sum(snapshot.node_loaded_bytes(n) for n in nodes)


def other_use_bytes(snapshot: Snapshot, nodes: Iterable[str]) -> int:
    """Memory the host of ``nodes`` uses beyond the backends' sizes of their instances, as
    its own figure shows it; 0 when no figure can be trusted (see the module docstring)."""
    nodes = tuple(nodes)
    reading = host_reading(snapshot, nodes)
    if reading is None:
        return 0
    reader, mem = reading
    read_at = reader.memory_at or 0.0
    for name in nodes:
        n = snapshot.nodes.get(name)
        if n is not None and n.instances_at is not None and n.instances_at > read_at:
            return 0  # read before the instances last changed: it may count an unloaded one
    other = mem.used_bytes - estimated_bytes(snapshot, nodes)
    budget = host_budget(snapshot, nodes)
    return max(0, min(other, budget if budget is not None else mem.total_bytes))
