"""Which adapter class serves which node kind: one dict, no ``if kind == ...`` chains."""

from __future__ import annotations

import os

from lmtui.backends.base import Backend, poll_pool
from lmtui.backends.llamacpp import LlamaCppBackend
from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend
from lmtui.backends.lmstudio import LMStudioBackend
from lmtui.backends.ollama import OllamaBackend
from lmtui.backends.openai import OpenAIBackend
from lmtui.config import NodeConfig
from lmtui.core.model import NodeKind
from lmtui.http import Pool

#: The adapter class of every node kind. A new kind is one entry here and one module.
BACKENDS: dict[NodeKind, type[Backend]] = {
    cls.kind: cls
    for cls in (
        LMStudioBackend,
        OllamaBackend,
        LlamaCppBackend,
        LlamaCppPoolBackend,
        OpenAIBackend,
    )
}


def backend_for(node: NodeConfig, *, timeout: float, pool: Pool | None = None) -> Backend:
    """A new adapter for ``node``, built with its keep-alive pool and its API key.

    ``timeout`` bounds each HTTP request of a poll (config ``[poll] timeout``). ``pool``
    defaults to :func:`poll_pool` for the node's URL (tests pass one of their own). Adapters
    keep per-node state (which API an LM Studio speaks, a llama-server's mode), so make
    one per node and keep it; the router reads the node's key from ``backend.api_key``.
    """
    try:
        cls = BACKENDS[node.kind]
    except KeyError:
        raise ValueError(f"node {node.name!r}: no backend for kind {node.kind!r}") from None
    if pool is None:
        pool = poll_pool(node.url, connect_timeout=timeout)
    return cls(node, pool, api_key=node_api_key(node), timeout=timeout)


def node_api_key(node: NodeConfig) -> str | None:
    """The value of the environment variable the node's ``api_key_env`` names (None when it
    names none or that variable is unset). The one place lmtui reads it: polls, commands,
    the router and a pool node's servers all get the value from here."""
    return os.environ.get(node.api_key_env) if node.api_key_env else None
