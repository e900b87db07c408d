"""Backing off plan steps that failed, so each is reported once and not retried forever.

The pool manager plans every couple of seconds. A step a node refuses (an unload its server
answers 500 to, a load whose file is missing) would be planned, tried, refused and reported
again on every tick: an error event every 2 s for as long as lmtui runs. Instead a failed
step is reported once, then tried again after 30 s, doubling up to 10 min, without a new
report; a success forgets it, and so does a change of the *situation* it failed in (the node
came back healthy, was drained or undrained, the instance is a new one), after which a
failure is news again and reported.

Pure: the caller passes ``now`` and the situation, a hashable picture of what the step
depends on.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass

#: (action, node, model): a step, whatever its reason (``load``/``unload``).
StepKey = tuple[str, str, str]

#: First wait after a failure; doubles per repeated failure up to MAX_RETRY_S. 30 s is 15
#: pool-manager ticks: long enough to stop a storm, short enough that a node restarted by
#: hand is used again within a minute.
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 600.0


@dataclass(frozen=True, slots=True)
class Failure:
    """A step that failed: when to try it again and what it failed with."""

    retry_at: float
    delay_s: float
    failures: int
    situation: Hashable
    error: str


class StepBackoff:
    """Failed steps and when each may be tried again."""

    def __init__(self, first_s: float = FIRST_RETRY_S, max_s: float = MAX_RETRY_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._failed: dict[StepKey, Failure] = {}

    def _current(self, key: StepKey, situation: Hashable) -> Failure | None:
        f = self._failed.get(key)
        if f is not None and f.situation != situation:
            del self._failed[key]  # the situation changed: a failure now is news
            return None
        return f

    def due(self, key: StepKey, now: float, situation: Hashable) -> bool:
        """Whether the step may be tried now (it never failed, or its wait is over)."""
        f = self._current(key, situation)
        return f is None or now >= f.retry_at

    def reported(self, key: StepKey, situation: Hashable) -> bool:
        """Whether a failure of this step in this situation was already reported: a retry
        that fails again stays quiet."""
        return self._current(key, situation) is not None

    def failed(self, key: StepKey, now: float, situation: Hashable, error: str) -> bool:
        """Record a failure; True when it is the first (the caller reports it)."""
        f = self._current(key, situation)
        delay = self.first_s if f is None else min(f.delay_s * 2, self.max_s)
        failures = 1 if f is None else f.failures + 1
        self._failed[key] = Failure(now + delay, delay, failures, situation, error)
        return f is None

    def succeeded(self, key: StepKey) -> None:
        self._failed.pop(key, None)

    def get(self, key: StepKey) -> Failure | None:
        return self._failed.get(key)

    def __iter__(self) -> Iterator[tuple[StepKey, Failure]]:
        return iter(list(self._failed.items()))

    def __len__(self) -> int:
        return len(self._failed)
