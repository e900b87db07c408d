"""Does lmtui lose a request, or grow, while nodes fail under a steady load?

    python bench/soak.py                                # 10 minutes, the 500-request fixture
    python bench/soak.py --duration 120 --check         # what CI runs
    python bench/soak.py ../shared/data/azure-llm-inference-2023-conv.csv --duration 600 --json

The Azure LLM conversation trace (``tests/fixtures/azure-conv-500.csv`` by default, or the
CSV given) is replayed, looped, at ``--rate-scale`` times its arrival rate against three
simulated nodes (``lmtui.sim``: LM Studio 0.4, Ollama, llama.cpp in router mode, in this
process on 127.0.0.1) through a real router: ``python -m lmtui --serve`` in its own process,
with a config naming the three nodes. Meanwhile a fault script takes one node at a time
down (its port closed), hung (it accepts and never answers, polls included), failing (every
POST answers 500 while its polls stay fine) or dropping streams mid-way, for
``--fault-for`` seconds every ``--fault-every`` seconds, in turn.

Each trace row becomes one chat request: the model by the seeded Zipf rule of
``lmtui replay`` (:func:`lmtui.replay.scenario.assign_zipf`, ``--models`` models, ``--seed``),
a prompt of ``ContextTokens`` tokens (~4 characters each, as the simulator counts them),
``max_tokens = GeneratedTokens`` (the simulator's replies are 64-256 tokens long, cut at
``max_tokens``), streamed or not by a seeded coin (``--stream-share``; the trace does not
say), and a tenth of them sent with a query string so that they take aiohttp's path instead
of the fast front. ``user`` carries the request's number, so each answer is joined to its
row in lmtui's request log.

Client side: at most ``--concurrency`` requests open at once (an arrival waits for a free one
and is counted as late), and every request has a total timeout (``--request-timeout``,
longer than every bound lmtui itself applies: queue timeout, first-byte timeout per attempt).

Reported:

- requests **served** (200 with a complete answer), **errors** by kind (an explicit error:
  an HTTP status with an error body, or an error event in a stream), and requests **lost**:
  sent but never answered with a success or an explicit error (a timeout, a reset
  connection, a stream that ends without ``[DONE]``). Lost must be 0.
- p50/p99 of the **queue wait** (the request log's ``queue_wait_s``, lmtui's own figure) and
  of the **added TTFT**: the time to first token the client saw minus the node's own (the
  log's ``ttft_s``, from lmtui sending the request upstream to its first byte back); that is
  queue wait + routing + retries + the proxy. Also the rest once queue wait is taken out.
- how full lmtui's queue was (``lmtui_queue_depth`` sampled from ``/metrics`` each second),
  and whether every queue and in-flight count is back to zero once the load stops.
- the **RSS** of the lmtui process (psutil): at start, after ``--warmup`` seconds of load,
  the peak, and at the end.

``--check`` makes the exit status 1 when a request was lost, the RSS at the end is more than
10% above the RSS after warm-up, a queue or in-flight count did not return to zero, or
nothing at all was served. ``--json`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _upstream as up
import aiohttp
import psutil
from _loadgen import percentile
from prometheus_client.parser import text_string_to_metric_families

from lmtui.core.model import NodeKind
from lmtui.replay.scenario import assign_zipf
from lmtui.replay.trace import read_trace, scale_rate
from lmtui.sim import SimCluster, SimModel, SimNode, SimNodeSpec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO / "tests" / "fixtures" / "azure-conv-500.csv"
#: RSS at the end may exceed the RSS after warm-up by at most this fraction (``--check``).
RSS_GROWTH_LIMIT = 0.10
#: The fault kinds the script knows, in the order it applies them by default.
FAULT_KINDS = ("down", "hang", "5xx", "drop")
#: lmtui's bounds in the generated config (seconds): a request may wait this long in the
#: queue, and each attempt this long for the node's first byte.
QUEUE_TIMEOUT_S = 20.0
FIRST_BYTE_TIMEOUT_S = 8.0
#: Share of requests sent with a query string, which the fast front hands to aiohttp.web.
AIOHTTP_SHARE = 0.1
#: A request whose start the concurrency bound held back this long is counted as late.
LATE_S = 1.0
#: How long the queue and in-flight gauges get to return to zero after the load.
SETTLE_S = 20.0


# -- the plan: what to send, when ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the soak: when to send it (seconds from the start) and what."""

    n: int
    at: float
    model: str
    tokens_in: int
    tokens_out: int
    stream: bool
    via_aiohttp: bool


