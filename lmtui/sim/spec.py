"""What a simulated node is: its kind, memory, models and speeds (plain dataclasses).

A spec is data only; :class:`lmtui.sim.node.SimNode` turns one into a running HTTP server.
Defaults follow the real servers' defaults where the real server has one (Ollama keeps a
model 5 minutes, LM Studio JIT-loaded models 60 minutes, Ollama queues 512 requests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lmtui.core.model import NodeKind

#: Versions a node reports when the spec does not say. LM Studio 0.4 is the first with
#: REST v1 and parallel predictions; the llama.cpp build is the one the fixtures came from.
DEFAULT_VERSIONS: dict[NodeKind, str] = {
    NodeKind.LMSTUDIO: "0.4.2",
    NodeKind.OLLAMA: "0.12.6",
    NodeKind.LLAMACPP: "b1-0c1e570",
    NodeKind.LLAMACPP_POOL: "b1-0c1e570",
    NodeKind.OPENAI: "0.11.0",
}

#: Ollama's OLLAMA_KEEP_ALIVE default (5 minutes), the dataclass default below.
OLLAMA_KEEP_ALIVE_S = 300.0
#: LM Studio's default idle TTL for just-in-time loaded models (60 minutes).
LMSTUDIO_JIT_TTL_S = 3600.0


@dataclass
class SimModel:
    """A model a simulated node has downloaded (or holds in its models dir)."""

    key: str
    #: Memory footprint when loaded, in GB (GiB, like the rest of lmtui).
    size_gb: float
    #: "llm" or "embedding".
    kind: str = "llm"
    max_context: int = 32768
    params: str = "7B"
    quant: str = "Q4_K_M"
    #: False: a llama.cpp router must download it first (a ``-hf`` preset not yet in the
    #: cache): its first load shows ``downloading`` for ``size_gb / download_gb_per_s``.
    downloaded: bool = True

    @property
    def size_bytes(self) -> int:
        return int(self.size_gb * 1024**3)

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"


@dataclass
class SimNodeSpec:
    """One simulated server. Fields mirror the real server's settings."""

    name: str
    kind: NodeKind
    #: Memory available for models, in GB.
    memory_gb: float = 64.0
    #: Downloaded / available models.
    models: list[SimModel] = field(default_factory=list)
    #: Keys loaded at start (llama.cpp single mode and vLLM serve ``loaded[0]``).
    loaded: list[str] = field(default_factory=list)
    #: Slots per instance (1 = serial). LM Studio before 0.4 is serial whatever this says.
    parallel: int = 4
    #: Server version; "" picks the kind's default. LM Studio "0.3.x" has no /api/v1.
    version: str = ""
    #: llama.cpp: router mode (--models-dir) instead of one model.
    router_mode: bool = False
    #: llama.cpp router --models-max (0 = unlimited).
    models_max: int = 0
    #: llama.cpp --sleep-idle-seconds (simulated): an idle router model reads "sleeping"
    #: after this long, and wakes on the next request to it. None: never sleeps.
    sleep_idle_s: float | None = None
    #: Ollama OLLAMA_MAX_LOADED_MODELS (0 = as memory allows).
    max_loaded_models: int = 0
    #: Ollama OLLAMA_MAX_QUEUE: requests waiting beyond it get 503.
    max_queue: int = 512
    #: Ollama default keep_alive; for LM Studio the JIT TTL, where the 300 s default is
    #: replaced by LM Studio's own 3600 s default (see ``__post_init__``).
    keep_alive_s: float = OLLAMA_KEEP_ALIVE_S
    #: LM Studio just-in-time loading.
    jit: bool = True
    #: LM Studio auto-evict of the previous JIT-loaded model.
    auto_evict: bool = True
    #: Require ``Authorization: Bearer`` (llama.cpp: all but /health and /models).
    api_key: str | None = None
    #: Port to listen on (0 = any free port).
    port: int = 0
    #: Load speed, GB/s.
    disk_gb_per_s: float = 3.0
    #: Download speed of models not yet downloaded (``SimModel.downloaded``), GB/s.
    download_gb_per_s: float = 0.1
    #: Prompt processing speed, tokens/s.
    prefill_tok_per_s: float = 2000.0
    #: Generation speed of one slot when it runs alone, tokens/s.
    decode_tok_per_s: float = 40.0
    #: llama.cpp ``--reranking`` (vLLM: a reranking model): ``/v1/rerank`` answers;
    #: without it llama-server answers 501 and vLLM has no such path.
    reranking: bool = False
    #: Routed paths this build lacks although its kind and version have them (an older
    #: build, a server started without them), answered as an unknown route.
    missing_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = NodeKind(self.kind)
        if not self.version:
            self.version = DEFAULT_VERSIONS[self.kind]
        # One field serves both kinds' idle timeouts; each kind's own default applies when
        # the field was left at its default, so an LM Studio spec behaves like LM Studio.
        if self.kind is NodeKind.LMSTUDIO and self.keep_alive_s == OLLAMA_KEEP_ALIVE_S:
            self.keep_alive_s = LMSTUDIO_JIT_TTL_S
        if self.parallel < 1:
            raise ValueError(f"{self.name}: parallel must be >= 1")
        keys = [m.key for m in self.models]
        for key in self.loaded:
            if key not in keys:
                raise ValueError(f"{self.name}: loaded model {key!r} is not in models")

    def model(self, key: str) -> SimModel | None:
        """The downloaded model called ``key``, or None."""
        for m in self.models:
            if m.key == key:
                return m
        return None

    @property
    def serial(self) -> bool:
        """LM Studio before 0.4 handles one request at a time across the whole server."""
        return self.kind is NodeKind.LMSTUDIO and version_tuple(self.version) < (0, 4)


def version_tuple(version: str) -> tuple[int, ...]:
    """ "0.3.31" -> (0, 3, 31); non-numeric parts ("x", "b1") count as 0."""
    parts = []
    for p in version.split("."):
        m = re.match(r"\d+", p)
        parts.append(int(m.group()) if m else 0)
    return tuple(parts)
