"""What every simulated server kind shares: JSON helpers, errors, and the OpenAI routes.

Each kind subclasses :class:`KindServer`, adds its own routes, and says how a model name
becomes a loaded instance (:meth:`KindServer.resolve`) and what its error JSON looks like.
The OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``
live here once, with per-kind decoration hooks (llama.cpp ``timings``, LM Studio ``stats``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import string
import time
from collections.abc import Callable
from typing import Any, ClassVar

from aiohttp import web

from lmtui.core.model import NodeKind
from lmtui.sim import physics
from lmtui.sim.faults import Faults
from lmtui.sim.spec import SimNodeSpec
from lmtui.sim.state import Job, SimInstance, SimState

JSON = dict[str, Any]

# A small vocabulary: one word per simulated token keeps text cheap and readable.
_WORDS = (
    "the",
    "cluster",
    "answers",
    "every",
    "question",
    "with",
    "calm",
    "and",
    "measured",
    "tokens",
    "while",
    "the",
    "queue",
    "drains",
    "slowly",
    "and",
    "memory",
    "stays",
    "within",
    "budget",
    "so",
    "nobody",
    "waits",
    "too",
    "long",
    "for",
    "a",
    "reply",
)

#: Chunks after which a ``drop_mid_stream`` fault cuts the connection (and a
#: ``truncate_stream`` fault ends the body).
DROP_AFTER_CHUNKS = 2


class SimHTTPError(Exception):
    """Answer the request with ``status`` and the JSON ``body`` (already in the kind's shape)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class StreamDropped(Exception):
    """The ``drop_mid_stream`` fault cut a stream; the connection is already aborted."""

    outcome = "dropped"


class StreamTruncated(Exception):
    """The ``truncate_stream`` fault ended a stream's body half-way; ``response`` is the
    (finished) response the handler returns."""

    outcome = "truncated"

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("stream truncated")
        self.response = response


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json")


class KindServer:
    """Base of one kind's HTTP API over a :class:`SimState`."""

    kind: ClassVar[NodeKind]
    #: Paths that never need the API key.
    public_paths: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, spec: SimNodeSpec, faults: Faults, state: SimState, rng: random.Random
    ) -> None:
        self.spec = spec
        self.faults = faults
        self.state = state
        self.rng = rng
        self._cache: dict[str, tuple[int, bytes]] = {}

    # --- to override --------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register this kind's routes."""
        raise NotImplementedError

    async def on_start(self) -> None:
        """Load the models the spec says are loaded at start."""
        for key in self.spec.loaded:
            model = self.spec.model(key)
            assert model is not None  # checked by SimNodeSpec
            self.state.begin_load(model, self.state.plan(model), instant=True)

    def error_body(self, status: int, message: str, type_: str = "server_error") -> Any:
        """The kind's error JSON (OpenAI style by default)."""
        return {"error": {"message": message, "type": type_, "param": None, "code": status}}

    #: HTTP status of the answer to an unknown route or method; None: 404 or 405 as usual.
    #: LM Studio answers 200 (see LMStudioServer).
    unknown_route_status: int | None = None

    def route_not_found(self, method: str, path: str, status: int) -> Any:
        """Body for an unknown route (404) or method (405)."""
        return self.error_body(
            status, f"Unexpected endpoint or method. ({method} {path})", "not_found_error"
        )

    def auth_error(self) -> SimHTTPError:
        return SimHTTPError(401, self.error_body(401, "Invalid API Key", "authentication_error"))

    async def resolve(self, name: Any, body: JSON) -> SimInstance:
        """The loaded instance that serves ``name``, loading it when the kind does."""
        raise NotImplementedError

    def precheck(self, request: web.Request) -> None:
        """Refuse any request before routing (llama.cpp's 503 while loading)."""

    def admit(self) -> None:
        """Refuse a new generation request up front (Ollama's full queue)."""

    def decorate(self, payload: JSON, inst: SimInstance, job: Job, *, final: bool) -> None:
        """Add kind-specific fields to an OpenAI response or final stream chunk."""

    def model_name(self, inst: SimInstance, asked: Any) -> str:
        """The ``model`` field of responses."""
        return inst.key

    # --- helpers ------------------------------------------------------------------------

    def cached_json(self, name: str, build: Callable[[], Any]) -> web.Response:
        """A JSON response rebuilt only when loaded instances changed (polls are frequent)."""
        version = self.state.layout_version
        hit = self._cache.get(name)
        if hit is None or hit[0] != version:
            hit = (version, dumps(build()))
            self._cache[name] = hit
        return web.Response(body=hit[1], content_type="application/json")

    def bad_json_error(self, exc: ValueError) -> SimHTTPError:
        return SimHTTPError(
            400, self.error_body(400, f"invalid JSON body: {exc}", "invalid_request_error")
        )

    async def read_json(self, request: web.Request) -> JSON:
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise self.bad_json_error(e) from e
        if not isinstance(body, dict):
            raise SimHTTPError(
                400,
                self.error_body(400, "request body must be a JSON object", "invalid_request_error"),
            )
        return body

    def words(self, n: int) -> str:
        start = self.rng.randrange(len(_WORDS))
        return "".join(" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n))

    def new_id(self, prefix: str) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(32))

    @staticmethod
    def usage(job: Job) -> JSON:
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.decoded,
            "total_tokens": job.prompt_tokens + job.decoded,
        }

    async def open_stream(self, request: web.Request, content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        return resp

    async def write_chunk(
        self, request: web.Request, resp: web.StreamResponse, data: bytes, sent: int
    ) -> int:
        """Write one chunk; under the ``drop_mid_stream`` fault, send its first half and cut
        the connection, and under ``truncate_stream`` send its first half and end the body
        cleanly.

        Under ``hang`` a stream in progress stops too, as a real server frozen with SIGSTOP
        does: nothing more is written until the fault is cleared.
        """
        if self.faults.drop_mid_stream and sent >= DROP_AFTER_CHUNKS:
            # As a killed server: its last bytes end anywhere, here inside an event.
            await resp.write(data[: max(1, len(data) // 2)])
            if request.transport is not None:
                request.transport.abort()
            raise StreamDropped
        if self.faults.truncate_stream and sent >= DROP_AFTER_CHUNKS:
            await resp.write(data[: max(1, len(data) // 2)])
            await resp.write_eof()
            raise StreamTruncated(resp)
        while self.faults.hang:  # noqa: ASYNC110 - a plain flag that tests flip
            await asyncio.sleep(0.05)
        await resp.write(data)
        return sent + 1

    @staticmethod
    def max_tokens(body: JSON, *names: str) -> int | None:
        for n in names or ("max_tokens", "max_completion_tokens"):
            v = body.get(n)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    # --- OpenAI-compatible routes -------------------------------------------------------

    def add_openai_routes(self, app: web.Application, prefix: str = "/v1") -> None:
        app.router.add_post(f"{prefix}/chat/completions", self.chat_completions)
        app.router.add_post(f"{prefix}/completions", self.completions)
        app.router.add_post(f"{prefix}/embeddings", self.embeddings)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.openai_generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.openai_generate(request, chat=False)

    async def openai_generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """One OpenAI chat or text completion, streamed (SSE) or not."""
        body = await self.read_json(request)
        self.admit()
        inst = await self.resolve(body.get("model"), body)
        if chat:
            messages = body.get("messages")
            prompt = physics.prompt_tokens_of_messages(
                messages if isinstance(messages, list) else []
            )
        else:
            prompt = physics.estimate_tokens(str(body.get("prompt", "")))
        n, finish = physics.completion_tokens(self.max_tokens(body), self.rng)
        job = self.state.new_job(inst, prompt, n)
        name = self.model_name(inst, body.get("model"))
        stream = bool(body.get("stream"))
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
            if stream:
                opts = body.get("stream_options")
                usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
                return await self._stream_openai(
                    request, inst, job, name, finish, chat=chat, usage=usage
                )
            parts = [
                self.words(k)
                async for k in self.state.decode(inst, job, min_interval_s=0.25, min_chunks=1)
            ]
        text = "".join(parts).lstrip()
        payload: JSON = {
            "id": self.new_id("chatcmpl-" if chat else "cmpl-"),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                if chat
                else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self.usage(job),
        }
        self.decorate(payload, inst, job, final=True)
        return json_response(payload)

    async def _stream_openai(
        self,
        request: web.Request,
        inst: SimInstance,
        job: Job,
        name: str,
        finish: str,
        *,
        chat: bool,
        usage: bool,
    ) -> web.StreamResponse:
        resp = await self.open_stream(request, "text/event-stream")
        cid = self.new_id("chatcmpl-" if chat else "cmpl-")
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: JSON | str, reason: str | None) -> JSON:
            choice: JSON = (
                {"finish_reason": reason, "index": 0, "delta": delta}
                if chat
                else {"text": delta, "index": 0, "logprobs": None, "finish_reason": reason}
            )
            out: JSON = {
                "choices": [choice],
                "created": created,
                "id": cid,
                "model": name,
                "object": obj,
            }
            self.decorate(out, inst, job, final=False)
            return out

        def event(obj_: JSON) -> bytes:
            return b"data: " + dumps(obj_) + b"\n\n"

        sent = 0
        if chat:
            sent = await self.write_chunk(
                request, resp, event(chunk({"role": "assistant", "content": None}, None)), sent
            )
        async for k in self.state.decode(inst, job):
            # Real servers send one event per token; the simulator decodes in steps of k
            # tokens (time-scaled), so a step is k events in one write.
            data = b"".join(
                event(chunk({"content": w} if chat else w, None))
                for w in (self.words(1) for _ in range(k))
            )
            sent = await self.write_chunk(request, resp, data, sent)
        last = chunk({} if chat else "", finish)
        self.decorate(last, inst, job, final=True)
        await resp.write(event(last))
        if usage:
            u = chunk({}, None)
            u["choices"] = []
            u["usage"] = self.usage(job)
            await resp.write(event(u))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        self.admit()
        inst = await self.resolve(body.get("model"), body)
        raw = body.get("input", "")
        inputs = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]
        prompt = sum(physics.estimate_tokens(t) for t in inputs)
        job = self.state.new_job(inst, prompt, 0)
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
        data = [
            {"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(inputs)
        ]
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model_name(inst, body.get("model")),
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    # --- small shared pieces ------------------------------------------------------------

    async def wait_loaded(self, inst: SimInstance) -> SimInstance:
        """Wait for a loading instance; a load that vanished is a 500 in the kind's shape."""
        try:
            return await self.state.wait_ready(inst)
        except Exception as e:
            raise SimHTTPError(500, self.error_body(500, str(e))) from e


def embed(text: str, dim: int = 64) -> list[float]:
    """A deterministic unit-length vector for ``text`` (same text, same vector)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] ^ (i * 31 % 251)) / 255.0 - 0.5 for i in range(dim)]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in raw]


def iso_now(offset_s: float = 0.0) -> str:
    """RFC 3339 local time with a zone offset and nanoseconds, as Go servers print it."""
    t = time.time() + offset_s
    lt = time.localtime(t)
    off = lt.tm_gmtoff or 0
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    frac = f"{t % 1:.9f}"[1:]
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", lt)
        + frac
        + f"{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"
    )
