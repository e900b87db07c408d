"""How much CPU does polling a big cluster cost, and how long does one round take?

    python bench/poll_scale.py                 # 50 and 200 nodes, 30 s each
    python bench/poll_scale.py --nodes 200 --seconds 10

The simulated nodes run in a separate process (so their CPU is not counted); this process
runs lmtui's production poll loops (``Engine``: one loop per node, shared httpx client) at
1 s intervals. Nodes are a mix of LM Studio, Ollama and llama.cpp (single mode), 10 models
each (3 loaded). Reported:

- cpu/wall: CPU seconds this process used per second of wall time (1.0 = one core busy);
- round p50/p99: for the k-th poll of every node, the time from the first start to the last
  end — how stale the whole picture can be;
- failed polls (should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtui.config import Config, NodeConfig, PollConfig
from lmtui.core.model import NodeKind, PollFailure

KINDS = [NodeKind.LMSTUDIO, NodeKind.OLLAMA, NodeKind.LLAMACPP]


def specs(n: int) -> list:
    from lmtui.sim import SimModel, SimNodeSpec

    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        models = [SimModel(f"model-{j}", size_gb=4.0 + j) for j in range(10)]
        loaded = [m.key for m in models[:3]] if kind is not NodeKind.LLAMACPP else [models[0].key]
        out.append(
            SimNodeSpec(
                name=f"n{i:03d}",
                kind=kind,
                memory_gb=256,
                models=models,
                loaded=loaded,
                parallel=4,
                version="0.4.2" if kind is NodeKind.LMSTUDIO else "0.12.0",
            )
        )
    return out


async def run_sims(n: int) -> None:
    from lmtui.sim import SimCluster

    sp = specs(n)
    async with SimCluster(sp, time_scale=1.0) as cluster:
        print(
            json.dumps(
                [{"name": s.name, "kind": s.kind.value, "url": cluster.url(s.name)} for s in sp]
            ),
            flush=True,
        )
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def measure(nodes: list[dict], seconds: float) -> dict:
    from lmtui.engine.engine import Engine

    cfg = Config(
        nodes=[
            NodeConfig(name=d["name"], kind=NodeKind(d["kind"]), url=d["url"], memory_gb=256)
            for d in nodes
        ],
        poll=PollConfig(interval=1.0, timeout=5.0),
    )
    engine = Engine(cfg)
    spans: dict[str, list[tuple[float, float]]] = {n.name: [] for n in cfg.nodes}
    for name, backend in engine.backends.items():
        orig = backend.poll

        async def timed(now: float, _orig=orig, _name=name):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return await _orig(now)
            finally:
                spans[_name].append((t0, time.perf_counter()))

        backend.poll = timed  # type: ignore[method-assign]
    failures = 0
    orig_apply = engine.store.apply

    def apply(obs):  # type: ignore[no-untyped-def]
        nonlocal failures
        if isinstance(obs, PollFailure):
            failures += 1
        return orig_apply(obs)

    engine.store.apply = apply  # type: ignore[method-assign]
    await engine.start()
    await asyncio.sleep(2.0)  # warm-up: connections opened, first parse done
    for s in spans.values():
        s.clear()
    failures = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    await engine.stop()
    rounds = min(len(s) for s in spans.values())
    durations = sorted(
        max(spans[n][k][1] for n in spans) - min(spans[n][k][0] for n in spans)
        for k in range(rounds)
    )
    per_poll = sorted(e - s for v in spans.values() for s, e in v)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {
        "nodes": len(nodes),
        "seconds": round(wall1 - wall0, 1),
        "cpu_per_wall": round((cpu1 - cpu0) / (wall1 - wall0), 4),
        "rounds": rounds,
        "round_p50_ms": round(1000 * statistics.median(durations), 1),
        "round_p99_ms": round(1000 * pct(durations, 0.99), 1),
        "poll_p99_ms": round(1000 * pct(per_poll, 0.99), 1),
        "failed_polls": failures,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="*", default=[50, 200])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sim-only", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sim_only:
        asyncio.run(run_sims(args.sim_only))
        return
    results = []
    for n in args.nodes:
        sim = subprocess.Popen(
            [sys.executable, __file__, "--sim-only", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert sim.stdout is not None
            nodes = json.loads(sim.stdout.readline())
            results.append(asyncio.run(measure(nodes, args.seconds)))
            print(json.dumps(results[-1]), flush=True)
        finally:
            if sim.stdin:
                sim.stdin.close()
            sim.wait(timeout=30)
    print("\nnodes  cpu/wall(1 core)  round p50 ms  round p99 ms  poll p99 ms  failed")
    for r in results:
        print(
            f"{r['nodes']:5d}  {r['cpu_per_wall']:16.3f}  {r['round_p50_ms']:12.1f}  "
            f"{r['round_p99_ms']:12.1f}  {r['poll_p99_ms']:11.1f}  {r['failed_polls']:6d}"
        )


if __name__ == "__main__":
    main()
