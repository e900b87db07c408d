"""Does lmtui turn N serial servers into N-way parallelism?

    python bench/parallel.py                   # N = 2, 4, 8
    python bench/parallel.py --nodes 4 --json

The test this project started from, generalized. N simulated LM Studio 0.3.9 servers (which
process one request at a time, like the real ones before 0.4), each with the same model
loaded; 2N concurrent, identical, non-streaming chat requests sent with the real ``openai``
client:

- ``direct (one node)``: all 2N to the first node, the "before" picture: the server runs
  them one after another, so the speedup is about 1;
- ``lmtui``: through ``python -m lmtui --serve`` with the N nodes as ``kind = "lmstudio"``;
  it should hold surplus requests in its own queue and hand each node one at a time.

speedup = sum of the requests' durations / wall time, where a request's duration is the time
the server spent on it (from getting a slot to its last token, as the simulator records it),
not the time the client waited, which includes queueing. It is the average number of
requests in service at once: 1 for one serial server, at best N for N of them. Goal:
speedup >= 0.9 x N through lmtui. Also shown: how many requests each node served and the
mean time a client waited beyond its request's duration.

The simulated nodes run inside this process (``lmtui.sim.SimCluster``); lmtui runs in its own.
``--time-scale`` shrinks simulated time (default 0.5: a 32-token reply takes ~0.4 s).
If lmtui does not come up or cannot route, the lmtui rows say why and the direct part stands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _upstream as up

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

MODEL = "qwen2.5-7b-instruct"
#: LM Studio before 0.4 serializes every request across the whole server.
SERIAL_VERSION = "0.3.9"
#: Speedup through lmtui must reach this fraction of N.
GOAL_FRACTION = 0.9
POLL_INTERVAL_S = 0.5


@dataclass
class Burst:
    """2N concurrent requests along one path, and what the servers did with them."""

    path: str
    nodes: int
    requests: int
    ok: int
    wall_s: float
    service_sum_s: float
    #: Mean of (client latency - server duration): time spent waiting in some queue.
    mean_wait_s: float
    #: Requests each node served, by node name.
    per_node: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.service_sum_s / self.wall_s if self.wall_s > 0 else 0.0


def specs(n: int) -> list[SimNodeSpec]:
    """N identical serial LM Studio nodes with the model already loaded."""
    return [
        SimNodeSpec(
            name=f"sim-{i}",
            kind=NodeKind.LMSTUDIO,
            version=SERIAL_VERSION,
            memory_gb=64,
            models=[SimModel(MODEL, size_gb=5.0)],
            loaded=[MODEL],
        )
        for i in range(n)
    ]


def lmtui_config(cluster: SimCluster, sp: list[SimNodeSpec]) -> str:
    """The config under test: the N nodes, polled twice a second."""
    out = []
    for s in sp:
        out += [
            "[[nodes]]",
            f'name = "{s.name}"',
            'kind = "lmstudio"',
            f'url = "{cluster.url(s.name)}"',
            f"memory_gb = {s.memory_gb:g}",
        ]
    out += ["[poll]", f"interval = {POLL_INTERVAL_S}", "[router]", "queue_depth = 1000"]
    return "\n".join(out) + "\n"


async def burst(
    path: str, base_url: str, cluster: SimCluster, *, requests: int, max_tokens: int, timeout: float
) -> Burst:
    """Send ``requests`` concurrent chat requests to ``base_url``; measure them."""
    import openai

    seen = {node.spec.name: len(node.records) for node in cluster.nodes}
    client = openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="bench", max_retries=0, timeout=timeout
    )
    latencies: list[float] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Request {i}: say hello."}],
                max_tokens=max_tokens,
            )
            latencies.append(time.perf_counter() - t0)
        except openai.OpenAIError as e:
            errors.append(f"{type(e).__name__}: {str(e)[:160]}")

    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(i) for i in range(requests)))
    except TimeoutError:
        errors.append(f"burst did not finish within {timeout:.0f} s")
    wall = time.perf_counter() - start
    await client.close()
    # The servers' own record of each request: from getting a slot to the last token.
    per_node: dict[str, int] = {}
    durations: list[float] = []
    for node in cluster.nodes:
        fresh = [j for j in node.records[seen[node.spec.name] :] if j.outcome == "ok"]
        if fresh:
            per_node[node.spec.name] = len(fresh)
        durations += [j.finished - j.started for j in fresh if j.started and j.finished]
    service = sum(durations)
    mean_wait = (sum(latencies) - service) / len(latencies) if latencies else 0.0
    return Burst(
        path=path,
        nodes=len(cluster.nodes),
        requests=requests,
        ok=len(latencies),
        wall_s=wall,
        service_sum_s=service,
        mean_wait_s=max(0.0, mean_wait),
        per_node=per_node,
        errors=errors[:5],
    )


async def wait_all_polled(proc: up.Proc, names: list[str], timeout: float) -> None:
    """Best effort: wait until lmtui's log reports the model on every node.

    lmtui lists the model as soon as one node is polled; sending the burst before the other
    nodes are known would measure the start-up, not the routing.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.stderr_path.read_text(errors="replace")
        if all(f"on {name}" in text for name in names):
            return
        await asyncio.sleep(0.1)
    # Older log wording: give the poll loops a few intervals instead.
    await asyncio.sleep(3 * POLL_INTERVAL_S)


