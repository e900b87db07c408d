"""The backend interface: one small class per node kind, with optional capabilities.

Every backend polls. Capabilities a kind may lack (load/unload, spawn) default to raising
``NotSupported``; callers ask ``backend.can_load`` / ``can_unload`` instead of testing the kind.

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
import time
from json import loads as json_loads
from typing import Any, ClassVar
from urllib.parse import urlencode

import msgspec

from lmtui.config import NodeConfig
from lmtui.core.model import NodeKind, NodeObservation
from lmtui.http import Pool, UpstreamError, pool_for


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


#: The API paths the router routes, by the short name lmtui gives each (capabilities,
#: metrics, events). Every OpenAI-compatible server has the first three.
API_PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "rerank": "/v1/rerank",
}
OPENAI_APIS: frozenset[str] = frozenset({"chat", "completions", "embeddings"})
ALL_APIS: frozenset[str] = frozenset(API_PATHS)


class Backend:
    """Base class of every node adapter.

    Subclasses set ``kind`` and implement :meth:`poll`. They talk to the node through the
    keep-alive pool they are built with (:func:`poll_pool`) and the helpers below, which
    turn transport errors and unusable answers into :class:`BackendError`.

    Why not httpx for polling: measured on this project's 2-core machines, one httpx GET cost
    ~420 µs of client CPU against ~30 µs for aiohttp (h11 and anyio are pure Python), and one
    shared httpx pool scans every pooled connection per request: polling 200 nodes a second
    took a third of a core. Plain-HTTP nodes go one step further, through the router's lean
    keep-alive client (``lmtui.http.UpstreamPool``): measured with bench/poll_scale.py in one
    sitting, 200 nodes cost 0.106 of a core through aiohttp and 0.057 through it. ``https``
    nodes go through aiohttp behind the same interface (``lmtui.http.TlsUpstreamPool``).
    """

    kind: ClassVar[NodeKind]
    #: Whether this kind of node can load and unload models at all.
    supports_load: ClassVar[bool] = False
    #: The routed APIs (``API_PATHS`` names) this kind of server answers, as far as its
    #: documentation says; :meth:`serves` may narrow it by version.
    apis: ClassVar[frozenset[str]] = OPENAI_APIS

    def __init__(self, node: NodeConfig, pool: Pool, *, api_key: str | None, timeout: float = 3.0):
        self.node = node
        #: Keep-alive connections to the node (it opens them on first use; the engine
        #: closes it on stop).
        self.pool = pool
        #: The value of the node's ``api_key_env``, read once by ``registry.node_api_key``.
        self.api_key = api_key
        self.timeout = timeout
        self.base_url = node.url.rstrip("/")
        self.headers: dict[str, str] = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @property
    def can_load(self) -> bool:
        """Whether this node can load models now (a kind may decide per node, once polled)."""
        return self.supports_load

    @property
    def no_load_reason(self) -> str | None:
        """Why this node cannot load models now, in words for the operator; None when
        ``can_load``. The poller puts it in every observation of the node."""
        return None if self.can_load else f"{self.kind} nodes cannot load models"

    @property
    def can_unload(self) -> bool:
        """Whether this node can unload models now. Every kind that loads also unloads (a
        llama.cpp server in single mode does neither), so it follows ``can_load``; a kind
        that differs overrides it. The planner never proposes an unload where it is false."""
        return self.can_load

    def serves(self, api: str) -> bool:
        """Whether the router may send this node requests for ``api`` (an ``API_PATHS``
        name), as its kind and the version it last reported tell. Only a first guess: the
        node's own answer is the last word (a 404 for the path marks it absent there for a
        while, ``engine/apis.py``), so an unknown version says yes."""
        return api in self.apis

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
        """Unload one instance. Raises NotSupported unless ``can_unload``."""
        raise NotSupported(f"{self.kind} nodes cannot unload models")

    #: Whether the node itself unloads idle models after a lifetime lmtui can set again on
    #: a loaded model (:meth:`set_lifetime`): Ollama's ``keep_alive``.
    sets_lifetime: ClassVar[bool] = False

    async def set_lifetime(self, model: str, instance_id: str, ttl: float | None) -> None:
        """Make the node keep a loaded model ``ttl`` seconds after its last use (None: for
        good), without reloading it. Raises NotSupported unless ``sets_lifetime``."""
        raise NotSupported(f"{self.kind} nodes keep no lifetime lmtui can set")

    async def processes(self) -> list[dict[str, Any]]:
        """The server processes lmtui runs on this node, with their last log lines.
        Raises NotSupported unless the kind starts servers itself (``llamacpp-pool``)."""
        raise NotSupported(f"{self.kind} nodes run no processes of lmtui's")

    async def aclose(self) -> None:
        """Release resources the backend holds of its own (``pool`` is the engine's to close)."""

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


def poll_pool(base_url: str, *, connect_timeout: float) -> Pool:
    """The pool a backend polls and commands its node through (lean for ``http://``, aiohttp
    for ``https://``). Few connections: a poll runs at most a handful of requests at once (a
    llama.cpp router: 1 + 2 per loaded model), and one slow node must not hoard sockets."""
    return pool_for(
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


def monotonic() -> float:
    return time.perf_counter()
