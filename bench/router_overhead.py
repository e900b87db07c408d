"""What does lmtui's router add to a request, compared with no proxy and with nginx?

    python bench/router_overhead.py                  # 5 s per run, about 1.5 minutes
    python bench/router_overhead.py --seconds 2 --json
    python bench/router_overhead.py --api chat responses messages   # the three APIs, ~4.5 min
    python bench/router_overhead.py --dashboard      # also lmtui+ui: the dashboard in-process

``--api`` picks the routed APIs measured (chat completions by default; ``responses`` is
``POST /v1/responses``, ``messages`` Anthropic's ``POST /v1/messages``): each is measured on
every path with its own canned answers and streams (the shapes of a real llama-server's).

A fast upstream (no model: canned answers, see ``_upstream.py``) is measured three ways with
the same requests, non-streaming and streaming, at 1 and 32 concurrent clients, in ONE
invocation so that every figure comes from the same machine state:

- ``direct``: the client talks to the upstream;
- ``nginx``: through nginx as a reverse proxy (keepalive upstream pool, HTTP/1.1,
  ``proxy_buffering off``), the native reference, when nginx is installed;
- ``lmtui``: through ``python -m lmtui --serve --listen`` with the upstream as its one
  ``kind = "openai"`` node.

Reported per row: requests/s, p50/p99 latency, and the proxy's CPU time per request; for
streams at concurrency 1 also the time to first chunk (TTFC). Then the ratios: path/direct
requests/s, added p50/p99 = path - direct, added TTFC, lmtui/nginx requests/s at the highest
concurrency, and the goals (lmtui adds < 0.5 ms p50 at c=1; lmtui >= 0.25 x nginx at c=32).
If lmtui does not come up or cannot route, the lmtui rows say why and the rest is reported.

CPU placement (``--pin``). The client must not starve the proxy: wrk runs with ``-t1`` (one
thread, so at most one core), and by default (``--pin client``) wrk and this script's Python
client are pinned to the last CPU with ``taskset`` (set before exec, inherited by every
thread), while the proxy and the upstream are left to the scheduler. Measured on 2 cores,
this beat pinning everything apart (``--pin all``: proxy alone on CPU 0, client and upstream
on CPU 1): at concurrency 1 a request then crosses cores four times, and each wake-up of an
idle core cost nginx ~0.05 ms p50 and ~3x the CPU per request (50 vs 17 µs); at
concurrency 32 the two were equal within noise. ``--pin none`` leaves everything floating.
The upstream is nginx answering from memory (~10 µs of CPU per request), so it never limits
the proxied paths. On 2 cores the nginx proxy is fast enough that the client's core can
become the limit at c=32, so nginx's req/s is then a lower bound and lmtui/nginx errs in
lmtui's favour; the proxy CPU µs/request column is the comparison that does not depend on
the cores. Other load on the machine shows up in p99 first: compare p50s across runs.

A correction (2026-11-25): until then "left to the scheduler" was not true. This script pins
itself to the client's CPU before starting the servers, and the servers inherited that, so
wrk, the upstream and the proxy all shared one CPU while the other idled. Servers started
unpinned now get every CPU explicitly (``_upstream.Proc``). Figures measured before differ:
nginx went from ~36k to ~57k req/s at c=32, lmtui from ~13.4k to ~17k, and lmtui/nginx
from ~0.37 to ~0.30 (the closing note of issue 4 has both runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadgen as lg
import _upstream as up
import psutil

PATHS = ("direct", "nginx", "lmtui", "lmtui+ui")
#: ``--dashboard``'s terminal: the size the dashboard's own benchmark draws at.
DASHBOARD_SIZE = (160, 48)
#: lmtui's added p50 at concurrency 1 must stay under this (ms).
GOAL_ADDED_P50_MS = 0.5
#: lmtui's throughput at the highest concurrency, as a fraction of nginx's.
GOAL_VS_NGINX = 0.25


@dataclass
class Row:
    path: str
    stream: bool
    result: lg.LoadResult
    api: str = "chat"


@dataclass
class Report:
    """Everything one invocation measured, and what it could not."""

    upstream: str
    tool: str
    seconds: float
    cpus: lg.CpuPlan
    rows: list[Row] = field(default_factory=list)
    ttfc: dict[str, lg.TtfcResult] = field(default_factory=dict)
    #: Paths that could not be measured, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)

    def row(self, path: str, stream: bool, conns: int, api: str = "chat") -> lg.LoadResult | None:
        for r in self.rows:
            if (r.path, r.stream, r.result.connections, r.api) == (path, stream, conns, api):
                return r.result
        return None


def ttfc_key(path: str, api: str) -> str:
    """``report.ttfc``'s key: the path alone for chat (as before), else ``path/api``."""
    return path if api == "chat" else f"{path}/{api}"


