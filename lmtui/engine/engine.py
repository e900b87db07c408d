"""The running system: builds the store, the backends and the poll loops from a Config.

``Engine`` has an explicit ``start`` / ``stop``; the TUI and ``--serve`` own one each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import MappingProxyType
from urllib.parse import urlsplit

import httpx

from lmtui.backends import backend_for
from lmtui.backends.base import Backend
from lmtui.config import GB, Config, NodeConfig
from lmtui.core.health import HealthPolicy
from lmtui.core.model import Node
from lmtui.core.state import FoldContext, NodeSettings
from lmtui.engine.poller import LocalMemory, MemoryReader, Poller, is_local
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
    def __init__(
        self, config: Config, *, clock: Callable[[], float] = time.time, source: str = "config"
    ) -> None:
        self.config = config
        self.clock = clock
        #: Where the config came from, for the UI header ("demo", a path).
        self.source = source
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
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.poller.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.poller.stop()
        for b in self.backends.values():
            await b.aclose()
        await self.http.aclose()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
