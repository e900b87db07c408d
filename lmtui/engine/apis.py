"""The routed APIs, each as the router needs to know it: its path, what it reads of a request,
how it writes an error, which nodes serve it, and the state some keep on one replica.

The router (``router.py``) has one code path for every API — the scheduler, slots, queue,
failover, watchdog, metrics and request log — and asks the :class:`Api` of the request for
what differs:

- ``chat``, ``completions``, ``embeddings``: OpenAI, as before (errors
  ``{"error": {...}}``, a stream ends with ``data: [DONE]``).
- ``responses`` (``POST /v1/responses``, the OpenAI Responses API): a stream is named
  events ending with ``response.completed`` (no ``[DONE]``). A ``previous_response_id``
  names state that lives on the replica that made that response (llama-server, LM Studio,
  vLLM keep it in memory), so lmtui learns every response id from the answers, bounded
  (:class:`ResponseIds`), and sends a request naming one to that replica only.
- ``messages``, ``count_tokens`` (``POST /v1/messages[/count_tokens]``, Anthropic): the
  SSE events pass through unchanged; every error lmtui writes on these paths, and every
  error a node answers in another shape, is Anthropic's ``{"type": "error", "error":
  {"type", "message"}}``; ``x-api-key`` is accepted as the key beside a Bearer token.
- ``rerank`` (``POST /v1/rerank``): JSON only.

Which node serves which API is a capability of its backend (``Backend.serves``: kind and
version), with the node's own answer as the last word (:class:`Capabilities`): a 404 or 501
for the path (llama-server without ``--reranking`` answers ``/v1/rerank`` with 501), or LM
Studio's "HTTP 200 Unexpected endpoint", marks it absent on that node for
:data:`REPROBE_S`, and the request goes to another replica before its first byte.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import msgspec

from lmtui.backends.base import API_PATHS, OPENAI_APIS, Backend
from lmtui.core.model import InstanceState, Snapshot
from lmtui.engine.errors import error_body

#: How long a path a node answered 404/501 for stays "absent" there before the router
#: tries it again (a server restarted with ``--reranking``, an upgraded LM Studio).
REPROBE_S = 600.0
#: Most (node, api) absences remembered; nodes are configured, so this is a safety bound.
MAX_ABSENT = 4096
#: Most response ids remembered for ``previous_response_id`` (oldest forgotten first).
MAX_RESPONSE_IDS = 100_000
#: The longest model name, ``user`` or response id a request may give (as router.MAX_NAME).
MAX_NAME = 256
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]


class Head(Protocol):
    """What the router reads of a request body, whatever the API."""

    @property
    def model(self) -> str | None: ...
    @property
    def stream(self) -> bool | None: ...
    @property
    def user(self) -> str | None: ...


class ChatHead(msgspec.Struct):
    """The only fields the router reads from a request body; the rest passes untouched
    (whatever their types: an unknown field is the server's business, not lmtui's)."""

    model: _Name | None = None
    #: ``null`` is allowed, as the OpenAI API allows it: no stream.
    stream: bool | None = None
    user: _Name | None = None
    #: LM Studio's idle TTL, in seconds, for a load this request causes (its JIT rule):
    #: lmtui honours it for its own loads (``router.request_ttl``) and removes it, whatever
    #: its value, before a server that is not LM Studio sees it. UNSET when absent.
    ttl: Any = msgspec.UNSET


class ResponsesHead(msgspec.Struct):
    model: _Name | None = None
    stream: bool | None = None
    user: _Name | None = None
    #: The response whose state this one continues: it lives on one replica.
    previous_response_id: _Name | None = None


class _Metadata(msgspec.Struct):
    user_id: _Name | None = None


class MessagesHead(msgspec.Struct):
    model: _Name | None = None
    stream: bool | None = None
    #: Anthropic's ``metadata.user_id`` plays the part of OpenAI's ``user``.
    metadata: _Metadata | None = None

    @property
    def user(self) -> str | None:
        return self.metadata.user_id if self.metadata is not None else None


class PlainHead(msgspec.Struct):
    """count_tokens and rerank: a model, never a stream."""

    model: _Name | None = None

    @property
    def stream(self) -> bool | None:
        return None

    @property
    def user(self) -> str | None:
        return None


# -- token counts ---------------------------------------------------------------------------


class _Counts(msgspec.Struct):
    # OpenAI chat/completions/embeddings/rerank, then Responses and Anthropic.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Usage(msgspec.Struct):
    usage: _Counts | None = None
    #: count_tokens answers ``{"input_tokens": N}`` at the top.
    input_tokens: int | None = None


class _Completed(msgspec.Struct):
    """A Responses stream's ``response.completed`` event: the usage is inside ``response``."""

    response: _Usage | None = None


