"""Which adapter class serves which node kind: one dict, no ``if kind == ...`` chains."""

from __future__ import annotations

import aiohttp

from lmtui.backends.base import Backend
from lmtui.backends.llamacpp import LlamaCppBackend
from lmtui.backends.llamacpp_pool import LlamaCppPoolBackend
from lmtui.backends.lmstudio import LMStudioBackend
from lmtui.backends.ollama import OllamaBackend
from lmtui.backends.openai import OpenAIBackend
from lmtui.config import NodeConfig
from lmtui.core.model import NodeKind

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


def backend_for(
    node: NodeConfig, client: aiohttp.ClientSession | None, *, timeout: float
) -> Backend:
    """A new adapter for ``node``, sharing the engine's HTTP client.

    ``timeout`` bounds each HTTP request of a poll (config ``[poll] timeout``). Adapters
    keep per-node state (which API an LM Studio speaks, a llama-server's mode), so make
    one per node and keep it.
    """
    try:
        cls = BACKENDS[node.kind]
    except KeyError:
        raise ValueError(f"node {node.name!r}: no backend for kind {node.kind!r}") from None
    return cls(node, client, timeout=timeout)
