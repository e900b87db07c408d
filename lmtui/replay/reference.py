"""The clairvoyant reference: evict what the trace needs furthest in the future.

The reference is a replay like the others, on the same trace, cluster and placement (the
core's ``place`` still chooses the node and the candidates; only their order changes,
through ``PoolSettings.eviction_order``), with an order that knows each model's next request:

- ``furthest``: the model whose next request is furthest away goes first (Belady's rule);
- ``furthest_size``: the largest (time to next request × size) goes first, so one big model
  needed soon may go before several small ones needed later.

With equal sizes and one node, Belady's rule is optimal for the number of loads. With unequal
sizes, several nodes and loads that take time it is not: no known efficient rule is, so the
better of the two is a strong reference, not a proven optimum. The report says so.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from lmtui.core.eviction import EvictionOrder
from lmtui.core.model import Instance
from lmtui.replay.trace import TraceRequest

VARIANTS = ("furthest", "furthest_size")
NOTE = (
    "clairvoyant reference: evicts by each model's next request in the trace (furthest "
    "first; or furthest x size), through lmtui's own placement. With unequal sizes this is "
    "a strong reference, not a proven optimum"
)


class NextUse:
    """When each model is next asked for, from the whole trace."""

    def __init__(self, requests: Sequence[TraceRequest]) -> None:
        times: dict[str, list[float]] = {}
        for r in requests:  # the trace is sorted by arrival
            times.setdefault(r.model or "", []).append(r.at)
        self._times = times

    def after(self, model: str, now: float) -> float:
        """Seconds from ``now`` to ``model``'s next request at or after ``now`` (inf: none)."""
        ts = self._times.get(model)
        if not ts:
            return math.inf
        k = bisect_left(ts, now)
        return ts[k] - now if k < len(ts) else math.inf


def order(variant: str, requests: Sequence[TraceRequest]) -> EvictionOrder:
    """The eviction order of ``variant`` (one of :data:`VARIANTS`) for ``requests``."""
    nxt = NextUse(requests)
    if variant == "furthest":

        def furthest(inst: Instance, now: float) -> float:
            return -nxt.after(inst.model, now)

        return furthest
    if variant == "furthest_size":

        def furthest_size(inst: Instance, now: float) -> float:
            return -nxt.after(inst.model, now) * max(inst.size_bytes or 0, 1)

        return furthest_size
    raise ValueError(f"unknown reference variant {variant!r}; expected one of {VARIANTS}")
