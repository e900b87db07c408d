"""The running system, assembled: the store, the backends, the poll loops, the dispatcher,
the controller and, when asked, the router's HTTP server, built from a Config.

``Engine`` only assembles and starts them; it holds no state of its own. The run-time
choices (pins, strategy, drained nodes) are the controller's ``RunState``
(``engine/runtime.py``). ``Engine`` has an explicit ``start`` / ``stop``; the TUI and
``--serve`` own one each. The picture of how the parts fit: ``docs/architecture.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from lmtui.backends import backend_for
from lmtui.backends.base import Backend
from lmtui.config import Config, NodeConfig
from lmtui.config import parse_listen as parse_config_listen
from lmtui.config.tls import TlsFileError, server_context
from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import NodeKind
from lmtui.engine.apis import BY_PATH, CHAT
from lmtui.engine.control import Controller
from lmtui.engine.control_api import ControlApi
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.errors import UNAUTHORIZED, error_response, quiet_client_errors
from lmtui.engine.exchange import AiohttpExchange
from lmtui.engine.guard import AuthFailures, BrowserGuard
from lmtui.engine.history import History, HistorySampler
from lmtui.engine.metrics import Metrics
from lmtui.engine.openapi import mount as mount_openapi
from lmtui.engine.passthrough import PREFIX as PASSTHROUGH
from lmtui.engine.passthrough import Passthrough
from lmtui.engine.peers import Peers
from lmtui.engine.poller import LocalMemory, MemoryReader, Poller, is_local
from lmtui.engine.ratelimit import RateLimits
from lmtui.engine.reqlog import RequestLog, RequestRecord
from lmtui.engine.router import FAST_PATHS, Outcome, Router, send_limited
from lmtui.engine.runtime import RunState
from lmtui.engine.settings import model_catalogue, no_load_nodes
from lmtui.engine.store import Store
from lmtui.http.front import FrontServer
from lmtui.http.limits import ServerLimits, fd_bounded

log = logging.getLogger(__name__)

#: On shutdown, how long requests already running on a node may take to finish before they
#: are cut (a generation can run for minutes; a restart should not wait for all of them).
SHUTDOWN_DRAIN_S = 10.0
#: Seconds a client may take to finish its TLS handshake: a connection that opens and says
#: nothing holds a descriptor, and asyncio's own default is a minute.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


def memory_reader_for(node: NodeConfig) -> MemoryReader | None:
    """Where a node's host memory comes from: SSH when configured, psutil when it is this host.

    A ``memory_gb`` override needs no reader. A remote node with neither shows no memory
    (the UI says "unknown" rather than guessing).
    """
    if node.memory_gb is not None:
        return None
    if node.ssh is not None:
        from lmtui.backends.ssh import SshHost

        return SshHost(
            node.ssh, default_host=urlsplit(node.url).hostname or "", node_name=node.name
        )
    if is_local(node.url):
        return LocalMemory()
    return None


class Engine:
    """Store + backends + poll loops + dispatcher, and the router's HTTP server when asked.

    ``listen`` ("HOST:PORT", port 0 for any) starts the OpenAI-compatible router and the
    control API on that address; without it the engine only watches the cluster.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        source: str = "config",
        listen: str | None = None,
        overrides_path: Path | None = None,
        request_log: Path | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        #: Where the config came from, for the UI header ("demo", a path).
        self.source = source
        self.listen = listen
        #: False: a router that cannot listen is reported as an event, not raised.
        self.listen_required = True
        # Run-time choices (pins, strategy, drained nodes) layered over the config: the
        # controller owns them; the store and the dispatcher start from what they derive.
        state = RunState.load(config, overrides_path)
        self.store = Store(state.nodes(), state.fold_context())
        self.metrics = Metrics(lambda: self.store.snapshot)
        days = config.router.request_log_days
        self.request_log = (
            RequestLog(request_log, retention_s=days * 86400 if days > 0 else None)
            if request_log is not None
            else None
        )
        # Each backend is built with its node's key and keep-alive pool; a pool needs a
        # running loop only from its first request on, so an Engine may be built before one.
        self.backends: dict[str, Backend] = {
            n.name: backend_for(n, timeout=config.poll.timeout) for n in config.nodes
        }
        readers = {n.name: r for n in config.nodes if (r := memory_reader_for(n)) is not None}
        self.poller = Poller(
            self.store,
            self.backends,
            interval_s={n.name: n.poll_interval or config.poll.interval for n in config.nodes},
            policy=self.store.ctx.policy,
            memory_readers=readers,
            memory_interval_s=config.poll.memory_interval,
            clock=clock,
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.backends,
            state.scheduler_settings(no_load_nodes(self.backends)),
            strategy=state.strategy,
            queue_depth=config.router.queue_depth,
            refresh=self.poller.poll_once,
            clock=clock,
            on_load=lambda model, node, reason, ok, secs: self.metrics.load(
                model, node, reason, ok=ok, seconds=secs
            ),
            on_evict=self.metrics.eviction,
            on_route=self.metrics.route,
        )
        self.dispatcher.on_circuit_open = self.metrics.circuit_open
        #: The last minutes of requests/s, queues, tokens/s and memory (engine/history.py),
        #: sampled each second; the same tick publishes the circuit breakers' state.
        self.history = History()
        self.sampler = HistorySampler(
            self.store,
            self.history,
            clock=clock,
            also=lambda: self.store.set_circuits(self.dispatcher.circuit_states()),
        )
        self.controller = Controller(
            self.store, self.dispatcher, self.poller, config, state, clock=clock
        )
        # An eviction or an unload frees room: counted, and the pool manager may preload.
        self.dispatcher.on_evict = self._evicted
        self.router: Router | None = None
        self._runner: web.AppRunner | None = None
        #: Bearer keys that may read /metrics (none: it is open, as on a keyless loopback).
        self._metrics_keys: list[bytes] = []
        rc = config.router
        #: Per-key and per-address request limits and the failed-authentication limit.
        self.limits = RateLimits(
            key_rate=rc.key_rate_limit,
            key_burst=rc.key_rate_burst,
            address_rate=rc.address_rate_limit,
            address_burst=rc.address_rate_burst,
            auth_failure_rate=rc.auth_failure_rate,
            auth_failure_burst=rc.auth_failure_burst,
            on_limited=self.metrics.rate_limited,
        )
        #: Refused keys and tokens, on every path: counted, logged once a minute per address,
        #: and spent from the address's failed-authentication bucket.
        self._auth_failures = AuthFailures(
            self.metrics.auth_failure, on_failure=self.limits.auth_failed
        )
        #: Services that take the requests the cluster cannot serve in time (``[[peers]]``).
        self.peers = Peers(
            config.peers,
            {p.name: os.environ.get(p.api_key_env or "") or None for p in config.peers},
            fallback_after_s=rc.fallback_after,
            fallback_queue=rc.fallback_queue,
            clock=clock,
        )
        self.peers.on_change = lambda: self.store.set_peers(self.peers.states())
        self.store.set_peers(self.peers.states())
        self.front: FrontServer | None = None
        self.control_api: ControlApi | None = None
        self._listener: asyncio.Server | None = None
        #: The router's base URL once it listens ("http://127.0.0.1:4000").
        self.router_url: str | None = None
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.request_log is not None:
            await self.request_log.start()
            await self.controller.demand.seed(self.request_log, self.clock())
            for peer in self.peers.peers:
                if peer.budget:  # what it served before a restart still counts
                    since = self.clock() - peer.budget_window_s
                    peer.restore(await self.request_log.times_on(peer.node, since, peer.budget))
            self.peers.changed()
        for p in self.config.peers:
            if p.api_key_env and not os.environ.get(p.api_key_env):
                self.store.record(
                    Event(
                        self.clock(),
                        EventKind.ERROR,
                        f"peer {p.name}: api_key_env names {p.api_key_env}, which is not set; "
                        "its requests go without a key",
                        level=Level.WARNING,
                    )
                )
        await self.poller.start()
        self.sampler.start()
        self.controller.start(max(1.0, 2 * self.config.poll.interval))
        if self.listen is not None:
            try:
                await self._serve(self.listen)
            except EngineError as e:
                if self.listen_required:
                    await self.stop()
                    raise
                self.store.record(
                    Event(
                        self.clock(), EventKind.ERROR, f"router not started: {e}", level=Level.ERROR
                    )
                )

    def _evicted(self, model: str, node: str, reason: str) -> None:
        self.metrics.eviction(model, node, reason)
        self.controller.room_freed(node)

    def _request_done(self, out: Outcome, t0: float, t1: float) -> None:
        self.controller.demand.request_done(out.model, out.outcome, t0)
        if out.node is not None:
            # Usage when the answer had it; else a stream's data events, one per token less
            # the closing event with the finish reason.
            generated = (
                out.tokens_out if out.tokens_out is not None else max(0, out.stream_events - 1)
            )
            if generated:
                self.store.add_generated(out.node, generated)
        self.metrics.request_done(
            out.model,
            out.node,
            out.outcome,
            queue_wait_s=out.queue_wait_s,
            ttft_s=out.ttft_s,
            duration_s=t1 - t0,
        )
        if out.api != "chat":
            self.metrics.api_request(out.api, out.outcome)
        if self.request_log is not None:
            self.request_log.record(
                RequestRecord(
                    at=t0,
                    model=out.model,
                    node=out.node,
                    queue_wait_s=out.queue_wait_s,
                    ttft_s=out.ttft_s,
                    duration_s=t1 - t0,
                    tokens_in=out.tokens_in,
                    tokens_out=out.tokens_out,
                    outcome=out.outcome,
                    status=out.status,
                    stream=out.stream,
                    user=out.user,
                    api=out.api,
                )
            )

    async def _serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        quiet_client_errors()  # a malformed request is the client's: no traceback in the log
        api_keys = router_api_keys(self.config)
        if not api_keys and not is_loopback(host):
            raise EngineError(
                f"refusing to listen on {host}: no API keys are configured, so the router "
                "may only bind a loopback address. Set [router] api_keys_env, or listen on "
                "127.0.0.1."
            )
        rc = self.config.router
        token = env_secret(rc.admin_token_env, "[router] admin_token_env")
        metrics_token = env_secret(rc.metrics_token_env, "[router] metrics_token_env")
        tls = router_tls(self.config)
        scheme = "https" if tls is not None else "http"
        guard = BrowserGuard(
            allowed_hosts=rc.allowed_hosts, allowed_origins=rc.allowed_origins, scheme=scheme
        )
        # /metrics: any API key or the metrics token, when either is configured.
        self._metrics_keys = [k.encode() for k in (*api_keys, metrics_token) if k]
        self.router = Router(
            self.dispatcher,
            {n.name: n.url for n in self.config.nodes},
            {name: b.api_key for name, b in self.backends.items()},
            api_keys=api_keys,
            queue_timeout_s=self.config.router.queue_timeout,
            max_body_bytes=self.config.router.max_body_bytes,
            models=lambda: model_catalogue(self.store.snapshot, self.config, self.peers),
            resolve=self.resolve_model,
            on_done=self._request_done,
            clock=self.clock,
            guard=guard,
            auth_failures=self._auth_failures,
            limits=self.limits,
            peers=self.peers,
            body_timeout_s=rc.body_timeout,
            max_answer_bytes=rc.max_answer_bytes,
            first_byte_timeout_s=self.config.router.first_byte_timeout,
            # LM Studio reads a request's ``ttl`` itself (for a load the request causes);
            # every other server gets it removed (an OpenAI-style server may refuse it).
            ttl_nodes=frozenset(n.name for n in self.config.nodes if n.kind is NodeKind.LMSTUDIO),
            node_first_byte_s={
                n.name: n.first_byte_timeout
                for n in self.config.nodes
                if n.first_byte_timeout is not None
            },
            model_first_byte_s={
                m.name: m.first_byte_timeout
                for m in self.config.models
                if m.first_byte_timeout is not None
            },
        )
        passthrough = Passthrough(self.router, admin_token=token, on_done=self.metrics.passthrough)
        # Which paths need a key decides whether the Host rule applies (guard.py).
        keyed = {
            "/lmtui/": token is not None,
            "/metrics": bool(self._metrics_keys),
            PASSTHROUGH: passthrough.keyed,
        }

        @web.middleware
        async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            # The same rules the fast front applies to the requests it serves itself.
            if request.match_info.http_exception is not None:
                # No such path or method (404, 405): nothing a page could misuse, and the
                # client learns what is wrong rather than a 415 for a route that is not.
                return await handler(request)
            path = request.path
            ctype = request.headers.get("Content-Type")
            if path.startswith(PASSTHROUGH) and request.match_info.get("path") == "processes":
                return await handler(request)  # the control API's own path: a 405 there
            if path.startswith(PASSTHROUGH):
                need_key = keyed[PASSTHROUGH]
                if need_key:
                    # A node's own API takes bodies of any type (an upload, a form). The JSON
                    # rule stops a page's form posts on keyless paths; here a key is needed,
                    # which a page cannot present, so the type is the node's to judge.
                    ctype = "application/json"
            elif path.startswith("/lmtui/"):
                need_key = keyed["/lmtui/"]
            elif path == "/metrics":
                need_key = keyed["/metrics"]
            else:
                need_key = bool(api_keys)
            refusal = guard.check(
                request.method,
                request.headers.get("Host"),
                request.headers.get("Origin"),
                ctype,
                keyed=need_key,
            )
            if refusal is not None:
                status, message, code = refusal
                type_ = "permission_error" if status == 403 else "invalid_request_error"
                api = BY_PATH.get(path)
                if api is not None and api.anthropic:
                    return web.Response(
                        status=status,
                        body=api.error(status, message, type_, code),
                        content_type="application/json",
                    )
                return error_response(status, message, type_, code)
            if need_key and not path.startswith("/v1/"):
                # An address out of failed authentications is not judged on the control
                # API and /metrics either (the router's own paths check it in admit).
                limited = self.limits.check_failures(request.remote)
                if limited is not None:
                    ex = AiohttpExchange(request)
                    await send_limited(ex, limited, CHAT)
                    assert ex.response is not None
                    return ex.response
            if request.body_exists and not path.startswith("/v1/"):
                # Every body on aiohttp's paths arrives within [router] body_timeout (the
                # router's own paths bound theirs themselves): a chunked head with no
                # chunks to the control API was held open forever.
                try:
                    async with asyncio.timeout(rc.body_timeout):
                        await request.read()  # kept: the handler's read() returns it
                except TimeoutError:
                    resp = error_response(
                        408,
                        f"the request body did not arrive within {rc.body_timeout:g} s",
                        "invalid_request_error",
                        "request_timeout",
                    )
                    resp.force_close()
                    return resp
            return await handler(request)

        app = web.Application(
            client_max_size=self.config.router.max_body_bytes, middlewares=[browser_guard]
        )
        self.router.add_routes(app)
        app.router.add_get("/metrics", self._metrics)
        # Without an admin token the control API is open only on a loopback bind.
        self.control_api = ControlApi(
            self.controller,
            self.store,
            token=token,
            enabled=token is not None or is_loopback(host),
            source=self.source,
            auth_failures=self._auth_failures,
            history=self.history,
            request_log=self.request_log,
        )
        self.control_api.add_routes(app)
        # After the control API: its GET .../nodes/<node>/processes is lmtui's own.
        passthrough.add_routes(app)
        # GET /openapi.json: the router's paths and the control API's, with the keys in force.
        mount_openapi(app, self.router, admin=token is not None, metrics=bool(self._metrics_keys))
        # handler_cancellation: a client that disconnects cancels its handler, so a queued
        # request leaves the queue at once and frees its place.
        # keepalive_timeout: aiohttp's own default is an hour, so every connection handed to
        # it (GET /v1/models, the control API) stayed open that long when idle.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_DRAIN_S,
            keepalive_timeout=rc.idle_timeout,
            # After an answer to a request whose body was not read (a 408, a 413), aiohttp
            # reads on for this long so the client can finish sending and see the answer,
            # then closes; its default, 10 s, kept a dribbling client around for that long.
            lingering_time=2.0,
        )
        await self._runner.setup()
        # The socket is the fast front's (front.py): it serves the bot's plain requests and
        # hands every other connection to the aiohttp app above.
        assert self._runner.server is not None
        limits = ServerLimits(
            idle_timeout=rc.idle_timeout,
            head_timeout=rc.head_timeout,
            body_timeout=rc.body_timeout,
            max_connections=fd_bounded(rc.max_connections),
            max_connections_per_address=rc.max_connections_per_address,
        )
        self.front = FrontServer(self.router, self._runner.server, FAST_PATHS, limits)
        try:
            # With TLS, asyncio wraps each connection's protocol (the fast front, and the
            # aiohttp protocol it hands a connection to) in its SSL layer: neither sees it.
            self._listener = await asyncio.get_running_loop().create_server(
                self.front,
                host,
                port,
                reuse_address=True,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls is not None else None,
            )
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise EngineError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        sockets = self._listener.sockets
        bound = sockets[0].getsockname()[1] if sockets else port
        self.store.count_routed_tokens = True
        shown = f"[{host}]" if ":" in host else host
        self.router_url = f"{scheme}://{shown}:{bound}"

    def resolve_model(self, name: str) -> str:
        """The model an alias (or a model name) refers to."""
        return self.dispatcher.settings.aliases.get(name, name)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._metrics_keys:
            auth = request.headers.get("Authorization", "")
            given = auth[7:].encode() if auth[:7].lower() == "bearer " else b""
            ok = False
            for key in self._metrics_keys:  # every key compared: the time tells nothing
                ok |= hmac.compare_digest(given, key)
            if not ok:
                self._auth_failures.record(request.remote, "metrics")
                return error_response(401, *UNAUTHORIZED)
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.sampler.stop()
        await self.controller.stop()
        # Requests still queued get a clear 503 at once; requests already on a node may
        # finish (the runner drains them for up to SHUTDOWN_DRAIN_S, then cancels them).
        self.dispatcher.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # Event streams never end by themselves: end them, or they hold the drain below for
        # its whole bound (an attached dashboard kept SIGTERM waiting ~20 s).
        if self.control_api is not None:
            self.control_api.close()
        # Both servers drain at once: requests on fast connections and on aiohttp's.
        drains = []
        if self.front is not None:
            drains.append(self.front.shutdown(SHUTDOWN_DRAIN_S))
            self.front = None
        if self._runner is not None:
            drains.append(self._runner.cleanup())
            self._runner = None
        await asyncio.gather(*drains)
        if self.router is not None:
            await self.router.close()
        await self.poller.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        for b in self.backends.values():
            await b.aclose()
            await b.pool.close()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class EngineError(Exception):
    """The engine cannot start as configured (a port in use, an unsafe bind)."""

    exit_code = 2


