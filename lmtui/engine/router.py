"""The OpenAI-compatible router: one address for the whole cluster.

Hot path, per request: check the bearer key, read the body (size-limited), decode only
``model`` / ``stream`` / ``user`` with msgspec, get a lease from the dispatcher,
forward the original bytes (re-encoded only when the model name must be rewritten) over a
keep-alive pool to the node, and pass the answer back — chunk by chunk for SSE.

Why this stack, measured for this project on a 2-core machine: ``httpx`` as the proxy client
was 5–13× slower in requests/s than ``aiohttp.ClientSession``, and the lean HTTP/1.1 client of
``lmtui/http/http1.py`` is ~2× faster again (a bare proxy: ~10.5k → ~22k req/s at 32 clients,
``bench/upstream_client.py``), so plain-HTTP nodes use it and ``https`` nodes aiohttp. On the
server side, raw ASGI on uvicorn+uvloop was no faster than ``aiohttp.web``, but a bare
asyncio protocol was: the bot's plain requests arrive through the fast front of
``lmtui/http/front.py`` (:meth:`Router.serve`), everything else through ``aiohttp.web``;
both call :meth:`Router.proxy`. An
access log cost 19–37% of throughput, so there is none.

Failover: a connection error or a 5xx before the first byte reaches the client is retried on
another replica (or a load elsewhere). After the first byte, a failure ends the stream with
an error event and ``[DONE]``: every request ends in a response or an explicit error.

A node can also fail by saying nothing: frozen (SIGSTOP, a hung driver), the kernel still
accepts connections and the request waits. A watchdog (:class:`_Watchdog`, four times a
second, only while requests are upstream) gives up on a request whose node is marked down,
or whose first byte is later than ``first_byte_timeout`` (per model, per node, or the
router's): one that has sent nothing to its client is cancelled there and served elsewhere;
one already streaming ends with an error event. The bound is not a timer per request: one
sweep costs less than arming and cancelling a timer on every request of the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import msgspec
from aiohttp import web

from lmtui.core.events import EventKind, Level
from lmtui.core.model import Health
from lmtui.core.scheduler import RequestInfo
from lmtui.engine.apis import (
    BY_PATH,
    CHAT,
    MAX_NAME,
    Api,
    Capabilities,
    Head,
    ResponseIds,
    response_id,
    stream_usage_into,
    usage_into,
)
from lmtui.engine.dispatch import Dispatcher, DispatchError, Lease
from lmtui.engine.errors import JSON_HEADERS, UNAUTHORIZED, error_body
from lmtui.engine.exchange import AiohttpExchange, Exchange
from lmtui.engine.guard import AuthFailures, BrowserGuard, Refusal
from lmtui.engine.peers import PEER_HEADER, VIA_HEADER, Peer, Peers, is_peer_node
from lmtui.engine.ratelimit import RateLimited, RateLimits
from lmtui.http import Pool, Response, UpstreamError, pool_for

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", **SSE_HEADERS}

#: The requests the fast front serves itself (``lmtui/http/front.py``): request target →
#: the path it is routed as. Everything else goes to aiohttp, where these are mounted too.
#: Anthropic's paths are here too: the front hands the router their ``x-api-key`` and
#: ``anthropic-*`` headers (``CAPTURED``), and its own errors take each path's shape.
FAST_PATHS = {
    b"/v1/chat/completions": "/v1/chat/completions",
    b"/v1/completions": "/v1/completions",
    b"/v1/embeddings": "/v1/embeddings",
    b"/v1/responses": "/v1/responses",
    b"/v1/messages": "/v1/messages",
    b"/v1/messages/count_tokens": "/v1/messages/count_tokens",
}
#: Headers the fast front passes on to :meth:`Router.serve`: Anthropic's key and the API
#: version and beta features an Anthropic client asks for (sent on to the node).
CAPTURED = frozenset((b"x-api-key", b"anthropic-version", b"anthropic-beta"))
_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 500: "server_error"}
_ERROR_TYPES.update({503: "server_error", 429: "rate_limit_error"})

#: The longest idle TTL a request may ask for with ``ttl``: a year, in seconds.
MAX_TTL_S = 365 * 86400.0


def request_ttl(value: object) -> float | None:
    """A request's ``ttl`` as lmtui honours it: seconds, a number in (0, a year]; any other
    value (LM Studio's is a number) is left to the server and ignored by lmtui."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_TTL_S:
        return float(value)
    return None


#: Upstream attempts per request: the first try plus failovers before the first byte.
MAX_ATTEMPTS = 3
#: How often the watchdog looks at requests waiting on a node (seconds).
WATCHDOG_EVERY_S = 0.25
#: A stream already flowing from a node marked down is cut only once it has also been
#: silent this long: a node whose polls time out because it is overloaded may still be
#: streaming well, and cutting that would lose a good answer.
STALLED_STREAM_S = 2.0


__all__ = ["MAX_NAME", "Outcome", "Router"]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


#: Kept under their old names for callers and tests (the readers live in ``apis.py``).
_usage_into = usage_into
_stream_usage_into = stream_usage_into

_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


class _RetryElsewhere(Exception):
    """The upstream failed before anything reached the client: try another replica."""


class _PathAbsent(Exception):
    """The node does not serve this API path (it answered 404/501 for it): marked absent
    there, and the request goes to a node that serves it, before its first byte."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class _Attempt:
    """One request upstream, as the watchdog sees it."""

    __slots__ = ("abort", "deadline", "last", "node", "started", "task")

    def __init__(self, task: asyncio.Task[object], node: str, deadline: float) -> None:
        self.task = task
        self.node = node
        #: Loop time by which the first byte must have come.
        self.deadline = deadline
        #: True once the node's first byte came back.
        self.started = False
        #: Loop time of the last bytes from the node (set while a stream flows).
        self.last = 0.0
        #: Why the watchdog gave up on it (set just before it cancels the task).
        self.abort: str | None = None

    def given_up(self) -> bool:
        """After a CancelledError: True when the watchdog caused it (and only it), so the
        request carries on with its failover; False for anything else (the client left)."""
        return self.abort is not None and self.task.uncancel() == 0


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for metrics and the request log."""

    model: str
    node: str | None = None
    status: int = 200
    outcome: str = "ok"
    queue_wait_s: float = 0.0
    ttft_s: float | None = None
    stream: bool = False
    user: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: Data events of a stream: when the server reports no usage (the client did not ask
    #: for ``stream_options.include_usage``), one event carries about one token, which is
    #: what tokens/s counts then. Never written to the request log as if it were usage.
    stream_events: int = 0
    #: Which API (``apis.BY_PATH``'s names: ``chat``, ``responses``, ``messages``...).
    api: str = "chat"


OnDone = Callable[[Outcome, float, float], None]


class Router:
    """The HTTP server for ``/v1/*``; the control API and ``/metrics`` mount beside it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        node_urls: dict[str, str],
        node_keys: dict[str, str | None],
        *,
        api_keys: list[str],
        queue_timeout_s: float,
        max_body_bytes: int,
        models: Callable[[], list[dict[str, object]]],
        resolve: Callable[[str], str],
        on_done: OnDone | None = None,
        clock: Callable[[], float] = time.time,
        first_byte_timeout_s: float = 300.0,
        node_first_byte_s: dict[str, float] | None = None,
        model_first_byte_s: dict[str, float] | None = None,
        guard: BrowserGuard | None = None,
        auth_failures: AuthFailures | None = None,
        ttl_nodes: frozenset[str] = frozenset(),
        body_timeout_s: float = 75.0,
        max_answer_bytes: int = 64 * 1024 * 1024,
        limits: RateLimits | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        #: What the fast front hands :meth:`serve` beside the headers it reads itself.
        self.captured_headers = CAPTURED
        #: Where requests go that the cluster cannot serve in time (``peers.py``).
        self.peers = peers or Peers((), {})
        self._has_peers = bool(self.peers)
        #: (peer, model) → (time of its last event, requests since): one event per model
        #: and peer every PEER_EVENT_EVERY_S, not one per request.
        self._peer_events: dict[tuple[str, str], tuple[float, int]] = {}
        #: Per-key, per-address and failed-authentication limits (``ratelimit.py``).
        self.limits = limits or RateLimits()
        #: The CSRF / DNS-rebinding rules (``guard.py``), checked in :meth:`admit` for
        #: ``/v1`` on both servers; the engine's aiohttp middleware checks every path.
        self.guard = guard or BrowserGuard()
        self.auth_failures = auth_failures or AuthFailures(on_failure=self.limits.auth_failed)
        #: Longest a request body may take to arrive on aiohttp's path (``idle_timeout``).
        self.body_timeout_s = body_timeout_s
        #: Largest non-streamed answer read from a node (``[router] max_answer_bytes``).
        self.max_answer_bytes = max_answer_bytes
        #: Nodes whose server reads a request's ``ttl`` as LM Studio defines it (LM Studio);
        #: the others get the field removed.
        self.ttl_nodes = ttl_nodes
        self.first_byte_timeout_s = first_byte_timeout_s
        self.node_first_byte_s = dict(node_first_byte_s or {})
        self.model_first_byte_s = model_first_byte_s or {}
        self._attempts: set[_Attempt] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self.node_urls = {n: u.rstrip("/") for n, u in node_urls.items()}
        self.node_keys = dict(node_keys)
        for p in self.peers.peers:
            # A peer is sent requests as a node is, under its node name (``peer:NAME``).
            self.node_keys[p.node] = p.key
            self.node_first_byte_s[p.node] = p.first_byte_timeout_s
        self.api_keys = [k.encode() for k in api_keys]
        self.queue_timeout_s = queue_timeout_s
        self.max_body_bytes = max_body_bytes
        self.models = models
        self.resolve = resolve
        self.on_done = on_done
        self.clock = clock
        #: Which node serves which API: the backends' word, corrected by the nodes' answers.
        self.capabilities = Capabilities(dispatcher.backends, clock=clock)
        #: Responses API ids → the replica that holds their state (``previous_response_id``).
        self.response_ids = ResponseIds()
        self._pools: dict[str, Pool] = {}
        self._headers: dict[tuple[str, bool], dict[str, str]] = {}
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        for path in BY_PATH:
            app.router.add_post(path, self._handler(path))
        app.router.add_get("/v1/models", self.list_models)

    def _handler(self, path: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.proxy_aiohttp(request, path)

        return handle

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/embeddings")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        ex = AiohttpExchange(request)
        if not await self._admit_aiohttp(request, ex, CHAT):
            assert ex.response is not None
            return ex.response
        return web.Response(
            body=_encode({"object": "list", "data": self.models()}), content_type="application/json"
        )

    # -- the hot path ----------------------------------------------------------------------

    def authorized(self, authorization: str, x_api_key: str | None = None) -> bool:
        """Does the ``Authorization`` header (or, on Anthropic's paths, ``x-api-key``)
        carry one of the API keys (or are there none)?"""
        return not self.api_keys or self._key_index(authorization, x_api_key) >= 0

    def _key_index(self, authorization: str, x_api_key: str | None = None) -> int:
        """Which API key the ``Authorization`` header (or ``x-api-key``) carries: its
        index, else -1."""
        token = authorization[7:].encode() if authorization[:7].lower() == "bearer " else b""
        other = x_api_key.encode() if x_api_key else b""
        # Compare against every key so the time taken does not say which one matched.
        found = -1
        for i, key in enumerate(self.api_keys):
            if hmac.compare_digest(token, key) | hmac.compare_digest(other, key):
                found = i
        return found

    def refusal(
        self, method: str, host: str | None, origin: str | None, content_type: str | None
    ) -> Refusal | None:
        """Why a request to ``/v1`` is refused before its key is looked at (``guard.py``)."""
        return self.guard.check(method, host, origin, content_type, keyed=bool(self.api_keys))

    async def serve(
        self,
        reply: Exchange,
        path: str,
        body: bytes,
        auth: str,
        host: str | None,
        origin: str | None,
        ctype: str | None,
        peer: str | None,
        extra: Mapping[bytes, str] | None = None,
    ) -> None:
        """The fast front's handler (``lmtui/http/front.py``): one complete request, its
        head already parsed; the same gate (:meth:`admit`) as aiohttp's path. ``extra``:
        the ``CAPTURED`` headers the request had."""
        t0 = self.clock()
        api = BY_PATH[path]
        if not api.anthropic:
            if await self.admit(reply, peer, host, origin, ctype, auth):
                await self.proxy(reply, path, body, t0)
            return
        x_api_key = extra.get(b"x-api-key") if extra else None
        if await self.admit(reply, peer, host, origin, ctype, auth, "POST", api, x_api_key):
            headers = None
            if extra:
                # What the client asks of the node (bounded: the client's strings; llhttp
                # has refused line breaks in header values).
                headers = {h: v[:200] for h in _ANTHROPIC_HEADERS if (v := extra.get(h.encode()))}
            await self.proxy(reply, path, body, t0, headers)

    def error_body(self, status: int, message: str, code: str, path: str | None = None) -> bytes:
        """The error JSON of an answer the fast front gives itself (408, 413, 500, 503),
        in the shape of ``path``'s API (Anthropic's on its paths)."""
        type_ = _ERROR_TYPES.get(status, "invalid_request_error")
        api = BY_PATH.get(path) if path is not None else None
        if api is not None and api.anthropic:
            return api.error(status, message, type_, code)
        return error_body(message, type_, code)

    async def admit(
        self,
        ex: Exchange,
        peer: object,
        host: str | None,
        origin: str | None,
        content_type: str | None,
        authorization: str,
        method: str = "POST",
        api: Api = CHAT,
        x_api_key: str | None = None,
    ) -> bool:
        """The one gate of ``/v1``, for the fast front and aiohttp's handlers alike: the
        browser rules (403, 415), the failed-authentication limit (429, before the key is
        judged), the key (401, counted and logged), then the per-address and per-key rate
        limits (429), each answered in ``api``'s error shape. True when the request may be
        served; else its refusal has been sent through ``ex``. ``peer`` is the client's
        address or its connection's transport: read only when a limit or a failed key
        needs it."""
        refusal = self.refusal(method, host, origin, content_type)
        if refusal is not None:
            status, message, code = refusal
            type_ = "permission_error" if status == 403 else "invalid_request_error"
            await ex.send(status, api.error(status, message, type_, code), JSON_HEADERS)
            return False
        limits = self.limits
        key = -1
        limited = None
        if self.api_keys:
            # The address is read only when something needs it: a failure lately, a key
            # that fails, a request limit.
            if limits.failing and (limited := limits.check_failures(peer_address(peer))):
                await send_limited(ex, limited, api)
                return False
            key = self._key_index(authorization, x_api_key)
            if key < 0:
                self.auth_failures.record(peer_address(peer), "v1")  # spends a failure
                message, type_, code = UNAUTHORIZED
                if api.anthropic:
                    message = message.replace("'Authorization: Bearer <key>'", "'x-api-key: <key>'")
                await ex.send(401, api.error(401, message, type_, code), JSON_HEADERS)
                return False
        if limits.limits_requests:
            limited = limits.check_request(peer_address(peer), key)
            if limited is not None:
                await send_limited(ex, limited, api)
                return False
        return True

    async def _admit_aiohttp(self, request: web.Request, ex: AiohttpExchange, api: Api) -> bool:
        h = request.headers
        return await self.admit(
            ex,
            request.transport,
            h.get("Host"),
            h.get("Origin"),
            h.get("Content-Type"),
            h.get("Authorization", ""),
            request.method,
            api,
            h.get("x-api-key") if api.anthropic else None,
        )

    async def proxy_aiohttp(self, request: web.Request, path: str) -> web.StreamResponse:
        """The ``aiohttp.web`` handler: requests the fast front passed on (see front.py)."""
        t0 = self.clock()
        api = BY_PATH[path]
        ex = AiohttpExchange(request)
        if not await self._admit_aiohttp(request, ex, api):
            assert ex.response is not None
            return ex.response
        if (request.content_length or 0) > self.max_body_bytes:
            return _json_response(413, api.error(413, *self.too_large))
        try:
            # A body that dribbles in (a chunked head with no chunks, a byte every few
            # seconds) is given as long as an idle connection, not forever.
            async with asyncio.timeout(self.body_timeout_s):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_response(413, api.error(413, *self.too_large))
        except TimeoutError:
            resp = _json_response(
                408,
                api.error(
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    "invalid_request_error",
                    "request_timeout",
                ),
            )
            resp.force_close()
            return resp
        extra: dict[str, str] | None = None
        if api.anthropic:
            # The API version and beta features a client asks for go to the node (bounded:
            # they are the client's strings).
            extra = {
                h: v[:200]
                for h in _ANTHROPIC_HEADERS
                if (v := request.headers.get(h)) and "\n" not in v and "\r" not in v
            }
        # Sent by an lmtui to its peer: served here or not at all, never passed on again.
        hop = VIA_HEADER in request.headers
        await self.proxy(ex, path, body, t0, extra, hop=hop)
        assert ex.response is not None, "the router always answers"
        return ex.response

    async def proxy(
        self,
        ex: Exchange,
        path: str,
        body: bytes,
        t0: float,
        extra_headers: Mapping[str, str] | None = None,
        *,
        hop: bool = False,
    ) -> None:
        """Serve one authorized request to ``path`` (a key of ``apis.BY_PATH``) whose whole
        body is read: answer through ``ex``. ``hop``: it came from another lmtui, so it is
        never sent on to a peer."""
        api = BY_PATH.get(path, CHAT)
        try:
            head = api.decode(body)
        except msgspec.ValidationError as e:  # a subclass of DecodeError: check it first
            return await self._bad_request(
                ex, api, t0, f"Invalid request: {e}", "invalid_request", param=None
            )
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
            # msgspec raises the last two for bad UTF-8 inside a string and for nesting
            # deeper than the interpreter's stack: what the client sent, never a 500.
            what = (
                "nested too deeply"
                if isinstance(e, RecursionError)
                else f"not valid UTF-8 ({e.reason})"
                if isinstance(e, UnicodeDecodeError)
                else f"not valid JSON: {e}"
            )
            return await self._bad_request(
                ex, api, t0, f"The request body is {what}", "invalid_json", param=None
            )
        model = head.model
        previous = getattr(head, "previous_response_id", None) if api.stateful else None
        if not model and previous is not None:
            # A continuation may leave the model out: it is the one that made the response.
            known = self.response_ids.get(previous)
            if known is not None:
                model = known[1]
                doc = _json.decode(body)
                doc["model"] = model
                body = _encode(doc)
        if not model:
            return await self._bad_request(
                ex, api, t0, "you must provide a model parameter", "missing_model", param="model"
            )
        out = Outcome(
            model=self.resolve(model), stream=bool(head.stream), user=head.user, api=api.name
        )
        try:
            await self._serve(ex, api, body, head, model, previous, out, extra_headers, hop)
        except asyncio.CancelledError:
            out.outcome, out.status = "client_gone", 499
            raise
        finally:
            if self.on_done is not None:
                self.on_done(out, t0, self.clock())

    async def _bad_request(
        self, ex: Exchange, api: Api, t0: float, message: str, code: str, *, param: str | None
    ) -> None:
        """Answer 400 and count it (as ``bad_request``, under no model a client chose)."""
        try:
            await ex.send(
                400, api.error(400, message, "invalid_request_error", code, param), JSON_HEADERS
            )
        finally:
            if self.on_done is not None:
                out = Outcome(model="", status=400, outcome="bad_request", api=api.name)
                self.on_done(out, t0, self.clock())

    @property
    def too_large(self) -> tuple[str, str, str]:
        """The 413 error: message, type, code."""
        return (
            f"Request body larger than {self.max_body_bytes} bytes ([router] max_body_bytes).",
            "invalid_request_error",
            "request_too_large",
        )

    async def _serve(
        self,
        ex: Exchange,
        api: Api,
        body: bytes,
        head: Head,
        model: str,
        previous: str | None,
        out: Outcome,
        extra: Mapping[str, str] | None,
        hop: bool = False,
    ) -> None:
        started = self.clock()
        deadline = started + self.queue_timeout_s
        # The peers that may take this request if the cluster cannot serve it in time.
        peers: tuple[Peer, ...] = (
            self.peers.for_model(out.model) if self._has_peers and not hop else ()
        )
        #: What each peer said when it could not take the request (for the error).
        peer_said: list[str] = []

        async def to_peers(reason: str, only: tuple[Peer, ...] | None = None) -> bool:
            out.queue_wait_s = self.clock() - started
            return await self._to_peers(
                ex, api, body, head, out, extra, only or peers, reason, peer_said
            )

        local_deadline = deadline
        if peers:
            queued = self.dispatcher.store.snapshot.queue_depth.get(out.model, 0)
            fq = self.peers.fallback_queue
            if fq and queued >= fq:
                if await to_peers(f"{queued} requests already queued for it"):
                    return None
            elif self.peers.available(out.model):
                # Wait for a local replica only so long while a peer could take it.
                local_deadline = min(deadline, started + self.peers.fallback_after_s)

        async def progress(message: str) -> None:
            # Only streaming clients hear about waits: an SSE comment keeps their connection
            # alive and is ignored by every SSE parser; a JSON client just waits.
            if not head.stream:
                return
            if not ex.streaming:
                await ex.start_stream(200, SSE_RESPONSE_HEADERS)
            await ex.write(b": " + message.encode() + b"\n\n")

        exclude: frozenset[tuple[str, str]] = frozenset()
        rid = f"q{next(self._ids)}"
        last_error = "no replica"
        ttl = getattr(head, "ttl", msgspec.UNSET)  # LM Studio's JIT ttl (chat-like paths)
        # The replica that holds the state a previous_response_id names: only it may serve.
        pin = self.response_ids.pin(self.dispatcher.store.snapshot, previous) if previous else None
        if (
            pin is None
            and previous
            and self._has_peers
            and not hop
            and (known := self.response_ids.get(previous)) is not None
        ):
            peer = self.peers.by_name.get(known[0].removeprefix("peer:"))
            if is_peer_node(known[0]) and peer is not None:
                # A response a peer made: its state is there, and only there.
                if await to_peers(f"it continues {previous!r}, which it holds", (peer,)):
                    return None
                e = DispatchError(
                    f"the peer holding previous_response_id {previous!r} cannot take it: "
                    + "; ".join(peer_said)
                )
                out.status, out.outcome = 503, "error"
                return await self._fail(ex, api, e)
        failures = 0
        retried = False
        # Each answer "this path is absent" rules out one node for good, so the loop ends;
        # the bound is a second guard.
        for _turn in range(MAX_ATTEMPTS + len(self.node_urls)):
            skip: frozenset[str] = frozenset()
            if api.learnt:
                nodes = self.dispatcher.store.snapshot.nodes
                skip = self.capabilities.lacking(api, nodes)
                if pin is not None:
                    skip = skip | frozenset(n for n in nodes if n != pin[0])
                if skip and skip.issuperset(nodes):
                    if peers and await to_peers(f"no node serves POST {api.path}"):
                        return None
                    return await self._no_node(ex, api, out, model, peer_said)
            try:
                # A retry had its turn already: it goes first, not last.
                lease = await self.dispatcher.acquire(
                    RequestInfo(
                        model,
                        head.user,
                        rid,
                        retried,
                        exclude,
                        skip_nodes=skip,
                        ttl_s=None if ttl is msgspec.UNSET else request_ttl(ttl),
                    ),
                    deadline=local_deadline,
                    progress=progress,
                )
            except DispatchError as e:
                if failures and e.status == 503:
                    # Nothing left to try after a replica failed: the failure is the answer
                    # (a 502 with the node's error), not "no healthy node", which hid it.
                    break
                if peers and e.status in (404, 429, 503, 504):
                    waited = e.status == 504 and local_deadline < deadline
                    why = (
                        f"no local replica within {self.peers.fallback_after_s:g} s"
                        if waited
                        else e.message
                    )
                    if await to_peers(why):
                        return None
                    if waited and self.clock() < deadline:
                        # No peer could take it after all: it waits on for a local replica,
                        # at the front of the queue (it has had its turn).
                        local_deadline, retried = deadline, True
                        continue
                    if peer_said:
                        e = _with_peers(e, peer_said)
                out.status, out.outcome = e.status, _outcome_of(e)
                return await self._fail(ex, api, e)
            out.node, out.queue_wait_s = lease.node, lease.queue_wait_s
            ok: bool | None = None  # how the replica did, for its circuit (None: unknown)
            retried = True
            try:
                await self._forward(ex, lease, api, body, head, out, extra)
                ok = out.status < 500
                return None
            except _PathAbsent as e:
                # The replica is fine; it lacks this path. Not a failure of its circuit.
                self.capabilities.mark_absent(lease.node, api.name, e.status, e.body)
                self.dispatcher.event(
                    EventKind.ROUTE,
                    f"{lease.node} does not serve POST {api.path} (HTTP {e.status}); "
                    f"{lease.model}'s request goes to a node that does, and {lease.node} "
                    "is asked again in a while",
                    node=lease.node,
                    model=lease.model,
                    level=Level.WARNING,
                )
            except _RetryElsewhere as e:
                ok = False
                failures += 1
                last_error = str(e)
                if pin is not None:
                    last_error = (
                        f"the replica holding previous_response_id {previous!r} "
                        f"({lease.node}) failed: {e}"
                    )
                    break
                self.dispatcher.event(
                    EventKind.ERROR,
                    f"{lease.model} on {lease.node} failed before the first byte ({e}); "
                    "trying another replica",
                    node=lease.node,
                    model=lease.model,
                    level=Level.WARNING,
                )
                exclude = exclude | {lease.key}
                if failures >= MAX_ATTEMPTS:
                    break
            finally:
                self.dispatcher.report(lease.key, ok)
                self.dispatcher.release(lease)
        if peers and pin is None and await to_peers(f"every local try failed: {last_error}"):
            return None
        out.node = None if is_peer_node(out.node) else out.node
        out.status, out.outcome = 502, "upstream_error"
        err = DispatchError(f"every attempt failed before the first byte; last: {last_error}")
        if pin is not None:
            err = DispatchError(last_error)
        err.status, err.code = 502, "upstream_error"
        return await self._fail(ex, api, _with_peers(err, peer_said) if peer_said else err)

    async def _no_node(
        self, ex: Exchange, api: Api, out: Outcome, model: str, peer_said: list[str] | None = None
    ) -> None:
        """No node serves ``api``: 404, or the status nodes answered (501 for rerank
        without ``--reranking``), with what the last of them said."""
        status, said = self.capabilities.why(api.name)
        message = f"no node serves POST {api.path} (for {model})"
        if said:
            message += f"; the last node asked answered HTTP {status}: {said}"
        if peer_said:
            message += "; " + "; ".join(peer_said)
        out.status, out.outcome = status, "upstream_error" if said else "error"
        err = DispatchError(message)
        err.status, err.code = status, "not_supported" if status == 501 else "not_found"
        return await self._fail(ex, api, err)

    async def _to_peers(
        self,
        ex: Exchange,
        api: Api,
        body: bytes,
        head: Head,
        out: Outcome,
        extra: Mapping[str, str] | None,
        peers: tuple[Peer, ...],
        reason: str,
        said: list[str],
    ) -> bool:
        """Send the request to the first of ``peers`` that takes it and answers: True when
        one did (its answer has been sent); False when none did, with what each said
        added to ``said``. Only before anything reached the client but SSE comments."""
        local_node = out.node
        for peer in peers:
            now = self.clock()
            why = peer.take(now)
            if why is not None:
                said.append(f"peer {peer.name}: {why}")
                continue
            self.peers.changed()
            lease = Lease(
                (peer.node, ""),
                peer.node,
                peer.remote_name(out.model),
                out.queue_wait_s,
                reason,
                peer.url,
            )
            out.node, out.status, out.outcome = peer.node, 200, "ok"
            ok: bool | None = None  # None: the client left
            try:
                if ex.streaming:  # SSE comments went out already: the marker is one too
                    await ex.write(f": served by peer {peer.name}\n\n".encode())
                    target: Exchange = ex
                else:
                    target = _Marked(ex, peer.name)
                await self._forward(target, lease, api, body, head, out, extra)
                ok = out.status < 500
                self._peer_event(peer, out.model, reason)
                return True
            except _PathAbsent as e:
                ok, why = False, f"answered HTTP {e.status} for POST {api.path}"
            except _RetryElsewhere as e:
                ok, why = False, str(e)
            finally:
                peer.done(ok, why)
                self.peers.changed()
            said.append(f"peer {peer.name}: {why}")
            self.dispatcher.event(
                EventKind.ERROR,
                f"peer {peer.name} failed {out.model}'s request ({why})"[:500],
                model=out.model,
                level=Level.WARNING,
            )
        out.node, out.status, out.outcome = local_node, 200, "ok"
        return False

    def _peer_event(self, peer: Peer, model: str, reason: str) -> None:
        """Say that requests go to a peer: once per model and peer every
        PEER_EVENT_EVERY_S, with the count of those in between."""
        now = self.clock()
        key = (peer.name, model)
        last, since = self._peer_events.get(key, (0.0, 0))
        if now - last < PEER_EVENT_EVERY_S:
            self._peer_events[key] = (last, since + 1)
            return
        if len(self._peer_events) >= 1024:
            self._peer_events.clear()
        self._peer_events[key] = (now, 0)
        more = f" (and {since} more since the last such event)" if since else ""
        self.dispatcher.event(
            EventKind.ROUTE,
            f"{model} → peer {peer.name}: {reason}{more}"[:500],
            model=model,
            level=Level.WARNING,
        )

    async def _forward(
        self,
        ex: Exchange,
        lease: Lease,
        api: Api,
        body: bytes,
        head: Head,
        out: Outcome,
        extra: Mapping[str, str] | None,
    ) -> None:
        # Rewritten only when it must be: an alias to the node's name, or a ``ttl`` a server
        # other than LM Studio would misread (or refuse, as OpenAI's API does).
        strip_ttl = getattr(head, "ttl", msgspec.UNSET) is not msgspec.UNSET and (
            lease.node not in self.ttl_nodes
        )
        if head.model != lease.model or strip_ttl:
            doc = _json.decode(body)
            doc["model"] = lease.model
            if strip_ttl:
                doc.pop("ttl", None)
            body = _encode(doc)
        pool = self._pool(lease.node, lease.url)
        headers = self._upstream_headers(lease.node, api.anthropic)
        if extra:
            headers = {**headers, **extra}
        t_send = self.clock()
        att = self._watch(lease)
        try:
            return await self._exchange(ex, pool, lease, api, body, head, headers, out, t_send, att)
        except asyncio.CancelledError:
            if not att.given_up():
                raise
            if att.started:
                # A stream that has begun cannot move: end it with an explicit error.
                out.outcome, out.status = "upstream_error", 502
                msg = f"upstream {lease.node} {att.abort}; the stream was cut"
                with contextlib.suppress(ConnectionResetError):
                    await ex.end(_cut_event(api, msg))
                return None
            raise _RetryElsewhere(att.abort) from None
        finally:
            self._attempts.discard(att)

    async def _exchange(
        self,
        ex: Exchange,
        pool: Pool,
        lease: Lease,
        api: Api,
        body: bytes,
        head: Head,
        headers: Mapping[str, str],
        out: Outcome,
        t_send: float,
        att: _Attempt,
    ) -> None:
        try:
            up = await pool.request("POST", api.path, body, headers)
        except UpstreamError as e:
            raise _RetryElsewhere(str(e)) from e
        try:
            status = up.status
            # A 501 on a path that may be absent is the node saying so (llama-server's
            # /v1/rerank without --reranking), not a failure: read below.
            if status >= 500 and not (status == 501 and api.learnt):
                try:
                    detail = (await up.read())[:200].decode(errors="replace")
                except UpstreamError:
                    detail = ""
                raise _RetryElsewhere(f"HTTP {status}: {detail}")
            out.status = status
            if status >= 400:
                out.outcome = "upstream_error"
            ctype = up.headers.get("content-type", "application/json")
            if not ctype.startswith("text/event-stream"):
                try:
                    # Bounded: a node that answers hundreds of MiB (a bug, a wrong server)
                    # must not take lmtui's memory with it.
                    data = await up.read(self.max_answer_bytes)
                except UpstreamError as e:
                    raise _RetryElsewhere(str(e)) from e
                self._attempts.discard(att)  # the whole answer is here: nothing to watch
                out.ttft_s = self.clock() - t_send
                if api.learnt and api.says_absent(
                    status,
                    data,
                    # A 404 naming what the request named is about that, not the path
                    # (vLLM answers an unknown previous_response_id with 404).
                    (lease.model, head.model or "", getattr(head, "previous_response_id", "")),
                ):
                    raise _PathAbsent(status, data)
                if (
                    status == 200
                    and not usage_into(out, data)
                    and ctype.startswith("application/json")
                ):
                    # A 200 a client cannot parse is a failed answer: served elsewhere, or
                    # a 502 that says so — never passed on as a success.
                    raise _RetryElsewhere("HTTP 200 with a body that is not valid JSON")
                if status >= 400:
                    data = api.node_error(status, data)
                    if api.anthropic:
                        ctype = "application/json"
                elif api.stateful and (r := response_id(data)) is not None:
                    self.response_ids.learn(r, lease.node, lease.model)
                if ex.streaming:  # the client already got SSE comments: stay SSE
                    return await ex.end(api.as_sse(status, data))
                return await ex.send(status, data, {"Content-Type": ctype})
            return await self._pipe(ex, up, api, lease, t_send, out, att)
        finally:
            up.release()

    def _watch(self, lease: Lease) -> _Attempt:
        """Register a request going upstream with the watchdog (started on first use)."""
        bound = self.model_first_byte_s.get(lease.model) or self.node_first_byte_s.get(
            lease.node, self.first_byte_timeout_s
        )
        task = asyncio.current_task()
        assert task is not None
        att = _Attempt(task, lease.node, task.get_loop().time() + bound)
        self._attempts.add(att)
        if self._watchdog is None:
            self._watchdog = task.get_loop().create_task(self._watch_loop(), name="watchdog")
        return att

    async def _watch_loop(self) -> None:
        """Give up on requests whose node went down or that wait too long for a first byte."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            if not self._attempts:
                continue
            now = loop.time()
            nodes = self.dispatcher.store.snapshot.nodes
            for att in list(self._attempts):
                if att.abort is not None:
                    continue
                node = nodes.get(att.node)
                if (
                    node is not None
                    and node.health is Health.DOWN
                    and (not att.started or now - att.last >= STALLED_STREAM_S)
                ):
                    att.abort = f"went down ({node.last_error or 'no answer'})"[:300]
                elif not att.started and now > att.deadline:
                    att.abort = "sent no first byte within the first-byte timeout"
                else:
                    continue
                att.task.cancel()

    async def _pipe(
        self,
        ex: Exchange,
        up: Response,
        api: Api,
        lease: Lease,
        t_send: float,
        out: Outcome,
        att: _Attempt,
    ) -> None:
        try:
            chunk = await up.next_chunk()
        except UpstreamError as e:
            raise _RetryElsewhere(str(e)) from e
        if chunk is None:
            raise _RetryElsewhere("empty stream")
        att.started = True
        att.last = _loop_time()
        out.ttft_s = self.clock() - t_send
        if api.stateful and (r := response_id(chunk[:8192])) is not None:
            # The first event (response.created) names the response: remember its replica.
            self.response_ids.learn(r, lease.node, lease.model)
        if not ex.streaming:
            if up.at_end:
                self._attempts.discard(att)
                # The whole stream is already here (a short answer): one plain response with
                # a length, as cheap as a JSON answer, the same bytes for an SSE client.
                api.stream_usage(out, chunk if api.stateful else chunk[-8192:])
                out.stream_events = chunk.count(b"data: {")
                whole, held = _complete_lines(chunk)
                body = whole + _unfinished(api, out, whole, held)
                return await ex.send(up.status, body, SSE_RESPONSE_HEADERS)
            await ex.start_stream(up.status, SSE_RESPONSE_HEADERS)
        tail = b""
        #: The start of a line whose end has not come yet: passed on with its end, so a
        #: stream cut mid-line never leaves half an event glued to lmtui's error event.
        held = b""
        try:
            while chunk is not None:
                if held:
                    chunk, held = held + chunk, b""
                if not chunk.endswith(b"\n"):
                    chunk, held = _complete_lines(chunk)
                out.stream_events += chunk.count(b"data: {")
                tail = tail[-4096:] + chunk if len(chunk) < 4096 else chunk
                if up.at_end:
                    # The upstream has finished: send the last piece with the end of the
                    # stream, one write instead of two.
                    await ex.end(chunk + _unfinished(api, out, tail, held))
                    api.stream_usage(out, tail)
                    return
                if chunk:
                    await ex.write(chunk)  # raises ConnectionResetError if the client left
                try:
                    chunk = await up.next_chunk()
                    att.last = _loop_time()
                except UpstreamError as e:
                    # Past the first byte there is no retry: end with an explicit error.
                    out.outcome, out.status = "upstream_error", 502
                    msg = f"upstream {out.node} failed mid-stream: {e}"
                    await ex.write(_cut_event(api, msg, tail))
                    return await ex.end()
            await ex.end(_unfinished(api, out, tail, held))
            api.stream_usage(out, tail)
        except ConnectionResetError:
            # The client went away mid-stream: nothing left to tell it.
            out.outcome, out.status = "client_gone", 499

    async def _fail(self, ex: Exchange, api: Api, e: DispatchError) -> None:
        if not ex.streaming:
            headers = dict(JSON_HEADERS)
            retry_after = getattr(e, "retry_after_s", None)
            if retry_after is not None:  # 429 queue full, 503 cannot be served now
                headers["Retry-After"] = str(max(1, round(retry_after)))
            return await ex.send(
                e.status, api.error(e.status, e.message, _type_of(e.status), e.code), headers
            )
        await ex.end(api.stream_error(e.status, e.message, _type_of(e.status), e.code))

    # -- upstream sessions -------------------------------------------------------------------

    def _upstream_headers(self, node: str, anthropic: bool = False) -> dict[str, str]:
        h = self._headers.get((node, anthropic))
        if h is None:
            key = self.node_keys.get(node)
            h = {"Content-Type": "application/json"}
            if is_peer_node(node):
                h[VIA_HEADER] = "lmtui"  # that lmtui must not pass it on (peers.py)
            if key:
                h["Authorization"] = f"Bearer {key}"
                if anthropic:  # LM Studio's and llama-server's Anthropic paths read it too
                    h["x-api-key"] = key
            self._headers[(node, anthropic)] = h
        return h

    def _pool(self, node: str, url: str | None = None) -> Pool:
        """The keep-alive pool for a node, or for an instance served at its own URL (a
        pool node's spawned servers, one port each)."""
        p = self._pools.get(url or node)
        if p is None:
            # A generation can run for minutes, so only each wait for bytes is bounded
            # (900 s), not the whole answer.
            p = self._pools[url or node] = pool_for(
                (url or self.node_urls[node]).rstrip("/"),
                max_connections=256,
                connect_timeout=10,
                read_timeout=900,
            )
        return p

    async def close(self) -> None:
        """Close the upstream pools, once no request of either server is running."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        for p in self._pools.values():
            await p.close()
        self._pools.clear()


#: Seconds between two events saying one model's requests go to one peer.
PEER_EVENT_EVERY_S = 10.0


class _Marked:
    """An answer a peer gives: ``x-lmtui-peer`` on its head."""

    __slots__ = ("ex", "header")

    def __init__(self, ex: Exchange, peer: str) -> None:
        self.ex = ex
        self.header = {PEER_HEADER: peer}

    @property
    def streaming(self) -> bool:
        return self.ex.streaming

    @streaming.setter
    def streaming(self, value: bool) -> None:
        self.ex.streaming = value

    async def send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        await self.ex.send(status, body, {**headers, **self.header})

    async def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        await self.ex.start_stream(status, {**headers, **self.header})

    async def write(self, chunk: bytes) -> None:
        await self.ex.write(chunk)

    async def end(self, chunk: bytes = b"") -> None:
        await self.ex.end(chunk)


def _with_peers(e: DispatchError, said: list[str]) -> DispatchError:
    """``e`` with what the peers said that could not take the request."""
    new = DispatchError(f"{e.message}; " + "; ".join(said))
    new.status, new.code = e.status, e.code
    if (retry := getattr(e, "retry_after_s", None)) is not None:
        new.retry_after_s = retry  # type: ignore[attr-defined]
    return new


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def peer_address(peer: object) -> str | None:
    """The client's address: ``peer`` itself when it is one (the fast front knows it),
    else read from the connection's transport (None when it has gone or is not IP)."""
    if peer is None or isinstance(peer, str):
        return peer
    get = getattr(peer, "get_extra_info", None)
    name = get("peername") if get is not None else None
    return str(name[0]) if isinstance(name, tuple) and name else None


async def send_limited(ex: Exchange, limited: RateLimited, api: Api) -> None:
    """Answer a request over a rate limit: 429, ``Retry-After``, the API's error JSON."""
    headers = {**JSON_HEADERS, "Retry-After": limited.retry_after}
    await ex.send(429, api.error(429, *limited.error), headers)


#: A line of a stream longer than this without its end is passed on as it is (nothing an
#: OpenAI-compatible server sends comes near it): holding it back must not grow unbounded.
MAX_HELD_LINE = 1024 * 1024


def _complete_lines(chunk: bytes) -> tuple[bytes, bytes]:
    """``chunk`` split after its last line end: the whole lines, and the start of the next."""
    cut = chunk.rfind(b"\n") + 1
    if len(chunk) - cut > MAX_HELD_LINE:
        return chunk, b""
    return chunk[:cut], chunk[cut:]


def _cut_event(api: Api, message: str, tail: bytes | None = None) -> bytes:
    """The error event and ``[DONE]`` that end a stream lmtui could not pass on whole.
    ``tail``: the end of what was sent; unless it ends an event, a blank line does first
    (an extra one when it is not known: SSE parsers skip it)."""
    end = b"" if tail is not None and (not tail or tail.endswith(b"\n\n")) else b"\n"
    return end + api.stream_error(502, message, "upstream_error", "stream_interrupted")


def _unfinished(api: Api, out: Outcome, tail: bytes, held: bytes) -> bytes:
    """What to add at the end of a stream the node ended: nothing after its last word
    (``data: [DONE]`` for the OpenAI three, every OpenAI-compatible server ends its
    streams so; ``response.completed`` for Responses; ``message_stop`` for Messages);
    otherwise (a body ended half-way, cleanly or not) an explicit error, so no client takes
    a truncated answer for a whole one."""
    if not held and api.ended(tail):
        return b""
    out.outcome, out.status = "upstream_error", 502
    # A line the node left unended (``held``) is dropped: never half an event.
    return _cut_event(api, f"upstream {out.node} ended the stream before its end", tail)


def _type_of(status: int) -> str:
    if status == 404 or status == 400 or status == 413 or status == 501:
        return "invalid_request_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error"


def _outcome_of(e: DispatchError) -> str:
    return {404: "not_found", 429: "rejected_429", 504: "timeout_504"}.get(e.status, "error")
