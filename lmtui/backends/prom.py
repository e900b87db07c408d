"""Prometheus text exposition: parse it, and map llama.cpp and vLLM metrics to NodeMetrics.

Parsing is delegated to ``prometheus_client``'s reference parser; this module wraps it so a
payload that is not Prometheus text (an HTML error page, a JSON error from a llama.cpp
router asked without ``?model=``) raises :class:`BackendBadResponse` rather than a
``ValueError`` from inside the poll loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from lmtui.backends.base import BackendBadResponse
from lmtui.core.model import NodeMetrics

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Samples:
    """Samples of one scrape, by sample name (``llamacpp:prompt_tokens_total``, ...)."""

    by_name: Mapping[str, tuple[tuple[Labels, float], ...]] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the samples called ``name`` whose labels include ``labels``; None if none.

        Summing over the remaining labels is what a dashboard wants: vLLM labels every
        gauge with ``model_name``, and a node's figure is the sum over its models.
        """
        found = False
        acc = 0.0
        for sample_labels, value in self.by_name.get(name, ()):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                found = True
                acc += value
        return acc if found else None

    def first(self, *names: str, **labels: str) -> float | None:
        """:meth:`total` of the first of ``names`` present (new name first, then old)."""
        for name in names:
            v = self.total(name, **labels)
            if v is not None:
                return v
        return None

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes among the samples called ``name``."""
        return {lbl[label] for lbl, _ in self.by_name.get(name, ()) if label in lbl}


#: The metrics the adapters read, per exporter. Scrapes are cut down to these before the
#: (pure-Python, character-by-character) reference parser sees them: polling 200 nodes a
#: second, parsing whole scrapes was the largest cost of the poll loop after HTTP.
LLAMACPP_NAMES = frozenset(
    {
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:prompt_tokens_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:kv_cache_usage_ratio",
    }
)
VLLM_NAMES = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    }
)


def _only(text: str, names: frozenset[str]) -> str:
    """The lines of ``text`` that belong to the metric families ``names`` (their samples and
    their HELP/TYPE comments). Other lines, comments included, are dropped unparsed."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            name = parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            kept.append(line)
    if not any(not k.startswith("#") for k in kept):
        # None of ours: hand over the whole text, so that a scrape that is not Prometheus
        # text at all still fails the parser instead of reading as "no metrics".
        return text
    return "\n".join(kept) + "\n"


def parse_prometheus(text: str, only: frozenset[str] | None = None) -> Samples:
    """Parse Prometheus text exposition format; BackendBadResponse when it is not that.

    ``only``: parse just these metric families (see :data:`LLAMACPP_NAMES`); the reference
    parser still checks their syntax.
    """
    if only is not None:
        text = _only(text, only)
    by_name: dict[str, list[tuple[Labels, float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                by_name.setdefault(s.name, []).append((s.labels, float(s.value)))
    except (ValueError, TypeError, IndexError, KeyError) as e:
        # The reference parser signals every syntax error with one of these.
        raise BackendBadResponse(f"malformed Prometheus metrics: {e}: {text[:80]!r}") from e
    return Samples({k: tuple(v) for k, v in by_name.items()})


def _int(v: float | None) -> int | None:
    # A NaN or infinite gauge (an exporter's bug) is no figure, not a crash of the poll.
    return None if v is None or not math.isfinite(v) else int(v)


def llamacpp_metrics(samples: Samples) -> NodeMetrics:
    """llama-server's ``/metrics`` (needs ``--metrics``) as NodeMetrics."""
    return NodeMetrics(
        requests_processing=_int(samples.total("llamacpp:requests_processing")),
        requests_waiting=_int(samples.total("llamacpp:requests_deferred")),
        prompt_tokens_total=samples.total("llamacpp:prompt_tokens_total"),
        predicted_tokens_total=samples.total("llamacpp:tokens_predicted_total"),
        predicted_tokens_per_second=samples.total("llamacpp:predicted_tokens_seconds"),
        kv_cache_usage=samples.total("llamacpp:kv_cache_usage_ratio"),
    )


def vllm_metrics(samples: Samples, **labels: str) -> NodeMetrics:
    """vLLM's ``/metrics`` as NodeMetrics, optionally for one ``model_name``.

    ``vllm:kv_cache_usage_perc`` replaced ``vllm:gpu_cache_usage_perc``; both are a
    fraction in 0..1 despite the name, and both are read.
    """
    return NodeMetrics(
        requests_processing=_int(samples.total("vllm:num_requests_running", **labels)),
        requests_waiting=_int(samples.total("vllm:num_requests_waiting", **labels)),
        prompt_tokens_total=samples.total("vllm:prompt_tokens_total", **labels),
        predicted_tokens_total=samples.total("vllm:generation_tokens_total", **labels),
        kv_cache_usage=_kv_usage(samples, labels),
    )


def _kv_usage(samples: Samples, labels: Mapping[str, str]) -> float | None:
    # Several engines (one per model) each report a fraction: the busiest one is what
    # matters for "is this node about to preempt requests", so take the maximum.
    for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
        values = [
            v
            for lbl, v in samples.by_name.get(name, ())
            if all(lbl.get(k) == val for k, val in labels.items())
        ]
        if values:
            return max(values)
    return None


def sum_metrics(parts: Iterable[NodeMetrics]) -> NodeMetrics:
    """Add up per-model metrics (a llama.cpp router runs one server per model).

    Counters and gauges of requests add; so do generation rates, since the models run in
    separate processes at the same time. KV cache usage takes the maximum.
    """

    def add(values: Iterable[float | int | None]) -> float | None:
        present = [v for v in values if v is not None]
        return float(sum(present)) if present else None

    items = list(parts)
    kv = [m.kv_cache_usage for m in items if m.kv_cache_usage is not None]
    return NodeMetrics(
        requests_processing=_int(add(m.requests_processing for m in items)),
        requests_waiting=_int(add(m.requests_waiting for m in items)),
        prompt_tokens_total=add(m.prompt_tokens_total for m in items),
        predicted_tokens_total=add(m.predicted_tokens_total for m in items),
        predicted_tokens_per_second=add(m.predicted_tokens_per_second for m in items),
        kv_cache_usage=max(kv) if kv else None,
    )
