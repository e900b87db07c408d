"""What lmtui's own bookkeeping costs per routed request, without any network.

    python bench/dispatch_cost.py [--requests 20000] [--profile]

One node, one instance with free slots: each request is ``Dispatcher.acquire`` (the
scheduler's decision, the in-flight update, the route event, the route metric), then
``release`` and ``Metrics.request_done`` — everything the router does per request besides
HTTP. Reports microseconds per request (best of three runs) and, with ``--profile``, where
the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from lmtui.core.model import (
    AvailableModel,
    GiB,
    Health,
    HostMemory,
    InstanceObservation,
    Node,
    NodeKind,
    NodeObservation,
)
from lmtui.core.placement import PoolSettings
from lmtui.core.scheduler import RequestInfo, SchedulerSettings
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.metrics import Metrics
from lmtui.engine.store import Store


async def run(n: int) -> float:
    node = Node(
        "bench",
        NodeKind.OPENAI,
        "http://127.0.0.1:1",
        health=Health.HEALTHY,
        memory=HostMemory(64 * GiB, 60 * GiB),
        available=(AvailableModel("m"),),
    )
    store = Store([node])
    store.apply(
        NodeObservation(
            "bench",
            1.0,
            0.0,
            instances=(InstanceObservation("m", "m", slots_total=64, last_used=1.0),),
        )
    )
    metrics = Metrics(lambda: store.snapshot)
    d = Dispatcher(
        store,
        {},
        SchedulerSettings(pool=PoolSettings(no_load_nodes=frozenset({"bench"}))),
        on_route=metrics.route,
    )
    t0 = time.perf_counter()
    for i in range(n):
        lease = await d.acquire(RequestInfo("m", request_id=f"r{i}"), deadline=time.time() + 10)
        d.release(lease)
        metrics.request_done("m", "bench", "ok", queue_wait_s=0.0, ttft_s=0.001, duration_s=0.002)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    best = min(asyncio.run(run(args.requests)) for _ in range(3))
    print(f"lmtui bookkeeping per request: {best:.1f} µs (best of 3 × {args.requests})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run(args.requests))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