def build_plan(args: argparse.Namespace) -> tuple[list[Planned], dict[str, Any], list[str]]:
    """The requests of ``--duration`` seconds: the trace at ``--rate-scale``, looped.

    Models, the stream coin and the aiohttp share are drawn once per trace row (seeded), so
    every loop of the trace repeats the same requests; a loop starts one mean gap after the
    previous one's last arrival.
    """
    rows = scale_rate(read_trace(args.trace), args.rate_scale)
    rows, models, rule = assign_zipf(
        rows, n_models=args.models, s=1.0, size_range_gb=(2.0, 8.0), seed=args.seed
    )
    rng = random.Random(f"soak:{args.seed}")
    coins = [(rng.random() < args.stream_share, rng.random() < AIOHTTP_SHARE) for _ in rows]
    span = rows[-1].at + (rows[-1].at / max(1, len(rows) - 1))
    plan: list[Planned] = []
    loop = 0
    while True:
        for row, (stream, via) in zip(rows, coins, strict=True):
            at = loop * span + row.at
            if at >= args.duration:
                about = {
                    **rule,
                    "trace": str(args.trace),
                    "trace_rows": len(rows),
                    "loops": round(args.duration / span, 2),
                    "rate_per_s": round(len(plan) / args.duration, 2),
                    "stream_share": args.stream_share,
                    "aiohttp_share": AIOHTTP_SHARE,
                    "sizes_gb": {m.name: round(m.size_bytes / 1024**3, 1) for m in models},
                }
                return plan, about, [m.name for m in models]
            assert row.model is not None
            plan.append(
                Planned(len(plan), at, row.model, row.tokens_in, row.tokens_out, stream, via)
            )
        loop += 1


# -- the cluster: simulated nodes and lmtui's config for them -------------------------------


def node_specs(models: list[str], sizes_gb: dict[str, float]) -> list[SimNodeSpec]:
    """Three nodes of three kinds, two slots per loaded model, every model downloaded.

    The most popular model starts loaded everywhere and each other one on one node, so the
    ``spread`` strategy has replicas to add (loads) while the load runs.
    """
    catalog = [SimModel(m, size_gb=sizes_gb[m]) for m in models]
    common: dict[str, Any] = {
        "memory_gb": 64.0,
        "parallel": 2,
        "prefill_tok_per_s": 2000.0,
        "decode_tok_per_s": 40.0,
        "disk_gb_per_s": 2.0,
    }
    kinds = [
        ("sim-lmstudio", NodeKind.LMSTUDIO, {"version": "0.4.2"}),
        ("sim-ollama", NodeKind.OLLAMA, {}),
        ("sim-llamacpp", NodeKind.LLAMACPP, {"router_mode": True}),
    ]
    specs = []
    for i, (name, kind, extra) in enumerate(kinds):
        loaded = [models[0], *[m for j, m in enumerate(models[1:]) if j % len(kinds) == i]]
        specs.append(
            SimNodeSpec(
                name=name, kind=kind, models=list(catalog), loaded=loaded, **common, **extra
            )
        )
    return specs


def lmtui_config(cluster: SimCluster, specs: list[SimNodeSpec]) -> str:
    """The config under test: the three nodes, quick polls, bounded waits, spread."""
    out = []
    for s in specs:
        out += [
            "[[nodes]]",
            f'name = "{s.name}"',
            f'kind = "{s.kind.value}"',
            f'url = "{cluster.url(s.name)}"',
            f"memory_gb = {s.memory_gb:g}",
            "reserved_gb = 0",
        ]
        if s.kind is NodeKind.OLLAMA:  # Ollama does not say how many slots it has
            out.append(f"slots = {s.parallel}")
    out += [
        "[poll]",
        "interval = 0.5",
        "timeout = 2.0",
        "max_backoff = 2.0",
        "[router]",
        'strategy = "spread"',
        "max_replicas = 3",
        "queue_depth = 64",
        f"queue_timeout = {QUEUE_TIMEOUT_S:g}",
        f"first_byte_timeout = {FIRST_BYTE_TIMEOUT_S:g}",
        "[pool]",
        "min_residency = 5",
    ]
    return "\n".join(out) + "\n"


