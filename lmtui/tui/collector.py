"""Full garbage collections between frames, not inside them.

CPython starts a full (generation 2) collection whenever ten young collections have run
since the last one, wherever the program is: in the dashboard that is usually in the middle
of drawing an update, which allocates most. Even with the start's objects frozen
(``LmtuiApp._freeze_startup``) a full collection takes 5-10 ms at 50 nodes and 10-15 ms at
200 here (``bench/tui_render.py``, column ``gc2 ms``), and one landed in 2-3% of the
updates: each of those frames took that much longer, enough to miss a 60 Hz frame at 50
nodes on its own.

``IdleCollector`` takes the full collections out of the interpreter's hands while the app
runs (the young ones stay the interpreter's) and runs them itself, as often as the
interpreter would have asked for one (after ten collections of generation 1), right after a
frame has been written: the next update finds the collection done. The pause is the same
length; it falls where nobody waits for the screen. The clock tick asks too, so that a
dashboard with nothing to draw (and, in embedded mode, the engine in the same process) is
still collected at least that often.

While it paces them, the young generation is collected after ``YOUNG`` allocations rather
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
#: The third threshold while the app paces full collections: never reached.
NEVER = 1 << 30
#: The young generation's threshold while the app paces full collections (at least).
YOUNG = 5000


class IdleCollector:
    """Paces the interpreter's full garbage collections (see the module docstring)."""

    def __init__(self) -> None:
        #: The interpreter's own third threshold while pacing (None: not pacing), and its
        #: own first one, given back with it.
        self._every: int | None = None
        self._young = 0
        #: Full collections run here, and when the newest was asked for.
        self.collections = 0

    @property
    def active(self) -> bool:
        return self._every is not None

    def start(self) -> None:
        """Take over full collections (nothing when the collector is off or unsupported)."""
        if self._every is not None or not SUPPORTED or not gc.isenabled():
            return
        t0, t1, t2 = gc.get_threshold()
        if t2 <= 0 or t2 >= NEVER:
            return  # full collections are off or paced elsewhere already: leave them so
        self._every, self._young = t2, t0
        gc.set_threshold(max(t0, YOUNG) if t0 > 0 else t0, t1, NEVER)

    def stop(self) -> None:
        """Give full collections back to the interpreter, with its own threshold."""
        if self._every is None:
            return
        _, t1, _ = gc.get_threshold()
        gc.set_threshold(self._young, t1, self._every)
        self._every = None

    def due(self) -> bool:
        """Whether the interpreter would have run a full collection by now."""
        return self._every is not None and gc.get_count()[2] >= self._every

    def collect(self) -> None:
        """The full collection, if it is still due (another caller may have run it)."""
        if self.due():
            gc.collect(2)
            self.collections += 1