def lmtui_config(upstream_url: str) -> str:
    """The lmtui config under test: the upstream as one roomy ``openai`` node."""
    return (
        "[[nodes]]\n"
        'name = "bench"\n'
        'kind = "openai"\n'
        f'url = "{upstream_url}"\n'
        "slots = 64\n"
        "memory_gb = 64\n"
        "[router]\n"
        "queue_depth = 10000\n"
    )


async def measure(
    report: Report, path: str, base: str, args: argparse.Namespace, proxy: up.Proc | None
) -> None:
    """All runs of one path: every API asked for, both modes, every concurrency, and TTFC for
    streams at c=1."""
    for api in args.api:
        await measure_api(report, path, base, args, proxy, api)


async def measure_api(
    report: Report,
    path: str,
    base: str,
    args: argparse.Namespace,
    proxy: up.Proc | None,
    api: str,
) -> None:
    url = base + up.APIS[api][0]
    if path.startswith("lmtui") and args.via_aiohttp:
        # A query string is not the fast front's: the request goes to aiohttp.web.
        url += "?via=aiohttp"
    for stream in (False, True):
        body = up.request_body(stream, api)
        problem = lg.sanity_check(url, body, stream=stream)
        if problem is not None:
            mode = "stream" if stream else "non-stream"
            report.skipped[ttfc_key(path, api)] = f"{mode} request: {problem}"
            return
    if args.warmup > 0:  # warm caches, connection pools, lazily built routes
        await run_one(
            report,
            url,
            up.request_body(False, api),
            max(args.concurrency),
            args.warmup,
            stream=False,
            proxy=None,
        )
    for stream in (False, True):
        for conns in args.concurrency:
            log(f"  {path:6} {api:9} {'stream' if stream else 'json':6} c={conns} ...")
            result = await run_one(
                report,
                url,
                up.request_body(stream, api),
                conns,
                args.seconds,
                stream=stream,
                proxy=proxy,
            )
            report.rows.append(Row(path, stream, result, api))
    log(f"  {path:6} {api:9} stream TTFC c=1 ...")
    report.ttfc[ttfc_key(path, api)] = await lg.py_ttfc(
        url, up.request_body(True, api), seconds=args.ttfc_seconds
    )


async def run_one(
    report: Report,
    url: str,
    body: bytes,
    conns: int,
    seconds: float,
    *,
    stream: bool,
    proxy: up.Proc | None,
) -> lg.LoadResult:
    """One run, with the proxy's CPU time per request when a proxy is in the path."""
    watched = psutil.Process(proxy.pid) if proxy is not None else None
    before = _cpu(watched)
    if report.tool == "wrk":
        result = await asyncio.to_thread(
            lg.wrk_run, url, body, connections=conns, seconds=seconds, cpu=report.cpus.client
        )
    else:
        result = await lg.py_run(url, body, connections=conns, seconds=seconds, stream=stream)
    if watched is not None and result.requests:
        result.proxy_cpu_us_per_req = (_cpu(watched) - before) * 1e6 / result.requests
    return result


def _cpu(p: psutil.Process | None) -> float:
    if p is None:
        return 0.0
    t = p.cpu_times()
    return float(t.user + t.system)


