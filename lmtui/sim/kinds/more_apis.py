"""The routed APIs beyond the OpenAI three: Responses, Anthropic Messages, rerank.

The shapes are a real llama-server's (build b1-0c1e570, captured in
``tests/fixtures/llama-server/apis/``): the same fields in the same order, the same events
in a stream. LM Studio and Ollama document these paths as compatible with OpenAI's and
Anthropic's APIs (lmstudio.ai/docs/developer/openai-compat and anthropic-compat,
docs.ollama.com/api/openai-compatibility and anthropic-compatibility), so they answer the
same shapes here. vLLM's rerank answer (Jina/Cohere style) adds ``id`` and ``document``.

A kind says which of the paths it has with :meth:`MoreApis.add_more_routes` (by version);
a path it lacks is answered as the kind answers any unknown route (llama-server 404 "File
Not Found", Ollama 404 "404 page not found", LM Studio HTTP 200 "Unexpected endpoint").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from lmtui.sim import physics
from lmtui.sim.kinds.base import JSON, KindServer, SimHTTPError, dumps, json_response
from lmtui.sim.state import Job, SimInstance

#: Responses a simulated server keeps for ``previous_response_id`` (as a real one, bounded).
MAX_STORED = 1000

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
RERANK = "/v1/rerank"


def _text_of(value: Any) -> str:
    """The text of a Responses ``input`` or an Anthropic ``system``/content, any shape."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        for k in ("text", "content", "input"):
            if k in value:
                return _text_of(value[k])
    return ""


