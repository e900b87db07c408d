"""Configuration: the TOML schema, strict validation with line-precise errors, the overrides file.

The user's ``config.toml`` is read, never written. Run-time changes (pins, strategy, drained
nodes) go to ``overrides.toml`` in the state directory, written atomically.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from lmtui.core.model import NodeKind

GB = 1024**3

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class SshConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How to reach a node's host over SSH, for host memory and CLI control."""

    #: Host name or address; defaults to the host of the node's URL.
    host: str | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 22
    #: Login user; defaults to the local user.
    user: str | None = None
    #: Private key file; defaults to the SSH agent and ~/.ssh/id_*.
    key_file: str | None = None
    #: known_hosts file to check the host key against; defaults to ~/.ssh/known_hosts.
    known_hosts: str | None = None
    #: Accept and remember a host key not yet in known_hosts (never a *changed* key).
    accept_new_host_key: bool = False
    #: Remote OS; "auto" asks ``uname`` once per connection.
    os: Literal["auto", "linux", "macos"] = "auto"
    #: Seconds to wait for the connection and for each command.
    timeout: PositiveFloat = 10.0


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One server in the cluster."""

    #: Unique name shown in the UI and used in commands.
    name: str
    kind: NodeKind
    #: Base URL of the server, e.g. http://mac1.local:1234 (no /v1 suffix).
    url: str
    #: Name of the environment variable holding the server's API key (never the key itself).
    api_key_env: str | None = None
    #: Concurrent requests per loaded instance; overrides what the server reports
    #: (needed for Ollama, whose OLLAMA_NUM_PARALLEL is not exposed over HTTP).
    slots: PositiveInt | None = None
    #: Memory of the host in GB, when neither the server nor SSH can tell.
    memory_gb: PositiveFloat | None = None
    #: Memory lmtui keeps free on this node in GB; overrides [pool] reserved_gb.
    reserved_gb: NonNegFloat | None = None
    #: Seconds between polls of this node; overrides [poll] interval.
    poll_interval: PositiveFloat | None = None
    ssh: SshConfig | None = None


class PollConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How lmtui watches the nodes."""

    #: Seconds between polls of each node.
    interval: PositiveFloat = 1.0
    #: Seconds before one HTTP request of a poll counts as failed.
    timeout: PositiveFloat = 3.0
    #: Consecutive failed polls after which a node is shown down.
    down_after: PositiveInt = 2
    #: Longest wait between probes of a down node, in seconds.
    max_backoff: PositiveFloat = 30.0
    #: Seconds between host-memory reads over SSH.
    memory_interval: PositiveFloat = 5.0


class RouterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The OpenAI-compatible router."""

    #: HOST:PORT the router listens on.
    listen: str = "127.0.0.1:4000"
    strategy: Literal["efficiency", "spread", "replicas"] = "efficiency"
    #: Names of environment variables holding accepted bearer keys; none = loopback only.
    api_keys_env: list[str] = msgspec.field(default_factory=list)
    #: Environment variable holding the control-API admin token.
    admin_token_env: str | None = None
    #: Requests that may wait per model before new ones get 429.
    queue_depth: PositiveInt = 256
    #: Seconds a request may wait in lmtui's queue (and for a load) before 504.
    queue_timeout: PositiveFloat = 300.0
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    #: Send the same ``user`` to the same replica while it has a free slot.
    session_affinity: bool = False
    #: Most replicas of one model the ``spread`` strategy creates.
    max_replicas: PositiveInt = 4
    #: Queue depth above which the ``replicas`` strategy adds a replica.
    replica_queue_threshold: PositiveInt = 4


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Memory management across the cluster."""

    #: Memory kept free on every node for the OS and other programs, in GB.
    reserved_gb: NonNegFloat = 8.0
    #: How to choose what to evict: least recently used, or weighing reload cost.
    eviction: Literal["lru", "cost"] = "lru"
    #: Unload an unpinned model idle this many seconds (0 = never).
    idle_ttl: NonNegFloat = 0.0
    #: Never evict a model loaded less than this many seconds ago (against thrashing).
    min_residency: NonNegFloat = 30.0


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What lmtui should know about one model."""

    #: The model's name as clients ask for it and as the backends call it.
    name: str
    #: Other names clients may use for it.
    aliases: list[str] = msgspec.field(default_factory=list)
    #: Keep it loaded: never evicted, reloaded when it disappears.
    pinned: bool = False
    #: "high" is never evicted for a "normal" or "low" one; "low" idles out first.
    priority: Literal["low", "normal", "high"] = "normal"
    min_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Memory footprint in GB, when the backend's figure is wrong or missing.
    size_gb: PositiveFloat | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    nodes: list[NodeConfig] = msgspec.field(default_factory=list)
    poll: PollConfig = msgspec.field(default_factory=PollConfig)
    router: RouterConfig = msgspec.field(default_factory=RouterConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    models: list[ModelConfig] = msgspec.field(default_factory=list)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def reserved_bytes(self, node: NodeConfig) -> int:
        gb = node.reserved_gb if node.reserved_gb is not None else self.pool.reserved_gb
        return int(gb * GB)
