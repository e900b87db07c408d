"""Figures from a replay, as data (``--json``) and as a table for people.

Per run: ``cold_loads`` (every load, ``first_loads`` of them of a model never loaded
before, which no policy avoids), ``reload_s`` (seconds spent loading, summed over loads),
``hit_ratio`` (requests that arrived with their model loaded), queue wait percentiles over
served requests (arrival to slot), ``stalls`` (times a model needing a load found no room
and had to wait for some; ``stall_s`` their total length), and per node the share of time
with a request running (``busy``), the mean requests in flight, and the time-averaged share
of the node's budget held by models (``memory``). ``busy_spread`` and ``memory_spread`` are
the largest minus the smallest of those shares across nodes.

Wall-clock figures (replay speed) are kept apart, under ``speed``, so that everything else
is the same for the same seed on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lmtui.replay.reference import NOTE
from lmtui.replay.sim import RunResult


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ascending values; 0 for none."""
    if not sorted_values:
        return 0.0
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def _r(x: float, nd: int = 3) -> float:
    return round(x, nd)


def figures(res: RunResult) -> dict[str, Any]:
    """The figures of one run (see the module docstring), deterministic for a seed."""
    waits = sorted(res.waits)
    dur = res.duration_s or 1.0
    nodes: dict[str, dict[str, Any]] = {}
    for name, st in res.nodes.items():
        budget = res.budgets.get(name) or 1
        nodes[name] = {
            "requests": st.requests,
            "loads": st.loads,
            "load_s": _r(st.load_s, 1),
            "evictions": st.evictions,
            "busy": _r(st.busy_s / dur),
            "in_flight_mean": _r(st.request_s / dur, 2),
            "memory": _r(st.byte_s / dur / budget),
        }
    busy = [n["busy"] for n in nodes.values()]
    mem = [n["memory"] for n in nodes.values()]
    return {
        "requests": res.requests,
        "served": res.served,
        "rejected": res.rejected,
        "expired": res.expired,
        "cold_loads": res.loads,
        "first_loads": res.first_loads,
        "reload_s": _r(res.load_s, 1),
        "evictions": res.evictions,
        "hit_ratio": _r(res.hits / res.requests if res.requests else 0.0, 4),
        "wait_p50_s": _r(percentile(waits, 50)),
        "wait_p95_s": _r(percentile(waits, 95)),
        "wait_p99_s": _r(percentile(waits, 99)),
        "wait_mean_s": _r(sum(waits) / len(waits) if waits else 0.0),
        "stalls": res.stalls,
        "stall_s": _r(res.stall_s, 1),
        "duration_s": _r(res.duration_s, 1),
        "nodes": nodes,
        "busy_spread": _r(max(busy) - min(busy)) if busy else 0.0,
        "memory_spread": _r(max(mem) - min(mem)) if mem else 0.0,
    }


def ratio(x: float, ref: float) -> float | None:
    """``x / ref``; None when the reference is 0 (and so is any sane policy's figure)."""
    return round(x / ref, 3) if ref else None


def speed(res: RunResult) -> dict[str, float]:
    return {
        "wall_s": round(res.wall_s, 3),
        "requests_per_s": round(res.requests / res.wall_s) if res.wall_s > 0 else 0,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def format_report(report: Mapping[str, Any]) -> str:
    """The table a person reads: scenario, one row per run, per-node use, ratios, speed."""
    sc = report["scenario"]
    lines = [
        f"lmtui replay of {sc['trace']}: {sc['requests']:,} requests over "
        f"{sc['trace_span_s']:,.0f} s (rate ×{sc['rate_scale']:g}); service {sc['service']}, "
        f"strategy {sc['strategy']}, placement {sc.get('placement', 'spread')}, "
        f"min residency {sc['min_residency_s']:g} s",
    ]
    if sc.get("assignment"):
        lines.append(f"models: {sc['assignment']['rule']}")
    else:
        lines.append(f"models: {len(sc['models'])} named by the trace")
    sizes = [m["size_gb"] for m in sc["models"]]
    if sizes:
        lines.append(
            f"        sizes {min(sizes):g}-{max(sizes):g} GB, {sum(sizes):,.0f} GB in all: "
            + ", ".join(f"{m['name']} {m['size_gb']:g}" for m in sc["models"][:12])
            + (", …" if len(sizes) > 12 else "")
        )
    lines.append(f"cluster: {sc['cluster']}")
    for n in sc["nodes"]:
        lines.append(
            f"  {n['name']}: {n['memory_gb']:g} GB, {n['reserved_gb']:g} reserved, "
            f"{n['slots']} slots; load {n['load_s']}; service {n['service_s']}"
        )
    lines.append("")

    runs: list[tuple[str, Mapping[str, Any]]] = list(report["policies"].items())
    ref = report["reference"]
    runs.append((f"reference ({ref['variant']})*", ref))
    for name, fig in report.get("reference_variants", {}).items():
        if name != ref["variant"]:
            runs.append((f"  {name}", fig))
    head = (
        f"{'':24} {'cold':>6} {'first':>5} {'reload s':>9} {'hit %':>6} {'wait p50':>8} "
        f"{'p95':>7} {'p99':>7} {'stalls':>6} {'stall s':>8} {'lost':>5}"
    )
    lines.append(head)
    for name, f in runs:
        lost = f["rejected"] + f["expired"]
        lines.append(
            f"{name:24} {f['cold_loads']:>6} {f['first_loads']:>5} {f['reload_s']:>9.0f} "
            f"{_pct(f['hit_ratio']):>6} {_s(f['wait_p50_s']):>8} {_s(f['wait_p95_s']):>7} "
            f"{_s(f['wait_p99_s']):>7} {f['stalls']:>6} {f['stall_s']:>8.0f} {lost:>5}"
        )
    lines.append("")
    names = list(ref["nodes"])
    lines.append(
        "per node: % of requests / % of time busy / mean in flight / % of budget held; "
        "spread (max - min) of busy / held:"
    )
    lines.append(f"{'':24} " + " ".join(f"{n:>24}" for n in names) + f" {'spread':>12}")
    for name, f in runs:
        served = f["served"] or 1
        cells = [
            f"{_pct(d['requests'] / served)}/{_pct(d['busy'])}/{d['in_flight_mean']:.1f}/"
            f"{_pct(d['memory'])}"
            for d in (f["nodes"][n] for n in names)
        ]
        spread = f"{_pct(f['busy_spread'])}/{_pct(f['memory_spread'])}"
        lines.append(f"{name:24} " + " ".join(f"{c:>24}" for c in cells) + f" {spread:>12}")
    lines.append("")
    lines.append("against the reference (cold loads, reload seconds):")
    for name, f in report["policies"].items():
        vs = f["vs_reference"]
        lines.append(f"  {name:8} {_x(vs['cold_loads'])} {_x(vs['reload_s'])}")
    lines.append(f"* {NOTE}; the reference is the variant with fewer reload seconds.")
    sp = report.get("speed", {})
    if sp:
        lines.append(
            "replay speed: "
            + ", ".join(
                f"{k} {v['requests_per_s']:,.0f} requests/s ({v['wall_s']:.1f} s)"
                for k, v in sp.items()
            )
        )
    return "\n".join(lines)
