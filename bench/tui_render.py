"""How long the dashboard takes to put one store update on the screen (issue 12).

    python bench/tui_render.py [--nodes 10 50 200] [--models 20] [--updates 200]
                               [--cpu-seconds 20] [--json]

A synthetic cluster of N nodes with ``--models`` instances each (N × 20 rows in the model
table) and five minutes of metric history for every node and model runs in the real app,
headless, at 160×48. Each update is what a busy cluster sends: a new snapshot in which a
tenth of the instances changed their busy slots and last use and a fifth of the nodes their
tokens/s, plus one new history sample (so the sparklines are redrawn too, the worst case:
in a live cluster the history moves once a second, snapshots more often).

Per update, three figures:

- **apply**: ``LmtuiApp.apply_update`` — lmtui's own work: rendering the rows (pure), the
  keyed diff, ``update_cell`` for what changed, the header, inside one ``batch_update``;
- **to idle**: then until Textual has handled the messages that work posted;
- **frame**: then the layout and the paint of the dirty regions (the screen's update
  timer, called at once instead of waiting for the next 1/60 s tick), so the total is the
  time from the update arriving to the screen being written: compare with 16 ms (60 Hz).

Then the CPU the UI process uses at one update per second through the app's own watch
worker and clock tick (``--cpu-seconds``), as a percentage of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from lmtui.core.events import Event
from lmtui.core.model import GiB, Health, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.engine import commands as cmd
from lmtui.engine.client import EngineClient, Update
from lmtui.engine.commands import Result
from lmtui.engine.history import History, Sample
from lmtui.tui.app import LmtuiApp, build_app

SIZE = (160, 48)
NOW = 1_700_000_000.0


class BenchClient(EngineClient):
    """Hands the app the updates the benchmark pushes, nothing else."""

    def __init__(self, snap: Snapshot, history: History) -> None:
        self._snap = snap
        self._history = history
        self.queue: asyncio.Queue[Update] | None = None
        self.source = "bench"

    def snapshot(self) -> Snapshot:
        return self._snap

    def recent_events(self, limit: int = 200) -> list[Event]:
        return []

    async def watch(self) -> AsyncIterator[Update]:
        self.queue = asyncio.Queue()
        yield Update(self._snap, [])
        while True:
            yield await self.queue.get()

    async def strategy(self) -> str:
        return "efficiency"

    async def _send(self, command: cmd.Command) -> Result:
        return Result("")


def cluster(n_nodes: int, n_models: int) -> Snapshot:
    nodes = {
        f"node-{i:03d}": Node(
            f"node-{i:03d}",
            NodeKind.LLAMACPP if i % 2 else NodeKind.OLLAMA,
            f"http://10.0.{i // 250}.{i % 250}:8080",
            health=Health.HEALTHY,
            memory=HostMemory(128 * GiB, (60 + i % 50) * GiB, source="ssh-linux"),
            tokens_per_second=10.0 + i,
            poll_latency_s=0.01,
            last_poll_at=NOW - 1,
            last_ok_at=NOW - 1,
        )
        for i in range(n_nodes)
    }
    insts = {}
    for name in nodes:
        for m in range(n_models):
            inst = Instance(
                name,
                f"model-{m:02d}-instruct",
                f"model-{m:02d}-instruct",
                size_bytes=(2 + m) * GiB,
                slots_total=4,
                slots_busy=m % 3,
                last_used=NOW - m * 7,
                first_seen=NOW - 3600,
            )
            insts[inst.key] = inst
    return Snapshot(
        version=1, at=NOW, nodes=MappingProxyType(nodes), instances=MappingProxyType(insts)
    )


def sample(snap: Snapshot, at: float, k: int) -> Sample:
    nodes = {
        name: (float((i + k) % 7), float(k % 3), n.tokens_per_second, 60.0 * GiB)
        for i, (name, n) in enumerate(snap.nodes.items())
    }
    models = {i.model: (1.0, 0.0, None, None) for i in snap.instances.values()}
    return Sample(at, (float(k % 11), 1.0, 100.0, 1e12), nodes, models)


def history_for(snap: Snapshot) -> History:
    h = History()
    for k in range(300):
        h.add(sample(snap, NOW - 300 + k, k))
    return h


def changed(snap: Snapshot, k: int) -> Snapshot:
    """A tenth of the instances busier or idler, a fifth of the nodes' tokens/s moved."""
    insts = dict(snap.instances)
    keys = list(insts)
    for key in keys[k % 10 :: 10]:
        i = insts[key]
        insts[key] = replace(i, slots_busy=(i.slots_busy + 1) % 5, last_used=NOW + k)
    nodes = dict(snap.nodes)
    for name in list(nodes)[k % 5 :: 5]:
        nodes[name] = replace(nodes[name], tokens_per_second=float((k * 7) % 90))
    return replace(
        snap,
        version=snap.version + 1,
        nodes=MappingProxyType(nodes),
        instances=MappingProxyType(insts),
    )


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * len(v)) - 1))]