# -- the fault script ---------------------------------------------------------------------


@dataclass(slots=True)
class FaultStep:
    at: float
    node: str
    kind: str
    seconds: float
    #: Seconds from the start when it was really applied and cleared.
    applied_at: float | None = None
    cleared_at: float | None = None


def fault_script(args: argparse.Namespace, nodes: list[str]) -> list[FaultStep]:
    """One fault at a time, kinds and nodes in turn; none in the last ``--fault-for`` s."""
    if not args.faults or args.fault_every <= 0:
        return []
    steps, t, i = [], args.fault_start, 0
    while t + args.fault_for < args.duration:
        kind = args.faults[i % len(args.faults)]
        # Nodes advance once per kind cycle too, so each kind meets every node.
        node = nodes[(i + i // len(args.faults)) % len(nodes)]
        steps.append(FaultStep(t, node, kind, args.fault_for))
        t += args.fault_every
        i += 1
    return steps


async def set_fault(node: SimNode, kind: str, on: bool) -> None:
    f = node.faults
    if kind == "down":
        await node.set_down(on)
    elif kind == "hang":
        f.hang = on
    elif kind == "5xx":
        f.post_errors = on
    elif kind == "drop":
        f.drop_mid_stream = on
    else:  # argparse restricts the choices
        raise ValueError(kind)


async def run_faults(cluster: SimCluster, steps: list[FaultStep], t0: float) -> None:
    loop = asyncio.get_running_loop()
    for step in steps:
        await asyncio.sleep(max(0.0, t0 + step.at - loop.time()))
        node = cluster.node(step.node)
        await set_fault(node, step.kind, True)
        step.applied_at = loop.time() - t0
        try:
            await asyncio.sleep(step.seconds)
        finally:
            await set_fault(node, step.kind, False)
            step.cleared_at = loop.time() - t0


# -- the client -----------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    n: int
    #: ok | error (an explicit error) | lost (no answer and no explicit error).
    category: str
    #: What happened: "ok", "HTTP 504 timeout", "stream error stream_interrupted",
    #: "TimeoutError", "ServerDisconnectedError", "stream without [DONE]" …
    kind: str
    status: int | None
    stream: bool
    #: Seconds from sending to the first token (streams: the first ``data: {`` event, not
    #: the SSE comments lmtui sends while a request waits; otherwise the whole answer).
    ttft_s: float | None = None
    total_s: float | None = None
    late_s: float = 0.0


_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod " * 4000)[
    : 4 * 16384
]


def request_body(p: Planned) -> bytes:
    # ~4 characters per token, less the few tokens the chat template adds per message.
    text = _WORDS[: max(4, 4 * (p.tokens_in - 4))]
    return json.dumps(
        {
            "model": p.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max(1, p.tokens_out),
            "stream": p.stream,
            "user": f"soak-{p.n}",
        }
    ).encode()


def _error_code(payload: bytes) -> str:
    """The ``error.code`` (or type) of an OpenAI error body, or "" when it is none."""
    try:
        err = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(err, dict):
        return ""
    return str(err.get("code") or err.get("type") or "error")


async def send(
    session: aiohttp.ClientSession, base: str, p: Planned, timeout: float, late: float
) -> Result:
    url = f"{base}/v1/chat/completions" + ("?via=aiohttp" if p.via_aiohttp else "")
    t0 = time.perf_counter()
    ttft: float | None = None
    res = Result(p.n, "lost", "", None, p.stream, late_s=late)
    try:
        async with asyncio.timeout(timeout):
            async with session.post(
                url, data=request_body(p), headers={"Content-Type": "application/json"}
            ) as r:
                res.status = r.status
                if r.status != 200:
                    body = await r.read()
                    code = _error_code(body)
                    res.category, res.kind = (
                        ("error", f"HTTP {r.status} {code}")
                        if code
                        else ("lost", f"HTTP {r.status} without an error body")
                    )
                elif p.stream and r.content_type == "text/event-stream":
                    done, error = False, ""
                    async for line in r.content:
                        if not line.startswith(b"data: "):
                            continue  # ": waiting …" comments and blank separators
                        data = line[6:].strip()
                        if data == b"[DONE]":
                            done = True
                        elif data.startswith(b'{"error"'):
                            error = _error_code(data) or "error"
                        elif ttft is None:
                            ttft = time.perf_counter() - t0
                    if error and done:
                        res.category, res.kind = "error", f"stream error {error}"
                    elif done:
                        res.category, res.kind = "ok", "ok"
                    else:
                        res.kind = "stream without [DONE]"
                else:
                    body = await r.read()
                    ttft = time.perf_counter() - t0
                    if p.stream:  # a short stream lmtui answered in one piece is SSE too
                        res.kind = f"unexpected content type {r.content_type}"
                    elif b'"choices"' in body:
                        res.category, res.kind = "ok", "ok"
                    else:
                        res.kind = f"200 without choices: {body[:60]!r}"
    except TimeoutError:
        res.kind = f"client timeout ({timeout:g} s)"
    except (aiohttp.ClientError, ValueError) as e:  # ValueError: an SSE line too long
        res.kind = type(e).__name__
    res.total_s = time.perf_counter() - t0
    res.ttft_s = ttft
    return res


async def run_load(
    base: str, plan: list[Planned], args: argparse.Namespace, t0: float
) -> list[Result]:
    """Send every planned request at its time, at most ``--concurrency`` at once."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    results: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    # No connection limit beyond the gate: every request has its own connection or a
    # kept-alive one, as many bots' clients would.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(p: Planned, late: float) -> None:
            try:
                results.append(await send(session, base, p, args.request_timeout, late))
            finally:
                gate.release()

        for p in plan:
            await asyncio.sleep(max(0.0, t0 + p.at - loop.time()))
            await gate.acquire()
            task = loop.create_task(one(p, max(0.0, loop.time() - t0 - p.at)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            # Each request is bounded by its own timeout; this only adds a margin.
            await asyncio.wait(tasks, timeout=args.request_timeout + 10)
    return results


# -- watching lmtui: /metrics and RSS -------------------------------------------------------


@dataclass(slots=True)
class Gauges:
    queue_depth: float = 0.0
    in_flight: float = 0.0
    requests_total: float = 0.0
    circuit_opens: float = 0.0


async def scrape(session: aiohttp.ClientSession, base: str) -> Gauges | None:
    try:
        async with session.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    g = Gauges()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "lmtui_queue_depth":
                g.queue_depth += s.value
            elif s.name == "lmtui_in_flight":
                g.in_flight += s.value
            elif s.name == "lmtui_requests_total":
                g.requests_total += s.value
            elif s.name == "lmtui_circuit_opens_total":
                g.circuit_opens += s.value
    return g


@dataclass
class Watch:
    """What the sampler saw each second while the load ran."""

    queue: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    failed_scrapes: int = 0


async def watch(base: str, proc: psutil.Process, out: Watch, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            g = await scrape(session, base)
            if g is None:
                out.failed_scrapes += 1
            else:
                out.queue.append(g.queue_depth)
            out.rss_mb.append(rss_mb(proc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def rss_mb(proc: psutil.Process) -> float:
    """The RSS of ``proc`` in MiB; 0 once it has exited (reported as a problem)."""
    try:
        return round(proc.memory_info().rss / 2**20, 1)
    except psutil.Error:
        return 0.0


async def settle(base: str) -> tuple[Gauges | None, float]:
    """Wait until lmtui's queues and in-flight counts are zero; the last gauges and how
    long it took (or ``SETTLE_S`` when they never got there)."""
    t0 = time.monotonic()
    g: Gauges | None = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - t0 < SETTLE_S:
            g = await scrape(session, base)
            if g is not None and g.queue_depth == 0 and g.in_flight == 0:
                break
            await asyncio.sleep(0.5)
    return g, time.monotonic() - t0


# -- the request log --------------------------------------------------------------------


def read_log(path: Path) -> dict[int, dict[str, Any]]:
    """lmtui's request-log rows of this soak, by request number (from ``user``)."""
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT user, node, queue_wait_s, ttft_s, outcome, status FROM requests "
            "WHERE user LIKE 'soak-%'"
        ).fetchall()
    out = {}
    for user, node, wait, ttft, outcome, status in rows:
        out[int(user[5:])] = {
            "node": node,
            "queue_wait_s": wait,
            "ttft_s": ttft,
            "outcome": outcome,
            "status": status,
        }
    return out


