"""How long the dashboard takes to put one store update on the screen (issue 12).

    python bench/tui_render.py [--nodes 10 50 200] [--models 20] [--updates 200]
                               [--cpu-seconds 20] [--json] [--gc-in-frames]

A synthetic cluster of N nodes with ``--models`` instances each (N × 20 rows in the model
table) and five minutes of metric history for every node and model runs in the real app,
headless, at 160×48. Each update is what a busy cluster sends: a new snapshot in which a
tenth of the instances changed their busy slots and last use and a fifth of the nodes their
tokens/s, plus one new history sample (so the sparklines are redrawn too, the worst case:
in a live cluster the history moves once a second, snapshots more often), and the clock
one second later (so "last used" and "TTL left" age as they do live; a frozen clock hid
their redraws).

Per update:

- **apply**: ``LmtuiApp.apply_update`` — lmtui's own work: rendering the rows (pure), the
  keyed diff, the cells written, the header, inside one ``batch_update``;
- **paint**: the compositor's part of it (``Screen._compositor_refresh``: the layout,
  then each dirty line rendered and composited);
- **frame**: from the update arriving until the screen is written: apply, then every
  message that work posted handled (the loop runs until no widget's queue holds one; not
  ``pilot.pause()``, which sleeps at least 20 ms for the CPU to look idle, nor Pilot's
  ``_wait_for_screen``, which posts a callback to every widget and waits for them, about
  4 ms here of a test harness's own work), then the layout and the paint of the dirty
  regions (the screen's update timer, called at once instead of at the next 1/60 s
  tick): compare with 16 ms (60 Hz);
- **cpu**: the process CPU time over the same span, which other load on the machine
  changes less than wall time;
- **p99 no gc2**: frame p99 over the updates in which no full (generation 2) garbage
  collection ran (those scan every object the start did not freeze, whoever made the
  garbage); **gc2 in fr** says how many landed in a frame, **gc2s** how many ran in the
  run and **gc2 ms** their median length. The app runs every collection, young ones too,
  right after a frame is written (``lmtui.tui.collector``); ``--gc-in-frames`` leaves
  them to the interpreter (at its own thresholds), which starts them wherever it is, most
  often in the middle of a frame;
- **written** / **drawn**: cells that changed in the tables, and rows made into strips
  again for the screen (``KeyedTable.rows_drawn``), per update: work that noise does not
  change.

Then the CPU the UI process uses at one update per second through the app's own watch
worker and clock tick (``--cpu-seconds``), as a percentage of one core; and under a flood
of ``FLOOD_PER_S`` updates a second (an engine publishing a snapshot per node poll), how
many a second are shown (``shown/s``: at most ``MAX_UPDATES_PER_S``, the rest merged,
plus the clock's tick) and the CPU then (``cpu % flood``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

SIZE = (160, 48)
#: Updates a second offered in the flood part (``cpu % flood``).
FLOOD_PER_S = 100
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


async def drained(app: LmtuiApp) -> None:
    """Let the loop run until no message queue of the app or its widgets holds anything
    (what an update posted: refreshes, layout, the cursor's messages), or 1,000 turns."""
    pumps = [app, *app.screen.walk_children(with_self=True)]
    for _ in range(1000):
        if all(p._message_queue.empty() for p in pumps):
            return
        await asyncio.sleep(0)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * len(v)) - 1))]


