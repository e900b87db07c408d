"""Metric history: the last minutes of requests/s, queue depth, tokens/s and memory used,
for the cluster, each node and each model, one point a second in bounded windows.

It lives in the engine, next to the store, not in the dashboard, for two reasons:

- requests/s is a count of requests started (``Store.requests_started``), which no snapshot
  carries; a dashboard fed coalesced snapshots could not tell one request from five;
- an attached dashboard (``--connect``) gets the whole window at once from
  ``GET /lmtui/v1/history`` and then one ``sample`` message a second on the event stream,
  so a dashboard opened at 14:00 shows what happened since 13:55, like an embedded one.

Each series is a ``deque(maxlen=...)`` of ``(at, value)`` points: memory is bounded by the
window (300 points per series) whatever the traffic, and a gap (an attached dashboard that
lost its stream) is a gap in time, which the sparklines show as such. ``None`` is "not
known" (a node that reports no tokens, memory nobody read), never zero.

The sampler runs once a second on the engine's loop; one sample of 200 nodes costs about a
millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from math import isfinite
from typing import Any, Literal

from lmtui.core.model import Instance, Snapshot, node_queued
from lmtui.engine.store import Store

log = logging.getLogger(__name__)

#: Seconds of history kept, and the step between two points.
WINDOW_S = 300.0
STEP_S = 1.0
#: The metrics of every series, in the order of a sample's values.
METRICS = ("requests", "queued", "tokens", "memory")
#: Series kept at most per scope: a cluster of more nodes or models than this loses the
#: history of the newest, not lmtui's memory (node and model names are not client-chosen,
#: but a router answers for every model a node offers).
MAX_SERIES = 2000
#: Longest series name kept (node and model names; an attached engine's are not trusted).
MAX_NAME = 512

Metric = Literal["requests", "queued", "tokens", "memory"]
Scope = Literal["cluster", "node", "model"]
#: One point's values, in ``METRICS`` order; ``None``: not known at that time.
Values = tuple[float | None, float | None, float | None, float | None]
Point = tuple[float, float | None]


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of the cluster: its totals, each node's and each model's values."""

    at: float
    cluster: Values
    nodes: Mapping[str, Values] = field(default_factory=dict)
    models: Mapping[str, Values] = field(default_factory=dict)


