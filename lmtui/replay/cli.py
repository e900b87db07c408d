"""The two commands: ``lmtui replay TRACE.csv …`` and ``lmtui export-log …``.

Errors a user can meet (a missing trace, a bad row, a config without ``memory_gb``) print
one line and exit 2, as the rest of lmtui does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmtui.config import ConfigError, load_config
from lmtui.core.placement import PLACEMENT_RULES
from lmtui.replay.export import ExportError, parse_since, read_log, write_csv
from lmtui.replay.report import format_report
from lmtui.replay.run import compare
from lmtui.replay.scenario import (
    Scenario,
    ScenarioError,
    assign_zipf,
    config_models,
    default_nodes,
    from_config,
    models_of_trace,
    nodes_of_sizes,
)
from lmtui.replay.sim import POLICIES
from lmtui.replay.trace import TraceError, TraceRequest, read_trace, scale_rate

EPILOG = """\
With no --cluster or --nodes, the cluster is the issue-10 benchmark's: three nodes of 512,
192 and 64 GB with 20 GB reserved each. --cluster takes lmtui's own config.toml (nodes need
memory_gb; their reserved_gb and slots, [pool] min_residency, [router] strategy, queue_depth
and queue_timeout, and [[models]] size_gb, pinned, priority and slots are used); the speeds
below apply to every node. A trace that names no model (the Azure traces) gets models by
the seeded Zipf rule, printed with the results. For capacity planning, replay the same
traffic on more or bigger nodes: --nodes 512,512,192.
"""


def _size_range(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition("-")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH in GB, e.g. 4-40: {text!r}") from None


def _sizes(text: str) -> list[float]:
    try:
        sizes = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected memory sizes in GB, e.g. 512,192,64: {text!r}")
    return sizes


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if x <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number: {text!r}")
    return x


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmtui replay",
        description="Replay a request trace through lmtui's own scheduler, placement and "
        "eviction in virtual time; compare eviction policies with a clairvoyant reference.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trace", type=Path, metavar="TRACE.csv", help="Azure trace or export-log CSV")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cluster", type=Path, metavar="FILE", help="lmtui config.toml")
    where.add_argument(
        "--nodes", type=_sizes, metavar="GB,GB,…", help="nodes of these memory sizes"
    )
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        help="eviction policy to replay (repeatable; default: all of them)",
    )
    p.add_argument(
        "--strategy", choices=("efficiency", "spread", "replicas"), help="routing strategy"
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENT_RULES,
        help="among nodes where a load fits, which takes it (default: spread; with "
        "--cluster, its [pool] placement)",
    )
    p.add_argument(
        "--service",
        choices=("busy", "instant"),
        default="busy",
        help="busy: a request holds a slot for its service time (default); instant: a "
        "loaded model serves everything at once, which isolates eviction",
    )
    p.add_argument(
        "--rate-scale", type=_positive, default=1.0, metavar="X", help="arrival rate × X"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the model rule (default 1)")
    p.add_argument("--models", type=int, default=60, metavar="N", help="models (Zipf rule)")
    p.add_argument("--zipf", type=float, default=1.0, metavar="S", help="Zipf exponent")
    p.add_argument(
        "--sizes", type=_size_range, default=(4.0, 40.0), metavar="LO-HI", help="sizes, GB"
    )
    p.add_argument(
        "--min-residency",
        type=float,
        metavar="S",
        help="seconds a loaded model is safe from eviction (default 0; with --cluster, "
        "its [pool] min_residency)",
    )
    p.add_argument("--reserved-gb", type=float, default=20.0, help="with --nodes (default 20)")
    p.add_argument("--slots", type=int, default=8, help="slots per loaded model (default 8)")
    p.add_argument("--load-fixed-s", type=float, default=1.0, help="load time: fixed seconds")
    p.add_argument("--disk-gb-s", type=_positive, default=2.0, help="load time: GB per second")
    p.add_argument("--prefill-tps", type=_positive, default=1000.0, help="prompt tokens/s")
    p.add_argument("--decode-tps", type=_positive, default=50.0, help="generated tokens/s")
    p.add_argument("--requests", type=int, metavar="N", help="replay only the first N requests")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", action="store_true", default=None, help="progress on stderr")
    prog.add_argument(
        "--no-progress", action="store_false", dest="progress", help="no progress on stderr"
    )
    p.add_argument("--audit", action="store_true", help=argparse.SUPPRESS)
    return p


def build(args: argparse.Namespace) -> tuple[list[TraceRequest], Scenario, dict[str, Any]]:
    """The trace (with models) and the scenario the arguments describe."""
    physics = {
        "slots": args.slots,
        "load_fixed_s": args.load_fixed_s,
        "disk_gb_s": args.disk_gb_s,
        "prefill_tps": args.prefill_tps,
        "decode_tps": args.decode_tps,
    }
    requests = read_trace(args.trace)
    if args.requests is not None:
        requests = requests[: max(0, args.requests)]
    requests = scale_rate(requests, args.rate_scale)
    known = {}
    if args.cluster is not None:
        config = load_config(args.cluster)
        scenario = from_config(config, str(args.cluster), **physics)
        known = config_models(config)
    elif args.nodes is not None:
        nodes = nodes_of_sizes(args.nodes, reserved_gb=args.reserved_gb, **physics)
        scenario = Scenario(nodes=nodes, min_residency_s=0.0, cluster="--nodes")
    else:
        scenario = Scenario(nodes=default_nodes(**physics), min_residency_s=0.0)
    if all(r.model is None for r in requests):
        requests, models, rule = assign_zipf(
            requests, n_models=args.models, s=args.zipf, size_range_gb=args.sizes, seed=args.seed
        )
        scenario = _with(scenario, models=models, assignment=rule)
    else:
        if any(r.model is None for r in requests):
            raise TraceError(f"{args.trace}: some rows name a model and some do not")
        models = models_of_trace(requests, known, size_range_gb=args.sizes, seed=args.seed)
        scenario = _with(scenario, models=models)
    changes: dict[str, Any] = {"service": args.service}
    if args.strategy is not None:
        changes["strategy"] = args.strategy
    if args.placement is not None:
        changes["placement"] = args.placement
    if args.min_residency is not None:
        changes["min_residency_s"] = args.min_residency
    about = {"trace": str(args.trace), "rate_scale": args.rate_scale, "seed": args.seed}
    return requests, _with(scenario, **changes), about


def _with(scenario: Scenario, **changes: Any) -> Scenario:
    return replace(scenario, **changes)


class _Progress:
    """One self-overwriting line on stderr: which run, how far."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        sys.stderr.write(f"\r\x1b[K{name}: {done:,}/{total:,} requests ({done / total:.0%})")
        if done >= total:
            sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        requests, scenario, about = build(args)
    except (TraceError, ScenarioError, ConfigError) as e:
        print(f"lmtui replay: {e}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    report = compare(
        requests,
        scenario,
        args.policy or POLICIES,
        about=about,
        progress=_Progress() if show else None,
        audit=args.audit,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmtui export-log",
        description="Write lmtui's request log as CSV (to stdout) for 'lmtui replay'.",
    )
    p.add_argument("--db", type=Path, metavar="PATH", help="the request log (SQLite)")
    p.add_argument(
        "--since", metavar="WHEN", help="only requests since WHEN: 24h, 7d, Unix seconds, ISO"
    )
    return p


def export_main(argv: Sequence[str], *, default_db: Path, columns: Sequence[str]) -> int:
    """``lmtui export-log``; the caller passes the log's default path and its columns."""
    args = export_parser().parse_args(argv)
    try:
        since = parse_since(args.since, time.time()) if args.since else None
        n = write_csv(read_log(args.db or default_db, columns, since), columns, sys.stdout)
    except ExportError as e:
        print(f"lmtui export-log: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head`
        return 0
    print(f"lmtui export-log: {n:,} requests", file=sys.stderr)
    return 0
