"""Cold start through lmtui: a request for a model that is not loaded, to its first token.

    python bench/cold_start.py [--runs 10] [--kinds router pool] [--json]

Needs the real ``llama-server`` and model that ``scripts/llama-server.sh`` builds and caches.
For each node kind, the node's own time to get ready is measured first, without lmtui:

- **router** (``llama-server --models-dir D --models-max 1``, models ``alpha``/``beta``, the
  same small file under two names): ``POST /models/load`` of the model that is not resident
  until ``GET /models`` (polled every 5 ms) says ``loaded``; the resident one is unloaded by
  the server itself, as the limit makes it;
- **pool** (a ``llamacpp-pool`` node, lmtui starts the servers): process start until
  ``/health`` answers 200 (polled every 5 ms);

plus the warm time to first token of a streamed request on a loaded model. Then lmtui runs
in this process (``Engine`` with its router on loopback, default 1 s polls) and a streamed
request for the model that is not loaded is timed to its first data event, alternating the
two models so that every run is cold. lmtui's added time per run is
``cold TTFT - median(node ready) - median(warm TTFT)``; reported as p50 and max, with the
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
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "real"))

from llama import LlamaBuild, LlamaServer, find_build, free_port, models_dir  # noqa: E402

from lmtui.config import Config, NodeConfig, PoolConfig, RouterConfig  # noqa: E402
from lmtui.core.model import NodeKind  # noqa: E402
from lmtui.engine.engine import Engine  # noqa: E402

MODELS = ("alpha", "beta")
MSG = [{"role": "user", "content": "Say hi."}]
STEP_S = 0.005


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
    await retrying(lambda: client.post(server.url + "/models/load", json={"model": MODELS[1]}))
    await wait_status(client, server.url, MODELS[1], "loaded")
    for i in range(runs):
        model = MODELS[i % 2]
        t0 = time.perf_counter()
        r = await retrying(
            lambda: client.post(server.url + "/models/load", json={"model": model})  # noqa: B023
        )
        r.raise_for_status()
        await wait_status(client, server.url, model, "loaded")
        ready.append(time.perf_counter() - t0)
        warm.append(await first_token(client, server.url, model))
    return ready, warm


def pool_direct(build: LlamaBuild, args: list[str], runs: int) -> list[float]:
    """A server process's own time to get ready: start → /health 200."""
    ready = []
    for _ in range(runs):
        port = free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                str(build.binary),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-m",
                str(build.model),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError("llama-server exited")
                time.sleep(STEP_S)
            ready.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(10)
    return ready


def count_requests(engine: Engine, node: str) -> Counter[str]:
    """Count every HTTP request lmtui's adapter for ``node`` sends (polls and commands)."""
    seen: Counter[str] = Counter()
    backend = engine.backends[node]
    original = backend.request

    async def counted(method: str, path: str, **kw: Any) -> Any:
        seen[f"{method} {path}"] += 1
        return await original(method, path, **kw)

    backend.request = counted  # type: ignore[method-assign]
    return seen


async def through_lmtui(
    cfg: Config, node: str, runs: int, unloaded: str
) -> tuple[list[float], list[dict[str, int]]]:
    """Cold TTFT through lmtui, alternating models, and the upstream requests of each."""
    cold, counts = [], []
    async with Engine(cfg, listen="127.0.0.1:0") as engine, httpx.AsyncClient(timeout=300) as c:
        assert engine.router_url is not None
        seen = count_requests(engine, node)
        model = unloaded
        for _ in range(runs):
            await asyncio.sleep(1.5)  # let a poll or two land: a steady state to start from
            seen.clear()
            cold.append(await first_token(c, engine.router_url, model))
            counts.append(dict(seen))
            model = MODELS[1] if model == MODELS[0] else MODELS[0]
    return cold, counts


def summary(name: str, ready: list[float], warm: list[float], cold: list[float]) -> dict[str, Any]:
    base = statistics.median(ready) + statistics.median(warm)
    added = [c - base for c in cold]
    return {
        "kind": name,
        "node ready p50 ms": round(statistics.median(ready) * 1000, 1),
        "warm TTFT p50 ms": round(statistics.median(warm) * 1000, 1),
        "cold TTFT via lmtui p50 ms": round(statistics.median(cold) * 1000, 1),
        "lmtui added p50 ms": round(statistics.median(added) * 1000, 1),
        "lmtui added max ms": round(max(added) * 1000, 1),
    }


async def bench_router(build: LlamaBuild, runs: int, tmp: Path) -> dict[str, Any]:
    d = models_dir(tmp / "router", build, list(MODELS))
    args = ["--models-dir", str(d), "--models-max", "1", "-np", "2", "-c", "2048"]
    server = LlamaServer(build, args, tmp / "router.log").start()
    try:
        async with httpx.AsyncClient(timeout=120) as c:
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


async def warm_ttft(build: LlamaBuild, tmp: Path, runs: int) -> list[float]:
    """A single-model server's warm TTFT (the same binary, model and arguments)."""
    server = LlamaServer(build, ["-m", str(build.model), *POOL_ARGS], tmp / "warm.log").start()
    try:
        async with httpx.AsyncClient(timeout=120) as c:
            return [await first_token(c, server.url, "x") for _ in range(runs)]
    finally:
        server.stop()


async def bench_pool(build: LlamaBuild, runs: int, tmp: Path) -> dict[str, Any]:
    from lmtui.config import PoolNodeConfig

    ready = pool_direct(build, POOL_ARGS, runs)
    warm = await warm_ttft(build, tmp, runs)
    d = models_dir(tmp / "pool", build, list(MODELS))
    lo = free_port()
    cfg = Config(
        nodes=[
            NodeConfig(
                name="p",
                kind=NodeKind.LLAMACPP_POOL,
                url="http://127.0.0.1",
                # Room for one server at a time: every request for the other model is a
                # cold start that stops one server and starts another.
                memory_gb=0.45,
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