# -- the run -----------------------------------------------------------------------------


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "n": 0}
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "n": len(values),
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    plan, about, models = build_plan(args)
    specs = node_specs(models, about["sizes_gb"])
    steps = fault_script(args, [s.name for s in specs])
    report: dict[str, Any] = {"setup": about, "planned": len(plan)}
    log(
        f"{len(plan)} requests over {args.duration:g} s ({about['rate_per_s']}/s), "
        f"{len(steps)} faults"
    )
    work = up.make_workdir("lmtui-soak-")
    async with SimCluster(specs, time_scale=args.time_scale, seed=args.seed) as cluster:
        lmtui, base = await asyncio.to_thread(
            up.start_lmtui, work, lmtui_config(cluster, specs), cpu=None, model=models[0],
            timeout=30.0,
        )  # fmt: skip
        try:
            proc = psutil.Process(lmtui.pid)
            # Give the poller a few rounds to see every node before the clock starts.
            await asyncio.sleep(2.0)
            rss = {"start_mb": rss_mb(proc)}
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            seen = Watch()
            stop_watch = asyncio.Event()
            watcher = loop.create_task(watch(base, proc, seen, stop_watch))
            faults = loop.create_task(run_faults(cluster, steps, t0))

            async def after_warmup() -> None:
                await asyncio.sleep(args.warmup)
                rss["warmup_mb"] = rss_mb(proc)

            warm = loop.create_task(after_warmup())
            results = await run_load(base, plan, args, t0)
            load_s = loop.time() - t0
            warm.cancel()
            faults.cancel()
            await asyncio.gather(warm, faults, return_exceptions=True)
            for node in cluster.nodes:  # whatever the script was doing, every node is back
                node.faults.clear()
                await node.set_down(False)
            gauges, settle_s = await settle(base)
            stop_watch.set()
            await watcher
            rss["end_mb"] = rss_mb(proc)
            rss["peak_mb"] = max([*seen.rss_mb, rss["end_mb"]])
        finally:
            t_stop = time.monotonic()
            await asyncio.to_thread(lmtui.stop, 30.0)
            stop_s = time.monotonic() - t_stop
    logged = read_log(work / "data" / "lmtui" / "requests.sqlite3")
    report.update(
        summarize(
            args, results, logged, seen, gauges, settle_s, rss, steps, load_s, stop_s, len(plan)
        )
    )
    report["lmtui_exit_status"] = status = lmtui.popen.returncode
    if status != 0:  # terminated by the script it exits 0: anything else is a crash
        report["problems"].append(f"lmtui exited with status {status}")
    if args.keep_workdir:
        report["workdir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return report


def summarize(
    args: argparse.Namespace,
    results: list[Result],
    logged: dict[int, dict[str, Any]],
    seen: Watch,
    gauges: Gauges | None,
    settle_s: float,
    rss: dict[str, float],
    steps: list[FaultStep],
    load_s: float,
    stop_s: float,
    planned: int,
) -> dict[str, Any]:
    done = {r.n for r in results}
    # A request whose client task did not end (past its timeout plus a margin) is lost too.
    results = results + [
        Result(n, "lost", "no result: the client task did not end", None, False)
        for n in range(planned)
        if n not in done
    ]
    by_cat = Counter(r.category for r in results)
    errors = Counter(r.kind for r in results if r.category == "error")
    lost = Counter(r.kind for r in results if r.category == "lost")
    ok = [r for r in results if r.category == "ok"]
    waits = [logged[r.n]["queue_wait_s"] for r in ok if r.n in logged]
    added, rest = [], []
    for r in ok:
        row = logged.get(r.n)
        if row is None or row["ttft_s"] is None or r.ttft_s is None:
            continue
        added.append(max(0.0, r.ttft_s - row["ttft_s"]))
        rest.append(max(0.0, r.ttft_s - row["ttft_s"] - row["queue_wait_s"]))
    warm = rss.get("warmup_mb", 0.0)
    growth = (rss["end_mb"] - warm) / warm if warm > 0 else None
    queue = seen.queue
    report: dict[str, Any] = {
        "duration_s": round(load_s, 1),
        "sent": len(results),
        "served": by_cat["ok"],
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors.most_common()),
        "lost": sum(lost.values()),
        "lost_by_kind": dict(lost.most_common()),
        "late_starts": sum(1 for r in results if r.late_s > LATE_S),
        "streamed": sum(1 for r in results if r.stream),
        "served_per_node": dict(Counter(logged[r.n]["node"] for r in ok if r.n in logged)),
        "not_in_request_log": sum(1 for r in results if r.n not in logged),
        "queue_wait": pct(waits),
        "added_ttft": pct(added),
        "added_ttft_less_queue_wait": pct(rest),
        "client_ttft": pct([r.ttft_s for r in ok if r.ttft_s is not None]),
        "queue_depth": {
            "samples": len(queue),
            "nonempty_share": round(sum(1 for q in queue if q > 0) / len(queue), 3)
            if queue
            else None,
            "mean": round(sum(queue) / len(queue), 1) if queue else None,
            "max": max(queue) if queue else None,
        },
        "after_load": {
            "queue_depth": gauges.queue_depth if gauges else None,
            "in_flight": gauges.in_flight if gauges else None,
            "settled_in_s": round(settle_s, 1),
            "lmtui_requests_total": gauges.requests_total if gauges else None,
            "circuit_opens": gauges.circuit_opens if gauges else None,
        },
        "failed_scrapes": seen.failed_scrapes,
        "rss": {
            **rss,
            "growth_after_warmup": round(growth, 4) if growth is not None else None,
            # One sample every 10 s, to tell a leak (steady climb) from a step.
            "every_10s_mb": seen.rss_mb[::10],
        },
        "faults": [asdict(s) for s in steps if s.applied_at is not None],
        "lmtui_stop_s": round(stop_s, 1),
    }
    problems = []
    if report["lost"]:
        problems.append(f"{report['lost']} requests lost")
    if growth is None:
        problems.append("no RSS after warm-up (lmtui gone, or the load ended before --warmup)")
    elif growth > RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {growth:.1%} after warm-up (limit {RSS_GROWTH_LIMIT:.0%})")
    if gauges is None or gauges.queue_depth or gauges.in_flight:
        problems.append("queue or in-flight counts did not return to zero after the load")
    if not report["served"]:
        problems.append("nothing was served")
    report["problems"] = problems
    return report