async def measure(
    n_nodes: int, n_models: int, updates: int, cpu_seconds: float, idle_gc: bool = True
) -> dict:
    snap = cluster(n_nodes, n_models)
    history = history_for(snap)
    client = BenchClient(snap, history)
    # The clock moves a second per update, as the history does: in a live cluster the
    # "last used" and "TTL left" cells age, so a frozen clock would hide their redraws.
    clock = [NOW]
    app: LmtuiApp = build_app(client, clock=lambda: clock[0], theme_dirs=())
    out: dict[str, object] = {"nodes": n_nodes, "rows": len(snap.instances)}
    async with app.run_test(size=SIZE, headless=True) as pilot:
        async with asyncio.timeout(60):
            while app.shown_version != snap.version or client.queue is None:
                await pilot.pause(0.01)
        await pilot.pause(0.2)
        tables = [app.query_one(NodeTable), app.query_one(ModelTable)]
        if not idle_gc:
            app.collector.stop()  # collections wherever the interpreter starts them
        # Full collections (Python's generation 2) scan every object the start did not
        # freeze, whoever made the garbage: each one's length is kept, and an update one
        # lands in is counted apart as well, so that it does not hide what the update
        # itself costs. The app runs every collection after a frame (lmtui.tui.collector).
        full_gcs = [0]
        gc_ms: list[float] = []
        gc_started = [0.0]
        in_frame = [False]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if info["generation"] != 2:
                return
            if phase == "start":
                gc_started[0] = time.perf_counter()
                full_gcs[0] += in_frame[0]
            else:
                gc_ms.append((time.perf_counter() - gc_started[0]) * 1000)

        gc.callbacks.append(on_gc)
        quiet_ms: list[float] = []
        apply_ms: list[float] = []
        paint_ms: list[float] = []
        # The compositor's own time (layout, each dirty line rendered and composited),
        # apart from the message round trip Pilot's wait adds to every frame.
        painted = [0.0]
        screen = app.screen
        composite = screen._compositor_refresh

        def timed_composite() -> None:
            t = time.perf_counter()
            composite()
            painted[0] += time.perf_counter() - t

        screen._compositor_refresh = timed_composite  # type: ignore[method-assign]
        frame_ms: list[float] = []
        cpu_ms: list[float] = []
        cells_written: list[int] = []
        rows_drawn: list[int] = []
        for k in range(updates):
            snap = changed(snap, k)
            history.add(sample(snap, NOW + k + 1, k))
            clock[0] = NOW + k + 1
            drawn = sum(getattr(t, "rows_drawn", 0) for t in tables)
            gcs = full_gcs[0]
            painted[0] = 0.0
            in_frame[0] = True
            c0, t0 = time.process_time(), time.perf_counter()
            app.apply_update(Update(snap, []))
            t1 = time.perf_counter()
            # Every message the update posted handled (no timed sleep: pilot.pause() waits
            # at least 20 ms for the CPU to look idle, which is no part of the update; nor
            # Pilot's own wait, which posts a callback to every widget and waits for them
            # all, ~4 ms here of a test harness's work)...
            await drained(app)
            # ...then the next frame's layout and paint, now rather than at the next tick.
            app.screen._on_timer_update()
            t2, c2 = time.perf_counter(), time.process_time()
            in_frame[0] = False
            apply_ms.append((t1 - t0) * 1000)
            paint_ms.append(painted[0] * 1000)
            frame_ms.append((t2 - t0) * 1000)
            cpu_ms.append((c2 - c0) * 1000)
            if full_gcs[0] == gcs:
                quiet_ms.append((t2 - t0) * 1000)
            cells_written.append(sum(t.last_sync_stats[1] for t in tables))
            await pilot.pause()  # idle handlers and anything left, outside the measurement
            rows_drawn.append(sum(getattr(t, "rows_drawn", 0) for t in tables) - drawn)
        gc.callbacks.remove(on_gc)
        for name, values in (
            ("apply", apply_ms),
            ("paint", paint_ms),
            ("frame", frame_ms),
            ("frame_cpu", cpu_ms),
            ("frame_no_full_gc", quiet_ms or [0.0]),
        ):
            out[f"{name}_p50_ms"] = round(statistics.median(values), 2)
            out[f"{name}_p99_ms"] = round(pct(values, 0.99), 2)
        out["full_gcs"] = full_gcs[0]
        out["all_full_gcs"] = len(gc_ms)
        out["full_gc_p50_ms"] = round(statistics.median(gc_ms), 2) if gc_ms else "—"
        out["cells_written"] = round(statistics.mean(cells_written), 1)
        out["rows_drawn"] = round(statistics.mean(rows_drawn), 1)

        # CPU at one update a second, through the app's own worker and clock tick.
        if cpu_seconds > 0:
            assert client.queue is not None
            c0, w0 = time.process_time(), time.perf_counter()
            k = updates
            while time.perf_counter() - w0 < cpu_seconds:
                snap = changed(snap, k)
                history.add(sample(snap, NOW + k + 1, k))
                clock[0] = NOW + k + 1
                client._snap = snap
                client.queue.put_nowait(Update(snap, []))
                k += 1
                await asyncio.sleep(1.0)
            cpu = time.process_time() - c0
            out["cpu_pct_at_1_update_per_s"] = round(100 * cpu / (time.perf_counter() - w0), 1)

            # A flood: updates offered far faster than a screen needs (an engine publishes a
            # snapshot per node poll); the app draws at most MAX_UPDATES_PER_S of them.
            drawn = [0]
            show = app.show_snapshot

            def counting(s: Snapshot) -> None:
                drawn[0] += 1
                show(s)

            app.show_snapshot = counting  # type: ignore[method-assign]
            # Made beforehand, so that the CPU counted is the dashboard's, not the making
            # of 100 snapshots a second (an engine's work, even when it shares the process).
            made = [snap]
            for j in range(20):
                made.append(changed(made[-1], k + j))
            c0, w0 = time.process_time(), time.perf_counter()
            version = made[-1].version
            while time.perf_counter() - w0 < cpu_seconds:
                version += 1
                snap = replace(made[k % len(made)], version=version)
                k += 1
                client._snap = snap
                client.queue.put_nowait(Update(snap, []))
                await asyncio.sleep(1 / FLOOD_PER_S)
            wall = time.perf_counter() - w0
            out["flood_drawn_per_s"] = round(drawn[0] / wall, 1)
            out["cpu_pct_at_flood"] = round(100 * (time.process_time() - c0) / wall, 1)
            app.show_snapshot = show  # type: ignore[method-assign]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--cpu-seconds", type=float, default=20.0)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--gc-in-frames",
        action="store_true",
        help="leave garbage collections to the interpreter (see lmtui.tui.collector)",
    )
    args = p.parse_args()
    results = [
        asyncio.run(measure(n, args.models, args.updates, args.cpu_seconds, not args.gc_in_frames))
        for n in args.nodes
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    cols = [
        ("nodes", "nodes"),
        ("rows", "rows"),
        ("apply_p50_ms", "apply p50"),
        ("apply_p99_ms", "apply p99"),
        ("paint_p50_ms", "paint p50"),
        ("paint_p99_ms", "paint p99"),
        ("frame_p50_ms", "frame p50"),
        ("frame_p99_ms", "frame p99"),
        ("frame_cpu_p50_ms", "cpu p50"),
        ("frame_cpu_p99_ms", "cpu p99"),
        ("frame_no_full_gc_p99_ms", "p99 no gc2"),
        ("full_gcs", "gc2 in fr"),
        ("all_full_gcs", "gc2s"),
        ("full_gc_p50_ms", "gc2 ms"),
        ("cells_written", "written"),
        ("rows_drawn", "drawn"),
        ("cpu_pct_at_1_update_per_s", "cpu % @1/s"),
        ("flood_drawn_per_s", "shown/s"),
        ("cpu_pct_at_flood", "cpu % flood"),
    ]
    print("  ".join(label.rjust(10) for _, label in cols))
    for r in results:
        print("  ".join(str(r.get(key, "—")).rjust(10) for key, _ in cols))
    print(f"(ms per update, {args.updates} updates, {SIZE[0]}x{SIZE[1]}, headless)")


if __name__ == "__main__":
    main()
