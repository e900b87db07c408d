"""llama.cpp ``llama-server``: single-model mode and router mode (``--models-dir``).

The mode is detected from ``GET /models`` (entries carry a ``status`` in router mode) and
re-checked every :data:`MODE_RECHECK_S` seconds and after any failed poll, since the server
may be restarted in the other mode. A single-model server cannot load or unload; a router
loads and unloads through ``/models/load`` and ``/models/unload``.

A router answers a load at once and loads in the background, so :meth:`LlamaCppBackend.load`
watches ``/models`` until the model reads loaded: the engine's "loaded in N s" is the real
load time, and it never posts a second load for a model still coming up.
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
    command_answer,
    decode_json,
    error_message,
    expect_dict,
    override_slots,
    status_error,
)
from lmtui.backends.base import (
    ALL_APIS,
    BackendBadResponse,
    BackendError,
    LoadDeferred,
    NotSupported,
    monotonic,
)
from lmtui.backends.llamacpp_parse import (
    LOADING_STATUSES,
    READY_STATUSES,
    ModelInfo,
    Props,
    RouterProps,
    Slots,
    is_limit_answer,
    is_loading_answer,
    is_router_payload,
    is_router_props,
    model_name,
    parse_models,
    parse_props,
    parse_router_props,
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
#: How long :meth:`LlamaCppBackend.load` waits for a router's background load to finish: a
#: 70B model read from a slow disk takes minutes; one that takes longer is stuck.
LOAD_TIMEOUT_S = 600.0
#: How long :meth:`LlamaCppBackend.unload` waits for the model's process to exit.
UNLOAD_TIMEOUT_S = 60.0
#: Statuses of a model whose process still runs (the router counts them against
#: ``--models-max``); a model being unloaded keeps its status until the process is gone.
RUNNING_STATUSES = frozenset({"loading", "loaded", "sleeping"})
#: Seconds between reads of ``/models`` while waiting for a load or an unload. The end of a
#: load is noticed sooner by a ``GET /props?model=`` that the router holds until the model
#: is ready (measured on a real router: it answers ~5 ms before /models says loaded), so
#: these reads are for failures, and few: about four a second.
LOAD_POLL_S = 0.25
#: Reads of ``/models`` after a load was accepted that may still show the model unloaded
#: before it reads loading (the real router marks it loading before it answers; this is
#: slack for builds that do not), after which the load counts as not started.
LOAD_START_READS = 8


class LlamaCppBackend(HttpBackend):
    """A ``llama-server`` (single model with ``-m``, or a router with ``--models-dir``)."""

    kind = NodeKind.LLAMACPP
    supports_load = True
    #: llama-server answers all of them (``/v1/messages`` since PR #17570, ``/v1/responses``,
    #: ``/v1/rerank`` only with ``--reranking``: else HTTP 501, which marks it absent). Its
    #: version is a build name, not a number, so the server's answer is the only test.
    apis = ALL_APIS

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
        #: Router mode: the router's own /props (its --models-max), read once a minute: it
        #: changes only when the server restarts.
        self._router_props: RouterProps | None = None
        self._router_props_refresh = Every(MODEL_REFRESH_S)
        #: Router mode: /props of sleeping models (their slot count), read once per sleep:
        #: /slots is not asked of a sleeping model, and /props is large.
        self._sleep_props: dict[str, Props | None] = {}
        #: Router mode: models lmtui is unloading. A real router answers a per-model read
        #: (``/slots?model=``) of a model it is stopping by loading it again (autoload; seen
        #: on build 0c1e570: the unload never finished and the next load was refused), so
        #: polls leave these alone, and an unload waits for reads already under way.
        self._unloading: set[str] = set()
        self._model_reads = asyncio.Lock()
        #: Unloads started so far: a listing read before the last one started is stale.
        self._unloads_started = 0

    async def poll(self, now: float) -> NodeObservation:
        """Read the node in whichever mode it runs."""
        started = monotonic()
        try:
            unloads = self._unloads_started
            payload = await self._detect(now) if self._mode_check.due(now) else None
            if self.mode == "router":
                obs = await self._poll_router(now, payload, unloads)
            else:
                obs = await self._poll_single(now, payload)
        except BackendError:
            self._mode_check.reset()
            self._model_refresh.reset()
            self._props = None
            self._router_props_refresh.reset()
            self._sleep_props.clear()
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
        # Single mode serves its one model whatever a request's "model" says, so naming it
        # by its file (not the path it was started with) is safe and matches other nodes.
        raw = (info.id if info else None) or props.model_name
        name = model_name(raw) if raw else LOADING_PLACEHOLDER
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
            size_source="server" if size is not None else None,
        )
        available = AvailableModel(
            key=name,
            size_bytes=size,
            max_context_length=info.n_ctx_train if info else None,
            size_source="server" if size is not None else None,
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
        name = model_name(self._model.id) if self._model else LOADING_PLACEHOLDER
        instance = InstanceObservation(
            model=name, instance_id=name, state=InstanceState.LOADING, slots_total=self.node.slots
        )
        return NodeObservation(node=self.name, at=now, latency_s=0.0, instances=(instance,))

    # --- router mode ------------------------------------------------------------------

    async def _poll_router(self, now: float, payload: Any, unloads: int) -> NodeObservation:
        # The listing and the per-model reads it leads to happen under one lock that an
        # unload takes first: no read of a model is sent once its unload is posted, and a
        # listing read before an unload began (``unloads`` then) is read again.
        async with self._model_reads:
            if payload is None or unloads != self._unloads_started:
                payload = await self.fetch_json("/models")
            return await self._poll_router_locked(now, payload)

    async def _poll_router_locked(self, now: float, payload: Any) -> NodeObservation:
        if not is_router_payload(payload):
            # Restarted as a single-model server between two polls.
            self.mode = "single"
            return await self._poll_single(now, payload)
        # Ids are kept as the router lists them, never renamed like a single server's path:
        # the router routes requests, loads and unloads by exactly that id.
        models = parse_models(payload)
        for info in models:
            if info.size_bytes is not None:
                self._known[info.id] = info
        # A sleeping model freed its weights; asking it for /slots could wake it up. Its slot
        # count comes from its /props instead, read once per sleep.
        busy_models = [i for i in models if i.status == "loaded" and i.id not in self._unloading]
        sleeping = {i.id for i in models if i.status == "sleeping" and i.id not in self._unloading}
        for gone in self._sleep_props.keys() - sleeping:
            del self._sleep_props[gone]
        new_sleepers = [i for i in sleeping if i not in self._sleep_props]
        want_props = self._router_props_refresh.due(now)
        details, sleep_props, router_raw = await asyncio.gather(
            asyncio.gather(*(self._router_details(i) for i in busy_models)),
            asyncio.gather(*(self._model_props(i) for i in new_sleepers)),
            self.fetch_json("/props", absent=ROUTER_ABSENT) if want_props else _none(),
        )
        self._sleep_props.update(zip(new_sleepers, sleep_props, strict=True))
        if want_props:
            # Builds before the router's own /props answer 400 (no ?model=): no limit known.
            self._router_props = (
                parse_router_props(router_raw) if is_router_props(router_raw) else RouterProps()
            )
            self._router_props_refresh.done(now)
        by_id = dict(zip((i.id for i in busy_models), details, strict=True))
        instances = []
        for info in models:
            if info.state is None:
                continue
            slots, metrics, props = by_id.get(info.id, (None, None, None))
            if props is None:
                props = self._sleep_props.get(info.id)
            size, source = self._size(info)
            instances.append(
                InstanceObservation(
                    model=info.id,
                    instance_id=info.id,
                    state=info.state,
                    size_bytes=size,
                    size_source=source,
                    context_length=info.n_ctx
                    or (slots.n_ctx if slots else None)
                    or (props.n_ctx if props else None),
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
        rp = self._router_props or RouterProps()
        version = rp.build_info or next(
            (p.build_info for _, _, p in details if p and p.build_info), None
        )
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=0.0,
            instances=override_slots(instances, self.node.slots),
            available=tuple(self._available(i) for i in models),
            metrics=sum_metrics(parts) if parts else None,
            version=version,
            slots_default=self.node.slots,
            max_instances=rp.max_instances,
        )

    def _size(self, info: ModelInfo) -> tuple[int | None, Literal["server", "seen"] | None]:
        """A router model's size: its ``meta`` while it is loaded, else the size seen the
        last time it was (the router drops ``meta`` when a model unloads); else unknown,
        and the fold applies ``[[models]] size_gb``."""
        if info.size_bytes is not None:
            return info.size_bytes, "server"
        known = self._known.get(info.id)
        if known is not None and known.size_bytes is not None:
            return known.size_bytes, "seen"
        return None, None

    async def _model_props(self, model: str) -> Props | None:
        raw = await self.fetch_json("/props", params={"model": model}, absent=ROUTER_ABSENT)
        return parse_props(raw) if raw is not None else None

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
        size, source = self._size(info)
        return AvailableModel(
            key=info.id,
            size_bytes=size,
            max_context_length=info.n_ctx_train or known.n_ctx_train,
            size_source=source,
        )

    # --- control ----------------------------------------------------------------------

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Router mode: load ``model`` (its preset sets the context) and return once it is
        really loaded; the instance id is the model's name.

        The router answers ``{"success": true}`` at once and loads in the background, so
        this watches ``/models`` until the model reads ``loaded`` (or ``sleeping``). A model
        already coming up (``loading``, ``downloading``) is waited for, never posted again.
        A load the router refuses for now (at ``--models-max`` with every resident model
        busy) raises :class:`LoadDeferred`; one that fails raises BackendBadResponse.
        """
        await self._require_router("load")
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                info = await self._router_model(model)
                if info.status in READY_STATUSES:
                    return model
                if info.status not in LOADING_STATUSES:
                    await self._post_load(model)
                await self._wait_loaded(model, seen_loading=info.status in LOADING_STATUSES)
        except TimeoutError as e:
            raise BackendBadResponse(
                f"{self.name}: {model!r} did not finish loading within {LOAD_TIMEOUT_S:.0f} s"
            ) from e
        return model

    async def _router_model(self, model: str) -> ModelInfo:
        """The router's ``/models`` entry for ``model``; BackendBadResponse if unlisted."""
        info = await self._router_entry(model)
        if info is None:
            bad(f"{self.name}: model {model!r} not found (the router does not list it)")
        return info

    async def _router_entry(self, model: str) -> ModelInfo | None:
        for info in parse_models(await self.fetch_json("/models")):
            if info.id == model:
                return info
        return None

    async def _post_load(self, model: str) -> None:
        path = "/models/load"
        r = await self.request(
            "POST", path, json={"model": model}, timeout=max(self.timeout, COMMAND_TIMEOUT_S)
        )
        body = _json_or_none(r)
        if is_limit_answer(r.status_code, body) or is_loading_answer(r.status_code, body):
            raise LoadDeferred(f"{self.name}: {error_message(body) or 'busy'}")
        if r.status_code == 400 and "already running" in (error_message(body) or ""):
            return  # another load (a client's autoload) started it meanwhile: wait for it
        answer = command_answer(r, f"POST {path}", self.name)
        if expect_dict(answer, path).get("success") is False:
            bad(f"POST {path}: the router refused {model!r}")

    async def _wait_loaded(self, model: str, *, seen_loading: bool) -> None:
        """Wait until ``model`` is loaded: a held ``GET /props?model=`` says so the moment it
        is; ``/models``, read every :data:`LOAD_POLL_S`, says when it failed."""
        ready = asyncio.ensure_future(self._answered_when_ready(model))
        try:
            await self._watch_load(model, seen_loading, ready)
        finally:
            ready.cancel()

    async def _answered_when_ready(self, model: str) -> bool:
        """True once the router answers a per-model read of ``model`` (it holds the request
        while the model loads); False when it answers anything else."""
        try:
            r = await self.request("GET", "/props", params={"model": model}, timeout=LOAD_TIMEOUT_S)
        except BackendError:
            return False
        return r.status_code == 200

    async def _watch_load(
        self, model: str, seen_loading: bool, ready: asyncio.Future[bool]
    ) -> None:
        reads = 0
        while True:
            if ready.done() and ready.result():
                return
            info = await self._router_model(model)
            if info.status in READY_STATUSES:
                return
            if info.status == "failed":
                bad(f"{self.name}: loading {model!r} failed: {info.error}")
            if info.status in LOADING_STATUSES:
                seen_loading = True
            elif seen_loading:
                bad(f"{self.name}: {model!r} was unloaded while it loaded")
            elif reads >= LOAD_START_READS:
                bad(f"{self.name}: the router accepted the load of {model!r} but never started it")
            reads += 1
            if ready.done():  # it answered something else: /models alone says when
                await asyncio.sleep(LOAD_POLL_S)
            else:
                await asyncio.wait([ready], timeout=LOAD_POLL_S)

    async def unload(self, model: str, instance_id: str) -> None:
        """Router mode: stop the process serving ``model``, and return once it is gone.

        The router answers at once and lists the model as loaded until its process has
        exited; a load posted meanwhile at ``--models-max`` is refused with "model limit
        reached" (measured on a real router). So an eviction waits here, and the load that
        follows it finds the place free.
        """
        await self._require_router("unload")
        name = instance_id or model
        self._unloading.add(name)
        self._unloads_started += 1
        try:
            async with self._model_reads:  # a poll under way finishes its reads first
                pass
            await self._command("/models/unload", name)
            await self._wait_gone(name)
        finally:
            self._unloading.discard(name)

    async def _wait_gone(self, name: str) -> None:
        try:
            async with asyncio.timeout(UNLOAD_TIMEOUT_S):
                while True:
                    info = await self._router_entry(name)
                    if info is None or info.status not in RUNNING_STATUSES:
                        return  # gone (a model no longer listed is gone too)
                    await asyncio.sleep(LOAD_POLL_S)
        except TimeoutError as e:
            raise BackendBadResponse(
                f"{self.name}: {name!r} was still running {UNLOAD_TIMEOUT_S:.0f} s after "
                "the router accepted its unload"
            ) from e

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