async def run(args: argparse.Namespace) -> Report:
    """Start the servers one path at a time and measure each."""
    cpus = lg.plan_cpus(args.pin)
    if cpus.client is not None:
        # This process hosts the Python clients; keep it off the proxy's core.
        os.sched_setaffinity(0, {cpus.client})
    tool = "wrk" if lg.wrk_available() and not args.python_client else "python"
    work = up.make_workdir("lmtui-bench-")
    upstream, upstream_url, kind = up.start_upstream(
        work, cpu=cpus.upstream, use_nginx=not args.no_nginx
    )
    report = Report(upstream=kind, tool=tool, seconds=args.seconds, cpus=cpus)
    log(f"upstream: {kind} at {upstream_url}; client: {tool}; workdir {work}")
    try:
        log("direct:")
        await measure(report, "direct", upstream_url, args, None)
        if args.no_nginx:
            report.skipped["nginx"] = "skipped (--no-nginx)"
        elif up.nginx_path() is None:
            report.skipped["nginx"] = "nginx is not installed (apt-get install nginx)"
        else:
            proxy, url = up.start_nginx_proxy(work, upstream_url, cpu=cpus.proxy)
            try:
                log("nginx:")
                await measure(report, "nginx", url, args, proxy)
            finally:
                proxy.stop()
        runs = [("lmtui", "lmtui", None)]
        if args.dashboard:  # the router inside the dashboard's process (embedded mode)
            runs.append(("lmtui+ui", "lmtui-ui", DASHBOARD_SIZE))
        for path, name, dashboard in runs:
            log(f"{path}:")
            try:
                proc, url = up.start_lmtui(
                    work,
                    lmtui_config(upstream_url),
                    cpu=cpus.proxy,
                    model=up.MODEL,
                    timeout=args.lmtui_timeout,
                    name=name,
                    dashboard=dashboard,
                )
            except up.StartError as e:
                how = "with its dashboard" if dashboard else "--serve"
                report.skipped[path] = f"lmtui {how} did not come up: {e}"
                continue
            try:
                await measure(report, path, url, args, proc)
            finally:
                proc.stop()
    finally:
        upstream.stop()
        if args.keep_workdir:
            log(f"configs and server logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def ratios(report: Report, concurrency: list[int], apis: list[str] | None = None) -> dict[str, Any]:
    """Path/direct ratios, added latency, lmtui/nginx throughput, and the goals, per API."""
    out: dict[str, Any] = {"vs_direct": [], "ttfc_added_ms": {}, "lmtui_vs_nginx": {}, "goals": {}}
    top, low = max(concurrency), min(concurrency)
    for api in apis or ["chat"]:
        label = "" if api == "chat" else f" {api}"
        for path in ("nginx", "lmtui", "lmtui+ui"):
            for stream in (False, True):
                for c in concurrency:
                    d = report.row("direct", stream, c, api)
                    p = report.row(path, stream, c, api)
                    if d is None or p is None or d.rps == 0:
                        continue
                    out["vs_direct"].append(
                        {
                            "path": path,
                            "api": api,
                            "stream": stream,
                            "connections": c,
                            "rps": round(p.rps),
                            "rps_ratio": round(p.rps / d.rps, 3),
                            "added_p50_ms": round((p.p50_us - d.p50_us) / 1000, 3),
                            "added_p99_ms": round((p.p99_us - d.p99_us) / 1000, 3),
                        }
                    )
            key, dkey = ttfc_key(path, api), ttfc_key("direct", api)
            if key in report.ttfc and dkey in report.ttfc:
                t, d_t = report.ttfc[key], report.ttfc[dkey]
                out["ttfc_added_ms"][key] = {
                    "p50": round((t.ttfc_p50_us - d_t.ttfc_p50_us) / 1000, 3),
                    "p99": round((t.ttfc_p99_us - d_t.ttfc_p99_us) / 1000, 3),
                }
        for stream in (False, True):
            mode = ("stream" if stream else "non-stream") + label
            lm, ng = report.row("lmtui", stream, top, api), report.row("nginx", stream, top, api)
            if lm is not None and ng is not None and ng.rps:
                share = lm.rps / ng.rps
                out["lmtui_vs_nginx"][f"{mode} c={top}"] = round(share, 3)
                out["goals"][f"lmtui >= {GOAL_VS_NGINX} x nginx req/s, {mode} c={top}"] = (
                    share >= GOAL_VS_NGINX
                )
            for c in concurrency:  # what the dashboard in the same process costs the router
                ui, lm = report.row("lmtui+ui", stream, c, api), report.row("lmtui", stream, c, api)
                if ui is not None and lm is not None and lm.rps:
                    out.setdefault("dashboard_cost", {})[f"{mode} c={c}"] = {
                        "rps_ratio": round(ui.rps / lm.rps, 3),
                        "added_p50_ms": round((ui.p50_us - lm.p50_us) / 1000, 3),
                        "added_p99_ms": round((ui.p99_us - lm.p99_us) / 1000, 3),
                    }
            for item in out["vs_direct"]:
                if (item["path"], item["api"], item["stream"], item["connections"]) == (
                    "lmtui",
                    api,
                    stream,
                    low,
                ):
                    out["goals"][f"lmtui added p50 < {GOAL_ADDED_P50_MS} ms, {mode} c={low}"] = (
                        item["added_p50_ms"] < GOAL_ADDED_P50_MS
                    )
    return out


def to_json(report: Report, rat: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstream": report.upstream,
        "client": report.tool,
        "seconds_per_run": report.seconds,
        "cpus": vars(report.cpus),
        "rows": [
            {"path": r.path, "api": r.api, "stream": r.stream, **r.result.to_json()}
            for r in report.rows
        ],
        "ttfc": {k: vars(v) for k, v in report.ttfc.items()},
        "not_measured": report.skipped,
        **rat,
    }


def ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def print_table(report: Report, rat: dict[str, Any]) -> None:
    """The human-readable report."""
    print(
        f"upstream: {report.upstream}   client: {report.tool} ({report.seconds:g} s per run)"
        f"   cpus: proxy={report.cpus.proxy} client={report.cpus.client} "
        f"upstream={report.cpus.upstream}"
    )
    print()
    print(
        f"{'path':7}{'api':10}{'mode':12}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'proxy cpu µs/req':>18}{'errors':>8}"
    )
    for r in report.rows:
        res = r.result
        cpu = f"{res.proxy_cpu_us_per_req:.1f}" if res.proxy_cpu_us_per_req is not None else "-"
        print(
            f"{r.path:7}{r.api:10}{'stream' if r.stream else 'non-stream':12}{res.connections:>5}"
            f"{res.rps:>10.0f}{ms(res.p50_us):>9}{ms(res.p99_us):>9}{cpu:>18}{res.errors:>8}"
        )
    if report.ttfc:
        print()
        print("streams at c=1, Python client: time to first chunk / to the end (ms)")
        for path, t in report.ttfc.items():
            print(
                f"  {path:7} TTFC p50 {ms(t.ttfc_p50_us)}  p99 {ms(t.ttfc_p99_us)}   "
                f"total p50 {ms(t.total_p50_us)}  p99 {ms(t.total_p99_us)}   "
                f"({t.requests} requests, {t.errors} errors)"
            )
    print()
    print("added by the proxy (path - direct) and throughput ratio (path / direct)")
    for item in rat["vs_direct"]:
        mode = "stream" if item["stream"] else "non-stream"
        print(
            f"  {item['path']:6} {item['api']:9} {mode:11} c={item['connections']:<3} "
            f"req/s x{item['rps_ratio']:<7} p50 {item['added_p50_ms']:+.3f} ms   "
            f"p99 {item['added_p99_ms']:+.3f} ms"
        )
    for path, t in rat["ttfc_added_ms"].items():
        print(f"  {path:6} TTFC added: p50 {t['p50']:+.3f} ms   p99 {t['p99']:+.3f} ms")
    for key, share in rat["lmtui_vs_nginx"].items():
        print(f"  lmtui / nginx req/s, {key}: {share:.3f}")
    for key, d in rat.get("dashboard_cost", {}).items():
        print(
            f"  lmtui+ui vs lmtui, {key}: req/s x{d['rps_ratio']:<6} "
            f"p50 {d['added_p50_ms']:+.3f} ms   p99 {d['added_p99_ms']:+.3f} ms"
        )
    if rat["goals"]:
        print()
        for goal, ok in rat["goals"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {goal}")
    for path, why in report.skipped.items():
        print()
        print(f"{path}: NOT MEASURED: {why}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each run (5)")
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 32],
        help="concurrent clients per run (1 32)",
    )
    p.add_argument(
        "--ttfc-seconds",
        type=float,
        default=3.0,
        help="duration of the time-to-first-chunk run per path (3)",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per path (1)")
    p.add_argument(
        "--lmtui-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for lmtui to list the model (30)",
    )
    p.add_argument(
        "--api",
        nargs="+",
        choices=list(up.APIS),
        default=["chat"],
        help="routed APIs to measure: chat (/v1/chat/completions, default), responses "
        "(/v1/responses), messages (Anthropic /v1/messages)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--via-aiohttp",
        action="store_true",
        help="send lmtui's requests through its aiohttp.web path, not its fast front",
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary configs and each server's stderr",
    )
    p.add_argument(
        "--pin",
        choices=("all", "client", "none"),
        default="client",
        help="CPU pinning: only the client (default), proxy/client/upstream apart (all), or none",
    )
    p.add_argument(
        "--no-nginx",
        action="store_true",
        help="aiohttp upstream and no nginx reference, even if nginx is installed",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="also measure lmtui with its dashboard running in the same process (embedded "
        "mode, on a 160x48 pseudo-terminal): the path lmtui+ui",
    )
    p.add_argument(
        "--python-client",
        action="store_true",
        help="use the Python load generator even if wrk is installed",
    )
    args = p.parse_args(argv)
    if any(c < 1 for c in args.concurrency) or args.seconds <= 0:
        p.error("--concurrency and --seconds must be positive")
    args.concurrency = sorted(set(args.concurrency))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    rat = ratios(report, args.concurrency, args.api)
    if args.json:
        print(json.dumps(to_json(report, rat), indent=2))
    else:
        print_table(report, rat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
