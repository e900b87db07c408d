"""Prometheus metrics for the router: counters and histograms on the hot path, gauges at scrape.

Two kinds of metric, two costs:

- **Events** (a request finished, a model loaded, an instance was evicted, a route was
  chosen) are counted the moment they happen. The two the router calls once per request
  (``request_done``, ``route``) keep plain numbers, not ``prometheus_client`` children: a
  histogram observation there is a ``bisect`` and two additions (~0.1 µs) instead of a loop
  over buckets taking a lock per bucket (~0.5 µs), and a request observes three. Everything
  runs on the event loop, scrapes included, so there is nothing to lock. A collector turns
  the numbers into the usual counter and histogram families when Prometheus scrapes. Rare
  events (loads, evictions) use ``prometheus_client``'s own metrics.
- **State** (queue depth, in-flight, slots, node health, memory, poll latency, tokens/s)
  already lives in the store's current ``Snapshot``. A custom collector reads it only when
  Prometheus scrapes, so keeping these gauges current costs the hot path nothing.

Every ``Metrics`` owns its ``CollectorRegistry`` (never the process-global one), so tests and
embedded engines can create as many as they like without "Duplicated timeseries" errors.

Label cardinality is bounded. ``node`` comes from the config and ``outcome``/``reason`` are
short fixed codes chosen by the router, but ``model`` is whatever a client typed: a request
for a model the cluster does not know is labelled ``model="unknown"``, a name is cut at
``MAX_LABEL`` characters, and past ``max_models`` distinct names further ones are counted
under ``model="__other__"``, so a client looping over random or huge model names cannot
grow the scrape without limit.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from lmtui.core.model import Health, Snapshot

log = logging.getLogger(__name__)

#: Outcomes the router reports for a finished request (the ``outcome`` label).
OUTCOMES = frozenset(
    {
        "ok",
        "error",
        "rejected_429",
        "timeout_504",
        "client_gone",
        "upstream_error",
        "not_found",
        "bad_request",
    }
)
#: Outcomes of requests that never entered the wait queue: a 0 s "wait" for them would
#: drag the queue-wait histogram towards zero and hide real waiting.
NEVER_QUEUED = frozenset({"rejected_429", "not_found", "bad_request"})

#: Label value used once ``max_models`` distinct model names have been seen.
OTHER_MODEL = "__other__"
#: Label value of every request for a model the cluster does not know (or a body that
#: names none): what a client typed there never becomes a label.
UNKNOWN_MODEL = "unknown"
#: Outcomes whose model name the cluster never accepted.
UNKNOWN_OUTCOMES = frozenset({"not_found", "bad_request"})
#: The longest model name kept whole in a label (names the cluster knows are shorter).
MAX_LABEL = 256

# Queue wait and time to first token share one scale, 1 ms to 10 min. The bottom is the
# router's own overhead: a request routed straight to a free slot waits well under 1 ms,
# and that bucket shows at a glance that lmtui adds nothing. Waiting for a busy slot costs
# one generation (seconds to a minute); waiting for a cold load of a 30-70 GB model from
# disk costs minutes; 600 s is the longest queue deadline worth distinguishing. Roughly
# 1-2.5-5 steps per decade keep the bucket count (16) and so the scrape small.
WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# A whole request: an embedding takes ~10 ms; a long answer at 5 tokens/s on a CPU node
# (4,000 tokens) takes ~15 min, so the top bucket is 30 min.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
# A model load: a small model from page cache loads in ~100 ms-1 s, a 70B model from a
# spinning disk or network share takes several minutes.
LOAD_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class _Count:
    """One counter series: a number and when the series was created."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _Hist:
    """One histogram series: a count per bucket (not cumulative; the last is +Inf) and the
    sum. ``counts[bisect_left(bounds, v)]`` is the bucket whose upper bound is the first one
    >= v, which is Prometheus's ``le`` rule."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self, n_bounds: int) -> None:
        self.counts = [0] * (n_bounds + 1)
        self.sum = 0.0
        self.created = time.time()


class _CounterVec:
    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.series: dict[tuple[str, ...], _Count] = {}

    def child(self, *values: str) -> _Count:
        c = self.series.get(values)
        if c is None:
            c = self.series[values] = _Count()
        return c

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, c in self.series.items():
            fam.add_metric(list(values), c.value, created=c.created)
        return fam


class _HistogramVec:
    def __init__(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, buckets
        self._le = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self.series: dict[tuple[str, ...], _Hist] = {}

    def child(self, *values: str) -> _Hist:
        h = self.series.get(values)
        if h is None:
            h = self.series[values] = _Hist(len(self.bounds))
        return h

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for values, h in self.series.items():
            cumulative, acc = [], 0
            for le, n in zip(self._le, h.counts, strict=True):
                acc += n
                cumulative.append((le, acc))
            fam.add_metric(list(values), cumulative, sum_value=h.sum, timestamp=None)
            labels = dict(zip(self.labels, values, strict=True))
            fam.samples.append(Sample(self.name + "_created", labels, h.created))
        return fam


class _HotCollector(Collector):
    """Exposes the per-request counters and histograms kept as plain numbers."""

    def __init__(self, vecs: list[_CounterVec | _HistogramVec]) -> None:
        self._vecs = vecs

    def describe(self) -> Iterable[Metric]:
        return [
            CounterMetricFamily(v.name, v.doc, labels=v.labels)
            if isinstance(v, _CounterVec)
            else HistogramMetricFamily(v.name, v.doc, labels=v.labels)
            for v in self._vecs
        ]

    def collect(self) -> Iterable[Metric]:
        return [v.family() for v in self._vecs]


#: The series one finished request touches: requests counter, then the queue-wait, TTFT and
#: duration histograms (None where that request kind is never observed).
_RequestChildren = tuple[_Count, _Hist | None, _Hist | None, _Hist | None]


class _SnapshotCollector(Collector):
    """Gauges computed from the store's current snapshot when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        self._failed_once = False

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can detect clashes without reading the snapshot.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception:
            # A broken snapshot source must not take the counters down with it: the scrape
            # still answers, just without the state gauges. Logged once, not per scrape.
            if not self._failed_once:
                log.exception("metrics: reading the snapshot failed; state gauges omitted")
                self._failed_once = True
            return []
        return self._families(snap)

    @staticmethod
    def _families(snap: Snapshot | None = None) -> list[Metric]:
        queue_depth = GaugeMetricFamily(
            "lmtui_queue_depth", "Requests waiting in lmtui's queue", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "lmtui_in_flight",
            "Requests lmtui has in flight on an instance",
            labels=["node", "model", "instance"],
        )
        slots = GaugeMetricFamily(
            "lmtui_instance_slots",
            "Concurrent requests an instance serves",
            labels=["node", "model", "instance"],
        )
        slots_busy = GaugeMetricFamily(
            "lmtui_instance_slots_busy",
            "Busy slots of an instance as polled (includes clients that bypass lmtui)",
            labels=["node", "model", "instance"],
        )
        node_up = GaugeMetricFamily(
            "lmtui_node_up", "1 if the node is healthy or suspect, else 0", labels=["node", "kind"]
        )
        memory = GaugeMetricFamily(
            "lmtui_node_memory_bytes", "Host memory of a node", labels=["node", "kind"]
        )
        latency = GaugeMetricFamily(
            "lmtui_node_poll_latency_seconds", "Latency of the last poll", labels=["node"]
        )
        tps = GaugeMetricFamily(
            "lmtui_node_tokens_per_second", "Tokens generated per second", labels=["node"]
        )
        families: list[Metric] = [
            queue_depth, in_flight, slots, slots_busy, node_up, memory, latency, tps
        ]  # fmt: skip
        if snap is None:
            return families

        for model, depth in snap.queue_depth.items():
            queue_depth.add_metric([model], depth)
        for inst in snap.instances.values():
            labels = [inst.node, inst.model, inst.instance_id]
            in_flight.add_metric(labels, inst.in_flight)
            slots.add_metric(labels, inst.slots_total)
            slots_busy.add_metric(labels, inst.slots_busy)
        for node in snap.nodes.values():
            up = node.health in (Health.HEALTHY, Health.SUSPECT)
            node_up.add_metric([node.name, str(node.kind)], 1.0 if up else 0.0)
            if node.memory is not None:
                memory.add_metric([node.name, "total"], node.memory.total_bytes)
                memory.add_metric([node.name, "available"], node.memory.available_bytes)
            if node.poll_latency_s is not None:
                latency.add_metric([node.name], node.poll_latency_s)
            if node.tokens_per_second is not None:
                tps.add_metric([node.name], node.tokens_per_second)
        return families


