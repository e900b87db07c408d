"""Cold start through lmtui: a request for a model that is not loaded, to its first token.

    python bench/cold_start.py [--runs 10] [--kinds router pool] [--json]

Needs the real ``llama-server`` and model that ``scripts/llama-server.sh`` builds and caches.
For each node kind, the node's own time to get ready is measured first, without lmtui:

- **router** (``llama-server --models-dir D --models-max 1``, models ``alpha``/``beta``, the
  same small file under two names): ``POST /models/load`` until ``GET /models`` (polled
  every 5 ms) says ``loaded``;
- **pool** (a ``llamacpp-pool`` node, lmtui starts the servers): process start until
  ``/health`` answers 200 (polled every 5 ms);

plus the time to the first token of a streamed request sent the moment it is ready (the
node's own cold start is the sum). Then lmtui runs
in this process (``Engine`` with its router on loopback, default 1 s polls) and a streamed
request is timed to its first data event. Before each run, timed or not, every model is
unloaded (untimed), so every run is a cold start with nothing to evict, in both
measurements; the two models alternate. lmtui's added time per run is
``cold TTFT - median(node ready + first TTFT)``; reported as p50 and max, with the
upstream requests lmtui made to the node during each cold start (polls included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "real"))

from llama import LlamaBuild, LlamaServer, find_build, free_port, models_dir  # noqa: E402

from lmtui.config import Config, NodeConfig, PoolConfig, RouterConfig  # noqa: E402
from lmtui.core.model import NodeKind  # noqa: E402
from lmtui.engine.commands import Unload  # noqa: E402
from lmtui.engine.engine import Engine  # noqa: E402

MODELS = ("alpha", "beta")
MSG = [{"role": "user", "content": "Say hi."}]
STEP_S = 0.005
#: llama-server closes a connection after a streamed answer without saying so; the direct
#: measurements use a new connection per request (a loopback connect costs ~0.1 ms).
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


async def first_token(client: httpx.AsyncClient, url: str, model: str) -> float:
    """Seconds from sending a streamed request to its first data event."""
    body = {"model": model, "messages": MSG, "stream": True, "max_tokens": 2}
    t0 = time.perf_counter()
    took = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():  # read to the end: the connection is reused
            if took is None and line.startswith("data: {"):
                took = time.perf_counter() - t0
    if took is None:
        raise RuntimeError(f"no data event from {url} for {model}")
    return took


async def retrying(call: Any) -> httpx.Response:
    """One retry when a keep-alive connection the server had closed fails at once (the
    router closes idle connections while it swaps models)."""
    try:
        return await call()
    except httpx.RemoteProtocolError:
        return await call()


async def router_status(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    data = (await retrying(lambda: client.get(url + "/models"))).json()["data"]
    return {m["id"]: m["status"]["value"] for m in data}


async def wait_status(client: httpx.AsyncClient, url: str, model: str, want: str) -> None:
    deadline = time.perf_counter() + 120
    while (await router_status(client, url)).get(model) != want:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{model} never read {want}")
        await asyncio.sleep(STEP_S)


async def router_direct(
    client: httpx.AsyncClient, server: LlamaServer, runs: int
) -> tuple[list[float], list[float]]:
    """The router's own load time (load posted → loaded) and its warm TTFT."""
    ready, warm = [], []
    for i in range(runs):
        model = MODELS[i % 2]
        for other in MODELS:  # nothing resident: a cold load with nothing to evict
            if (await router_status(client, server.url)).get(other) != "unloaded":
                await retrying(
                    lambda: client.post(
                        server.url + "/models/unload",
                        json={"model": other},  # noqa: B023
                    )
                )
                await wait_status(client, server.url, other, "unloaded")
        t0 = time.perf_counter()
        r = await retrying(
            lambda: client.post(server.url + "/models/load", json={"model": model})  # noqa: B023
        )
        r.raise_for_status()
        await wait_status(client, server.url, model, "loaded")
        ready.append(time.perf_counter() - t0)
        warm.append(await first_token(client, server.url, model))
    return ready, warm


