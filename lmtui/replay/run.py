"""One comparison: every policy and both reference variants on the same trace and cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lmtui.replay import reference
from lmtui.replay.report import figures, ratio, speed
from lmtui.replay.scenario import Scenario
from lmtui.replay.sim import POLICIES, Replay
from lmtui.replay.trace import TraceRequest

#: ``progress(run name, requests done, requests in all)``.
RunProgress = Callable[[str, int, int], None]


def compare(
    requests: Sequence[TraceRequest],
    scenario: Scenario,
    policies: Sequence[str] = POLICIES,
    *,
    about: dict[str, Any] | None = None,
    progress: RunProgress | None = None,
    audit: bool = False,
) -> dict[str, Any]:
    """Replay ``requests`` (with models) under each policy and the clairvoyant reference.

    Returns ``{"policies": {name: figures}, "reference": figures, "reference_variants":
    {...}, "scenario": {...}, "speed": {...}}``; ``about`` adds to the scenario (trace name,
    seed, rate scale). The reference is the variant with fewer reload seconds.
    """

    def run(name: str, **kw: Any) -> Any:
        cb = (lambda done, total: progress(name, done, total)) if progress else None
        return Replay(scenario, requests, progress=cb, audit=audit, **kw).run()

    results = {p: run(p, policy=p) for p in policies}
    variants = {
        v: run(f"reference {v}", policy=v, order=reference.order(v, requests))
        for v in reference.VARIANTS
    }
    figs = {p: figures(r) for p, r in results.items()}
    vfigs = {v: figures(r) for v, r in variants.items()}
    best = min(vfigs, key=lambda v: (vfigs[v]["reload_s"], vfigs[v]["cold_loads"], v))
    ref = dict(vfigs[best], variant=best, note=reference.NOTE)
    for f in figs.values():
        f["vs_reference"] = {
            "cold_loads": ratio(f["cold_loads"], ref["cold_loads"]),
            "reload_s": ratio(f["reload_s"], ref["reload_s"]),
        }
    span = requests[-1].at - requests[0].at if requests else 0.0
    sc = scenario.describe() | {"requests": len(requests), "trace_span_s": round(span, 1)}
    sc |= about or {}
    return {
        "policies": figs,
        "reference": ref,
        "reference_variants": vfigs,
        "scenario": sc,
        "speed": {name: speed(r) for name, r in (results | variants).items()},
    }
