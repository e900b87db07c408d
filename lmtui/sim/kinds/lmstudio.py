"""Simulated LM Studio: greeting, REST v1 (0.4+), legacy REST v0, OpenAI routes, JIT loading.

Before 0.4 the server handles one request at a time across all loaded models (the state's
server-wide slot) and has no ``/api/v1`` routes. Just-in-time loading loads a requested
model with the body's ``ttl`` (default 60 minutes) and, with auto-evict, first unloads the
model the previous JIT load brought in.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from lmtui.core.model import NodeKind
from lmtui.sim.kinds import more_apis as A
from lmtui.sim.kinds.base import JSON, SimHTTPError, json_response
from lmtui.sim.kinds.more_apis import MoreApis
from lmtui.sim.spec import SimModel, version_tuple
from lmtui.sim.state import Job, SimInstance, SimLoadError


def _arch(model: SimModel) -> str:
    # "qwen2.5-7b-instruct" -> "qwen2"; good enough for a display field.
    head = model.key.split("/")[-1].split("-")[0].split(".")[0]
    return head.rstrip("0123456789") + ("2" if head[-1:].isdigit() else "") or "llama"


def _bits(quant: str) -> float:
    q = quant.upper()
    for prefix, bits in (
        ("Q2", 2.6),
        ("Q3", 3.4),
        ("Q4", 4.5),
        ("Q5", 5.5),
        ("Q6", 6.6),
        ("Q8", 8.5),
        ("F16", 16.0),
        ("BF16", 16.0),
        ("4BIT", 4.0),
        ("8BIT", 8.0),
    ):
        if q.startswith(prefix):
            return bits
    return 4.5


class LMStudioServer(MoreApis):
    """LM Studio's local server (``lms server start``)."""

    kind = NodeKind.LMSTUDIO

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/lmstudio-greeting", self.greeting)
        if not self.spec.serial:
            r.add_get("/api/v1/models", self.v1_models)
            r.add_post("/api/v1/models/load", self.v1_load)
            r.add_post("/api/v1/models/unload", self.v1_unload)
        r.add_get("/api/v0/models", self.v0_models)
        r.add_post("/api/v0/chat/completions", self.chat_completions)
        r.add_post("/api/v0/completions", self.completions)
        r.add_post("/api/v0/embeddings", self.embeddings)
        r.add_get("/v1/models", self.openai_models)
        # Not LM Studio's: the simulated host's ``lms`` CLI (lmtui/sim/lms.py) reads and
        # drives the server through these, as the real lms does through LM Studio's own
        # SDK channel, on every version (0.3 included).
        r.add_get("/__sim/lms/ps", self.lms_ps)
        r.add_post("/__sim/lms/load", self.lms_load)
        r.add_post("/__sim/lms/unload", self.lms_unload)
        self.add_openai_routes(app)
        # /v1/responses since 0.3.29, the Anthropic /v1/messages since 0.4; no
        # count_tokens, no rerank (its docs list neither).
        version = version_tuple(self.spec.version)
        paths = {A.RESPONSES} if version >= (0, 3, 29) else set()
        if version >= (0, 4):
            paths.add(A.MESSAGES)
        self.add_more_routes(app, paths)

    def error_body(self, status: int, message: str, type_: str = "server_error") -> Any:
        return {
            "error": {
                "message": message,
                "type": type_,
                "param": None,
                "code": "model_not_found" if status == 404 else None,
            }
        }

    #: Every LM Studio version, 0.3.x through at least 0.4.17, answers an endpoint or
    #: method it lacks with HTTP 200 and an error body (its log: "Returning 200 anyway";
    #: lmstudio-bug-tracker #618, #1323, #2085), so 0.3.x answers /api/v1/models that way.
    unknown_route_status = 200

    def route_not_found(self, method: str, path: str, status: int) -> Any:
        # LM Studio's wording; 0.3.x answers this for every /api/v1 route.
        return {"error": f"Unexpected endpoint or method. ({method} {path})"}

    def auth_error(self) -> SimHTTPError:
        return SimHTTPError(
            401,
            self.error_body(
                401,
                "Invalid or missing API token. Pass it as 'Authorization: Bearer <token>'.",
                "authentication_error",
            ),
        )

    # --- discovery ----------------------------------------------------------------------

    async def greeting(self, request: web.Request) -> web.Response:
        return json_response({"lmstudio": True})

    def _v1_entry(self, m: SimModel) -> JSON:
        embedding = m.is_embedding
        instances = []
        for inst in self.state.instances_of(m.key):
            if inst.state != "loaded":
                continue
            config: JSON = {"context_length": inst.context_length}
            if not embedding:
                config.update(
                    eval_batch_size=512,
                    parallel=inst.pool.size,
                    flash_attention=True,
                    num_experts=0,
                    offload_kv_cache_to_gpu=True,
                )
            instances.append({"id": inst.instance_id, "config": config})
        entry: JSON = {
            "type": "embedding" if embedding else "llm",
            "publisher": "lmstudio-community",
            "key": m.key,
            "display_name": m.key.replace("-", " ").title(),
            "quantization": {"name": m.quant, "bits_per_weight": _bits(m.quant)},
            "size_bytes": m.size_bytes,
            "params_string": m.params,
            "loaded_instances": instances,
            "max_context_length": m.max_context,
            "format": "gguf",
        }
        if not embedding:
            entry.update(
                architecture=_arch(m),
                capabilities={"vision": False, "trained_for_tool_use": True},
                description=None,
            )
        entry.update(variants=[m.key], selected_variant=m.key)
        return entry

    async def v1_models(self, request: web.Request) -> web.Response:
        return self.cached_json(
            "v1", lambda: {"models": [self._v1_entry(m) for m in self.spec.models]}
        )

    def _v0_entry(self, m: SimModel) -> JSON:
        loaded = [i for i in self.state.instances_of(m.key) if i.state == "loaded"]
        entry: JSON = {
            "id": m.key,
            "object": "model",
            "type": "embeddings" if m.is_embedding else "llm",
            "publisher": "lmstudio-community",
            "arch": _arch(m),
            "compatibility_type": "gguf",
            "quantization": m.quant,
            "state": "loaded" if loaded else "not-loaded",
            "max_context_length": m.max_context,
        }
        if loaded:
            entry["loaded_context_length"] = loaded[0].context_length
        return entry

    async def v0_models(self, request: web.Request) -> web.Response:
        return self.cached_json(
            "v0", lambda: {"object": "list", "data": [self._v0_entry(m) for m in self.spec.models]}
        )

    async def openai_models(self, request: web.Request) -> web.Response:
        def build() -> JSON:
            # With JIT on, every downloaded model is listed (a request will load it).
            keys = (
                [m.key for m in self.spec.models]
                if self.spec.jit
                else sorted({i.key for i in self.state.instances.values() if i.state == "loaded"})
            )
            return {
                "object": "list",
                "data": [
                    {"id": k, "object": "model", "owned_by": "organization_owner"} for k in keys
                ],
            }

        return self.cached_json("openai", build)

    # --- load / unload ------------------------------------------------------------------

    def _refused(self, e: SimLoadError) -> SimHTTPError:
        gb = self.spec.model(e.model)
        need = f"{gb.size_gb:.1f} GB" if gb else "more memory"
        return SimHTTPError(
            400,
            self.error_body(
                400,
                f'Failed to load model "{e.model}". Error: Model loading was stopped due to '
                f"insufficient system resources ({e.reason}). This model requires "
                f"approximately {need} of memory.",
                "model_load_failed",
            ),
        )

    async def v1_load(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        key = body.get("model")
        model = self.spec.model(key) if isinstance(key, str) else None
        if model is None:
            raise SimHTTPError(
                404, self.error_body(404, f"Model not found: {key}", "invalid_request_error")
            )
        # Earlier 0.4 builds nested the options in "config"; accept both.
        nested = body.get("config")
        opts: JSON = nested if isinstance(nested, dict) else body
        ctx = opts.get("context_length")
        parallel = opts.get("parallel")
        started = time.perf_counter()
        try:
            inst = self.state.begin_load(
                model,
                self.state.plan(model),
                context_length=ctx if isinstance(ctx, int) else None,
                parallel=parallel if isinstance(parallel, int) and parallel > 0 else None,
            )
        except SimLoadError as e:
            raise self._refused(e) from e
        await self.wait_loaded(inst)
        answer: JSON = {
            "type": "embedding" if model.is_embedding else "llm",
            "instance_id": inst.instance_id,
            "load_time_seconds": round(time.perf_counter() - started, 3),
            "status": "loaded",
        }
        if body.get("echo_load_config"):
            answer["load_config"] = {
                "context_length": inst.context_length,
                "parallel": inst.pool.size,
            }
        return json_response(answer)

    async def v1_unload(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        iid = body.get("instance_id")
        if not isinstance(iid, str) or self.state.unload(iid) is None:
            raise SimHTTPError(
                404,
                self.error_body(
                    404, f"No loaded model instance with id {iid!r}", "invalid_request_error"
                ),
            )
        return json_response({"instance_id": iid})

    # --- requests -----------------------------------------------------------------------

    async def resolve(self, name: Any, body: JSON) -> SimInstance:
        key = name if isinstance(name, str) else ""
        inst = self.state.pick_instance(key)
        if inst is not None:
            return await self.wait_loaded(inst)
        model = self.spec.model(key)
        if model is None or not self.spec.jit:
            what = "not found" if model is None else "not loaded (JIT loading is off)"
            raise SimHTTPError(
                404, self.error_body(404, f"Model {key!r} {what}.", "invalid_request_error")
            )
        ttl = body.get("ttl")
        ttl_s = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else self.spec.keep_alive_s
        if self.spec.auto_evict:
            for old in [i for i in self.state.instances.values() if i.jit and not i.busy]:
                self.state.unload(old.instance_id)
        try:
            inst = self.state.begin_load(model, self.state.plan(model), ttl_s=ttl_s, jit=True)
        except SimLoadError as e:
            raise self._refused(e) from e
        return await self.wait_loaded(inst)

    def decorate(self, payload: JSON, inst: SimInstance, job: Job, *, final: bool) -> None:
        payload["system_fingerprint"] = inst.key
        if payload.get("object") in ("chat.completion", "text_completion") and final:
            # REST v0 reports generation stats; the OpenAI routes carry an empty object.
            gen_s = (job.finished or job.first_token or 0) - (job.first_token or 0)
            ttft = (job.first_token or job.arrived) - job.arrived
            payload["stats"] = {
                "tokens_per_second": round(job.decoded / gen_s, 3) if gen_s > 0 else 0.0,
                "time_to_first_token": round(ttft, 3),
                "generation_time": round(gen_s, 3),
                "stop_reason": "maxPredictedTokensReached"
                if payload["choices"] and payload["choices"][0].get("finish_reason") == "length"
                else "eosFound",
            }
            payload["model_info"] = {
                "arch": _arch(inst.model),
                "quant": inst.model.quant,
                "format": "gguf",
                "context_length": inst.context_length,
            }
            payload["runtime"] = {
                "name": "llama.cpp-mac-arm64-metal",
                "version": "1.50.0",
                "supported_formats": ["gguf"],
            }

    # --- the simulated host's lms CLI (lmtui/sim/lms.py) ----------------------------------

    async def lms_ps(self, request: web.Request) -> web.Response:
        """What ``lms ps --json`` prints (the fields BACKENDS.md lists)."""
        st = self.state
        now, wall = st.clock(), time.time()
        out = []
        for inst in st.instances.values():
            if inst.state != "loaded":
                continue
            running = inst.pool.in_use
            status = "idle"
            if running:
                status = "computingEmbedding" if inst.model.is_embedding else "generating"
            out.append(
                {
                    "identifier": inst.instance_id,
                    "modelKey": inst.key,
                    "type": "embedding" if inst.model.is_embedding else "llm",
                    "sizeBytes": inst.model.size_bytes,
                    "contextLength": inst.context_length,
                    "maxContextLength": inst.model.max_context,
                    "ttlMs": round(st.real(inst.ttl_s) * 1000) if inst.ttl_s else None,
                    "lastUsedTime": round((wall - (now - inst.last_used)) * 1000),
                    "status": status,
                    "queued": inst.jobs,
                    "parallel": inst.pool.size,
                }
            )
        return json_response(out)

    async def lms_load(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        key = body.get("model")
        model = self.spec.model(key) if isinstance(key, str) else None
        if model is None:
            raise SimHTTPError(404, {"error": f"No model found matching {key!r}"})
        ident = body.get("identifier")
        if isinstance(ident, str) and ident in self.state.instances:
            raise SimHTTPError(409, {"error": f"An instance named {ident!r} is already loaded"})
        ttl, parallel, ctx = body.get("ttl"), body.get("parallel"), body.get("context_length")
        try:
            inst = self.state.begin_load(
                model,
                self.state.plan(model),
                ttl_s=float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else None,
                parallel=parallel if isinstance(parallel, int) and parallel > 0 else None,
                context_length=ctx if isinstance(ctx, int) else None,
            )
        except SimLoadError as e:
            raise SimHTTPError(400, {"error": f"Failed to load {model.key}: {e.reason}"}) from e
        if isinstance(ident, str) and ident and ident != inst.instance_id:
            self.state.instances[ident] = self.state.instances.pop(inst.instance_id)
            inst.instance_id = ident
            self.state.layout_version += 1
        await self.wait_loaded(inst)
        return json_response({"identifier": inst.instance_id})

    async def lms_unload(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        if body.get("all"):
            for loaded in list(self.state.instances):
                self.state.unload(loaded)
            return json_response({"unloaded": "all"})
        ident = body.get("identifier")
        if not isinstance(ident, str) or self.state.unload(ident) is None:
            raise SimHTTPError(404, {"error": f"No loaded model with identifier {ident!r}"})
        return json_response({"unloaded": ident})
