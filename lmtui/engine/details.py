"""What the dashboard's model screen shows beyond the snapshot: the model's settings (pin,
priority, replicas, idle TTL) and its queue wait and time-to-first-token percentiles over
the last hour, from the request log.

Computed in the engine (an attached dashboard asks ``GET /lmtui/v1/models/{model}``), from
the newest ``SCAN_ROWS`` rows of the log: enough for an hour of a busy model, bounded for a
log of millions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from lmtui.config import Config
from lmtui.engine.reqlog import RequestLog

#: Seconds of requests the percentiles cover.
WINDOW_S = 3600.0
#: Newest rows of the log read for them (all models); one read on the log's own thread.
SCAN_ROWS = 5000
#: Outcomes that are not a failure of the model (mirrors the router's outcome names).
OK_OUTCOMES = frozenset({"ok", "client_gone"})


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """A model's settings and its requests' figures over ``window_s``."""

    model: str
    pinned: bool = False
    priority: str = "normal"
    min_replicas: int = 0
    #: The pool's idle TTL (``[pool] idle_ttl``), 0 for none.
    idle_ttl_s: float = 0.0
    #: False when there is no request log (``[router] request_log = false``).
    logged: bool = False
    window_s: float = WINDOW_S
    requests: int = 0
    failed: int = 0
    queue_wait_s: Percentiles | None = None
    ttft_s: Percentiles | None = None


def percentiles(values: Sequence[float]) -> Percentiles | None:
    """Nearest-rank p50, p90 and p99 of ``values``; None when there are none."""
    if not values:
        return None
    v = sorted(values)

    def rank(q: float) -> float:
        return v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))]

    return Percentiles(rank(0.50), rank(0.90), rank(0.99))


async def model_details(
    config: Config,
    log: RequestLog | None,
    model: str,
    now: float,
    *,
    pinned: frozenset[str] = frozenset(),
) -> ModelDetails:
    """``model``'s settings (``pinned``: the pins in force, the config's plus the
    operator's) and, when the log is there, its last hour of requests."""
    cfg = next((m for m in config.models if m.name == model or model in m.aliases), None)
    base = ModelDetails(
        model=model,
        pinned=model in pinned,
        priority=cfg.priority if cfg else "normal",
        min_replicas=cfg.min_replicas if cfg else 0,
        idle_ttl_s=config.pool.idle_ttl,
    )
    if log is None:
        return base
    since = now - WINDOW_S
    rows = [r for r in await log.recent(SCAN_ROWS) if r.model == model and r.at >= since]
    return ModelDetails(
        model=base.model,
        pinned=base.pinned,
        priority=base.priority,
        min_replicas=base.min_replicas,
        idle_ttl_s=base.idle_ttl_s,
        logged=True,
        requests=len(rows),
        failed=sum(1 for r in rows if r.outcome not in OK_OUTCOMES),
        queue_wait_s=percentiles([r.queue_wait_s for r in rows]),
        ttft_s=percentiles([r.ttft_s for r in rows if r.ttft_s is not None]),
    )


def details_to_builtins(d: ModelDetails) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(d)
    return out


def details_from_builtins(d: dict[str, Any]) -> ModelDetails:
    return msgspec.convert(d, ModelDetails)