async def pool_direct(
    build: LlamaBuild, args: list[str], runs: int
) -> tuple[list[float], list[float]]:
    """A server process's own time to get ready (start → /health 200, asked every 5 ms),
    and the first token of a request sent the moment it is."""
    ready, first = [], []
    async with httpx.AsyncClient(timeout=120, limits=NO_KEEPALIVE) as c:
        for _ in range(runs):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *(str(build.binary), "--host", "127.0.0.1", "--port", str(port)),
                *("-m", str(build.model), *args),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while True:
                    try:
                        if (await c.get(url + "/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if proc.returncode is not None:
                        raise RuntimeError("llama-server exited")
                    await asyncio.sleep(STEP_S)
                ready.append(time.perf_counter() - t0)
                first.append(await first_token(c, url, "x"))
            finally:
                proc.terminate()
                await proc.wait()
    return ready, first


@contextmanager
def count_requests(node: str) -> Iterator[Counter[str]]:
    """Count every HTTP request lmtui's adapters send for ``node`` (polls and commands; a
    pool node's per-server readers share its name), by patching the one request method
    every adapter goes through, for the duration of the block."""
    from lmtui.backends.base import Backend

    seen: Counter[str] = Counter()
    original = Backend.request

    async def counted(self: Backend, method: str, path: str, **kw: Any) -> Any:
        if self.name == node:
            seen[f"{method} {path}"] += 1
        return await original(self, method, path, **kw)

    Backend.request = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Backend.request = original  # type: ignore[method-assign]


async def unload_all(engine: Engine) -> None:
    """Unload every model lmtui sees (not timed), and wait until the node says so."""
    for inst in list(engine.store.snapshot.instances.values()):
        await engine.controller.execute(
            Unload(node=inst.node, instance_id=inst.instance_id, force=True)
        )
    deadline = time.perf_counter() + 60
    while engine.store.snapshot.instances:
        if time.perf_counter() > deadline:
            raise RuntimeError("models still loaded 60 s after their unload")
        await engine.poller.poll_once(next(iter(engine.store.snapshot.nodes)))
        await asyncio.sleep(0.05)


async def through_lmtui(
    cfg: Config, node: str, runs: int, unloaded: str
) -> tuple[list[float], list[dict[str, int]]]:
    """Cold TTFT through lmtui, alternating models, and the upstream requests of each."""
    async with (
        Engine(cfg, listen="127.0.0.1:0") as engine,
        httpx.AsyncClient(timeout=300) as c,
    ):
        assert engine.router_url is not None
        with count_requests(node) as seen:
            cold, counts = await _cold_runs(engine, c, runs, unloaded, seen)
    return cold, counts


async def _cold_runs(
    engine: Engine, c: httpx.AsyncClient, runs: int, unloaded: str, seen: Counter[str]
) -> tuple[list[float], list[dict[str, int]]]:
    assert engine.router_url is not None
    cold, counts = [], []
    model = unloaded
    for _ in range(runs):
        await unload_all(engine)  # a cold start with nothing to evict, as the baseline
        await asyncio.sleep(1.5)  # let a poll or two land: a steady state to start from
        seen.clear()
        cold.append(await first_token(c, engine.router_url, model))
        counts.append(dict(seen))
        model = MODELS[1] if model == MODELS[0] else MODELS[0]
    return cold, counts


def summary(name: str, ready: list[float], warm: list[float], cold: list[float]) -> dict[str, Any]:
    # The node's own cold start: ready, then the first token of a request sent at once.
    base = statistics.median(r + w for r, w in zip(ready, warm, strict=True))
    added = [c - base for c in cold]
    return {
        "kind": name,
        "node ready p50 ms": round(statistics.median(ready) * 1000, 1),
        "first TTFT p50 ms": round(statistics.median(warm) * 1000, 1),
        "cold TTFT via lmtui p50 ms": round(statistics.median(cold) * 1000, 1),
        "lmtui added p50 ms": round(statistics.median(added) * 1000, 1),
        "lmtui added max ms": round(max(added) * 1000, 1),
    }


async def bench_router(build: LlamaBuild, runs: int, tmp: Path) -> dict[str, Any]:
    d = models_dir(tmp / "router", build, list(MODELS))
    args = ["--models-dir", str(d), "--models-max", "1", "-np", "2", "-c", "2048"]
    server = LlamaServer(build, args, tmp / "router.log").start()
    try:
        async with httpx.AsyncClient(timeout=120, limits=NO_KEEPALIVE) as c:
            ready, warm = await router_direct(c, server, runs)
            resident = MODELS[(runs - 1) % 2]
        cfg = Config(
            nodes=[NodeConfig(name="r", kind=NodeKind.LLAMACPP, url=server.url, memory_gb=16)],
            router=RouterConfig(queue_timeout=120),
            pool=PoolConfig(reserved_gb=0, min_residency=0),
        )
        unloaded = MODELS[0] if resident == MODELS[1] else MODELS[1]
        cold, counts = await through_lmtui(cfg, "r", runs, unloaded)
    finally:
        server.stop()
    out = summary("router", ready, warm, cold)
    out["upstream requests per cold start"] = counts
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["router", "pool"], choices=["router", "pool"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    build = find_build()
    if build is None:
        sys.exit("no cached llama-server: run scripts/llama-server.sh first")
    results = []
    with tempfile.TemporaryDirectory(prefix="lmtui-cold-") as tmp:
        if "router" in a.kinds:
            results.append(asyncio.run(bench_router(build, a.runs, Path(tmp))))
        if "pool" in a.kinds:
            results.append(asyncio.run(bench_pool(build, a.runs, Path(tmp))))
    if a.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        counts = r.pop("upstream requests per cold start")
        print(f"== {r.pop('kind')}")
        for k, v in r.items():
            print(f"  {k:28} {v}")
        totals = [sum(c.values()) for c in counts]
        print(f"  upstream requests per cold start: min {min(totals)} max {max(totals)}")
        merged: Counter[str] = Counter()
        for c in counts:
            merged.update(c)
        for path, n in merged.most_common():
            print(f"    {path:40} {n / len(counts):.1f} per cold start")


POOL_ARGS = ["-np", "2", "-c", "2048"]


async def bench_pool(build: LlamaBuild, runs: int, tmp: Path) -> dict[str, Any]:
    from lmtui.config import PoolNodeConfig

    ready, warm = await pool_direct(build, POOL_ARGS, runs)
    d = models_dir(tmp / "pool", build, list(MODELS))
    lo = free_port()
    cfg = Config(
        nodes=[
            NodeConfig(
                name="p",
                kind=NodeKind.LLAMACPP_POOL,
                url="http://127.0.0.1",
                memory_gb=4,
                pool=PoolNodeConfig(
                    binary=str(build.binary),
                    models_dir=str(d),
                    ports=f"{lo}-{lo + 20}",
                    args=POOL_ARGS,
                    state_dir=str(tmp / "pool-state"),
                ),
            )
        ],
        router=RouterConfig(queue_timeout=120),
        pool=PoolConfig(reserved_gb=0, min_residency=0),
    )
    cold, counts = await through_lmtui(cfg, "p", runs, MODELS[0])
    out = summary("pool", ready, warm, cold)
    out["upstream requests per cold start"] = counts
    return out


if __name__ == "__main__":
    main()
