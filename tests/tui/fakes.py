"""A fake EngineClient and a small cluster builder for the UI tests.

``FakeClient`` holds a current snapshot and hands out updates only when a test pushes them,
so a Pilot test controls exactly what the screen receives and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import (
    GiB,
    Health,
    HostMemory,
    Instance,
    InstanceState,
    Node,
    NodeKind,
    Snapshot,
)
from lmtui.core.rebalance import RebalancePlan
from lmtui.engine import commands as cmd
from lmtui.engine.client import EngineClient, Update
from lmtui.engine.commands import Result
from lmtui.engine.details import ModelDetails, Percentiles
from lmtui.engine.history import History, Sample

#: The frozen "now" of the snapshot tests and of the fixed cluster below.
FIXED_NOW = 1_700_000_000.0


class FakeClient(EngineClient):
    """An ``EngineClient`` fed by the test: ``push`` publishes the next snapshot."""

    def __init__(
        self,
        snapshot: Snapshot,
        events: Iterable[Event] = (),
        *,
        source: str = "/etc/lmtui/config.toml",
        read_only: bool = False,
        history: History | None = None,
    ) -> None:
        self._snap = snapshot
        self._history = history or History()
        #: What ``model_details`` and ``processes`` answer, by model and by node.
        self.details: dict[str, ModelDetails] = {}
        self.procs: dict[str, list[dict[str, Any]]] = {}
        self._events = list(events)
        self._queue: asyncio.Queue[Update] | None = None
        self.source = source
        self.read_only = read_only
        self.commands: list[tuple[object, ...]] = []
        #: The command structs themselves, for what the tuples leave out (``force``).
        self.sent: list[cmd.Command] = []

    def snapshot(self) -> Snapshot:
        return self._snap

    def recent_events(self, limit: int = 200) -> list[Event]:
        return self._events[-limit:]

    def push(self, snapshot: Snapshot, events: Iterable[Event] = ()) -> None:
        """Publish a new snapshot (and the events it caused) to the watcher."""
        events = list(events)
        self._snap = snapshot
        self._events.extend(events)
        assert self._queue is not None, "push() before the app started watching"
        self._queue.put_nowait(Update(snapshot, events))

    @property
    def watching(self) -> bool:
        return self._queue is not None

    async def watch(self) -> AsyncIterator[Update]:
        # The queue is made here, on the app's loop, not in __init__ (snap_compare runs the
        # app on a loop of its own).
        self._queue = asyncio.Queue()
        yield Update(self._snap, [])
        while True:
            yield await self._queue.get()

    async def model_details(self, model: str) -> ModelDetails | None:
        return self.details.get(model)

    async def processes(self, node: str) -> list[dict[str, Any]]:
        if node not in self.procs:
            raise cmd.CommandError(f"{node}: runs no processes of lmtui's", 404)
        return self.procs[node]

    # -- commands: recorded, so tests can assert what the UI asked for ----------------

    async def strategy(self) -> str:
        return "efficiency"

    async def _send(self, command: cmd.Command) -> Result:
        # ("load", model, node), ("unload", node, instance_id), ("pin", model), ...
        fields = [getattr(command, f) for f in command.__struct_fields__ if f != "force"]
        self.commands.append((command.name, *fields))
        self.sent.append(command)
        plan = RebalancePlan() if isinstance(command, cmd.Rebalance) else None
        return Result(f"{command.name} {' '.join(map(str, fields))}", plan)


def node(
    name: str,
    kind: NodeKind = NodeKind.LMSTUDIO,
    *,
    health: Health = Health.HEALTHY,
    total_gb: float = 64,
    used_gb: float = 20,
    **kw: object,
) -> Node:
    """A polled node with memory, as the store would hold it."""
    memory = HostMemory(
        total_bytes=int(total_gb * GiB),
        available_bytes=int((total_gb - used_gb) * GiB),
        source="ssh-macos",
    )
    defaults: dict[str, object] = dict(
        url=f"http://{name}.local:1234",
        health=health,
        memory=memory,
        version="0.4.2",
        tokens_per_second=42.5,
        last_poll_at=FIXED_NOW - 1,
        last_ok_at=FIXED_NOW - 1,
        poll_latency_s=0.012,
    )
    defaults.update(kw)
    return Node(name=name, kind=kind, **defaults)  # type: ignore[arg-type]


def instance(node_name: str, model: str, instance_id: str | None = None, **kw: object) -> Instance:
    defaults: dict[str, object] = dict(
        size_bytes=int(4.5 * GiB),
        slots_total=4,
        slots_busy=1,
        last_used=FIXED_NOW - 12,
        expires_at=FIXED_NOW + 270,
        first_seen=FIXED_NOW - 600,
    )
    defaults.update(kw)
    return Instance(node=node_name, model=model, instance_id=instance_id or model, **defaults)  # type: ignore[arg-type]


def snapshot(
    nodes: Iterable[Node],
    instances: Iterable[Instance] = (),
    *,
    version: int = 1,
    queue: dict[str, int] | None = None,
) -> Snapshot:
    return Snapshot(
        version=version,
        at=FIXED_NOW,
        nodes=MappingProxyType({n.name: n for n in nodes}),
        instances=MappingProxyType({i.key: i for i in instances}),
        queue_depth=MappingProxyType(dict(queue or {})),
    )


def next_version(
    snap: Snapshot,
    *,
    nodes: Iterable[Node] | None = None,
    instances: Iterable[Instance] | None = None,
) -> Snapshot:
    """``snap`` with some nodes replaced (by name) and/or the whole instance set replaced."""
    new_nodes = dict(snap.nodes)
    for n in nodes or ():
        new_nodes[n.name] = n
    new_instances = (
        snap.instances if instances is None else MappingProxyType({i.key: i for i in instances})
    )
    return replace(
        snap, version=snap.version + 1, nodes=MappingProxyType(new_nodes), instances=new_instances
    )


def fixed_cluster() -> tuple[Snapshot, list[Event]]:
    """Three nodes of three kinds in three states, four instances, a few events."""
    nodes = [
        node("mac-studio", NodeKind.LMSTUDIO, total_gb=192, used_gb=71.3),
        node(
            "gpu-box",
            NodeKind.OLLAMA,
            total_gb=64,
            used_gb=58.9,
            url="http://gpu-box.local:11434",
            tokens_per_second=None,
        ),
        node(
            "old-mini",
            NodeKind.LLAMACPP,
            health=Health.DOWN,
            memory=None,
            url="http://old-mini.local:8080",
            tokens_per_second=None,
            poll_latency_s=3.0,
            last_error="ConnectError: [Errno 111] Connection refused by old-mini.local:8080",
        ),
    ]
    instances = [
        instance(
            "mac-studio",
            "qwen3-30b-a3b",
            size_bytes=int(17.2 * GiB),
            slots_busy=3,
            pinned=True,
            expires_at=None,
        ),
        instance(
            "mac-studio",
            "gemma-3-12b",
            size_bytes=int(8.1 * GiB),
            slots_busy=0,
            last_used=FIXED_NOW - 3600 * 2,
        ),
        instance(
            "gpu-box",
            "llama3.1:8b",
            size_bytes=int(6.2 * GiB),
            slots_total=1,
            queued=2,
            expires_at=FIXED_NOW + 10**10,
        ),
        instance(
            "gpu-box",
            "nomic-embed-text",
            state=InstanceState.LOADING,
            load_progress=0.4,
            size_bytes=None,
            slots_busy=0,
            last_used=None,
            expires_at=None,
        ),
    ]
    events = [
        Event(FIXED_NOW - 30, EventKind.NODE_HEALTH, "mac-studio is healthy", node="mac-studio"),
        Event(
            FIXED_NOW - 20,
            EventKind.INSTANCE_UP,
            "llama3.1:8b loaded on gpu-box",
            node="gpu-box",
            model="llama3.1:8b",
        ),
        Event(
            FIXED_NOW - 5,
            EventKind.NODE_HEALTH,
            "old-mini is suspect: connection refused",
            node="old-mini",
            level=Level.WARNING,
        ),
        Event(
            FIXED_NOW - 3,
            EventKind.NODE_HEALTH,
            "old-mini is down: connection refused",
            node="old-mini",
            level=Level.ERROR,
        ),
    ]
    return snapshot(nodes, instances, version=7, queue={"llama3.1:8b": 1}), events


class FlakyClient(FakeClient):
    """A client whose first watch stream breaks after its first update (an engine restart)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch_calls = 0

    async def watch(self) -> AsyncIterator[Update]:
        self.watch_calls += 1
        if self.watch_calls == 1:
            yield Update(self._snap, [])
            raise ConnectionError("control API closed the stream")
        async for update in super().watch():
            yield update