def print_report(rep: dict[str, Any]) -> None:
    s = rep["setup"]
    print(
        f"soak: {rep['duration_s']:g} s of {Path(s['trace']).name} ({s['trace_rows']} rows, "
        f"{s['loops']} loops, {s['rate_per_s']} req/s), {s['rule']}"
    )
    print(
        f"sent {rep['sent']} (streamed {rep['streamed']}), served {rep['served']}, "
        f"errors {rep['errors']}, LOST {rep['lost']}, late starts {rep['late_starts']}"
    )
    for title, kinds in (("errors", rep["errors_by_kind"]), ("lost", rep["lost_by_kind"])):
        for kind, n in kinds.items():
            print(f"  {title:6} {n:>6}  {kind}")
    print(f"served per node: {rep['served_per_node']}; not in the request log: "
          f"{rep['not_in_request_log']}")  # fmt: skip
    for name in ("queue_wait", "added_ttft", "added_ttft_less_queue_wait", "client_ttft"):
        f = rep[name]
        print(f"{name:27} p50 {f['p50_ms']} ms  p99 {f['p99_ms']} ms  (n={f['n']})")
    q = rep["queue_depth"]
    print(
        f"queue depth: non-empty in {q['nonempty_share']} of {q['samples']} samples, "
        f"mean {q['mean']}, max {q['max']}"
    )
    a = rep["after_load"]
    print(
        f"after the load: queue {a['queue_depth']}, in flight {a['in_flight']} "
        f"(after {a['settled_in_s']} s); lmtui_requests_total {a['lmtui_requests_total']}, "
        f"circuit opens {a['circuit_opens']}"
    )
    r = rep["rss"]
    print(
        f"lmtui RSS MB: start {r['start_mb']}, after warm-up {r.get('warmup_mb')}, "
        f"peak {r['peak_mb']}, end {r['end_mb']} (growth after warm-up "
        f"{r['growth_after_warmup']})"
    )
    kinds = Counter(f["kind"] for f in rep["faults"])
    print(f"faults applied: {len(rep['faults'])} ({dict(kinds)}); lmtui stopped in "
          f"{rep['lmtui_stop_s']} s, exit status {rep['lmtui_exit_status']}")  # fmt: skip
    print("PASS" if not rep["problems"] else "FAIL: " + "; ".join(rep["problems"]))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _kinds(text: str) -> list[str]:
    return [k for k in text.split(",") if k]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("trace", type=Path, nargs="?", default=DEFAULT_TRACE,
                   help="Azure trace CSV (default: tests/fixtures/azure-conv-500.csv)")  # fmt: skip
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    p.add_argument("--rate-scale", type=float, default=4.0,
                   help="times the trace's arrival rate (4: ~15 req/s on the fixture)")  # fmt: skip
    p.add_argument("--warmup", type=float, default=40.0,
                   help="seconds of load before the RSS baseline (40; at most a third of "
                   "--duration)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=256, help="requests open at once (256)")
    p.add_argument("--request-timeout", type=float, default=0.0,
                   help="client timeout per request (default: lmtui's bounds + 20 s)")  # fmt: skip
    p.add_argument("--stream-share", type=float, default=0.5, help="streamed share (0.5)")
    p.add_argument("--models", type=int, default=3, help="models of the Zipf rule (3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-scale", type=float, default=0.1,
                   help="simulated time multiplier (0.1: a mean request takes ~0.5 s)")  # fmt: skip
    p.add_argument("--faults", type=_kinds, default=list(FAULT_KINDS),
                   help=f"fault kinds in turn, comma-separated ({','.join(FAULT_KINDS)}); "
                   "'' for none")  # fmt: skip
    p.add_argument("--fault-start", type=float, default=5.0, help="first fault at (5 s)")
    p.add_argument("--fault-every", type=float, default=12.0, help="a fault every (12 s)")
    p.add_argument("--fault-for", type=float, default=6.0, help="each fault lasts (6 s)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 on a lost request, RSS growth > 10%% after warm-up, or a "
                   "queue / in-flight count left over")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    bad = [k for k in args.faults if k not in FAULT_KINDS]
    if bad:
        p.error(f"unknown fault kinds {bad}; known: {', '.join(FAULT_KINDS)}")
    if args.duration <= 0 or args.rate_scale <= 0 or args.concurrency < 1 or args.models < 1:
        p.error("--duration, --rate-scale, --concurrency and --models must be positive")
    if not args.trace.is_file():
        p.error(f"no trace at {args.trace}")
    args.warmup = min(args.warmup, args.duration / 3)
    if args.request_timeout <= 0:
        # Longer than anything lmtui may take to answer: the queue timeout plus a
        # first-byte timeout per attempt (3), so a client timeout means lmtui did not answer.
        args.request_timeout = QUEUE_TIMEOUT_S + 3 * FIRST_BYTE_TIMEOUT_S + 20.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def run() -> dict[str, Any]:
        # SIGTERM (CI's timeout) cancels the run, so lmtui and the nodes are still stopped.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await soak(args)

    try:
        rep = asyncio.run(run())
    except up.StartError as e:
        print(f"soak: lmtui did not start: {e}", file=sys.stderr)
        return 2
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("soak: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    return 1 if args.check and rep["problems"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