async def run_n(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both bursts for N nodes."""
    sp = specs(n)
    out: dict[str, Any] = {"nodes": n}
    # One request's service time, for the burst timeouts: generous, never unbounded.
    timeout = 60.0 + 4 * 2 * n * max(1.0, args.max_tokens / 40 * args.time_scale)
    async with SimCluster(sp, time_scale=args.time_scale, seed=args.seed) as cluster:
        log(f"N={n}: direct to {sp[0].name} ...")
        out["direct"] = await burst(
            "direct (one node)",
            cluster.url(sp[0].name),
            cluster,
            requests=2 * n,
            max_tokens=args.max_tokens,
            timeout=timeout,
        )
        log(f"N={n}: through lmtui ...")
        work = up.make_workdir("lmtui-parallel-")
        try:
            proc, url = await asyncio.to_thread(
                up.start_lmtui,
                work,
                lmtui_config(cluster, sp),
                cpu=None,
                model=MODEL,
                timeout=args.lmtui_timeout,
            )
        except up.StartError as e:
            out["lmtui_not_measured"] = f"lmtui --serve did not come up: {e}"
            shutil.rmtree(work, ignore_errors=True)
            return out
        try:
            await wait_all_polled(proc, [s.name for s in sp], timeout=10)
            out["lmtui"] = await burst(
                "lmtui", url, cluster, requests=2 * n, max_tokens=args.max_tokens, timeout=timeout
            )
            if out["lmtui"].ok == 0:
                out["lmtui_not_measured"] = "no request succeeded through lmtui: " + "; ".join(
                    out["lmtui"].errors
                )
        finally:
            proc.stop()
            shutil.rmtree(work, ignore_errors=True)
    return out


def print_report(results: list[dict[str, Any]]) -> None:
    print(
        f"{'N':>3}  {'path':18}{'ok':>7}{'wall s':>9}{'busy s':>9}{'speedup':>9}"
        f"{'/N':>7}{'wait s':>8}  per node"
    )
    for res in results:
        n = res["nodes"]
        for key in ("direct", "lmtui"):
            b: Burst | None = res.get(key)
            if b is None:
                continue
            nodes = " ".join(f"{k}:{v}" for k, v in sorted(b.per_node.items()))
            print(
                f"{n:>3}  {b.path:18}{f'{b.ok}/{b.requests}':>7}{b.wall_s:>9.2f}"
                f"{b.service_sum_s:>9.2f}{b.speedup:>9.2f}{b.speedup / n:>7.2f}"
                f"{b.mean_wait_s:>8.2f}  {nodes}"
            )
            for err in b.errors:
                print(f"       error: {err}")
        if "lmtui_not_measured" in res:
            print(f"       lmtui: NOT MEASURED: {res['lmtui_not_measured']}")
        elif "lmtui" in res:
            b = res["lmtui"]
            ok = b.speedup >= GOAL_FRACTION * n and b.ok == b.requests
            print(
                f"       {'PASS' if ok else 'FAIL'}  lmtui speedup {b.speedup:.2f} "
                f">= {GOAL_FRACTION} x {n} = {GOAL_FRACTION * n:.1f}"
            )
    print()
    print("busy s = sum of the time each server spent on each request; speedup = busy / wall")


def to_json(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for res in results:
        item: dict[str, Any] = {"nodes": res["nodes"]}
        for key in ("direct", "lmtui"):
            if key in res:
                b = res[key]
                item[key] = {
                    **asdict(b),
                    "speedup": round(b.speedup, 3),
                    "speedup_per_node": round(b.speedup / res["nodes"], 3),
                }
        if "lmtui_not_measured" in res:
            item["lmtui_not_measured"] = res["lmtui_not_measured"]
        elif "lmtui" in res:
            item["goal_met"] = res["lmtui"].speedup >= GOAL_FRACTION * res["nodes"]
        out.append(item)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [await run_n(n, args) for n in args.nodes]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--nodes",
        type=int,
        nargs="+",
        default=[2, 4, 8],
        help="numbers of serial nodes to test (2 4 8)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="reply length in tokens; at most 64 keeps every reply the same (32)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=0.5,
        help="simulated time multiplier (0.5: a 32-token reply takes ~0.4 s)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--lmtui-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for lmtui to list the model (30)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.nodes) or args.max_tokens < 1 or args.time_scale <= 0:
        p.error("--nodes, --max-tokens and --time-scale must be positive")
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
