"""The older generations' garbage collections between frames, not inside them.

CPython starts a full (generation 2) collection whenever ten young collections have run
since the last one, wherever the program is: in the dashboard that is usually in the middle
of drawing an update, which allocates most. Even with the start's objects frozen
(``LmtuiApp._freeze_startup``) a full collection takes 5-10 ms at 50 nodes and 10-15 ms at
200 here (``bench/tui_render.py``, column ``gc2 ms``), and one landed in 2-3% of the
updates: each of those frames took that much longer, enough to miss a 60 Hz frame at 50
nodes on its own.

``IdleCollector`` takes the collections of generations 1 and 2 out of the interpreter's
hands while the app runs (the young one stays the interpreter's) and runs them itself, as
often as the interpreter would have asked for them (one of generation 1 after ten young
ones, a full one after ten of generation 1), right after a frame has been written: the next
update finds the collection done. The pause is the same length; it falls where nobody waits
for the screen. A collection of generation 1 took 2-5 ms here, in one update of twenty.
The clock tick asks too, so that a dashboard with nothing to draw (and, in embedded mode,
the engine in the same process) is still collected at least that often.

While it paces the others, the young generation is collected after ``YOUNG`` allocations rather
than 700: an update makes some 2,300 objects more than it frees (3.3 young collections an
update at 700), and at 700 each collection scanned what the update was still using, then
the next one again. The collector's time per update (``gc.callbacks`` timed around
``bench/tui_render.py``, generations 0 and 1, runs interleaved) went from 0.75-1.0 ms to
0.3-0.4 ms at 50 nodes and from 1.2-1.3 ms to 0.6-0.7 ms at 200; at 2,000 (CPython 3.13's
default) it was 0.7-0.85 ms at 50, hardly better than 700.

Only on CPython before 3.14, whose collector is generational with the threshold counted so;
3.14's is incremental (its third threshold is ignored) and has no long pauses to move.
"""

from __future__ import annotations

import gc
import sys

#: Whether this interpreter's collector counts full collections as described above.
SUPPORTED = sys.implementation.name == "cpython" and sys.version_info < (3, 14)
#: The second and third thresholds while the app paces collections: never reached.
NEVER = 1 << 30
#: The young generation's threshold while the app paces the others (at least).
YOUNG = 5000


class IdleCollector:
    """Paces the interpreter's collections of generations 1 and 2 (see the module
    docstring)."""

    def __init__(self) -> None:
        #: The interpreter's own thresholds, while the app paces (None: it does not).
        self._own: tuple[int, int, int] | None = None
        #: Collections run here: of generation 1 alone, and full ones.
        self.middle = 0
        self.collections = 0

    @property
    def active(self) -> bool:
        return self._own is not None

    def start(self) -> None:
        """Take over (nothing when the collector is off, unsupported, or tuned by hand to
        collect no older generation)."""
        if self._own is not None or not SUPPORTED or not gc.isenabled():
            return
        own = gc.get_threshold()
        if min(own) <= 0 or max(own[1:]) >= NEVER:
            return  # a generation is off, or paced elsewhere already: leave them so
        self._own = own
        gc.set_threshold(max(own[0], YOUNG), NEVER, NEVER)

    def stop(self) -> None:
        """Give the collections back to the interpreter, with its own thresholds."""
        if self._own is not None:
            gc.set_threshold(*self._own)
            self._own = None

    def due(self) -> int | None:
        """The oldest generation the interpreter would have collected by now (1 or 2;
        None: none is due)."""
        if self._own is None:
            return None
        _, t1, t2 = self._own
        _, young_runs, middle_runs = gc.get_count()
        if young_runs < t1 and middle_runs < t2:
            return None
        # A collection of generation 1 counts towards the next full one.
        return 2 if middle_runs + (young_runs >= t1) >= t2 else 1

    def collect(self) -> None:
        """The collection that is due, if one still is (another caller may have run it)."""
        generation = self.due()
        if generation is None:
            return
        gc.collect(generation)
        if generation == 2:
            self.collections += 1
        else:
            self.middle += 1