_decode_usage = msgspec.json.Decoder(_Usage).decode
_decode_completed = msgspec.json.Decoder(_Completed).decode


class Counted(Protocol):
    tokens_in: int | None
    tokens_out: int | None


def _counts_into(out: Counted, u: _Usage) -> None:
    c = u.usage
    if c is not None:
        tin = c.prompt_tokens if c.prompt_tokens is not None else c.input_tokens
        tout = c.completion_tokens if c.completion_tokens is not None else c.output_tokens
        if tin is not None:
            out.tokens_in = tin
        if tout is not None:
            out.tokens_out = tout
    elif u.input_tokens is not None:
        out.tokens_in = u.input_tokens


def usage_into(out: Counted, payload: bytes) -> bool:
    """Read the token counts of a whole JSON answer into ``out``; False when ``payload`` is
    not JSON at all."""
    try:
        u = _decode_usage(payload)
    except msgspec.ValidationError:
        return True  # JSON, with a ``usage`` of another shape: not ours to judge
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    _counts_into(out, u)
    return True


def _data_line(tail: bytes, i: int) -> bytes | None:
    """The JSON of the ``data:`` line that holds byte ``i`` of ``tail``."""
    start = tail.rfind(b"data:", 0, i)
    if start < 0:
        return None
    end = tail.find(b"\n", i)
    line = (tail[start + 5 : end] if end >= 0 else tail[start + 5 :]).strip()
    return line if line.startswith(b"{") else None


def stream_usage_into(out: Counted, tail: bytes) -> None:
    """The usage a chat or Anthropic stream reports in its last events: the ``data:`` line
    holding the last ``"usage"``, found without splitting the tail. An Anthropic stream
    has the input count in ``message_start`` and the output count in ``message_delta``;
    the tail usually holds only the latter."""
    i = tail.rfind(b'"usage"')
    if i < 0:
        return
    line = _data_line(tail, i)
    if line is not None:
        usage_into(out, line)


def responses_stream_usage_into(out: Counted, tail: bytes) -> None:
    """A Responses stream: the usage is in ``response.completed``'s ``response``."""
    i = tail.rfind(b'"response.completed"')
    if i < 0:
        return
    line = _data_line(tail, i)
    if line is None:
        return
    try:
        done = _decode_completed(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return
    if done.response is not None:
        _counts_into(out, done.response)


# -- errors ---------------------------------------------------------------------------------

#: Anthropic's error types by HTTP status (docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_encode = msgspec.json.Encoder().encode
_json = msgspec.json.Decoder()


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(status: int, message: str) -> bytes:
    return _encode(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )


def _error_message(body: bytes) -> str | None:
    """The message of an error answer in any of the shapes servers use, or None."""
    try:
        doc = _json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(doc, dict):
        err = doc.get("error", doc.get("detail"))
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str):
            return err
    return None


