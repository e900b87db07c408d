"""How often each model is asked for: request counts that decay with a half-life.

The ``gdsf`` eviction policy weighs each model by its request rate. A plain count over all
time would keep a model that was popular yesterday forever, and a sliding window forgets
abruptly; an exponentially decayed count does neither: a request ``a`` seconds old counts
``2 ** (-a / half_life)``. For a model asked for ``r`` times a second the decayed count
settles at ``r * tau`` (``tau = half_life / ln 2``), so ``count / tau`` is an estimate of
``r`` in requests per second, which is what :meth:`DemandRates.rates` returns.

Decaying every count on every request would cost a pass over all models. Instead each
request adds ``exp((at - t0) / tau)``, its weight relative to a reference time ``t0``
("forward decay"): one ``exp``, a multiply and a dict update. :meth:`rates` (once per pool
manager tick) moves ``t0`` to now, scaling every count down by the same factor, which also
keeps the weights far from overflowing.

The same object runs in the engine (fed by every finished request, seeded from the request
log at start) and in ``lmtui replay`` (fed in virtual time), so the replay measures what
the engine does. Pure: no clock, no I/O; every method takes the time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

#: How fast old requests stop counting. 10 minutes: a model asked for once every few
#: minutes still has an estimate (at one request per 300 s the decayed count is ~2.9), and
#: a model that was popular an hour ago has faded to 1/64 of it. On the replay benchmark
#: (Azure trace, bench/README.md, seeds 1-5, instant) half-lives of 2-60 minutes all came
#: within 1% of each other (1.183-1.195x the reference's reload seconds; 5 and 10 minutes
#: best); with ``gdsf``'s waiting for room that frees up soon (``lmtui.core.eviction``),
#: 5-40 minutes came within 1% again (1.034-1.041x). That trace's popularity never shifts,
#: so it cannot say how fast real ones do.
HALF_LIFE_S = 600.0
#: At most this many models are tracked; past it the least requested quarter is dropped.
#: Models are the ones the cluster knows (unknown-model requests are not counted), so
#: this bounds a client that asks for ever new names, not a real catalogue.
MAX_MODELS = 1024
#: Counts decayed below this are forgotten (a model unused for ~10 half-lives).
_FORGET = 1e-3
#: Move ``t0`` when a request's weight would pass ``exp(_REBASE_AT)`` (no tick came).
_REBASE_AT = 60.0


class DemandRates:
    """Decayed request counts per model, as requests per second (see the module docstring)."""

    __slots__ = ("_k", "_t0", "_w", "half_life_s", "max_models")

    def __init__(
        self, half_life_s: float = HALF_LIFE_S, max_models: int = MAX_MODELS, *, start: float = 0.0
    ) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s!r}")
        self.half_life_s = half_life_s
        self.max_models = max(1, max_models)
        self._k = math.log(2) / half_life_s  # 1 / tau
        self._t0 = start
        self._w: dict[str, float] = {}  # model -> sum of exp(k * (at - t0))

    @property
    def window_s(self) -> float:
        """How far back a request still counts at all (10 half-lives: a weight of 1/1024)."""
        return 10 * self.half_life_s

    def note(self, model: str, at: float, n: float = 1.0) -> None:
        """``n`` requests for ``model`` at time ``at``. O(1) (amortized past the bound)."""
        x = self._k * (at - self._t0)
        if x > _REBASE_AT:
            self._rebase(at)
            x = 0.0
        w = self._w
        if model not in w and len(w) >= self.max_models:
            self._trim()
        w[model] = w.get(model, 0.0) + n * math.exp(x)

    def seed(self, history: Iterable[tuple[str, float, float]]) -> None:
        """Add past requests: ``(model, at, count)`` each (the request log's history)."""
        for model, at, n in history:
            self.note(model, at, n)

    def rates(self, now: float) -> Mapping[str, float]:
        """Requests per second per model at ``now`` (models with no weight left omitted)."""
        if now > self._t0:
            self._rebase(now)
        scale = self._k * math.exp(self._k * (self._t0 - now))  # 1 unless the clock went back
        return MappingProxyType({m: c * scale for m, c in self._w.items()})

    def _rebase(self, t: float) -> None:
        """Express every count relative to ``t`` instead of ``t0``; drop faded ones."""
        f = math.exp(-self._k * (t - self._t0))
        self._w = {m: c for m, v in self._w.items() if (c := v * f) >= _FORGET}
        self._t0 = t

    def _trim(self) -> None:
        """Keep the most requested three quarters of ``max_models``."""
        keep = max(1, self.max_models * 3 // 4)
        self._w = dict(heapq.nlargest(keep, self._w.items(), key=lambda kv: (kv[1], kv[0])))

    def __len__(self) -> int:
        return len(self._w)
