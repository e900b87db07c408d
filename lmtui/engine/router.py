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
``front.py``, everything else through ``aiohttp.web``; both call :meth:`Router.proxy`. An
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import msgspec
from aiohttp import web

from lmtui.core.events import EventKind, Level
from lmtui.core.model import Health
from lmtui.core.scheduler import RequestInfo
from lmtui.engine.dispatch import Dispatcher, DispatchError, Lease
from lmtui.engine.errors import JSON_HEADERS, UNAUTHORIZED, error_body, error_response
from lmtui.engine.exchange import AiohttpExchange, Exchange
from lmtui.engine.guard import AuthFailures, BrowserGuard, Refusal
from lmtui.http import Pool, Response, UpstreamError, pool_for

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", **SSE_HEADERS}

#: Upstream attempts per request: the first try plus failovers before the first byte.
MAX_ATTEMPTS = 3
#: How often the watchdog looks at requests waiting on a node (seconds).
WATCHDOG_EVERY_S = 0.25
#: A stream already flowing from a node marked down is cut only once it has also been
#: silent this long: a node whose polls time out because it is overloaded may still be
#: streaming well, and cutting that would lose a good answer.
STALLED_STREAM_S = 2.0


#: The longest model name or ``user`` a request may give: both reach events, metrics, logs
#: and the request log, so a longer one is a 400 that says so.
MAX_NAME = 256
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]


class _Head(msgspec.Struct):
    """The only fields the router reads from a request body; the rest passes untouched
    (whatever their types: an unknown field is the server's business, not lmtui's)."""

    model: _Name | None = None
    #: ``null`` is allowed, as the OpenAI API allows it: no stream.
    stream: bool | None = None
    user: _Name | None = None