@dataclass(frozen=True, slots=True)
class Api:
    """One routed path and what the router does differently for it."""

    name: str
    path: str
    decode: Callable[[bytes], Head]
    #: Anthropic's error shape and ``x-api-key`` (the Messages paths).
    anthropic: bool = False
    #: What lmtui writes after an error event it ends a stream with (OpenAI's ``[DONE]``
    #: for chat and completions; nothing for APIs whose streams have no such marker).
    done: bytes = b"data: [DONE]\n\n"
    #: Whether a node's 404/501 for this path marks it absent there (the OpenAI three are
    #: served by every kind: a 404 there is about something else).
    learnt: bool = True
    #: Whether answers carry response ids that later requests may name.
    stateful: bool = False
    stream_usage: Callable[[Counted, bytes], None] = stream_usage_into

    def error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
    ) -> bytes:
        """An error body lmtui writes on this path."""
        if self.anthropic:
            return anthropic_error_body(status, message)
        return error_body(message, type_, code, param)

    def stream_error(self, status: int, message: str, type_: str, code: str) -> bytes:
        """The SSE that ends a stream with an error: OpenAI's ``data: {"error"}`` and
        ``[DONE]``; Anthropic's ``event: error``; for Responses an ``error`` event that
        both its typed shape (``type``/``code``/``message``) and the OpenAI SDK (which raises
        on an ``error`` object) read."""
        if self.anthropic:
            return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"
        if self.name == "responses":
            doc = {
                "type": "error",
                "code": code,
                "message": message,
                "param": None,
                "error": {"message": message, "type": type_, "code": code},
            }
            return b"event: error\ndata: " + _encode(doc) + b"\n\n"
        return b"data: " + error_body(message, type_, code) + b"\n\n" + self.done

    def as_sse(self, status: int, data: bytes) -> bytes:
        """A whole JSON answer sent to a client that already got SSE (progress comments)."""
        if status >= 400 and self.name != "chat" and self.name != "completions":
            message = _error_message(data) or data[:300].decode(errors="replace")
            return self.stream_error(status, message, "upstream_error", "upstream_error")
        return b"data: " + data + b"\n\n" + self.done

    def node_error(self, status: int, data: bytes) -> bytes:
        """A node's error answer as the client gets it: unchanged, except on Anthropic's
        paths where an answer in another shape becomes Anthropic's (the SDK reads only
        that one)."""
        if not self.anthropic or data[:200].replace(b" ", b"").find(b'"type":"error"') >= 0:
            return data
        message = _error_message(data) or data[:500].decode(errors="replace").strip()
        return anthropic_error_body(status, message or f"HTTP {status}")

    def says_absent(self, status: int, data: bytes, models: tuple[str | None, ...]) -> bool:
        """Does this answer mean the node lacks the path (rather than a failed request)?

        A 404 or 501; but a 404 that names what the request named (``models``: the model,
        a ``previous_response_id``) is about that ("model 'x' not found"), not the path.
        LM Studio answers a path it lacks with HTTP 200 and
        ``{"error": "Unexpected endpoint or method. (POST /v1/messages)"}``."""
        if not self.learnt:
            return False
        if status == 404:
            return not any(m and m.encode() in data for m in models)
        if status == 501:
            return True
        if status == 200 and len(data) < 1024 and data.lstrip().startswith(b'{"error"'):
            message = _error_message(data)
            return message is not None and message.startswith("Unexpected endpoint")
        return False


_decode_chat = msgspec.json.Decoder(ChatHead).decode
_decode_plain = msgspec.json.Decoder(PlainHead).decode

CHAT = Api("chat", API_PATHS["chat"], _decode_chat, learnt=False)
COMPLETIONS = Api("completions", API_PATHS["completions"], _decode_chat, learnt=False)
EMBEDDINGS = Api("embeddings", API_PATHS["embeddings"], _decode_chat, learnt=False)
RESPONSES = Api(
    "responses",
    API_PATHS["responses"],
    msgspec.json.Decoder(ResponsesHead).decode,
    done=b"",
    stateful=True,
    stream_usage=responses_stream_usage_into,
)
MESSAGES = Api(
    "messages",
    API_PATHS["messages"],
    msgspec.json.Decoder(MessagesHead).decode,
    anthropic=True,
    done=b"",
)
COUNT_TOKENS = Api(
    "count_tokens", API_PATHS["count_tokens"], _decode_plain, anthropic=True, done=b""
)
RERANK = Api("rerank", API_PATHS["rerank"], _decode_plain, done=b"")

#: Every routed API by its path.
BY_PATH: dict[str, Api] = {
    a.path: a for a in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS, RERANK)
}
assert {a.name for a in BY_PATH.values()} == set(API_PATHS)
assert {a.name for a in BY_PATH.values() if not a.learnt} == OPENAI_APIS


# -- which node serves which path -------------------------------------------------------------


