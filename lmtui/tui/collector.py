"""Garbage collections between frames, not inside them.

CPython collects wherever the program is when a count reaches its threshold: the young
generation after 700 more objects were made than freed, generation 1 after ten young
collections, everything after ten of generation 1. In the dashboard that is most often in
the middle of drawing an update, which makes most of the objects (some 2,300 more than it
frees at 50 nodes). Even with the start's objects frozen (``LmtuiApp._freeze_startup``)
a full collection took 5-10 ms at 50 nodes and 10-15 ms at 200 here, one of generation 1
2-5 ms, a young one 0.2-0.4 ms three times an update (``bench/tui_render.py``, and
``gc.callbacks`` timed around it): together they were the slowest frames at 50 nodes.

``IdleCollector`` takes the three thresholds out of the interpreter's hands while the app
runs and collects itself, as often as the interpreter would have (by the same counts and
thresholds, which it reads back), right after a frame has been written: the next update
finds the collection done. The pauses are as long as before; they fall where nobody waits
for the screen. The clock tick asks too, so that a dashboard with nothing to draw (and, in
embedded mode, the engine in the same process) is still collected at least once a second;
and the interpreter keeps a young threshold of ``SAFETY``, a net for whatever piles up
between two frames faster than that.

Only on CPython before 3.14 with the GIL, whose collector is generational with the
thresholds counted so; 3.14's is incremental (its third threshold is ignored) and has no
long pauses to move, and a free-threaded build's has a single generation.
"""

from __future__ import annotations

import gc
import sys
import sysconfig

#: Whether this interpreter's collector counts its generations as described above.
SUPPORTED = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)
#: The second and third thresholds while the app paces collections: never reached.
NEVER = 1 << 30
#: The young generation's threshold while the app paces collections (at least): a net
#: above what one frame makes (at most 4,300 objects more than it freed at 50 nodes, 7,800
#: at 200, the app's collection after the frame starting the count again), and low enough
#: that a young collection stays short (1.5-2.6 ms at 10,000 in the dashboard, measured
#: here) for an engine in the same process when the screen is idle and requests pour in.
SAFETY = 10_000


class IdleCollector:
    """Paces the interpreter's garbage collections (see the module docstring)."""

    def __init__(self) -> None:
        #: The interpreter's own thresholds, while the app paces (None: it does not).
        self._own: tuple[int, int, int] | None = None
        #: Collections run here, by the oldest generation collected.
        self.young = 0
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
        gc.set_threshold(max(own[0], SAFETY), NEVER, NEVER)

    def stop(self) -> None:
        """Give the collections back to the interpreter, with its own thresholds."""
        if self._own is not None:
            gc.set_threshold(*self._own)
            self._own = None

    def due(self) -> int | None:
        """The oldest generation the interpreter would have collected by now (None: no
        collection is due). Collecting a generation counts towards the next one's."""
        if self._own is None:
            return None
        t0, t1, t2 = self._own
        c0, c1, c2 = gc.get_count()
        young = c0 >= t0
        middle = c1 + young >= t1
        if c2 + middle >= t2:
            return 2
        return 1 if middle else 0 if young else None

    def collect(self) -> None:
        """The collection that is due, if one still is (another caller may have run it)."""
        generation = self.due()
        if generation is None:
            return
        gc.collect(generation)
        if generation == 2:
            self.collections += 1
        elif generation == 1:
            self.middle += 1
        else:
            self.young += 1