class _Counts(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Usage(msgspec.Struct):
    """Token counts from an answer (``usage``), for the request log; the rest is skipped."""

    usage: _Counts | None = None


_decode_head = msgspec.json.Decoder(_Head).decode


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


_decode_usage = msgspec.json.Decoder(_Usage).decode


def _usage_into(out: Outcome, payload: bytes) -> bool:
    """Read the token counts into ``out``; False when ``payload`` is not JSON at all."""
    try:
        u = _decode_usage(payload).usage
    except msgspec.ValidationError:
        return True  # JSON, with a ``usage`` of another shape: not ours to judge
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    if u is not None:
        out.tokens_in, out.tokens_out = u.prompt_tokens, u.completion_tokens
    return True


def _stream_usage_into(out: Outcome, tail: bytes) -> None:
    """The usage a stream reports in its last data chunk, when the server sends one: the
    ``data:`` line holding the last ``"usage"``, found without splitting the tail."""
    i = tail.rfind(b'"usage"')
    if i < 0:
        return
    start = tail.rfind(b"data: ", 0, i)
    if start < 0:
        return
    end = tail.find(b"\n", i)
    line = tail[start + 6 : end] if end >= 0 else tail[start + 6 :]
    if line.startswith(b"{"):
        _usage_into(out, line)


_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


class _RetryElsewhere(Exception):
    """The upstream failed before anything reached the client: try another replica."""


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
        body_timeout_s: float = 75.0,
        max_answer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.dispatcher = dispatcher
        #: The CSRF / DNS-rebinding rules (``guard.py``), checked by the fast front; the
        #: aiohttp paths check the same in the engine's middleware.
        self.guard = guard or BrowserGuard()
        self.auth_failures = auth_failures or AuthFailures()
        #: Longest a request body may take to arrive on aiohttp's path (``idle_timeout``).
        self.body_timeout_s = body_timeout_s
        #: Largest non-streamed answer read from a node (``[router] max_answer_bytes``).
        self.max_answer_bytes = max_answer_bytes
        self.first_byte_timeout_s = first_byte_timeout_s
        self.node_first_byte_s = node_first_byte_s or {}
        self.model_first_byte_s = model_first_byte_s or {}
        self._attempts: set[_Attempt] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self.node_urls = {n: u.rstrip("/") for n, u in node_urls.items()}
        self.node_keys = node_keys
        self.api_keys = [k.encode() for k in api_keys]
        self.queue_timeout_s = queue_timeout_s
        self.max_body_bytes = max_body_bytes
        self.models = models
        self.resolve = resolve
        self.on_done = on_done
        self.clock = clock
        self._pools: dict[str, Pool] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy_aiohttp(request, "/v1/embeddings")

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        return web.Response(
            body=_encode({"object": "list", "data": self.models()}), content_type="application/json"
        )

    # -- the hot path ----------------------------------------------------------------------

    def authorized(self, authorization: str) -> bool:
        """Does the ``Authorization`` header carry one of the API keys (or are there none)?"""
        if not self.api_keys:
            return True
        token = authorization[7:].encode() if authorization[:7].lower() == "bearer " else b""
        # Compare against every key so the time taken does not say which one matched.
        ok = False
        for key in self.api_keys:
            ok |= hmac.compare_digest(token, key)
        return ok

    def refusal(
        self, method: str, host: str | None, origin: str | None, content_type: str | None
    ) -> Refusal | None:
        """Why a request to ``/v1`` is refused before its key is looked at (``guard.py``)."""
        return self.guard.check(method, host, origin, content_type, keyed=bool(self.api_keys))

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.authorized(request.headers.get("Authorization", "")):
            return None
        self.auth_failures.record(request.remote, "v1")
        return error_response(401, *UNAUTHORIZED)

    async def proxy_aiohttp(self, request: web.Request, path: str) -> web.StreamResponse:
        """The ``aiohttp.web`` handler: requests the fast front passed on (see front.py)."""
        t0 = self.clock()
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if (request.content_length or 0) > self.max_body_bytes:
            return error_response(413, *self.too_large)
        try:
            # A body that dribbles in (a chunked head with no chunks, a byte every few
            # seconds) is given as long as an idle connection, not forever.
            async with asyncio.timeout(self.body_timeout_s):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, *self.too_large)
        except TimeoutError:
            resp = error_response(
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s",
                "invalid_request_error",
                "request_timeout",
            )
            resp.force_close()
            return resp
        ex = AiohttpExchange(request)
        await self.proxy(ex, path, body, t0)
        assert ex.response is not None, "the router always answers"
        return ex.response

    async def proxy(self, ex: Exchange, path: str, body: bytes, t0: float) -> None:
        """Serve one authorized request whose whole body is read: answer through ``ex``."""
        try:
            head = _decode_head(body)
        except msgspec.ValidationError as e:  # a subclass of DecodeError: check it first
            return await self._bad_request(
                ex, t0, f"Invalid request: {e}", "invalid_request", param=None
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
                ex, t0, f"The request body is {what}", "invalid_json", param=None
            )
        if not head.model:
            return await self._bad_request(
                ex, t0, "you must provide a model parameter", "missing_model", param="model"
            )
        out = Outcome(model=self.resolve(head.model), stream=bool(head.stream), user=head.user)
        try:
            await self._serve(ex, path, body, head, out)
        except asyncio.CancelledError:
            out.outcome, out.status = "client_gone", 499
            raise
        finally:
            if self.on_done is not None:
                self.on_done(out, t0, self.clock())

    async def _bad_request(
        self, ex: Exchange, t0: float, message: str, code: str, *, param: str | None
    ) -> None:
        """Answer 400 and count it (as ``bad_request``, under no model a client chose)."""
        try:
            await ex.send(
                400, error_body(message, "invalid_request_error", code, param=param), JSON_HEADERS
            )
        finally:
            if self.on_done is not None:
                out = Outcome(model="", status=400, outcome="bad_request")
                self.on_done(out, t0, self.clock())

    @property
    def too_large(self) -> tuple[str, str, str]:
        """The 413 error: message, type, code."""
        return (
            f"Request body larger than {self.max_body_bytes} bytes ([router] max_body_bytes).",
            "invalid_request_error",
            "request_too_large",
        )

    async def _serve(self, ex: Exchange, path: str, body: bytes, head: _Head, out: Outcome) -> None:
        deadline = self.clock() + self.queue_timeout_s

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
        for _attempt in range(MAX_ATTEMPTS):
            try:
                # A retry (exclude is set) had its turn already: it goes first, not last.
                lease = await self.dispatcher.acquire(
                    RequestInfo(head.model or "", head.user, rid, bool(exclude), exclude),
                    deadline=deadline,
                    progress=progress,
                )
            except DispatchError as e:
                out.status, out.outcome = e.status, _outcome_of(e)
                return await self._fail(ex, e)
            out.node, out.queue_wait_s = lease.node, lease.queue_wait_s
            ok: bool | None = None  # how the replica did, for its circuit (None: unknown)
            try:
                await self._forward(ex, lease, path, body, head, out)
                ok = out.status < 500
                return None
            except _RetryElsewhere as e:
                ok = False
                last_error = str(e)
                self.dispatcher.event(
                    EventKind.ERROR,
                    f"{lease.model} on {lease.node} failed before the first byte ({e}); "
                    "trying another replica",
                    node=lease.node,
                    model=lease.model,
                    level=Level.WARNING,
                )
                exclude = exclude | {lease.key}
            finally:
                self.dispatcher.report(lease.key, ok)
                self.dispatcher.release(lease)
        out.status, out.outcome = 502, "upstream_error"
        err = DispatchError(f"every attempt failed before the first byte; last: {last_error}")
        err.status, err.code = 502, "upstream_error"
        return await self._fail(ex, err)

    async def _forward(
        self,
        ex: Exchange,
        lease: Lease,
        path: str,
        body: bytes,
        head: _Head,
        out: Outcome,
    ) -> None:
        if head.model != lease.model:
            doc = _json.decode(body)
            doc["model"] = lease.model
            body = _encode(doc)
        pool = self._pool(lease.node, lease.url)
        t_send = self.clock()
        att = self._watch(lease)
        try:
            return await self._exchange(ex, pool, lease, path, body, out, t_send, att)
        except asyncio.CancelledError:
            if not att.given_up():
                raise
            if att.started:
                # A stream that has begun cannot move: end it with an explicit error.
                out.outcome, out.status = "upstream_error", 502
                msg = f"upstream {lease.node} {att.abort}; the stream was cut"
                with contextlib.suppress(ConnectionResetError):
                    await ex.end(_cut_event(msg))
                return None
            raise _RetryElsewhere(att.abort) from None
        finally:
            self._attempts.discard(att)

    async def _exchange(
        self,
        ex: Exchange,
        pool: Pool,
        lease: Lease,
        path: str,
        body: bytes,
        out: Outcome,
        t_send: float,
        att: _Attempt,
    ) -> None:
        try:
            up = await pool.request("POST", path, body, self._upstream_headers(lease.node))
        except UpstreamError as e:
            raise _RetryElsewhere(str(e)) from e
        try:
            if up.status >= 500:
                try:
                    detail = (await up.read())[:200].decode(errors="replace")
                except UpstreamError:
                    detail = ""
                raise _RetryElsewhere(f"HTTP {up.status}: {detail}")
            out.status = up.status
            if up.status >= 400:
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
                if (
                    up.status == 200
                    and not _usage_into(out, data)
                    and ctype.startswith("application/json")
                ):
                    # A 200 a client cannot parse is a failed answer: served elsewhere, or
                    # a 502 that says so — never passed on as a success.
                    raise _RetryElsewhere("HTTP 200 with a body that is not valid JSON")
                if ex.streaming:  # the client already got SSE comments: stay SSE
                    return await ex.end(b"data: " + data + b"\n\ndata: [DONE]\n\n")
                return await ex.send(up.status, data, {"Content-Type": ctype})
            return await self._pipe(ex, up, t_send, out, att)
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
        if not ex.streaming:
            if up.at_end:
                self._attempts.discard(att)
                # The whole stream is already here (a short answer): one plain response with
                # a length, as cheap as a JSON answer, the same bytes for an SSE client.
                _stream_usage_into(out, chunk[-8192:])
                out.stream_events = chunk.count(b"data: {")
                whole, held = _complete_lines(chunk)
                body = whole + _unfinished(out, whole, held)
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
                    await ex.end(chunk + _unfinished(out, tail, held))
                    _stream_usage_into(out, tail)
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
                    await ex.write(_cut_event(msg, tail))
                    return await ex.end()
            await ex.end(_unfinished(out, tail, held))
            _stream_usage_into(out, tail)
        except ConnectionResetError:
            # The client went away mid-stream: nothing left to tell it.
            out.outcome, out.status = "client_gone", 499

    async def _fail(self, ex: Exchange, e: DispatchError) -> None:
        if not ex.streaming:
            headers = dict(JSON_HEADERS)
            retry_after = getattr(e, "retry_after_s", None)
            if retry_after is not None:  # 429 queue full, 503 cannot be served now
                headers["Retry-After"] = str(max(1, round(retry_after)))
            return await ex.send(
                e.status, error_body(e.message, _type_of(e.status), e.code), headers
            )
        await ex.end(
            b"data: " + error_body(e.message, _type_of(e.status), e.code) + b"\n\ndata: [DONE]\n\n"
        )

    # -- upstream sessions -------------------------------------------------------------------

    def _upstream_headers(self, node: str) -> dict[str, str]:
        h = self._headers.get(node)
        if h is None:
            key = self.node_keys.get(node)
            h = {"Content-Type": "application/json"}
            if key:
                h["Authorization"] = f"Bearer {key}"
            self._headers[node] = h
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


