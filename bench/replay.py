"""How close are lmtui's eviction policies to a clairvoyant reference, and how fast is a replay?

Runs ``lmtui replay`` (in process, the same scenario as the command) on the Azure
conversation trace for seeds 1-5 in three settings: ``instant`` (eviction quality alone),
``busy`` at the trace's rate and ``busy`` at a quarter of it. For each seed it prints cold
loads and reload seconds of ``lru``, ``cost``, ``gdsf`` and the reference, as ratios to the
reference, queue wait p50/p99 and stalls; then the means over seeds and the replay speed.

    .venv/bin/python bench/replay.py [TRACE.csv] [--seeds 1 2 3 4 5] [--json]

The trace defaults to ``../shared/data/azure-llm-inference-2023-conv.csv`` beside the
repository; without it the benchmark says so and exits 0. Takes ~2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from lmtui.replay.cli import build, parser
from lmtui.replay.run import compare

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "data" / "azure-llm-inference-2023-conv.csv"
SETTINGS = {
    "instant": ["--service", "instant"],
    "busy": ["--service", "busy"],
    "busy ×0.25": ["--service", "busy", "--rate-scale", "0.25"],
}
POLICIES = ("lru", "cost", "gdsf")


def one(trace: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    args = parser().parse_args([str(trace), "--seed", str(seed), *extra])
    requests, scenario, about = build(args)
    return compare(requests, scenario, POLICIES, about=about)


def row(rep: dict[str, Any]) -> dict[str, Any]:
    ref = rep["reference"]
    out: dict[str, Any] = {
        "reference": {
            "variant": ref["variant"],
            "cold_loads": ref["cold_loads"],
            "reload_s": ref["reload_s"],
            "wait_p50_s": ref["wait_p50_s"],
            "wait_p99_s": ref["wait_p99_s"],
            "stalls": ref["stalls"],
        }
    }
    for p in POLICIES:
        f = rep["policies"][p]
        out[p] = {
            "cold_loads": f["cold_loads"],
            "reload_s": f["reload_s"],
            "cold_ratio": f["vs_reference"]["cold_loads"],
            "reload_ratio": f["vs_reference"]["reload_s"],
            "wait_p50_s": f["wait_p50_s"],
            "wait_p99_s": f["wait_p99_s"],
            "stalls": f["stalls"],
        }
    out["speed"] = rep["speed"]
    return out


def print_setting(name: str, rows: dict[int, dict[str, Any]]) -> None:
    print(f"\n== {name} ==")
    print(
        f"{'seed':>4} {'run':6} {'cold':>6} {'×ref':>6} {'reload s':>9} {'×ref':>6} "
        f"{'p50 s':>7} {'p99 s':>7} {'stalls':>6}"
    )
    for seed, r in rows.items():
        ref = r["reference"]
        for p in POLICIES:
            f = r[p]
            print(
                f"{seed:>4} {p:6} {f['cold_loads']:>6} {f['cold_ratio']:>6.2f} "
                f"{f['reload_s']:>9.0f} {f['reload_ratio']:>6.2f} {f['wait_p50_s']:>7.2f} "
                f"{f['wait_p99_s']:>7.2f} {f['stalls']:>6}"
            )
        print(
            f"{seed:>4} {'ref':6} {ref['cold_loads']:>6} {'':>6} {ref['reload_s']:>9.0f} "
            f"{'':>6} {ref['wait_p50_s']:>7.2f} {ref['wait_p99_s']:>7.2f} {ref['stalls']:>6}"
            f"  ({ref['variant']})"
        )
    for p in POLICIES:
        cold = statistics.mean(r[p]["cold_ratio"] for r in rows.values())
        reload = statistics.mean(r[p]["reload_ratio"] for r in rows.values())
        lo = min(r[p]["reload_ratio"] for r in rows.values())
        hi = max(r[p]["reload_ratio"] for r in rows.values())
        print(
            f"mean {p:6} cold ×{cold:.2f}, reload s ×{reload:.2f} "
            f"(reload ratio {lo:.2f}-{hi:.2f} across seeds)"
        )
    speeds = [v["requests_per_s"] for r in rows.values() for v in r["speed"].values()]
    walls = [v["wall_s"] for r in rows.values() for v in r["speed"].values()]
    print(
        f"replay speed: {min(speeds):,.0f}-{max(speeds):,.0f} requests/s per run, "
        f"longest run {max(walls):.1f} s"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", type=Path, nargs="?", default=DEFAULT_TRACE)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not args.trace.is_file():
        print(f"bench/replay.py: skipped: no trace at {args.trace} (pass its path)")
        return 0
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name, extra in SETTINGS.items():
        results[name] = {}
        for seed in args.seeds:
            print(f"{name}, seed {seed} …", file=sys.stderr, flush=True)
            results[name][seed] = row(one(args.trace, seed, extra))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"lmtui replay on {args.trace.name}: 60 models, Zipf(1.0), sizes 4-40 GB; nodes "
        "512/192/64 GB, 20 GB reserved, 8 slots; load 1 s + size / 2 GB/s; min residency 0"
    )
    for name, rows in results.items():
        print_setting(name, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
