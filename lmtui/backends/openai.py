"""vLLM and other OpenAI-compatible servers: ``/health``, ``/v1/models``, ``/metrics``.

Every model such a server lists is served, so each is a loaded instance; they cannot be
loaded or unloaded over HTTP. Servers other than vLLM may lack ``/health`` or ``/metrics``
(404): that is tolerated. vLLM batches requests continuously and does not expose its
``--max-num-seqs``, so slots come from the node config's ``slots`` when set.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from lmtui.backends._common import (
    Every,
    HttpBackend,
    bad,
    expect_dict,
    expect_list,
    opt_int,
    opt_str,
    override_slots,
    status_error,
)
from lmtui.backends.base import ALL_APIS, BackendError, monotonic
from lmtui.backends.prom import VLLM_NAMES, Samples, parse_prometheus, vllm_metrics
from lmtui.core.model import AvailableModel, InstanceObservation, NodeKind, NodeObservation

#: Seconds between reads of the server version (vLLM's ``/version``).
VERSION_REFRESH_S = 300.0
ABSENT = (404, 501)


def parse_openai_models(payload: Any) -> tuple[InstanceObservation, ...]:
    """Parse ``GET /v1/models``: ``{"data": [{id, max_model_len?, ...}]}``."""
    data = expect_list(expect_dict(payload, "/v1/models").get("data"), "/v1/models data")
    out: list[InstanceObservation] = []
    for raw in data:
        entry = expect_dict(raw, "/v1/models entry")
        model_id = opt_str(entry, "id")
        if model_id is None:
            bad(f"/v1/models entry without an id: {str(entry)[:80]}")
        out.append(
            InstanceObservation(
                model=model_id,
                instance_id=model_id,
                context_length=opt_int(entry, "max_model_len", "context_length"),
            )
        )
    return tuple(out)


def with_vllm_load(
    instances: tuple[InstanceObservation, ...], samples: Samples
) -> tuple[InstanceObservation, ...]:
    """Add per-model busy and waiting counts from vLLM's ``model_name``-labelled gauges.

    A server with one model may label its samples with a served name that differs from
    the id; then the unlabelled node total is that model's.
    """
    names = samples.label_values("vllm:num_requests_running", "model_name")
    out = []
    for inst in instances:
        if inst.model in names:
            labels = {"model_name": inst.model}
        elif len(instances) == 1:
            labels = {}
        else:
            out.append(inst)
            continue
        running = samples.total("vllm:num_requests_running", **labels)
        waiting = samples.total("vllm:num_requests_waiting", **labels)
        out.append(
            replace(
                inst,
                slots_busy=int(running) if running is not None else None,
                queued=int(waiting) if waiting is not None else None,
            )
        )
    return tuple(out)


class OpenAIBackend(HttpBackend):
    """An OpenAI-compatible server (vLLM, LocalAI, ...) that serves a fixed set of models."""

    kind = NodeKind.OPENAI
    #: vLLM serves ``/v1/responses`` and ``/v1/rerank`` (for a reranking model), recent
    #: builds the Anthropic ``/v1/messages``; other servers differ, and their 404 says so.
    apis = ALL_APIS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._version_check = Every(VERSION_REFRESH_S)
        self._version: str | None = None

    async def poll(self, now: float) -> NodeObservation:
        """Read health, models and metrics together."""
        started = monotonic()
        want_version = self._version_check.due(now)
        try:
            health, models, text, version = await asyncio.gather(
                self.fetch("/health"),
                self.fetch_json("/v1/models"),
                self.fetch_text("/metrics", absent=ABSENT),
                self.fetch_json("/version", absent=(*ABSENT, 401)) if want_version else _none(),
            )
            # 503 means the engine died though the HTTP server still answers.
            if health.status_code not in (200, *ABSENT):
                raise status_error(health, "GET /health", self.name)
            instances = parse_openai_models(models)
            metrics = None
            if text is not None:
                samples = parse_prometheus(text, VLLM_NAMES)
                metrics = vllm_metrics(samples)
                instances = with_vllm_load(instances, samples)
        except BackendError:
            self._version_check.reset()
            raise
        if want_version:
            self._version_check.done(now)
            if isinstance(version, dict):
                self._version = opt_str(version, "version")
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=monotonic() - started,
            instances=override_slots(instances, self.node.slots),
            available=tuple(
                AvailableModel(key=i.model, max_context_length=i.context_length) for i in instances
            ),
            metrics=metrics,
            version=self._version,
            slots_default=self.node.slots,
        )


async def _none() -> None:
    return None
