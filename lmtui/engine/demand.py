"""The engine's demand: how often each model is asked for, for the ``gdsf`` eviction policy.

One :class:`Demand` lives in the controller. Every finished request adds to it
(``Engine._request_done``: a dict update and an ``exp``, ~0.2 µs); at start it is seeded
from the request log's last ``window_s`` (so a restart does not forget what is popular);
and every tick the pool manager puts its decayed rates into the dispatcher's
``PoolSettings.request_rate`` (``Controller._loop``). The counting itself is the pure
``lmtui.core.demand.DemandRates``, the same object ``lmtui replay`` feeds in virtual time.

Requests for a model the cluster does not know (``not_found``) and malformed ones
(``bad_request``) are not demand: nothing could have been kept loaded for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

from lmtui.core.demand import HALF_LIFE_S, MAX_MODELS, DemandRates
from lmtui.engine.reqlog import RequestLog

#: Outcomes that say nothing about which model to keep (as the request log's popularity).
NOT_DEMAND = frozenset({"not_found", "bad_request"})


class Demand:
    """Decayed request counts per model, fed by finished requests (see the module docstring),
    and when each model was last asked for (preload skips a model idle past its TTL)."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, max_models: int = MAX_MODELS) -> None:
        self.counts = DemandRates(half_life_s, max_models)
        self.max_models = max_models
        #: Model -> when it was last asked for; as bounded as the counts.
        self._last: dict[str, float] = {}

    def request_done(self, model: str, outcome: str, at: float) -> None:
        """One finished request for ``model`` that arrived at ``at``. O(1) (amortized)."""
        if outcome not in NOT_DEMAND:
            self.counts.note(model, at)
            self._seen(model, at)

    def _seen(self, model: str, at: float) -> None:
        last = self._last
        if at >= last.get(model, -math.inf):
            if model not in last and len(last) >= self.max_models:
                # Forget the quarter asked for longest ago (a client inventing names).
                keep = sorted(last.items(), key=lambda kv: kv[1])[len(last) // 4 :]
                self._last = last = dict(keep)
            last[model] = at

    async def seed(self, log: RequestLog, now: float) -> int:
        """Add the log's requests of the last ``window_s``; returns how many were added."""
        history = await log.demand(now - self.counts.window_s)
        self.counts.seed(history)
        for model, at, _n in history:
            self._seen(model, at)
        return sum(n for _m, _at, n in history)

    def last_request(self) -> Mapping[str, float]:
        """When each model was last asked for (as far as the history goes)."""
        return MappingProxyType(self._last)

    def rates(self, now: float) -> Mapping[str, float]:
        """Requests per second per model at ``now``."""
        return self.counts.rates(now)