def parse_listen(listen: str) -> tuple[str, int]:
    """The config's own parser (so ``--listen`` gets the same checks as ``[router]
    listen``), with port 0 allowed; a bad address is an EngineError (exit status 2)."""
    try:
        return parse_config_listen(listen, any_port=True)
    except ValueError as e:
        raise EngineError(f"listen address {e}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def env_secret(env: str | None, what: str) -> str | None:
    """The value of the environment variable a config key names; an unset one is an error."""
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise EngineError(f"{what} names {env}, which is not set or empty")
    return value


def router_tls(config: Config) -> ssl.SSLContext | None:
    """The router's TLS context from ``[router] tls_cert`` / ``tls_key`` (None: plain HTTP).
    The loader checked the files; they are read again here, and what changed since is an
    EngineError."""
    rc = config.router
    if rc.tls_cert is None and rc.tls_key is None:
        return None
    if rc.tls_cert is None or rc.tls_key is None:
        raise EngineError("[router] tls_cert and tls_key go together: set both to serve HTTPS")
    try:
        return server_context(rc.tls_cert, rc.tls_key)
    except TlsFileError as e:
        raise EngineError(f"[router] {e.key}: {e}") from None


def router_api_keys(config: Config) -> list[str]:
    return [
        v
        for env in config.router.api_keys_env
        if (v := env_secret(env, "[router] api_keys_env")) is not None
    ]