class History:
    """Bounded windows of samples, per scope and name; ``subscribe`` hears each new one."""

    def __init__(self, window_s: float = WINDOW_S, step_s: float = STEP_S) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self._maxlen = max(1, round(window_s / step_s))
        self._series: dict[Scope, dict[str, deque[tuple[float, Values]]]] = {
            "cluster": {},
            "node": {},
            "model": {},
        }
        self._listeners: list[Callable[[Sample], None]] = []
        #: The series drawn as sparklines, as running sums (``bucket_means``).
        self._running: dict[tuple[Scope, str, int], RunningSums] = {}
        #: When the newest sample was taken (0: none yet).
        self.last_at = 0.0

    def add(self, sample: Sample) -> None:
        """Append one sample; series that saw nothing for a whole window are dropped. A
        sample whose time is no time (from an attached engine's stream) is left out."""
        if not isfinite(sample.at):
            return
        self._append("cluster", "", sample.at, sample.cluster)
        for name, v in sample.nodes.items():
            self._append("node", name, sample.at, v)
        for name, v in sample.models.items():
            self._append("model", name, sample.at, v)
        self.last_at = max(self.last_at, sample.at)
        horizon = sample.at - self.window_s
        for series in (self._series["node"], self._series["model"]):
            for name in [n for n, d in series.items() if d and d[-1][0] < horizon]:
                del series[name]
                if self._running:
                    scope: Scope = "node" if series is self._series["node"] else "model"
                    for i in range(len(METRICS)):
                        self._running.pop((scope, name, i), None)
        for listener in list(self._listeners):
            try:
                listener(sample)
            except Exception:  # one bad subscriber must not stop the sampler
                log.exception("history listener failed")

    def _append(self, scope: Scope, name: str, at: float, values: Values) -> bool:
        """Add one point to its series; False when it was left out."""
        # Every point passes here, sampled or from an attached engine's wire: a time that
        # is no time (NaN, or 1e999 decoded as infinity) is dropped, since it would pin
        # ``last_at`` and every window to it; a value that is no figure is not known.
        if not isfinite(at) or len(name) > MAX_NAME:
            return False
        a, b, c, e = values
        if not (
            (a is None or isfinite(a))
            and (b is None or isfinite(b))
            and (c is None or isfinite(c))
            and (e is None or isfinite(e))
        ):  # unrolled: 0.1 µs a point where a generator took 0.3, for up to 4,000 a second
            values = tuple(v if v is None or isfinite(v) else None for v in values)  # type: ignore[assignment]
        series = self._series[scope]
        d = series.get(name)
        if d is None:
            if len(series) >= MAX_SERIES:
                return False
            d = series[name] = deque(maxlen=self._maxlen)
        if d and at <= d[-1][0]:
            return False  # a sample seen already (a backlog overlapping the stream)
        d.append((at, values))
        return True

    def subscribe(self, listener: Callable[[Sample], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def names(self, scope: Scope) -> list[str]:
        return list(self._series[scope])

    def points(self, scope: Scope, name: str, metric: Metric) -> list[Point]:
        """``(at, value)`` of one metric, oldest first (empty when nothing was sampled)."""
        d = self._series[scope].get("" if scope == "cluster" else name)
        if not d:
            return []
        i = METRICS.index(metric)
        return [(at, v[i]) for at, v in d]

    def bucket_means(
        self, scope: Scope, name: str, metric: Metric, width: int
    ) -> tuple[list[float | None], Point | None]:
        """``window_means`` of one metric over the whole window ending at ``last_at``, and
        its newest point (None: never sampled): what a sparkline is drawn from, for each
        node on screen each sample, without a list of ``(at, value)`` points made first."""
        key = "" if scope == "cluster" else name
        d = self._series[scope].get(key)
        if not d or width <= 0:
            return [None] * max(0, width), None
        i = METRICS.index(metric)
        running = self._running.get((scope, key, i))
        if running is None:
            if len(self._running) >= MAX_RUNNING:
                self._running.clear()
            running = self._running[(scope, key, i)] = RunningSums(i)
        running.follow(d)
        means = running.window_means(self.last_at, width, self.window_s)
        at, values = d[-1]
        return means, (at, values[i])

    def latest(self, scope: Scope, name: str = "") -> Values | None:
        d = self._series[scope].get("" if scope == "cluster" else name)
        return d[-1][1] if d else None

    # -- the wire format (control API) -----------------------------------------------------

    def to_builtins(self) -> dict[str, Any]:
        """The whole window, series by series, as ``GET /lmtui/v1/history`` answers it."""

        def dump(d: deque[tuple[float, Values]]) -> list[list[Any]]:
            return [[at, *v] for at, v in d]

        return {
            "window_s": self.window_s,
            "step_s": self.step_s,
            "metrics": list(METRICS),
            "cluster": dump(self._series["cluster"].get("", deque())),
            "nodes": {n: dump(d) for n, d in self._series["node"].items()},
            "models": {n: dump(d) for n, d in self._series["model"].items()},
        }

    def load_builtins(self, data: Mapping[str, Any]) -> None:
        """Fill this (an attached dashboard's copy) from ``to_builtins``'s output."""
        for scope, key in (("cluster", "cluster"), ("node", "nodes"), ("model", "models")):
            raw = data.get(key) or ({} if scope != "cluster" else [])
            by_name = {"": raw} if scope == "cluster" else raw
            if not isinstance(by_name, dict):
                continue
            for name, rows in by_name.items():
                for row in rows if isinstance(rows, list) else ():
                    point = _point(row)
                    if point is not None and self._append(scope, str(name), *point):  # type: ignore[arg-type]
                        self.last_at = max(self.last_at, point[0])


#: Series kept as running sums at most (those drawn: the nodes on screen, the cluster's);
#: past that they are made again as they are drawn.
MAX_RUNNING = 512


class RunningSums:
    """One metric of one series as running sums, kept up to date with it as it grows.

    ``window_means`` from them costs two bisections and two subtractions a bucket: ~6 µs
    for a sparkline of 300 points, where summing each bucket's points (``window_means``
    over lists made from the series) took 35 µs in a loop over one series and ~100 µs in
    the dashboard, whose node rows each read a series of their own from memory
    (``bench/tui_render.py``). A new sample costs one step of ``follow``. Its values are
    finite or None (``History._append`` makes them so): one ``inf`` in a running sum would
    blank a sparkline for good.
    """

    __slots__ = ("_i", "_last", "counts", "sums", "times")

    def __init__(self, metric_index: int) -> None:
        self._i = metric_index
        #: The newest point taken in (a point of the series, by identity).
        self._last: tuple[float, Values] | None = None
        #: The points' times; ``sums[k]``/``counts[k]``: the known values before point k.
        self.times: list[float] = []
        self.sums: list[float] = [0.0]
        self.counts: list[int] = [0]

    def follow(self, d: deque[tuple[float, Values]]) -> None:
        """Take in what ``d`` gained at its end and lost at its start since the last call
        (a series only grows at the end; its window drops the oldest points)."""
        last = self._last
        if last is d[-1]:
            return
        # The points after the last one taken in; all of them when it has left the window
        # (or was never there: the series is new), since a series only grows at its end.
        new = 0
        for point in reversed(d):
            if point is last:
                break
            new += 1
        times, sums, counts = self.times, self.sums, self.counts
        total, known = sums[-1], counts[-1]
        i = self._i
        for at, values in islice(d, len(d) - new, None):
            v = values[i]
            times.append(at)
            if v is not None:
                total += v
                known += 1
            sums.append(total)
            counts.append(known)
        excess = len(times) - len(d)
        if excess > 0:
            del times[:excess], sums[:excess], counts[:excess]
            # The sums count from the series' start: when what went out outweighs what
            # is in the window, start them again from zero, so that a bucket's sum (a
            # difference of two of them) keeps the precision of the window's own values.
            base = sums[0]
            if base > 2 * (sums[-1] - base):
                sums[:] = [x - base for x in sums]
        self._last = d[-1]

    def window_means(self, end: float, width: int, span_s: float) -> list[float | None]:
        """``window_means`` of the points taken in (the same buckets, by bisection)."""
        sums, counts = self.sums, self.counts
        out: list[float | None] = []
        for lo, hi in bucket_bounds(self.times, end, width, span_s):
            known = counts[hi] - counts[lo]
            out.append((sums[hi] - sums[lo]) / known if known else None)
        return out


def bucket_bounds(
    times: Sequence[float], end: float, width: int, span_s: float
) -> Iterator[tuple[int, int]]:
    """Each of ``width`` equal buckets of the ``span_s`` seconds ending at ``end``, oldest
    first, as the slice ``[lo, hi)`` of ``times`` (in time order) it holds, by bisection.

    Bucket ``b`` holds the points from ``start + b * step`` (``start = end - span_s``,
    ``step = span_s / width``) up to the next bucket's start; the first leaves out a point
    at ``start`` itself, the last takes one at ``end``, and points outside the span are
    left out."""
    if width <= 0:
        return
    start = end - span_s
    step = span_s / width
    lo = bisect_right(times, start)
    top = bisect_right(times, end, lo)
    last = width - 1
    for b in range(width):
        hi = top if b == last else max(lo, bisect_left(times, start + (b + 1) * step, lo, top))
        yield lo, hi
        lo = hi


def window_means(
    times: Sequence[float],
    values: Sequence[float | None],
    end: float,
    width: int,
    span_s: float,
) -> list[float | None]:
    """The mean of the known ``values`` in each bucket of ``bucket_bounds``; None for a
    bucket with none. Each bucket is summed by C loops (``sum``, ``list.count``), for the
    detail screens' plots (``trend.buckets``); the sparklines read ``RunningSums`` instead.
    """
    out: list[float | None] = []
    for lo, hi in bucket_bounds(times, end, width, span_s):
        chunk = values[lo:hi]
        known = len(chunk) - chunk.count(None)
        # ``filter(None, ...)`` leaves out the None and the zeros, which add nothing.
        out.append(sum(filter(None, chunk)) / known if known else None)
    return out


def _value(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _values(row: Any) -> Values | None:
    if not isinstance(row, list | tuple) or len(row) != len(METRICS):
        return None
    a, b, c, d = (_value(v) for v in row)
    return (a, b, c, d)


def _point(row: Any) -> tuple[float, Values] | None:
    if not isinstance(row, list) or not row or _value(row[0]) is None:
        return None
    values = _values(row[1:])
    return None if values is None else (float(row[0]), values)


def sample_to_builtins(s: Sample) -> dict[str, Any]:
    """One sample as the event stream's ``sample`` message carries it."""
    return {
        "at": s.at,
        "cluster": list(s.cluster),
        "nodes": {n: list(v) for n, v in s.nodes.items()},
        "models": {n: list(v) for n, v in s.models.items()},
    }


def sample_from_builtins(d: Mapping[str, Any]) -> Sample | None:
    """The sample of a ``sample`` message, or None for one that is not shaped like one."""
    at = _value(d.get("at"))
    cluster = _values(d.get("cluster"))
    if at is None or cluster is None:
        return None

    def named(raw: object) -> dict[str, Values]:
        out: dict[str, Values] = {}
        if isinstance(raw, dict):
            for name, row in list(raw.items())[:MAX_SERIES]:
                if (v := _values(row)) is not None:
                    out[str(name)] = v
        return out

    return Sample(at, cluster, named(d.get("nodes")), named(d.get("models")))


class HistorySampler:
    """Takes one sample a second from the store into a ``History``.

    ``also`` runs first on each tick (the engine publishes the circuit breakers' state
    there, so "circuit open 12s" counts in seconds and half-open shows when it is due).
    """

    def __init__(
        self,
        store: Store,
        history: History,
        *,
        clock: Callable[[], float],
        also: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self.clock = clock
        self.also = also
        self._task: asyncio.Task[None] | None = None
        self._last_at: float | None = None
        self._last_counts: dict[tuple[str, str], int] = {}

    def sample(self, now: float) -> Sample:
        """The store as of now; requests/s counts the requests started since the last call
        (none on the first)."""
        snap: Snapshot = self.store.snapshot
        counts = dict(self.store.requests_started)
        elapsed = None if self._last_at is None else now - self._last_at
        node_req: dict[str, float] = {}
        model_req: dict[str, float] = {}
        if elapsed is not None and elapsed > 0:
            last = self._last_counts
            for (node_name, model), n in counts.items():
                d = n - last.get((node_name, model), 0)
                if d > 0:
                    node_req[node_name] = node_req.get(node_name, 0.0) + d / elapsed
                    model_req[model] = model_req.get(model, 0.0) + d / elapsed
        self._last_at, self._last_counts = now, counts

        by_node: dict[str, list[Instance]] = {name: [] for name in snap.nodes}
        model_queued: dict[str, int] = dict(snap.queue_depth)
        for inst in snap.instances.values():
            by_node.setdefault(inst.node, []).append(inst)
            model_queued[inst.model] = model_queued.get(inst.model, 0) + inst.queued
        nodes: dict[str, Values] = {}
        for name, node in snap.nodes.items():
            mem = node.memory
            nodes[name] = (
                node_req.get(name, 0.0),
                float(node_queued(node, by_node[name])),
                node.tokens_per_second,
                float(mem.used_bytes) if mem is not None else None,
            )
        models: dict[str, Values] = {
            m: (model_req.get(m, 0.0), float(model_queued.get(m, 0)), None, None)
            for m in {*model_queued, *(i.model for i in snap.instances.values()), *model_req}
        }
        t = snap.totals()
        known_mem = any(n.memory is not None for n in snap.nodes.values())
        cluster: Values = (
            sum(node_req.values()),
            float(t.queued),
            t.tokens_per_second,
            float(t.memory_used) if known_mem else None,
        )
        return Sample(now, cluster, nodes, models)

    def tick(self) -> None:
        if self.also is not None:
            try:
                self.also()
            except Exception:
                log.exception("history tick hook failed")
        self.history.add(self.sample(self.clock()))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lmtui-history")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not end the history for good
                log.exception("history sample failed")
            await asyncio.sleep(self.history.step_s)
