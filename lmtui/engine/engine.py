"""The running system: builds the store, the backends and the poll loops from a Config.

``Engine`` has an explicit ``start`` / ``stop``; the TUI and ``--serve`` own one each.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from types import MappingProxyType
from urllib.parse import urlsplit

import httpx
from aiohttp import web

from lmtui.backends import backend_for
from lmtui.backends.base import Backend
from lmtui.config import GB, Config, NodeConfig
from lmtui.core.health import HealthPolicy
from lmtui.core.model import Node
from lmtui.core.scheduler import Strategy
from lmtui.core.state import FoldContext, NodeSettings
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.poller import LocalMemory, MemoryReader, Poller, is_local
from lmtui.engine.router import Router, node_api_keys
from lmtui.engine.settings import model_catalogue, scheduler_settings
from lmtui.engine.store import Store

log = logging.getLogger(__name__)


def fold_context(config: Config, pinned: frozenset[str] = frozenset()) -> FoldContext:
    return FoldContext(
        policy=HealthPolicy(
            down_after=config.poll.down_after, max_backoff_s=config.poll.max_backoff
        ),
        node_settings=MappingProxyType(
            {
                n.name: NodeSettings(
                    slots=n.slots,
                    memory_bytes=int(n.memory_gb * GB) if n.memory_gb is not None else None,
                )
                for n in config.nodes
            }
        ),
        pinned=pinned | {m.name for m in config.models if m.pinned},
        model_sizes=MappingProxyType(
            {m.name: int(m.size_gb * GB) for m in config.models if m.size_gb is not None}
        ),
    )


def initial_nodes(config: Config) -> list[Node]:
    return [
        Node(name=n.name, kind=n.kind, url=n.url, reserved_bytes=config.reserved_bytes(n))
        for n in config.nodes
    ]


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
        )  # type: ignore[return-value]
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
    ) -> None:
        self.config = config
        self.clock = clock
        #: Where the config came from, for the UI header ("demo", a path).
        self.source = source
        self.listen = listen
        self.store = Store(initial_nodes(config), fold_context(config))
        # One client for all polls: connection reuse matters at 200 nodes × 1 Hz.
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max(100, 4 * len(config.nodes)),
                max_keepalive_connections=max(20, 4 * len(config.nodes)),
            ),
            timeout=config.poll.timeout,
        )
        self.backends: dict[str, Backend] = {
            n.name: backend_for(n, self.http, timeout=config.poll.timeout) for n in config.nodes
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
        self.dispatcher: Dispatcher | None = None
        self.router: Router | None = None
        self._runner: web.AppRunner | None = None
        #: The router's base URL once it listens ("http://127.0.0.1:4000").
        self.router_url: str | None = None
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.dispatcher = Dispatcher(
            self.store,
            self.backends,
            scheduler_settings(self.config, self.backends),
            strategy=Strategy(self.config.router.strategy),
            queue_depth=self.config.router.queue_depth,
            refresh=self.poller.poll_once,
            clock=self.clock,
        )
        await self.poller.start()
        if self.listen is not None:
            await self._serve(self.listen)

    async def _serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        api_keys = router_api_keys(self.config)
        if not api_keys and not is_loopback(host):
            raise EngineError(
                f"refusing to listen on {host}: no API keys are configured, so the router "
                "may only bind a loopback address. Set [router] api_keys_env, or listen on "
                "127.0.0.1."
            )
        assert self.dispatcher is not None
        self.router = Router(
            self.dispatcher,
            {n.name: n.url for n in self.config.nodes},
            node_api_keys({n.name: n.api_key_env for n in self.config.nodes}),
            api_keys=api_keys,
            queue_timeout_s=self.config.router.queue_timeout,
            max_body_bytes=self.config.router.max_body_bytes,
            models=lambda: model_catalogue(self.store.snapshot, self.config),
            resolve=self.resolve_model,
            clock=self.clock,
        )
        app = web.Application(client_max_size=self.config.router.max_body_bytes)
        self.router.add_routes(app)
        # handler_cancellation: a client that disconnects cancels its handler, so a queued
        # request leaves the queue at once and frees its place.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise EngineError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.router_url = f"http://{shown}:{bound}"

    def resolve_model(self, name: str) -> str:
        """The model an alias (or a model name) refers to."""
        if self.dispatcher is None:
            return name
        return self.dispatcher.settings.aliases.get(name, name)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.dispatcher is not None:
            self.dispatcher.close()
        await self.poller.stop()
        for b in self.backends.values():
            await b.aclose()
        await self.http.aclose()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class EngineError(Exception):
    """The engine cannot start as configured (a port in use, an unsafe bind)."""

    exit_code = 2


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EngineError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def router_api_keys(config: Config) -> list[str]:
    keys = []
    for env in config.router.api_keys_env:
        value = os.environ.get(env)
        if not value:
            raise EngineError(f"[router] api_keys_env names {env}, which is not set or empty")
        keys.append(value)
    return keys
