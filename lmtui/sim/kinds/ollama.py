"""Simulated Ollama: /api/tags, /api/ps, /api/generate, /api/chat (NDJSON), OpenAI /v1.

Like the real server: a request for a model not in memory loads it, unloading idle models
(least recently used first) when memory or OLLAMA_MAX_LOADED_MODELS requires; each loaded
model serves ``parallel`` (OLLAMA_NUM_PARALLEL) requests at once; more than ``max_queue``
waiting requests get 503; ``keep_alive`` sets how long a model stays after its last use.

How a request changes a loaded model's ``keep_alive``, as Ollama's scheduler does it
(``server/sched.go``):

- a native request (``/api/generate``, ``/api/chat``) with ``keep_alive`` sets it;
- one without: since 0.1.49 (commit 955f2a4e, "Only set default keep_alive on initial model
  load") the model keeps the one it has; before, it was reset to ``OLLAMA_KEEP_ALIVE``
  (``keep_alive_s``) on every request. ``version`` picks which;
- the OpenAI-compatible ``/v1`` endpoints carry no ``keep_alive`` on any version (their
  request structs in ``openai/openai.go`` have no such field): a ``keep_alive`` in the body
  is ignored, so a ``/v1`` request is always one "without".

A model's first load takes the request's ``keep_alive``, or ``OLLAMA_KEEP_ALIVE``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from aiohttp import web

from lmtui.core.model import NodeKind
from lmtui.sim import physics
from lmtui.sim.kinds import more_apis as A
from lmtui.sim.kinds.base import (
    JSON,
    SimHTTPError,
    dumps,
    iso_now,
    json_response,
)
from lmtui.sim.kinds.more_apis import MoreApis
from lmtui.sim.spec import SimModel, version_tuple
from lmtui.sim.state import Job, SimInstance, SimLoadError

BUSY = "server busy, please try again.  maximum pending requests exceeded"
#: keep_alive < 0 means "forever"; Ollama then reports an expiry centuries away.
FOREVER_S = 290 * 365 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Ollama ``keep_alive`` in seconds: a number of seconds or a Go duration ("5m", "1h30m").

    Negative means forever (returned as a negative number); None if absent or unreadable.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    s = value.strip()
    try:
        return float(s)
    except ValueError:
        pass
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    parts = _DURATION.findall(s)
    if not parts or "".join(n + u for n, u in parts) != s:
        return None
    return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)


def tagged(key: str) -> str:
    """Ollama names always carry a tag; a bare name means ``:latest``."""
    return key if ":" in key else f"{key}:latest"


def _family(m: SimModel) -> str:
    return re.split(r"[-:.]", m.key, maxsplit=1)[0].rstrip("0123456789") or "llama"


class OllamaServer(MoreApis):
    """``ollama serve``."""

    kind = NodeKind.OLLAMA
    #: Its Responses API is stateless (docs.ollama.com/api/openai-compatibility).
    stateful_responses = False

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/api/version", self.version)
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/embed", self.embeddings)
        r.add_get("/v1/models", self.openai_models)
        self.add_openai_routes(app)
        # /v1/responses since v0.13.3 (stateless), /v1/messages since v0.14.0.
        version = version_tuple(self.spec.version)
        paths = {A.RESPONSES} if version >= (0, 13, 3) else set()
        if version >= (0, 14):
            paths.add(A.MESSAGES)
        self.add_more_routes(app, paths)

    def error_body(self, status: int, message: str, type_: str = "server_error") -> Any:
        return {"error": message}

    async def on_start(self) -> None:
        # Models loaded at start expire like any other: after keep_alive idle.
        for key in self.spec.loaded:
            model = self.spec.model(key)
            assert model is not None
            self.state.begin_load(
                model, self.state.plan(model), instant=True, ttl_s=self._ttl(None)
            )

    def route_not_found(self, method: str, path: str, status: int) -> Any:
        return {"error": "404 page not found" if status == 404 else "405 method not allowed"}

    def find(self, name: Any) -> SimModel | None:
        if not isinstance(name, str) or not name:
            return None
        for m in self.spec.models:
            if name in (m.key, tagged(m.key)):
                return m
        return None

    def model_name(self, inst: SimInstance, asked: Any) -> str:
        return asked if isinstance(asked, str) and asked else tagged(inst.key)

    # --- discovery ----------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.spec.version})

    def _details(self, m: SimModel) -> JSON:
        fam = _family(m)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": fam,
            "families": [fam],
            "parameter_size": m.params,
            "quantization_level": m.quant,
        }

    @staticmethod
    def _digest(m: SimModel) -> str:
        return hashlib.sha256(m.key.encode()).hexdigest()

    async def tags(self, request: web.Request) -> web.Response:
        def build() -> JSON:
            return {
                "models": [
                    {
                        "name": tagged(m.key),
                        "model": tagged(m.key),
                        "modified_at": "2025-05-01T10:00:00.000000000+02:00",
                        "size": m.size_bytes,
                        "digest": self._digest(m),
                        "details": self._details(m),
                    }
                    for m in self.spec.models
                ]
            }

        return self.cached_json("tags", build)

    async def ps(self, request: web.Request) -> web.Response:
        # Not cached: expires_at moves with every request.
        models = []
        for inst in self.state.instances.values():
            if inst.state != "loaded":
                continue
            m = inst.model
            exp = self.state.expires_at_wall(inst)
            offset = (exp - time.time()) if exp is not None else FOREVER_S
            models.append(
                {
                    "name": tagged(m.key),
                    "model": tagged(m.key),
                    "size": m.size_bytes,
                    "digest": self._digest(m),
                    "details": self._details(m),
                    "expires_at": iso_now(offset),
                    "size_vram": m.size_bytes,
                    "context_length": inst.context_length,
                }
            )
        return json_response({"models": models})

    async def openai_models(self, request: web.Request) -> web.Response:
        return self.cached_json(
            "openai",
            lambda: {
                "object": "list",
                "data": [
                    {
                        "id": tagged(m.key),
                        "object": "model",
                        "created": 1746086400,
                        "owned_by": "library",
                    }
                    for m in self.spec.models
                ],
            },
        )

    # --- loading ------------------------------------------------------------------------

    def admit(self) -> None:
        if self.state.waiting >= self.spec.max_queue:
            raise SimHTTPError(503, {"error": BUSY})

    def _ttl(self, keep_alive: float | None) -> float | None:
        ka = self.spec.keep_alive_s if keep_alive is None else keep_alive
        return None if ka < 0 else ka

    @property
    def resets_keep_alive(self) -> bool:
        """Before 0.1.49 a request without ``keep_alive`` reset the model's to the default."""
        return version_tuple(self.spec.version) < (0, 1, 49)

    async def _ensure(self, name: Any, keep_alive: float | None) -> SimInstance:
        model = self.find(name)
        if model is None:
            raise SimHTTPError(404, {"error": f'model "{name}" not found, try pulling it first'})
        inst = self.state.pick_instance(model.key)
        if inst is None:
            plan = self.state.plan(
                model,
                evict_for_memory=True,
                evict_for_count=True,
                max_count=self.spec.max_loaded_models,
            )
            try:
                inst = self.state.begin_load(model, plan, ttl_s=self._ttl(keep_alive))
            except SimLoadError as e:
                raise SimHTTPError(
                    500,
                    {
                        "error": (
                            f"model requires more system memory ({model.size_gb:.1f} GiB) than is "
                            f"available ({e.reason})"
                        )
                    },
                ) from e
        await self.wait_loaded(inst)
        if keep_alive is not None or self.resets_keep_alive:
            self.state.touch(inst, self._ttl(keep_alive), set_ttl=True)
        else:
            self.state.touch(inst)  # keeps its keep_alive, restarts its idle timer
        return inst

    async def resolve(self, name: Any, body: JSON) -> SimInstance:
        # The OpenAI-compatible endpoints: a ``keep_alive`` in the body is ignored there.
        return await self._ensure(name, None)

    # --- native generate / chat ---------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, chat=True)

    async def _native(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self.read_json(request)
        name = body.get("model")
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        if chat:
            messages = body.get("messages")
            empty = not messages
            prompt = physics.prompt_tokens_of_messages(
                messages if isinstance(messages, list) else []
            )
        else:
            empty = not body.get("prompt")
            prompt = physics.estimate_tokens(str(body.get("prompt") or ""))
        if empty and keep_alive == 0:
            return self._unload(name, chat)
        self.admit()
        load_started = time.perf_counter()
        inst = await self._ensure(name, keep_alive)
        load_ns = int((time.perf_counter() - load_started) * 1e9)
        out_name = self.model_name(inst, name)
        if empty:
            # Loading only: {"done": true}; /api/chat also says why.
            answer: JSON = {"model": out_name, "created_at": iso_now(), "done": True}
            if chat:
                answer.update(message={"role": "assistant", "content": ""}, done_reason="load")
            else:
                answer.update(response="")
            return json_response(answer)
        raw_options = body.get("options")
        options: JSON = raw_options if isinstance(raw_options, dict) else {}
        n, finish = physics.completion_tokens(self.max_tokens(options, "num_predict"), self.rng)
        job = self.state.new_job(inst, prompt, n)
        stream = body.get("stream", True) is not False
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
            if stream:
                return await self._stream_native(
                    request, inst, job, out_name, finish, chat, load_ns
                )
            text = "".join(
                [
                    self.words(k)
                    async for k in self.state.decode(inst, job, min_interval_s=0.25, min_chunks=1)
                ]
            )
        final = self._final(job, out_name, finish, chat, load_ns)
        if chat:
            final["message"] = {"role": "assistant", "content": text.lstrip()}
        else:
            final["response"] = text.lstrip()
        return json_response(final)

    def _final(self, job: Job, name: str, finish: str, chat: bool, load_ns: int) -> JSON:
        start = job.started or job.arrived
        first = job.first_token or start
        end = self.state.clock()
        final: JSON = {"model": name, "created_at": iso_now()}
        final["message" if chat else "response"] = (
            {"role": "assistant", "content": ""} if chat else ""
        )
        final.update(
            done=True,
            done_reason=finish,
            total_duration=int((end - job.arrived) * 1e9),
            load_duration=load_ns,
            prompt_eval_count=job.prompt_tokens,
            prompt_eval_duration=int((first - start) * 1e9),
            eval_count=job.decoded,
            eval_duration=int((end - first) * 1e9),
        )
        return final

    async def _stream_native(
        self,
        request: web.Request,
        inst: SimInstance,
        job: Job,
        name: str,
        finish: str,
        chat: bool,
        load_ns: int,
    ) -> web.StreamResponse:
        resp = await self.open_stream(request, "application/x-ndjson")
        sent = 0
        async for k in self.state.decode(inst, job):
            text = self.words(k)
            line: JSON = {"model": name, "created_at": iso_now()}
            if chat:
                line["message"] = {"role": "assistant", "content": text}
            else:
                line["response"] = text
            line["done"] = False
            sent = await self.write_chunk(request, resp, dumps(line) + b"\n", sent)
        await resp.write(dumps(self._final(job, name, finish, chat, load_ns)) + b"\n")
        await resp.write_eof()
        return resp

    def _unload(self, name: Any, chat: bool) -> web.Response:
        model = self.find(name)
        if model is None:
            raise SimHTTPError(404, {"error": f'model "{name}" not found, try pulling it first'})
        for inst in self.state.instances_of(model.key):
            self.state.unload(inst.instance_id)
        answer: JSON = {"model": name, "created_at": iso_now()}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        answer.update(done=True, done_reason="unload")
        return json_response(answer)

    async def embeddings(self, request: web.Request) -> web.Response:
        resp = await super().embeddings(request)
        if request.path == "/api/embed":
            # Ollama's native shape: {"model", "embeddings": [[...]]}.
            data = json.loads(resp.body)  # type: ignore[arg-type]
            return json_response(
                {
                    "model": data["model"],
                    "embeddings": [d["embedding"] for d in data["data"]],
                    "prompt_eval_count": data["usage"]["prompt_tokens"],
                }
            )
        return resp
