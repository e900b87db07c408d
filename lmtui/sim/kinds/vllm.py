"""Simulated vLLM (the ``openai`` kind): one model, /health, /v1/models, /metrics, OpenAI routes.

``parallel`` plays the part of ``--max-num-seqs``: that many requests run at once, the rest
wait and show up in ``vllm:num_requests_waiting``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lmtui.core.model import NodeKind
from lmtui.sim import physics
from lmtui.sim.kinds import more_apis as A
from lmtui.sim.kinds.base import SimHTTPError
from lmtui.sim.kinds.more_apis import MoreApis
from lmtui.sim.spec import SimModel
from lmtui.sim.state import SimInstance

_GAUGES = (
    ("num_requests_running", "Number of requests currently running on GPU."),
    ("num_requests_waiting", "Number of requests waiting to be processed."),
    ("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
_COUNTERS = (
    ("prompt_tokens_total", "Number of prefill tokens processed."),
    ("generation_tokens_total", "Number of generation tokens processed."),
    ("request_success_total", "Count of successfully processed requests."),
)


class VLLMServer(MoreApis):
    """``vllm serve MODEL``."""

    kind = NodeKind.OPENAI
    rerank_shape = "vllm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: SimModel | None = None
        if self.spec.models:
            key = self.spec.loaded[0] if self.spec.loaded else self.spec.models[0].key
            self.served = self.spec.model(key)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        self.add_openai_routes(app)
        # /v1/responses; /v1/rerank for a reranking model only.
        self.add_more_routes(app, {A.RESPONSES} | ({A.RERANK} if self.spec.reranking else set()))

    async def on_start(self) -> None:
        if self.served is not None:
            self.state.begin_load(
                self.served,
                physics.RoomPlan(),
                instant=True,
                context_length=self.served.max_context,
            )

    def error_body(self, status: int, message: str, type_: str = "server_error") -> Any:
        names = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError"}
        return {
            "object": "error",
            "message": message,
            "type": names.get(status, "InternalServerError"),
            "param": None,
            "code": status,
        }

    def _instance(self) -> SimInstance | None:
        return self.state.pick_instance(self.served.key) if self.served else None

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._instance() else 503)

    async def models(self, request: web.Request) -> web.Response:
        def build() -> dict[str, Any]:
            m = self.served
            data = (
                []
                if m is None
                else [
                    {
                        "id": m.key,
                        "object": "model",
                        "created": 1746086400,
                        "owned_by": "vllm",
                        "root": m.key,
                        "parent": None,
                        "max_model_len": m.max_context,
                        "permission": [
                            {
                                "id": "modelperm-sim",
                                "object": "model_permission",
                                "created": 1746086400,
                                "allow_create_engine": False,
                                "allow_sampling": True,
                                "allow_logprobs": True,
                                "allow_search_indices": False,
                                "allow_view": True,
                                "allow_fine_tuning": False,
                                "organization": "*",
                                "group": None,
                                "is_blocking": False,
                            }
                        ],
                    }
                ]
            )
            return {"object": "list", "data": data}

        return self.cached_json("models", build)

    async def metrics(self, request: web.Request) -> web.Response:
        inst = self._instance()
        name = self.served.key if self.served else ""
        running = inst.pool.in_use if inst else 0
        waiting = inst.pool.waiting if inst else 0
        # KV use: the running sequences' tokens over the instance's context budget.
        tokens = sum(j.prompt_tokens + j.decoded for j in inst.pool.busy if j) if inst else 0
        kv = min(1.0, tokens / (inst.context_length * inst.pool.size)) if inst else 0.0
        c = self.state.counters
        values = {
            "num_requests_running": running,
            "num_requests_waiting": waiting,
            "kv_cache_usage_perc": round(kv, 6),
            "prompt_tokens_total": c.prompt_tokens_total,
            "generation_tokens_total": c.tokens_predicted_total,
            "request_success_total": sum(1 for r in self.state.records if r.outcome == "ok"),
        }
        lines = []
        labels = f'{{engine="0",model_name="{name}"}}'
        for metric, help_ in _GAUGES:
            lines += [
                f"# HELP vllm:{metric} {help_}",
                f"# TYPE vllm:{metric} gauge",
                f"vllm:{metric}{labels} {float(values[metric])}",
            ]
        for metric, help_ in _COUNTERS:
            lines += [
                f"# HELP vllm:{metric} {help_}",
                f"# TYPE vllm:{metric} counter",
                f"vllm:{metric}{labels} {float(values[metric])}",
            ]
        return web.Response(
            text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8"
        )

    async def resolve(self, name: Any, body: dict[str, Any]) -> SimInstance:
        inst = self._instance()
        if inst is None or (name and name != inst.key):
            raise SimHTTPError(404, self.error_body(404, f"The model `{name}` does not exist."))
        return inst
