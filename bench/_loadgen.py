"""Load generators for the router benchmarks: wrk for throughput and latency, Python for TTFC.

- :func:`wrk_run` drives ``wrk`` (Debian package) with a generated Lua script that POSTs the
  request body and, in ``done()``, prints one JSON line with requests, p50/p99/mean/max in
  microseconds (wrk records latency at 1 µs resolution) and error counts. wrk is C with
  one event loop per thread; ``-t1`` keeps it to one core, so on a 2-core machine the proxy
  under test keeps the other core to itself.
- :func:`py_run` is the same measurement with an aiohttp client, the fallback when wrk is
  missing. It costs far more CPU per request than wrk, so its throughput figures are a
  floor, not a ceiling, of what the server can do.
- :func:`py_ttfc` times streams at concurrency 1: time to the first body chunk and to the
  end. wrk cannot see inside a response, so this is the only TTFC source.

Every run is bounded by its duration and per-request timeouts; everything is loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: A request slower than this counts as an error rather than stalling a run.
REQUEST_TIMEOUT_S = 10.0

_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"p50_us":%%.1f,"p99_us":%%.1f,"mean_us":%%.1f,"max_us":%%.1f,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class LoadResult:
    """One fixed-concurrency run against one URL."""

    tool: str
    connections: int
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    mean_us: float
    #: Requests that failed: connection errors, timeouts, non-2xx answers, bad bodies.
    errors: int
    #: The first few error descriptions, for the report.
    error_samples: list[str] = field(default_factory=list)
    #: CPU time the proxy process used per request during the run, if it was watched.
    proxy_cpu_us_per_req: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["rps"] = round(self.rps, 1)
        return d


@dataclass
class TtfcResult:
    """Streams at concurrency 1: time to first chunk and to the end, in microseconds."""

    requests: int
    ttfc_p50_us: float
    ttfc_p99_us: float
    total_p50_us: float
    total_p99_us: float
    errors: int
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for an empty list)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class CpuPlan:
    """Which CPU each process is pinned to (None = not pinned)."""

    proxy: int | None = None
    client: int | None = None
    upstream: int | None = None


def plan_cpus(pin: str) -> CpuPlan:
    """Where each process runs for ``--pin`` all, client or none (see router_overhead.py)."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none" or len(cpus) < 2:
        return CpuPlan()
    if pin == "client":
        return CpuPlan(client=cpus[-1])
    return CpuPlan(proxy=cpus[0], client=cpus[1], upstream=cpus[2] if len(cpus) > 2 else cpus[1])


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_run(
    url: str, body: bytes, *, connections: int, seconds: float, cpu: int | None = None
) -> LoadResult:
    """POST ``body`` to ``url`` from ``connections`` keepalive connections for ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="lmtui-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_LUA % body.decode())
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={int(REQUEST_TIMEOUT_S)}s",
            "-s",
            str(script),
            url,
        ]
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT_S + 10
        )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (status {out.returncode}): {out.stderr or out.stdout}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    errors = sum(int(v) for v in data["errors"].values())
    samples = [f"{k}: {v}" for k, v in data["errors"].items() if v]
    return LoadResult(
        tool="wrk",
        connections=connections,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        p50_us=data["p50_us"],
        p99_us=data["p99_us"],
        mean_us=data["mean_us"],
        errors=errors,
        error_samples=samples,
    )


def _check(status: int, body: bytes, stream: bool) -> str | None:
    """Why an answer is not a good chat completion, or None."""
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    # The end of a chat stream, of a Responses stream, of an Anthropic Messages stream.
    if stream and not any(m in body for m in (b"[DONE]", b"response.completed", b"message_stop")):
        return f"stream without its end ([DONE], response.completed, message_stop): {body[:120]!r}"
    if not stream and not any(m in body for m in (b'"choices"', b'"output"', b'"content"')):
        return f"answer without choices, output or content: {body[:120]!r}"
    return None


async def py_run(
    url: str, body: bytes, *, connections: int, seconds: float, stream: bool
) -> LoadResult:
    """The aiohttp version of :func:`wrk_run` (wrk's absence fallback)."""
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        data = await r.read()
                        problem = _check(r.status, data, stream)
                except (aiohttp.ClientError, TimeoutError) as e:
                    problem = f"{type(e).__name__}: {e}"
                if problem is None:
                    latencies.append((time.perf_counter() - t0) * 1e6)
                else:
                    errors.append(problem)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return LoadResult(
        tool="python",
        connections=connections,
        requests=len(latencies),
        seconds=elapsed,
        p50_us=percentile(latencies, 50),
        p99_us=percentile(latencies, 99),
        mean_us=sum(latencies) / len(latencies) if latencies else 0.0,
        errors=len(errors),
        error_samples=errors[:3],
    )


async def py_ttfc(url: str, body: bytes, *, seconds: float, max_requests: int = 5000) -> TtfcResult:
    """Stream requests one at a time: time to the first body chunk and to the end."""
    import aiohttp

    ttfc: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at and len(ttfc) + len(errors) < max_requests:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    # The first chunk of the body as the transport delivers it: what a
                    # chat client would show as the first token.
                    first = await r.content.readany()
                    t1 = time.perf_counter()
                    data = first + await r.read()
                    t2 = time.perf_counter()
                    problem = _check(r.status, data, stream=True)
            except (aiohttp.ClientError, TimeoutError) as e:
                problem = f"{type(e).__name__}: {e}"
            if problem is None:
                ttfc.append((t1 - t0) * 1e6)
                total.append((t2 - t0) * 1e6)
            else:
                errors.append(problem)
    return TtfcResult(
        requests=len(ttfc),
        ttfc_p50_us=percentile(ttfc, 50),
        ttfc_p99_us=percentile(ttfc, 99),
        total_p50_us=percentile(total, 50),
        total_p99_us=percentile(total, 99),
        errors=len(errors),
        error_samples=errors[:3],
    )


def sanity_check(url: str, body: bytes, *, stream: bool) -> str | None:
    """Send one request; None when it is a good answer, else what is wrong with it."""
    import httpx

    try:
        r = httpx.post(
            url,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    return _check(r.status_code, r.content, stream)
