"""Simulated llama.cpp ``llama-server``, single-model and router mode.

Single mode serves ``loaded[0]`` (else the first model) and, like the real binary, starts by
loading it: until then every route but ``/v1/models`` answers 503 "Loading model". Router
mode (``--models-dir``) lists every model in ``/models``, loads on ``/models/load`` or on the
first request for a model (autoload), and unloads the least recently used idle model when
``--models-max`` is reached. At the limit with every resident model busy, an explicit load
answers HTTP 500 "model limit reached, try again later" and a request's autoload waits for
one to go idle, as the real router does (``server-models.cpp``: ``unload_lru`` never picks a
busy or loading model). A model not yet downloaded first shows ``downloading``. With
``sleep_idle_s`` an idle model reads ``sleeping``; ``/props`` answers for it (with
``is_sleeping``), while a request, ``/slots`` or ``/metrics`` wakes it. Payload shapes follow
captures of a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from lmtui.core.model import NodeKind
from lmtui.sim import physics
from lmtui.sim.kinds import llamacpp_payloads as P
from lmtui.sim.kinds import more_apis as A
from lmtui.sim.kinds.base import JSON, SimHTTPError, dumps, json_response
from lmtui.sim.kinds.more_apis import MoreApis
from lmtui.sim.spec import SimModel
from lmtui.sim.state import Counters, Job, SimInstance, SimLoadError

# Paths the real server serves without the API key.
_PUBLIC = frozenset({"/health", "/v1/health", "/models", "/v1/models"})
_LISTINGS = frozenset({"/models", "/v1/models"})
#: The real router's answer to a load at ``--models-max`` while every resident model is busy
#: (capture ``router/load-at-limit-while-busy.json``).
LIMIT_REACHED = "model limit reached, try again later"
#: Real seconds between checks of a request's autoload waiting at the limit for an idle model.
LIMIT_RETRY_S = 0.01


class _NotLoaded(Exception):
    """A router GET names a model that is not loaded now."""

    def __init__(self, model: SimModel) -> None:
        super().__init__(model.key)
        self.model = model


class LlamaCppServer(MoreApis):
    """``llama-server -m MODEL`` or ``llama-server --models-dir DIR``."""

    kind = NodeKind.LLAMACPP
    public_paths = _PUBLIC
    # Measured on the real server (tests/fixtures/llama-server/apis/).
    previous_id_refused = "llama.cpp does not support 'previous_response_id'."
    missing_messages_status = 500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = self.spec.router_mode
        self.created = int(time.time())
        #: Router mode: models whose last load failed, with the reason.
        self.failed: dict[str, str] = {}
        # Router children get their own ports; shown in /models args like the real thing.
        self.child_ports = {m.key: 40000 + self.rng.randrange(20000) for m in self.spec.models}
        self.single: SimModel | None = None
        #: Router mode: models in the cache, and downloads under way (shown ``downloading``).
        self.downloaded = {m.key for m in self.spec.models if m.downloaded}
        self.downloads: dict[str, asyncio.Task[None]] = {}
        #: Router mode: the model of every ``POST /models/load``, in order (for tests).
        self.load_posts: list[str] = []
        if not self.router and self.spec.models:
            key = self.spec.loaded[0] if self.spec.loaded else self.spec.models[0].key
            self.single = self.spec.model(key)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        for path in ("/health", "/v1/health"):
            r.add_get(path, self.health)
        r.add_get("/props", self.props)
        r.add_get("/slots", self.slots)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models_list)
        r.add_get("/models", self.models_list)
        if self.router:
            r.add_post("/models/load", self.load)
            r.add_post("/models/unload", self.unload)
        r.add_post("/completion", self.native_completion)
        r.add_post("/completions", self.native_completion)
        self.add_openai_routes(app)
        # Every build since late 2025 has all four (rerank answers 501 without --reranking).
        self.add_more_routes(app, {A.RESPONSES, A.MESSAGES, A.COUNT_TOKENS, A.RERANK})

    async def on_start(self) -> None:
        if self.single is not None:
            # The server process starts by loading its model: not ready until it is done.
            self.state.begin_load(self.single, physics.RoomPlan())
        elif self.router:
            for key in self.spec.loaded:
                model = self.spec.model(key)
                assert model is not None
                self.state.begin_load(model, self._plan(model), instant=True)

    def error_body(self, status: int, message: str, type_: str = "server_error") -> Any:
        return {"error": {"code": status, "message": message, "type": type_}}

    def route_not_found(self, method: str, path: str, status: int) -> Any:
        # The real server's fields come in this order here (unknown-path-404.json).
        return {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}

    def bad_json_error(self, exc: ValueError) -> SimHTTPError:
        return SimHTTPError(
            500,
            self.error_body(
                500, f"[json.exception.parse_error.101] parse error: {exc}", "server_error"
            ),
        )

    def precheck(self, request: web.Request) -> None:
        """Single mode answers 503 on every route but the model list while loading."""
        if self.router or request.path in _LISTINGS:
            return
        inst = self._single_instance()
        if inst is None or inst.state != "loaded":
            raise SimHTTPError(503, self.error_body(503, "Loading model", "unavailable_error"))

    # --- helpers ------------------------------------------------------------------------

    def _single_instance(self) -> SimInstance | None:
        return self.state.pick_instance(self.single.key) if self.single else None

    def _plan(self, model: SimModel) -> physics.RoomPlan:
        return self.state.plan(model, evict_for_count=True, max_count=self.spec.models_max)

    def _not_found(self, name: Any) -> SimHTTPError:
        return SimHTTPError(
            400, self.error_body(400, f"model '{name}' not found", "invalid_request_error")
        )

    def _query_instance(self, request: web.Request) -> SimInstance:
        """The instance a GET is about: the only one, or ``?model=`` in router mode."""
        if not self.router:
            inst = self._single_instance()
            assert inst is not None  # precheck let us through
            return inst
        name = request.query.get("model")
        if not name:
            raise SimHTTPError(
                400,
                self.error_body(
                    400, "model name is missing from the request", "invalid_request_error"
                ),
            )
        model = self.spec.model(name)
        if model is None:
            raise self._not_found(name)
        inst = self.state.pick_instance(name)
        if inst is None or inst.state != "loaded":
            raise _NotLoaded(model)
        return inst

    async def _query_loaded(self, request: web.Request) -> SimInstance:
        """:meth:`_query_instance`, but a model that is not loaded (unloaded, or being
        stopped) is loaded first, as the real router's autoload does for a GET with
        ``?model=``: a poll of a model lmtui is unloading brings it back."""
        try:
            return self._query_instance(request)
        except _NotLoaded as e:
            return await self.wait_loaded(await self._autoload(e.model))

    def _sleeping(self, inst: SimInstance) -> bool:
        """Whether ``inst`` sleeps now (``--sleep-idle-seconds``): loaded, idle that long."""
        idle_s = self.spec.sleep_idle_s
        if idle_s is None or inst.state != "loaded" or inst.busy:
            return False
        return self.state.clock() - inst.last_used >= self.state.real(idle_s)

    def _n_ctx(self, inst: SimInstance) -> int:
        # The context is split across slots, as llama-server does (-c 2048 -np 2 -> 1024).
        return max(1, inst.context_length // inst.pool.size)

    def _start_load(self, model: SimModel) -> SimInstance:
        plan = self._plan(model)
        if plan.limit_reached:
            # Transient: the model is not marked failed, a later load may succeed.
            raise SimHTTPError(500, self.error_body(500, LIMIT_REACHED))
        self.failed.pop(model.key, None)
        try:
            return self.state.begin_load(model, plan)
        except SimLoadError as e:
            # A router's child process that cannot load exits; /models shows it failed.
            self.failed[model.key] = e.reason
            self.state.layout_version += 1
            raise SimHTTPError(
                500, self.error_body(500, f"failed to load model '{model.key}': {e.reason}")
            ) from e

    # --- read routes --------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def props(self, request: web.Request) -> web.Response:
        if self.router and not request.query.get("model"):
            return json_response(
                P.router_props(
                    max_instances=self.spec.models_max, autoload=True, build=self.spec.version
                )
            )
        inst = await self._query_loaded(request)
        return json_response(
            P.props(
                alias=inst.key,
                path=f"/srv/models/{inst.key}.gguf",
                model=inst.model,
                total_slots=inst.pool.size,
                n_ctx=self._n_ctx(inst),
                build=self.spec.version,
                sleeping=self._sleeping(inst),
            )
        )

    async def slots(self, request: web.Request) -> web.Response:
        inst = await self._query_loaded(request)
        self._wake(inst)
        n_ctx = self._n_ctx(inst)
        return json_response([P.slot(i, n_ctx, job) for i, job in enumerate(inst.pool.busy)])

    async def metrics(self, request: web.Request) -> web.Response:
        inst = await self._query_loaded(request)
        self._wake(inst)
        counters: Counters = inst.counters if self.router else self.state.counters
        text = P.metrics_text(counters, processing=inst.pool.in_use, deferred=inst.pool.waiting)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    def _wake(self, inst: SimInstance) -> None:
        """What reaches a sleeping model's process wakes it (the real server reloads its
        weights; here that is instant) and restarts its idle timer."""
        if self.router and self.spec.sleep_idle_s is not None:
            self.state.touch(inst)

    async def models_list(self, request: web.Request) -> web.Response:
        if self.router:
            if self.spec.sleep_idle_s is not None:
                # Sleeping depends on the clock, which the layout cache does not see.
                return json_response(self._router_models())
            return self.cached_json("models", self._router_models)
        return self.cached_json("single", self._single_models)

    def _single_models(self) -> JSON:
        model = self.single
        if model is None:
            return {"object": "list", "data": [], "models": []}
        inst = self._single_instance()
        loaded = inst is not None and inst.state == "loaded"
        meta = P.model_meta(model, self._n_ctx(inst)) if loaded and inst else None
        return {
            "models": [
                {
                    "name": model.key,
                    "model": model.key,
                    "modified_at": "",
                    "size": "",
                    "digest": "",
                    "type": "model",
                    "description": "",
                    "tags": [""],
                    "capabilities": ["completion"],
                    "parameters": "",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "",
                        "families": [""],
                        "parameter_size": "",
                        "quantization_level": "",
                    },
                }
            ],
            "object": "list",
            "data": [
                {
                    "id": model.key,
                    "aliases": [model.key],
                    "tags": [],
                    "object": "model",
                    "created": self.created,
                    "owned_by": "llamacpp",
                    "meta": meta,
                }
            ],
        }

    def _router_models(self) -> JSON:
        data = []
        for m in self.spec.models:
            # A stopping instance is still listed as it was until its process is gone.
            inst = self.state.pick_instance(m.key) or next(
                iter(self.state.instances_of(m.key)), None
            )
            status: JSON
            if inst is not None:
                status = {"value": "sleeping" if self._sleeping(inst) else inst.state}
            elif m.key in self.downloads:
                status = {"value": "downloading"}
            elif m.key in self.failed:
                status = {"value": "unloaded", "failed": True, "exit_code": 1}
            else:
                status = {"value": "unloaded"}
            loaded = inst is not None and inst.state == "loaded"
            port = self.child_ports[m.key] if inst is not None else 0
            ctx = inst.context_length if inst else min(4096, m.max_context)
            data.append(
                P.router_entry(
                    m,
                    status=status,
                    port=port,
                    parallel=self.spec.parallel,
                    ctx_size=ctx,
                    created=self.created,
                    meta=loaded,
                )
            )
        return {"data": data, "object": "list"}

    # --- router control -----------------------------------------------------------------

    async def _model_from_body(self, request: web.Request) -> SimModel:
        body = await self.read_json(request)
        name = body.get("model")
        model = self.spec.model(name) if isinstance(name, str) else None
        if model is None:
            raise self._not_found(name)
        return model

    async def load(self, request: web.Request) -> web.Response:
        model = await self._model_from_body(request)
        self.load_posts.append(model.key)
        if self.state.instances_of(model.key):  # loading, loaded, or still stopping
            raise SimHTTPError(
                400, self.error_body(400, "model is already running", "invalid_request_error")
            )
        if model.key in self.downloads:
            pass  # the real router's load() returns at once for a model "not ready"
        elif model.key not in self.downloaded:
            self._start_download(model)
        elif self._plan(model).limit_reached:
            self._start_load(model)  # answers the real router's 500 "model limit reached"
        else:
            # The answer comes at once; /models shows "loading" until the child is ready,
            # or, when the child cannot load, "unloaded" with failed and an exit code.
            with contextlib.suppress(SimHTTPError):
                self._start_load(model)
        return json_response({"success": True})

    def _start_download(self, model: SimModel) -> asyncio.Task[None]:
        """Download ``model`` (a download worker: it takes no ``--models-max`` place), then
        load it like any other model."""

        async def download() -> None:
            try:
                sim_s = model.size_gb / max(self.spec.download_gb_per_s, 1e-6)
                await asyncio.sleep(self.state.real(sim_s))
                self.downloaded.add(model.key)
            finally:
                self.downloads.pop(model.key, None)
                self.state.layout_version += 1
            with contextlib.suppress(SimHTTPError):  # a refused load shows in /models
                self._start_load(model)

        task = self.state.spawn(download())
        self.downloads[model.key] = task
        self.state.layout_version += 1
        return task

    async def _autoload(self, model: SimModel) -> SimInstance:
        """A request's load: wait out a download, and at the limit wait for an idle model
        (the real router queues the request rather than refusing it)."""
        while True:
            inst = self.state.pick_instance(model.key)
            if inst is not None:
                return inst
            if self.state.instances_of(model.key):  # still stopping: load it once it is gone
                await asyncio.sleep(LIMIT_RETRY_S)
                continue
            if model.key in self.downloads or model.key not in self.downloaded:
                task = self.downloads.get(model.key) or self._start_download(model)
                await asyncio.shield(task)
                continue
            if self._plan(model).limit_reached:
                await asyncio.sleep(LIMIT_RETRY_S)
                continue
            return self._start_load(model)

    async def unload(self, request: web.Request) -> web.Response:
        model = await self._model_from_body(request)
        for inst in self.state.instances_of(model.key):
            if not inst.stopping:
                # The real router answers at once; the child process exits a moment later,
                # listed as loaded and holding its --models-max place until it is gone.
                inst.stopping = True
                self.state.layout_version += 1
                self.state.spawn(self._stop(inst))
        return json_response({"success": True})

    async def _stop(self, inst: SimInstance) -> None:
        await asyncio.sleep(self.state.real(physics.UNLOAD_S))
        self.state.unload(inst.instance_id)

    # --- requests -----------------------------------------------------------------------

    async def resolve(self, name: Any, body: JSON) -> SimInstance:
        if not self.router:
            inst = self._single_instance()
            assert inst is not None
            return await self.wait_loaded(inst)
        if not isinstance(name, str) or not name:
            raise SimHTTPError(
                400,
                self.error_body(
                    400, "model name is missing from the request", "invalid_request_error"
                ),
            )
        model = self.spec.model(name)
        if model is None:
            raise self._not_found(name)
        inst = await self._autoload(model)
        return await self.wait_loaded(inst)

    def timings(self, job: Job) -> JSON:
        """llama.cpp ``timings``, in simulated milliseconds (what the server would measure)."""
        scale = self.state.time_scale
        start = job.started or job.arrived
        first = job.first_token or start
        end = job.finished or self.state.clock()
        prompt_ms = max((first - start) / scale * 1000, 1e-3)
        pred_ms = max((end - first) / scale * 1000, 1e-3)
        p, n = job.prompt_tokens, job.decoded
        return {
            "cache_n": 0,
            "prompt_n": p,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_token_ms": prompt_ms / max(p, 1),
            "prompt_per_second": p / prompt_ms * 1000,
            "predicted_n": n,
            "predicted_ms": round(pred_ms, 3),
            "predicted_per_token_ms": pred_ms / max(n, 1),
            "predicted_per_second": n / pred_ms * 1000,
        }

    def decorate(self, payload: JSON, inst: SimInstance, job: Job, *, final: bool) -> None:
        payload["system_fingerprint"] = self.spec.version
        if "usage" in payload:
            payload["usage"]["prompt_tokens_details"] = {"cached_tokens": 0}
        if final:
            payload["timings"] = self.timings(job)

    async def native_completion(self, request: web.Request) -> web.StreamResponse:
        """llama.cpp's own ``/completion`` (``prompt``, ``n_predict``, ``stream``)."""
        body = await self.read_json(request)
        inst = await self.resolve(body.get("model"), body)
        prompt_text = body.get("prompt", "")
        prompt = physics.estimate_tokens(prompt_text if isinstance(prompt_text, str) else "")
        n, finish = physics.completion_tokens(
            self.max_tokens(body, "n_predict", "max_tokens"), self.rng
        )
        job = self.state.new_job(inst, prompt, n)

        def piece(content: str, stop: bool) -> JSON:
            out: JSON = {
                "index": 0,
                "content": content,
                "tokens": [],
                "stop": stop,
                "id_slot": job.slot,
                "tokens_predicted": job.decoded,
                "tokens_evaluated": job.prompt_tokens,
            }
            if stop:
                out.update(
                    model=inst.key,
                    generation_settings=P.SAMPLING_PARAMS,
                    prompt=prompt_text,
                    has_new_line=False,
                    truncated=False,
                    stop_type="limit" if finish == "length" else "eos",
                    stopping_word="",
                    tokens_cached=job.prompt_tokens + job.decoded,
                    timings=self.timings(job),
                )
            return out

        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
            if body.get("stream"):
                resp = await self.open_stream(request, "text/event-stream")
                sent = 0
                async for k in self.state.decode(inst, job):
                    data = b"data: " + dumps(piece(self.words(k), False)) + b"\n\n"
                    sent = await self.write_chunk(request, resp, data, sent)
                await resp.write(b"data: " + dumps(piece("", True)) + b"\n\n")
                await resp.write_eof()
                return resp
            text = "".join(
                [
                    self.words(k)
                    async for k in self.state.decode(inst, job, min_interval_s=0.25, min_chunks=1)
                ]
            )
        return json_response(piece(text.lstrip(), True))
