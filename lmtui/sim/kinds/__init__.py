"""One module per simulated server kind; :func:`server_class` picks the right one."""

from __future__ import annotations

from lmtui.core.model import NodeKind
from lmtui.sim.kinds.base import KindServer, SimHTTPError
from lmtui.sim.kinds.llamacpp import LlamaCppServer
from lmtui.sim.kinds.lmstudio import LMStudioServer
from lmtui.sim.kinds.ollama import OllamaServer
from lmtui.sim.kinds.vllm import VLLMServer

_CLASSES: dict[NodeKind, type[KindServer]] = {
    NodeKind.LMSTUDIO: LMStudioServer,
    NodeKind.OLLAMA: OllamaServer,
    NodeKind.LLAMACPP: LlamaCppServer,
    # A pool is a set of plain llama-server processes; each one looks like this.
    NodeKind.LLAMACPP_POOL: LlamaCppServer,
    NodeKind.OPENAI: VLLMServer,
}


def server_class(kind: NodeKind) -> type[KindServer]:
    """The simulated server class for ``kind``."""
    return _CLASSES[kind]


__all__ = ["KindServer", "SimHTTPError", "server_class"]