#: A line of a stream longer than this without its end is passed on as it is (nothing an
#: OpenAI-compatible server sends comes near it): holding it back must not grow unbounded.
MAX_HELD_LINE = 1024 * 1024


def _complete_lines(chunk: bytes) -> tuple[bytes, bytes]:
    """``chunk`` split after its last line end: the whole lines, and the start of the next."""
    cut = chunk.rfind(b"\n") + 1
    if len(chunk) - cut > MAX_HELD_LINE:
        return chunk, b""
    return chunk[:cut], chunk[cut:]


def _cut_event(message: str, tail: bytes | None = None) -> bytes:
    """The error event and ``[DONE]`` that end a stream lmtui could not pass on whole.
    ``tail``: the end of what was sent; unless it ends an event, a blank line does first
    (an extra one when it is not known: SSE parsers skip it)."""
    end = b"" if tail is not None and (not tail or tail.endswith(b"\n\n")) else b"\n"
    return (
        end
        + b"data: "
        + error_body(message, "upstream_error", "stream_interrupted")
        + b"\n\ndata: [DONE]\n\n"
    )


def _unfinished(out: Outcome, tail: bytes, held: bytes) -> bytes:
    """What to add at the end of a stream the node ended: nothing after its ``[DONE]``;
    otherwise (a body ended half-way, cleanly or not) an explicit error, so no client takes
    a truncated answer for a whole one. Every OpenAI-compatible server lmtui proxies (LM
    Studio, Ollama's /v1, llama.cpp, vLLM) ends its streams with ``data: [DONE]``."""
    if not held and tail.rstrip().endswith(b"data: [DONE]"):
        return b""
    out.outcome, out.status = "upstream_error", 502
    # A line the node left unended (``held``) is dropped: never half an event.
    return _cut_event(f"upstream {out.node} ended the stream before its end ([DONE])", tail)


def _type_of(status: int) -> str:
    if status == 404 or status == 400 or status == 413:
        return "invalid_request_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error"


def _outcome_of(e: DispatchError) -> str:
    return {404: "not_found", 429: "rejected_429", 504: "timeout_504"}.get(e.status, "error")