async def measure(n_nodes: int, n_models: int, updates: int, cpu_seconds: float) -> dict:
    snap = cluster(n_nodes, n_models)
    history = history_for(snap)
    client = BenchClient(snap, history)
    app: LmtuiApp = build_app(client, clock=lambda: NOW, theme_dirs=())
    out: dict[str, object] = {"nodes": n_nodes, "rows": len(snap.instances)}
    async with app.run_test(size=SIZE, headless=True) as pilot:
        async with asyncio.timeout(60):
            while app.shown_version != snap.version or client.queue is None:
                await pilot.pause(0.01)
        await pilot.pause(0.2)
        apply_ms: list[float] = []
        idle_ms: list[float] = []
        frame_ms: list[float] = []
        for k in range(updates):
            snap = changed(snap, k)
            history.add(sample(snap, NOW + k + 1, k))
            t0 = time.perf_counter()
            app.apply_update(Update(snap, []))
            t1 = time.perf_counter()
            await pilot.pause()
            t2 = time.perf_counter()
            app.screen._on_timer_update()  # the next frame's layout and paint, now
            t3 = time.perf_counter()
            apply_ms.append((t1 - t0) * 1000)
            idle_ms.append((t2 - t0) * 1000)
            frame_ms.append((t3 - t0) * 1000)
        for name, values in (("apply", apply_ms), ("to_idle", idle_ms), ("frame", frame_ms)):
            out[f"{name}_p50_ms"] = round(statistics.median(values), 2)
            out[f"{name}_p99_ms"] = round(pct(values, 0.99), 2)

        # CPU at one update a second, through the app's own worker and clock tick.
        if cpu_seconds > 0:
            assert client.queue is not None
            c0, w0 = time.process_time(), time.perf_counter()
            k = updates
            while time.perf_counter() - w0 < cpu_seconds:
                snap = changed(snap, k)
                history.add(sample(snap, NOW + k + 1, k))
                client._snap = snap
                client.queue.put_nowait(Update(snap, []))
                k += 1
                await asyncio.sleep(1.0)
            cpu = time.process_time() - c0
            out["cpu_pct_at_1_update_per_s"] = round(100 * cpu / (time.perf_counter() - w0), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--cpu-seconds", type=float, default=20.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = [
        asyncio.run(measure(n, args.models, args.updates, args.cpu_seconds)) for n in args.nodes
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    cols = [
        ("nodes", "nodes"),
        ("rows", "rows"),
        ("apply_p50_ms", "apply p50"),
        ("apply_p99_ms", "apply p99"),
        ("to_idle_p50_ms", "idle p50"),
        ("to_idle_p99_ms", "idle p99"),
        ("frame_p50_ms", "frame p50"),
        ("frame_p99_ms", "frame p99"),
        ("cpu_pct_at_1_update_per_s", "cpu % @1/s"),
    ]
    print("  ".join(label.rjust(10) for _, label in cols))
    for r in results:
        print("  ".join(str(r.get(key, "—")).rjust(10) for key, _ in cols))
    print(f"(ms per update, {args.updates} updates, {SIZE[0]}x{SIZE[1]}, headless)")


if __name__ == "__main__":
    main()