class Capabilities:
    """The backends' word on which node serves which API, corrected by what nodes answered.

    ``absent`` is bounded and forgets an entry after :data:`REPROBE_S`, so a node that gains
    a path (restarted with ``--reranking``) gets requests for it again.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        clock: Callable[[], float] = time.time,
        reprobe_s: float = REPROBE_S,
    ) -> None:
        self.backends = backends
        self.clock = clock
        self.reprobe_s = reprobe_s
        #: (node, api name) → until when it is taken as absent there.
        self._absent: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: api name → the status and message of the last node that said it lacks it.
        self._said: dict[str, tuple[int, str]] = {}

    def serves(self, node: str, api: str) -> bool:
        b = self.backends.get(node)
        if b is None or not b.serves(api):
            return False
        until = self._absent.get((node, api))
        if until is None:
            return True
        if self.clock() >= until:
            del self._absent[(node, api)]  # time to ask the node again
            return True
        return False

    def mark_absent(self, node: str, api: str, status: int = 404, body: bytes = b"") -> None:
        """``node`` answered ``status`` (``body``) for ``api``'s path: it lacks it, for now."""
        key = (node, api)
        self._absent.pop(key, None)
        self._absent[key] = self.clock() + self.reprobe_s
        while len(self._absent) > MAX_ABSENT:
            self._absent.popitem(last=False)
        said = _error_message(body) or body[:200].decode(errors="replace").strip()
        self._said[api] = (status, f"{node}: {said[:300]}" if said else node)

    def absent_on(self, api: str) -> list[str]:
        """The nodes ``api`` is marked absent on now (for tests and the log)."""
        now = self.clock()
        return sorted(n for (n, a), until in self._absent.items() if a == api and until > now)

    def why(self, api: str) -> tuple[int, str]:
        """The status to answer when no node serves ``api`` (404, or what the nodes said:
        501 for rerank without ``--reranking``) and the last node's message, if one said."""
        return self._said.get(api, (404, ""))

    def lacking(self, api: Api, nodes: Mapping[str, object]) -> frozenset[str]:
        """The nodes of ``nodes`` that do not serve ``api`` (none for the OpenAI three)."""
        if not api.learnt:
            return frozenset()
        return frozenset(n for n in nodes if not self.serves(n, api.name))


# -- response ids ----------------------------------------------------------------------------


class _Created(msgspec.Struct):
    """The first event of a Responses stream (``response.created``) or a whole response."""

    id: _Name | None = None
    response: _Created | None = None


_decode_created = msgspec.json.Decoder(_Created).decode


def response_id(payload: bytes) -> str | None:
    """The id of a Responses answer: a whole JSON response, or the start of a stream (its
    ``response.created`` event), or None."""
    if payload[:1] == b"{":
        line: bytes | None = payload
    else:
        i = payload.find(b'"response.created"')
        if i < 0:
            i = payload.find(b'"id"')
            if i < 0:
                return None
        line = _data_line(payload, i)
    if line is None:
        return None
    try:
        doc = _decode_created(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    rid = doc.response.id if doc.response is not None else doc.id
    return rid or None


class ResponseIds:
    """Response id → the (node, model) that made it, learnt from the answers, bounded: the
    oldest is forgotten first (its state on the node is likely gone by then too)."""

    def __init__(self, max_ids: int = MAX_RESPONSE_IDS) -> None:
        self.max_ids = max_ids
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def learn(self, rid: str, node: str, model: str) -> None:
        self._ids[rid] = (node, model)
        self._ids.move_to_end(rid)
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def get(self, rid: str) -> tuple[str, str] | None:
        return self._ids.get(rid)

    def pin(self, snapshot: Snapshot, rid: str | None) -> tuple[str, str] | None:
        """The (node, model) to send a request naming ``rid`` to: only while that node is
        routable and still has the model loaded; else None (no replica holds the state any
        more, so any may answer, and the node's own error says what happened)."""
        if rid is None:
            return None
        hit = self._ids.get(rid)
        if hit is None:
            return None
        node, model = hit
        n = snapshot.nodes.get(node)
        if n is None or not n.routable:
            return None
        for inst in snapshot.instances_of(model):
            if inst.node == node and inst.state is InstanceState.LOADED:
                return hit
        return None
