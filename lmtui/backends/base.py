"""The backend interface: one small class per node kind, with optional capabilities.

Every backend polls. Capabilities a kind may lack (load/unload, spawn) default to raising
``NotSupported``; callers ask ``backend.can_load`` instead of testing the kind.

Exceptions::

    BackendError            anything that makes a poll or command fail
     ├── BackendUnreachable  connection refused / reset / timed out
     ├── BackendBadResponse  an answer lmtui cannot use (bad status, malformed JSON, wrong shape)
     ├── LoadDeferred        a load the node refused for now (its instance limit is reached
     │                       while its models are busy): retry later, the node is fine
     └── NotSupported        this kind of node cannot do that
"""

from __future__ import annotations

import asyncio
import os
import time
from json import loads as json_loads
from typing import Any, ClassVar
from urllib.parse import urlencode

import aiohttp
import msgspec

from lmtui.config import NodeConfig
from lmtui.core.model import NodeKind, NodeObservation
from lmtui.http import UpstreamError, UpstreamPool


class BackendError(Exception):
    """A poll or command against a node failed."""


class BackendUnreachable(BackendError):
    """The node did not answer: refused, reset, or timed out."""


class BackendBadResponse(BackendError):
    """The node answered something lmtui cannot use."""


class LoadDeferred(BackendError):
    """The node cannot take this load *now* but will later: a llama.cpp router at its
    ``--models-max`` while its resident models are busy answers 500 "model limit reached,
    try again later". Requests keep waiting; the load is tried again when the node changes.
    """


class NotSupported(BackendError):
    """This kind of node does not support the operation."""


class Backend:
    """Base class of every node adapter.

    Subclasses set ``kind`` and implement :meth:`poll`. They use the shared ``aiohttp`` session
    given to them (one per engine, connection pooling across polls) and the helpers below,
    which turn transport errors and unusable answers into :class:`BackendError`.

    Why not httpx for polling: measured on this project's 2-core machines, one httpx GET cost
    ~420 µs of client CPU against ~30 µs for aiohttp (h11 and anyio are pure Python), and one
    shared httpx pool scans every pooled connection per request: polling 200 nodes a second
    took a third of a core. Plain-HTTP nodes go one step further, through the router's lean
    keep-alive client (``lmtui.http.UpstreamPool``): measured with bench/poll_scale.py in one
    sitting, 200 nodes cost 0.106 of a core through aiohttp and 0.057 through it. ``https``
    nodes keep the aiohttp session.
    """

    kind: ClassVar[NodeKind]
    #: Whether this kind of node can load and unload models at all.
    supports_load: ClassVar[bool] = False

    def __init__(
        self, node: NodeConfig, client: aiohttp.ClientSession | None, *, timeout: float = 3.0
    ):
        self.node = node
        self.client = client
        #: The lean keep-alive pool the engine gives plain-HTTP nodes (about half the CPU of
        #: an aiohttp request per poll); without one, requests go through ``client``.
        self.pool: UpstreamPool | None = None
        self.timeout = timeout
        self.base_url = node.url.rstrip("/")
        key = os.environ.get(node.api_key_env) if node.api_key_env else None
        self.headers: dict[str, str] = {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def can_load(self) -> bool:
        """Whether this node can load models now (a kind may decide per node, once polled)."""
        return self.supports_load

    @property
    def name(self) -> str:
        return self.node.name

    async def poll(self, now: float) -> NodeObservation:
        """Read the node once. Raises :class:`BackendError` when the node cannot be read."""
        raise NotImplementedError

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Load ``model``; return the instance id. Raises NotSupported unless ``can_load``."""
        raise NotSupported(f"{self.kind} nodes cannot load models")

    async def unload(self, model: str, instance_id: str) -> None:
        raise NotSupported(f"{self.kind} nodes cannot unload models")

    async def processes(self) -> list[dict[str, Any]]:
        """The server processes lmtui runs on this node, with their last log lines.
        Raises NotSupported unless the kind starts servers itself (``llamacpp-pool``)."""
        raise NotSupported(f"{self.kind} nodes run no processes of lmtui's")

    async def aclose(self) -> None:
        """Release resources the backend holds of its own (the shared client is not closed)."""

    # --- helpers for subclasses -------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One HTTP request; transport failures become :class:`BackendUnreachable`."""
        if self.pool is not None:
            return await self._request_lean(method, path, json, params, timeout)
        if self.client is None:
            raise BackendUnreachable("the engine has not started its HTTP session")
        t = aiohttp.ClientTimeout(total=timeout if timeout is not None else self.timeout)
        try:
            async with self.client.request(
                method,
                self.base_url + path,
                json=json,
                params=params,
                headers=self.headers,
                timeout=t,
            ) as r:
                return Reply(r.status, await r.read())
        except TimeoutError as e:
            raise BackendUnreachable(f"{method} {path}: timed out") from e
        except (aiohttp.ClientError, OSError) as e:
            raise BackendUnreachable(f"{method} {path}: {type(e).__name__}: {e}") from e

    async def _request_lean(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, str] | None,
        timeout: float | None,
    ) -> Reply:
        assert self.pool is not None
        target = f"{path}?{urlencode(params)}" if params else path
        headers = self.headers
        body = b""
        if json is not None:
            body = _encode_json(json)
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.timeout):
                up = await self.pool.request(method, target, body, headers)
                try:
                    return Reply(up.status, await up.read())
                finally:
                    up.release()
        except TimeoutError as e:
            raise BackendUnreachable(f"{method} {path}: timed out") from e
        except UpstreamError as e:
            raise BackendUnreachable(f"{method} {path}: {e}") from e


_encode_json = msgspec.json.Encoder().encode


def new_pool(base_url: str, *, connect_timeout: float) -> UpstreamPool | None:
    """The lean pool for a plain-HTTP node (None for https: those keep the aiohttp session).
    Few connections: a poll runs at most a handful of requests at once (a llama.cpp router:
    1 + 2 per loaded model), and one slow node must not hoard sockets."""
    if not base_url.startswith("http://"):
        return None
    return UpstreamPool(
        base_url, max_connections=16, connect_timeout=connect_timeout, read_timeout=None
    )  # each call is bounded by its own total timeout


class Reply:
    """What an adapter reads of an HTTP answer: the status and the whole (small) body."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return json_loads(self.content)


def new_session() -> aiohttp.ClientSession:
    """The HTTP session the engine polls and commands every node with (call in a running
    loop). Keep-alive connections are reused across polls; per-host limits keep one slow
    node from taking every connection."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0, limit_per_host=32, keepalive_timeout=30, ttl_dns_cache=300
        ),
        skip_auto_headers=("User-Agent",),
        auto_decompress=True,
    )


def monotonic() -> float:
    return time.perf_counter()