class Metrics:
    """The router's Prometheus metrics, in a registry of their own.

    ``snapshot`` is called at scrape time only (e.g. ``lambda: store.snapshot``).
    """

    def __init__(self, snapshot: Callable[[], Snapshot], *, max_models: int = 256) -> None:
        self.registry = CollectorRegistry()
        self._max_models = max_models
        self._models: dict[str, str] = {}
        reg = self.registry
        self._requests = _CounterVec(
            "lmtui_requests", "Requests finished, by outcome", ["model", "node", "outcome"]
        )
        self._queue_wait = _HistogramVec(
            "lmtui_queue_wait_seconds",
            "Time a request waited in lmtui's queue before dispatch",
            ["model"],
            WAIT_BUCKETS,
        )
        self._ttft = _HistogramVec(
            "lmtui_time_to_first_token_seconds",
            "Time from arrival to the first byte from the instance",
            ["model", "node"],
            WAIT_BUCKETS,
        )
        self._duration = _HistogramVec(
            "lmtui_request_duration_seconds",
            "Time from arrival to the end of the response",
            ["model", "node"],
            DURATION_BUCKETS,
        )
        self._routes = _CounterVec("lmtui_routes", "Routing decisions", ["model", "node", "reason"])
        self._loads = Counter(
            "lmtui_loads", "Model loads", ["model", "node", "reason", "ok"], registry=reg
        )
        self._load_seconds = Histogram(
            "lmtui_load_seconds",
            "Time a model load took",
            ["model", "node"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self._evictions = Counter(
            "lmtui_evictions", "Instances evicted", ["model", "node", "reason"], registry=reg
        )
        self._circuit_opens = Counter(
            "lmtui_circuit_opens",
            "Times a replica's circuit opened: its requests failed in a row, so lmtui routed "
            "around it",
            ["node"],
            registry=reg,
        )
        self._api_requests = Counter(
            "lmtui_api_requests",
            "Requests finished on the routed paths beyond chat completions, by API "
            "(responses, messages, count_tokens, rerank, completions, embeddings) and outcome",
            ["api", "outcome"],
            registry=reg,
        )
        self._passthrough = Counter(
            "lmtui_passthrough_requests",
            "Requests passed through to a named node (/lmtui/v1/nodes/<node>/...), by method "
            "and the node's HTTP status (499: the client left)",
            ["node", "method", "status"],
            registry=reg,
        )
        self._auth_failures = Counter(
            "lmtui_auth_failures",
            "Requests refused for a missing or wrong key or token",
            ["path"],
            registry=reg,
        )
        reg.register(
            _HotCollector(
                [self._requests, self._queue_wait, self._ttft, self._duration, self._routes]
            )
        )
        reg.register(_SnapshotCollector(snapshot))
        # (model label, node, outcome) -> the label children one finished request touches.
        self._request_children: dict[tuple[str, str, str], _RequestChildren] = {}
        self._route_children: dict[tuple[str, str, str], _Count] = {}

    def _model_label(self, model: str) -> str:
        label = self._models.get(model)
        if label is not None:
            return label
        if len(self._models) < self._max_models:
            label = self._models[model] = model[:MAX_LABEL]
            return label
        if len(self._models) == self._max_models:
            # Marks the warning as given without growing the dict past the cap + 1.
            self._models[OTHER_MODEL] = OTHER_MODEL
            log.warning(
                "metrics: more than %d distinct model names; further ones count as %r",
                self._max_models,
                OTHER_MODEL,
            )
        return OTHER_MODEL

    def request_done(
        self,
        model: str,
        node: str | None,
        outcome: str,
        *,
        queue_wait_s: float,
        ttft_s: float | None,
        duration_s: float,
    ) -> None:
        """Count one finished request (``outcome`` is one of ``OUTCOMES``).

        ``node`` is None when the request never reached an instance (rejected, timed out in
        the queue, unknown model); it is then labelled ``node=""`` and the TTFT and duration
        histograms, which describe instances, are left alone. Queue wait is observed unless
        the request never queued (``NEVER_QUEUED``).
        """
        m = UNKNOWN_MODEL if outcome in UNKNOWN_OUTCOMES else self._model_label(model)
        n = node or ""
        key = (m, n, outcome)
        children = self._request_children.get(key)
        if children is None:
            # Children are created only where they will be observed: ``labels()`` alone
            # exports an empty series, and a histogram per (model, node="") or per
            # never-queued outcome would be clutter in every scrape.
            queued = outcome not in NEVER_QUEUED
            children = (
                self._requests.child(m, n, outcome),
                self._queue_wait.child(m) if queued else None,
                self._ttft.child(m, n) if node is not None else None,
                self._duration.child(m, n) if node is not None else None,
            )
            self._request_children[key] = children
        counter, wait, ttft, duration = children
        counter.value += 1
        if wait is not None:
            wait.counts[bisect_left(WAIT_BUCKETS, queue_wait_s)] += 1
            wait.sum += queue_wait_s
        if duration is not None:
            duration.counts[bisect_left(DURATION_BUCKETS, duration_s)] += 1
            duration.sum += duration_s
        if ttft is not None and ttft_s is not None:
            ttft.counts[bisect_left(WAIT_BUCKETS, ttft_s)] += 1
            ttft.sum += ttft_s

    def load(self, model: str, node: str, reason: str, *, ok: bool, seconds: float) -> None:
        """Count a model load (``ok`` labels it ``"true"``/``"false"``) and time it.
        ``reason`` is who asked (``core.scheduler.Load.origin``): ``on_demand``, ``replica``,
        ``min_replicas``, ``pinned``, ``preload``, ``operator``, or a confirmed proposal's
        ``spread`` / ``drain_move``."""
        m = self._model_label(model)
        self._loads.labels(m, node, reason, "true" if ok else "false").inc()
        self._load_seconds.labels(m, node).observe(seconds)

    def eviction(self, model: str, node: str, reason: str) -> None:
        """Count an instance lmtui evicted; ``reason``: ``make_room`` (for a load),
        ``idle_ttl`` (the pool manager), ``operator`` (the evict command), or a confirmed
        proposal's ``drain_move`` / ``consolidate``."""
        self._evictions.labels(self._model_label(model), node, reason).inc()

    def circuit_open(self, node: str) -> None:
        """Count a replica's circuit opening (requests failing on it in a row)."""
        self._circuit_opens.labels(node).inc()

    def api_request(self, api: str, outcome: str) -> None:
        """Count one finished request on a routed path other than chat completions (those
        are every request's ``lmtui_requests_total``; this says which API it was)."""
        self._api_requests.labels(api, outcome).inc()

    def passthrough(self, node: str, method: str, status: int) -> None:
        """Count one passthrough request (``node`` is a configured node, ``method`` one of
        a fixed set or ``other``)."""
        self._passthrough.labels(node, method, str(status)).inc()

    def auth_failure(self, where: str) -> None:
        """Count a refused key or token; ``where``: ``v1``, ``control`` or ``metrics``."""
        self._auth_failures.labels(where).inc()

    def route(self, model: str, node: str, reason: str) -> None:
        """Count a routing decision; ``reason``: ``direct`` (a slot was free at once) or
        ``queued`` (the request waited in lmtui's queue)."""
        # Once per request like request_done, so its children are cached the same way.
        key = (self._model_label(model), node, reason)
        child = self._route_children.get(key)
        if child is None:
            child = self._route_children[key] = self._routes.child(*key)
        child.value += 1

    def render(self) -> tuple[bytes, str]:
        """The exposition for ``GET /metrics``: ``(body, content_type)``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