def fixed_history() -> History:
    """Five minutes of samples ending at FIXED_NOW, the same every run: mac-studio busy and
    rising, gpu-box a burst a minute ago then a queue, old-mini quiet, then gone (down)."""
    h = History()
    for k in range(300):
        at = FIXED_NOW - 299 + k
        mac = 0.5 + 2.5 * k / 299 + (0.5 if k % 40 < 10 else 0.0)
        gpu = 3.0 if 200 <= k < 240 else 0.2 if k % 30 == 0 else 0.0
        gpu_queue = 2.0 if k >= 240 else 0.0
        nodes = {
            "mac-studio": (mac, 0.0, 30.0 + 12.5 * k / 299, 71.3 * GiB),
            "gpu-box": (gpu, gpu_queue, None, 58.9 * GiB),
        }
        if k < 240:
            nodes["old-mini"] = (0.0, 0.0, None, None)
        cluster = (
            mac + gpu,
            gpu_queue + (1.0 if k > 280 else 0.0),
            30.0 + 12.5 * k / 299,
            130.2 * GiB,
        )
        models = {
            "qwen3-30b-a3b": (mac * 0.8, 0.0, None, None),
            "gemma-3-12b": (mac * 0.2, 0.0, None, None),
            "llama3.1:8b": (gpu, gpu_queue + (1.0 if k > 280 else 0.0), None, None),
        }
        h.add(Sample(at, cluster, nodes, models))
    return h


def fixed_details() -> dict[str, ModelDetails]:
    """What the engine says about the fixed cluster's pinned model."""
    return {
        "qwen3-30b-a3b": ModelDetails(
            model="qwen3-30b-a3b",
            pinned=True,
            priority="high",
            min_replicas=1,
            idle_ttl_s=600.0,
            logged=True,
            requests=412,
            failed=3,
            queue_wait_s=Percentiles(0.004, 0.210, 1.900),
            ttft_s=Percentiles(0.180, 0.620, 2.400),
        )
    }
