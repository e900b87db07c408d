"""Node health transitions and poll pacing, as pure functions.

A node is ``healthy`` while polls answer. The first failure makes it ``suspect`` (still
routable, last choice); ``down_after`` consecutive failures make it ``down``. A down node is
polled only by a half-open probe whose interval doubles per further failure up to
``max_backoff_s``; the first answer brings it straight back to ``healthy``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmtui.core.model import Health


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    #: Consecutive failures after which a node is ``down``. Two at a 1 s poll interval
    #: means a dead node shows as down within about two seconds.
    down_after: int = 2
    #: Longest wait between half-open probes of a down node.
    max_backoff_s: float = 30.0


def health_after_success() -> Health:
    return Health.HEALTHY


def health_after_failure(consecutive_failures: int, policy: HealthPolicy) -> Health:
    """Health once ``consecutive_failures`` (counting this one, so >= 1) polls failed."""
    if consecutive_failures >= policy.down_after:
        return Health.DOWN
    return Health.SUSPECT


def next_poll_delay(interval_s: float, consecutive_failures: int, policy: HealthPolicy) -> float:
    """Seconds to wait before the next poll of a node.

    Healthy and suspect nodes are polled every ``interval_s``; past ``down_after`` failures
    the wait doubles per failure (the half-open probe), capped at ``max_backoff_s``.
    """
    extra = consecutive_failures - policy.down_after
    if extra < 0:
        return interval_s
    return min(max(interval_s, policy.max_backoff_s), interval_s * (2 ** min(extra + 1, 16)))
