"""llama.cpp ``llama-server``: single-model mode and router mode (``--models-dir``).

The mode is detected from ``GET /models`` (entries carry a ``status`` in router mode) and
re-checked every :data:`MODE_RECHECK_S` seconds and after any failed poll, since the server
may be restarted in the other mode. A single-model server cannot load or unload; a router
loads and unloads through ``/models/load`` and ``/models/unload``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal, TypeVar

from lmtui.backends._common import (
    AuthRequired,
    Every,
    HttpBackend,
    bad,
    decode_json,
    expect_dict,
    override_slots,
    status_error,
)
from lmtui.backends.base import BackendError, NotSupported, monotonic
from lmtui.backends.llamacpp_parse import (
    ModelInfo,
    Props,
    Slots,
    is_loading_answer,
    is_router_payload,
    parse_models,
    parse_props,
    parse_slots,
)
from lmtui.backends.prom import LLAMACPP_NAMES, llamacpp_metrics, parse_prometheus, sum_metrics
from lmtui.core.model import (
    AvailableModel,
    InstanceObservation,
    InstanceState,
    NodeKind,
    NodeMetrics,
    NodeObservation,
)

T = TypeVar("T")

#: Seconds between checks of whether the server runs single-model or as a router.
MODE_RECHECK_S = 60.0
#: Seconds between reads of a single-model server's ``/v1/models`` (size, training context):
#: the model of a single-model server is fixed for the life of the process.
MODEL_REFRESH_S = 60.0
#: Statuses meaning "this server does not offer that": 501 without ``--slots``/``--metrics``,
#: 404 on builds without the route.
ABSENT = (404, 501)
#: Router per-model reads race with loads and unloads: a model listed as loaded a moment
#: ago may answer 400 (unknown) or 503 (unloading). That is no reason to fail the poll.
ROUTER_ABSENT = (400, 404, 501, 503)
#: Name shown for the model of a single-model server still loading before its first answer.
LOADING_PLACEHOLDER = "(loading)"
#: Loading a model in router mode returns at once, but allow a slow server to answer.
COMMAND_TIMEOUT_S = 60.0


class LlamaCppBackend(HttpBackend):
    """A ``llama-server`` (single model with ``-m``, or a router with ``--models-dir``)."""

    kind = NodeKind.LLAMACPP
    supports_load = True

    @property
    def can_load(self) -> bool:
        """Only router mode loads; a single-model server is known as such after a poll."""
        return self.mode != "single"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode: Literal["single", "router"] | None = None
        self._mode_check = Every(MODE_RECHECK_S)
        self._model_refresh = Every(MODEL_REFRESH_S)
        self._props: Props | None = None
        self._props_refresh = Every(MODEL_REFRESH_S)
        #: Single mode: the served model as /v1/models last described it.
        self._model: ModelInfo | None = None
        #: Router mode: size and training context of models seen loaded (the router
        #: reports ``meta`` only while a model is loaded), kept for the available list.
        self._known: dict[str, ModelInfo] = {}

    async def poll(self, now: float) -> NodeObservation:
        """Read the node in whichever mode it runs."""
        started = monotonic()
        try:
            payload = await self._detect(now) if self._mode_check.due(now) else None
            if self.mode == "router":
                obs = await self._poll_router(now, payload)
            else:
                obs = await self._poll_single(now, payload)
        except BackendError:
            self._mode_check.reset()
            self._model_refresh.reset()
            self._props = None
            raise
        return replace(obs, latency_s=monotonic() - started)

    async def _detect(self, now: float | None) -> Any:
        """Ask ``/models`` which mode the server runs; return the payload when usable."""
        r = await self.fetch("/models")
        if r.status_code == 503:
            # Still loading its one model: only single-model servers do that. Check again
            # once it has loaded, since /models then says more.
            self.mode = "single"
            return None
        if r.status_code == 404:
            self.mode = "single"  # older single-model builds have only /v1/models
            if now is not None:
                self._mode_check.done(now)
            return None
        if r.status_code != 200:
            raise status_error(r, "GET /models", self.name)
        if now is not None:
            self._mode_check.done(now)
        payload = decode_json(r, "GET /models")
        self.mode = "router" if is_router_payload(payload) else "single"
        return payload

    # --- single-model mode ------------------------------------------------------------

    async def _poll_single(self, now: float, models_payload: Any) -> NodeObservation:
        if models_payload is not None:
            self._remember_model(models_payload, now)
        want_models = self._model is None or self._model_refresh.due(now)
        # /props (total slots, model path) is large and changes only when the server
        # restarts: read it once a minute, or again after anything went wrong.
        want_props = self._props is None or self._props_refresh.due(now)
        results: tuple[Any, ...] = await asyncio.gather(
            self.fetch("/health"),
            self.fetch_json("/props", absent=ABSENT) if want_props else _none(),
            self.fetch_json("/slots", absent=ABSENT),
            self.fetch_text("/metrics", absent=ABSENT),
            self.fetch_json("/v1/models") if want_models else _none(),
            return_exceptions=True,
        )
        health, props, slots, metrics, models = results
        # While loading every route answers 503: look at /health before the rest.
        health_r = _unwrap(health)
        if is_loading_answer(health_r.status_code, _json_or_none(health_r)):
            # /health needs no key: a missing key would go unnoticed until loaded.
            for result in results[1:]:
                if isinstance(result, AuthRequired):
                    raise result
            self._props = None  # a (re)starting server: read its props again once loaded
            if want_models and not isinstance(models, BaseException):
                # Some builds list the model while loading (with meta null): learn its name.
                self._remember_model(models, now)
            return self._loading_observation(now)
        if health_r.status_code != 200:
            self._props = None
            raise status_error(health_r, "GET /health", self.name)
        if want_models:
            self._remember_model(_unwrap(models), now)
        if want_props:
            raw = _unwrap(props)
            self._props = parse_props(raw) if raw is not None else Props()
            self._props_refresh.done(now)
        p = self._props or Props()
        s = parse_slots(_unwrap(slots)) if _unwrap(slots) is not None else None
        text = _unwrap(metrics)
        m = llamacpp_metrics(parse_prometheus(text, LLAMACPP_NAMES)) if text is not None else None
        return self._single_observation(now, p, s, m)

    def _remember_model(self, payload: Any, now: float) -> None:
        models = parse_models(payload)
        if not models:
            bad("GET /v1/models: a single-model server listed no model")
        self._model = models[0]
        # meta (the size) is null while the model loads: ask again next poll until known.
        if self._model.size_bytes is not None:
            self._model_refresh.done(now)

    def _single_observation(
        self, now: float, props: Props, slots: Slots | None, metrics: NodeMetrics | None
    ) -> NodeObservation:
        info = self._model
        name = (info.id if info else None) or props.model_name or LOADING_PLACEHOLDER
        total = props.total_slots or (slots.total if slots else None)
        # Without --slots, the metrics' requests_processing still tells how many are busy.
        busy = slots.busy if slots else (metrics.requests_processing if metrics else None)
        size = info.size_bytes if info else None
        instance = InstanceObservation(
            model=name,
            instance_id=name,
            size_bytes=size,
            context_length=props.n_ctx
            or (slots.n_ctx if slots else None)
            or (info.n_ctx if info else None),
            slots_total=total,
            slots_busy=busy,
            queued=metrics.requests_waiting if metrics else None,
        )
        available = AvailableModel(
            key=name, size_bytes=size, max_context_length=info.n_ctx_train if info else None
        )
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=0.0,
            instances=override_slots((instance,), self.node.slots),
            available=(available,),
            metrics=metrics,
            version=props.build_info,
            slots_default=self.node.slots or total,
        )

    def _loading_observation(self, now: float) -> NodeObservation:
        name = self._model.id if self._model else LOADING_PLACEHOLDER
        instance = InstanceObservation(
            model=name, instance_id=name, state=InstanceState.LOADING, slots_total=self.node.slots
        )
        return NodeObservation(node=self.name, at=now, latency_s=0.0, instances=(instance,))

    # --- router mode ------------------------------------------------------------------

    async def _poll_router(self, now: float, payload: Any) -> NodeObservation:
        if payload is None:
            payload = await self.fetch_json("/models")
        if not is_router_payload(payload):
            # Restarted as a single-model server between two polls.
            self.mode = "single"
            return await self._poll_single(now, payload)
        models = parse_models(payload)
        for info in models:
            if info.size_bytes is not None:
                self._known[info.id] = info
        # A sleeping model freed its weights; asking it for slots could wake it up.
        busy_models = [i for i in models if i.status == "loaded"]
        details = await asyncio.gather(*(self._router_details(i) for i in busy_models))
        by_id = dict(zip((i.id for i in busy_models), details, strict=True))
        instances = []
        for info in models:
            if info.state is None:
                continue
            slots, metrics, props = by_id.get(info.id, (None, None, None))
            known = self._known.get(info.id)
            instances.append(
                InstanceObservation(
                    model=info.id,
                    instance_id=info.id,
                    state=info.state,
                    size_bytes=info.size_bytes or (known.size_bytes if known else None),
                    context_length=info.n_ctx or (slots.n_ctx if slots else None),
                    slots_total=(slots.total if slots else None)
                    or (props.total_slots if props else None)
                    or info.parallel,
                    slots_busy=slots.busy
                    if slots
                    else (metrics.requests_processing if metrics else None),
                    queued=metrics.requests_waiting if metrics else None,
                    error=info.error,
                )
            )
        parts = [m for _, m, _ in details if m is not None]
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=0.0,
            instances=override_slots(instances, self.node.slots),
            available=tuple(self._available(i) for i in models),
            metrics=sum_metrics(parts) if parts else None,
            version=next((p.build_info for _, _, p in details if p and p.build_info), None),
            slots_default=self.node.slots,
        )

    async def _router_details(
        self, info: ModelInfo
    ) -> tuple[Slots | None, NodeMetrics | None, Props | None]:
        """``/slots`` and ``/metrics`` of one loaded model; ``/props`` only when needed.

        /props is large (it carries the chat template) and its slot count is what /slots
        already shows, so it is read only when /slots is switched off.
        """
        q = {"model": info.id}
        slots_raw, text = await asyncio.gather(
            self.fetch_json("/slots", params=q, absent=ROUTER_ABSENT),
            self.fetch_text("/metrics", params=q, absent=ROUTER_ABSENT),
        )
        props = None
        if slots_raw is None and info.parallel is None:
            props_raw = await self.fetch_json("/props", params=q, absent=ROUTER_ABSENT)
            props = parse_props(props_raw) if props_raw is not None else None
        slots = parse_slots(slots_raw) if slots_raw is not None else None
        metrics = (
            llamacpp_metrics(parse_prometheus(text, LLAMACPP_NAMES)) if text is not None else None
        )
        return slots, metrics, props

    def _available(self, info: ModelInfo) -> AvailableModel:
        known = self._known.get(info.id, info)
        return AvailableModel(
            key=info.id,
            size_bytes=info.size_bytes or known.size_bytes,
            max_context_length=info.n_ctx_train or known.n_ctx_train,
        )

    # --- control ----------------------------------------------------------------------

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Router mode: load ``model`` (its preset sets the context); the id is the name.

        The router answers at once and loads in the background: the instance shows as
        loading on the next polls, then loaded.
        """
        await self._require_router("load")
        await self._command("/models/load", model)
        return model

    async def unload(self, model: str, instance_id: str) -> None:
        """Router mode: stop the process serving ``model``."""
        await self._require_router("unload")
        await self._command("/models/unload", instance_id or model)

    async def _require_router(self, what: str) -> None:
        if self.mode is None:
            await self._detect(None)
        if self.mode != "router":
            raise NotSupported(
                f"{self.name}: a single-model llama-server cannot {what} models; run it as a "
                "router (--models-dir DIR, no -m) or use a llamacpp-pool node"
            )

    async def _command(self, path: str, model: str) -> None:
        answer = await self.post_json(
            path, {"model": model}, timeout_s=max(self.timeout, COMMAND_TIMEOUT_S)
        )
        if expect_dict(answer, path).get("success") is False:
            bad(f"POST {path}: the router refused {model!r}")


def _unwrap(result: T | BaseException) -> T:
    """A result of ``gather(..., return_exceptions=True)``, re-raising a failure."""
    if isinstance(result, BaseException):
        raise result
    return result


def _json_or_none(r: Any) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


async def _none() -> None:
    return None