def _sse(event: str, data: JSON) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class MoreApis(KindServer):
    """Base of the kinds that serve some of these paths."""

    #: Whether ``previous_response_id`` continues a stored response (Ollama's Responses
    #: API is stateless: it ignores the field).
    stateful_responses = True
    #: The 400 message of a server that refuses ``previous_response_id`` outright (a real
    #: llama-server: "llama.cpp does not support 'previous_response_id'."), or None.
    previous_id_refused: str | None = None
    #: The status of a Messages request without ``messages`` (a real llama-server: 500).
    missing_messages_status = 400
    #: The rerank answer's shape: ``llama`` (llama-server) or ``vllm``.
    rerank_shape = "llama"

    def add_more_routes(self, app: web.Application, paths: set[str]) -> None:
        """Add the paths of ``paths`` that this build has (``spec.missing_paths`` says
        which an older build lacks)."""
        self._stored: OrderedDict[str, tuple[str, int]] = OrderedDict()
        handlers = {
            RESPONSES: self.responses,
            MESSAGES: self.messages,
            COUNT_TOKENS: self.count_tokens,
            RERANK: self.rerank,
        }
        for path in sorted(paths - set(self.spec.missing_paths)):
            app.router.add_post(path, handlers[path])

    # --- Responses --------------------------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        self.admit()
        prev = body.get("previous_response_id")
        context = 0
        if prev is not None and self.previous_id_refused is not None:
            raise SimHTTPError(
                400, self.error_body(400, self.previous_id_refused, "invalid_request_error")
            )
        if prev is not None and self.stateful_responses:
            hit = self._stored.get(prev) if isinstance(prev, str) else None
            if hit is None:
                raise SimHTTPError(
                    400,
                    self.error_body(
                        400,
                        f"Previous response with id '{prev}' not found.",
                        "invalid_request_error",
                    ),
                )
            context = hit[1]
        inst = await self.resolve(body.get("model"), body)
        prompt = context + physics.estimate_tokens(
            _text_of(body.get("input")) + _text_of(body.get("instructions"))
        )
        n, _finish = physics.completion_tokens(self.max_tokens(body, "max_output_tokens"), self.rng)
        job = self.state.new_job(inst, prompt, n)
        name = self.model_name(inst, body.get("model"))
        rid, mid = self.new_id("resp_"), self.new_id("msg_")
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
            if body.get("stream"):
                return await self._stream_responses(request, inst, job, name, rid, mid)
            parts = [
                self.words(k)
                async for k in self.state.decode(inst, job, min_interval_s=0.25, min_chunks=1)
            ]
        self._store(rid, name, job)
        now = int(time.time())
        return json_response(
            {
                "completed_at": now,
                "created_at": now,
                "id": rid,
                "model": name,
                "object": "response",
                "output": [self._message_item(mid, "".join(parts).lstrip())],
                "status": "completed",
                "usage": self._responses_usage(job),
            }
        )

    def _store(self, rid: str, model: str, job: Job) -> None:
        self._stored[rid] = (model, job.prompt_tokens + job.decoded)
        while len(self._stored) > MAX_STORED:
            self._stored.popitem(last=False)

    @staticmethod
    def _message_item(mid: str, text: str) -> JSON:
        return {
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
            "id": mid,
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }

    @staticmethod
    def _responses_usage(job: Job) -> JSON:
        return {
            "input_tokens": job.prompt_tokens,
            "output_tokens": job.decoded,
            "total_tokens": job.prompt_tokens + job.decoded,
            "input_tokens_details": {"cached_tokens": 0},
        }

    async def _stream_responses(
        self, request: web.Request, inst: SimInstance, job: Job, name: str, rid: str, mid: str
    ) -> web.StreamResponse:
        resp = await self.open_stream(request, "text/event-stream")
        head = {"id": rid, "object": "response", "status": "in_progress"}
        sent = await self.write_chunk(
            request,
            resp,
            _sse("response.created", {"type": "response.created", "response": head})
            + _sse("response.in_progress", {"type": "response.in_progress", "response": head})
            + _sse(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "item": {
                        "content": [],
                        "id": mid,
                        "role": "assistant",
                        "status": "in_progress",
                        "type": "message",
                    },
                },
            )
            + _sse(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "item_id": mid,
                    "part": {"type": "output_text", "text": ""},
                },
            ),
            0,
        )
        text: list[str] = []
        async for k in self.state.decode(inst, job):
            words = [self.words(1) for _ in range(k)]
            text += words
            data = b"".join(
                _sse(
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", "item_id": mid, "delta": w},
                )
                for w in words
            )
            sent = await self.write_chunk(request, resp, data, sent)
        whole = "".join(text).lstrip()
        plain = self._message_item(mid, whole)
        part = plain["content"][0]
        # In a stream the real server lists the item's fields in another order.
        item = {k: plain[k] for k in ("type", "status", "id", "content", "role")}
        self._store(rid, name, job)
        done = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": name,
            "output": [item],
            "usage": self._responses_usage(job),
        }
        await resp.write(
            _sse(
                "response.output_text.done",
                {"type": "response.output_text.done", "item_id": mid, "text": whole},
            )
            + _sse(
                "response.content_part.done",
                {"type": "response.content_part.done", "item_id": mid, "part": part},
            )
            + _sse("response.output_item.done", {"type": "response.output_item.done", "item": item})
            + _sse("response.completed", {"type": "response.completed", "response": done})
        )
        await resp.write_eof()
        return resp

    # --- Anthropic Messages -----------------------------------------------------------------

    def _anthropic_prompt(self, body: JSON) -> int:
        messages = body.get("messages")
        return physics.prompt_tokens_of_messages(messages if isinstance(messages, list) else []) + (
            physics.estimate_tokens(_text_of(body["system"])) if body.get("system") else 0
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_json(request)
        self.admit()
        messages = body.get("messages")
        if messages is None:
            status = self.missing_messages_status
            type_ = "server_error" if status >= 500 else "invalid_request_error"
            raise SimHTTPError(status, self.error_body(status, "'messages' is required", type_))
        for m in messages if isinstance(messages, list) else ():
            if isinstance(m, dict) and not isinstance(m.get("content"), str | list):
                raise SimHTTPError(
                    400,
                    self.error_body(
                        400,
                        "Expected 'content' to be a string or an array",
                        "invalid_request_error",
                    ),
                )
        inst = await self.resolve(body.get("model"), body)
        n, finish = physics.completion_tokens(self.max_tokens(body, "max_tokens"), self.rng)
        stop = "max_tokens" if finish == "length" else "end_turn"
        job = self.state.new_job(inst, self._anthropic_prompt(body), n)
        name = self.model_name(inst, body.get("model"))
        mid = self.new_id("chatcmpl-")
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
            if body.get("stream"):
                return await self._stream_messages(request, inst, job, name, mid, stop)
            parts = [
                self.words(k)
                async for k in self.state.decode(inst, job, min_interval_s=0.25, min_chunks=1)
            ]
        return json_response(
            {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "".join(parts).lstrip()}],
                "model": name,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "cache_read_input_tokens": 0,
                    "input_tokens": job.prompt_tokens,
                    "output_tokens": job.decoded,
                },
            }
        )

    async def _stream_messages(
        self, request: web.Request, inst: SimInstance, job: Job, name: str, mid: str, stop: str
    ) -> web.StreamResponse:
        resp = await self.open_stream(request, "text/event-stream")
        start = {
            "type": "message_start",
            "message": {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": name,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "cache_read_input_tokens": 0,
                    "input_tokens": job.prompt_tokens,
                    "output_tokens": 0,
                },
            },
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        sent = await self.write_chunk(
            request,
            resp,
            _sse("message_start", start) + _sse("content_block_start", block),
            0,
        )
        async for k in self.state.decode(inst, job):
            data = b"".join(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": self.words(1)},
                    },
                )
                for _ in range(k)
            )
            sent = await self.write_chunk(request, resp, data, sent)
        await resp.write(
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": job.decoded},
                },
            )
            + _sse("message_stop", {"type": "message_stop"})
        )
        await resp.write_eof()
        return resp

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        await self.resolve(body.get("model"), body)
        return json_response({"input_tokens": self._anthropic_prompt(body)})

    # --- rerank -----------------------------------------------------------------------------

    async def rerank(self, request: web.Request) -> web.Response:
        if not self.spec.reranking:
            # llama-server's answer without --reranking (captured: rerank-not-enabled.json).
            raise SimHTTPError(
                501,
                self.error_body(
                    501,
                    "This server does not support reranking. Start it with `--reranking`",
                    "not_supported_error",
                ),
            )
        body = await self.read_json(request)
        query, docs = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list):
            raise SimHTTPError(
                400,
                self.error_body(
                    400, '"query" and "documents" must be provided', "invalid_request_error"
                ),
            )
        self.admit()
        inst = await self.resolve(body.get("model"), body)
        texts = [_text_of(d) for d in docs]
        prompt = sum(physics.estimate_tokens(query + t) for t in texts) or 1
        job = self.state.new_job(inst, prompt, 0)
        async with self.state.occupy(inst, job):
            await self.state.prefill(inst, job)
        words = set(query.lower().split())
        results: list[JSON] = []
        for i, t in enumerate(texts):
            # Deterministic: the share of the query's words the document has.
            hits = sum(1 for w in set(t.lower().split()) if w in words)
            score = round(hits / max(1, len(words)) - 0.5, 6)
            entry: JSON = {"index": i, "relevance_score": score}
            if self.rerank_shape == "vllm":
                entry = {"index": i, "document": {"text": t}, "relevance_score": score}
            results.append(entry)
        results.sort(key=lambda r: -float(r["relevance_score"]))
        top = body.get("top_n")
        if isinstance(top, int) and not isinstance(top, bool) and top > 0:
            results = results[:top]
        name = self.model_name(inst, body.get("model"))
        if self.rerank_shape == "vllm":
            return json_response(
                {
                    "id": self.new_id("rerank-"),
                    "model": name,
                    "usage": {"total_tokens": prompt},
                    "results": results,
                }
            )
        return json_response(
            {
                "model": name,
                "object": "list",
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
                "results": results,
            }
        )
