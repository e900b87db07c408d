"""The config schema: what ``config.toml`` and ``overrides.toml`` may hold, with defaults.

One msgspec struct per table, strict (unknown keys are errors), with a docstring on every
field; ``config.example.toml`` documents the same keys for users. The formats of the
string-valued settings that are parsed again later (``HOST:PORT``, port ranges) have their
one parser here too, so the schema, the checks and ``--listen`` agree.

This module imports nothing else from :mod:`lmtui.config`: the checks
(:mod:`lmtui.config.checks`) and the loader (:mod:`lmtui.config.load`) build on it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from lmtui.core.model import NodeKind

GB = 1024**3

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
#: The router's routing strategies (see docs/architecture.md, "Strategies").
Strategy = Literal["efficiency", "spread", "replicas"]


class SshConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How to reach a node's host over SSH, for host memory and CLI control."""

    #: Host name or address; defaults to the host of the node's URL.
    host: str | None = None
    #: SSH port of the host.
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
    #: LM Studio nodes: the ``lms`` command on the host (LM Studio installs it in
    #: ~/.lmstudio/bin, which a non-interactive SSH session's PATH often lacks). With it
    #: lmtui reads ``lms ps`` (busy and queued truth, sizes, TTLs) and loads and unloads
    #: through ``lms``, which also makes servers before 0.4 controllable. "" turns it off.
    lms: str = "~/.lmstudio/bin/lms"


class PoolNodeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a ``llamacpp-pool`` node starts its ``llama-server`` processes (``[nodes.pool]``)."""

    #: Path of the ``llama-server`` binary on the node's host.
    binary: str
    #: Directory on the host whose ``*.gguf`` files can be loaded, named by base name.
    models_dir: str | None = None
    #: Further models, name -> path of the ``.gguf`` file on the host.
    models: dict[str, str] = msgspec.field(default_factory=dict)
    #: Ports the servers may listen on, "FIRST-LAST" (inclusive).
    ports: str = "41000-41099"
    #: Extra arguments for every server, e.g. ["-np", "2", "-c", "4096"].
    args: list[str] = msgspec.field(default_factory=list)
    #: Address the servers bind and lmtui reaches them at; defaults to the host of the
    #: node's URL (127.0.0.1 for a loopback URL).
    host: str | None = None
    #: Seconds a server may take to answer /health 200 before its start counts as failed.
    start_timeout: PositiveFloat = 120.0
    #: Seconds between SIGTERM and SIGKILL when a server is stopped.
    stop_grace: PositiveFloat = 10.0
    #: Directory for pid and log files on the host; defaults to ~/.local/state/lmtui/pool
    #: there (lmtui's own state directory when local).
    state_dir: str | None = None

    def port_range(self) -> tuple[int, int]:
        """``ports`` as (first, last); ValueError saying what is wrong."""
        return parse_port_range(self.ports)


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One server in the cluster."""

    #: Unique name shown in the UI and used in commands.
    name: str
    #: Which server software runs there: lmstudio, ollama, llamacpp, llamacpp-pool, openai.
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
    #: The machine the server runs on: nodes with the same ``host`` share one memory budget.
    #: Default: nodes reached at one address (the SSH host, else the URL's) share it; a
    #: loopback node only when its memory is read here (no ``memory_gb``).
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)] | None = None
    #: Seconds between polls of this node; overrides [poll] interval.
    poll_interval: PositiveFloat | None = None
    #: Reach the host over SSH too (host memory, ``lms`` CLI, spawning llama-server).
    ssh: SshConfig | None = None
    #: Seconds a request sent here may wait for the node's first byte; overrides
    #: [router] first_byte_timeout (a slow Mac with long prompts may need more).
    first_byte_timeout: PositiveFloat | None = None
    #: ``llamacpp-pool`` only: the servers lmtui starts there (required for that kind).
    pool: PoolNodeConfig | None = None


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
    #: How requests pick a replica and when models load (overridable at run time).
    strategy: Strategy = "efficiency"
    #: Names of environment variables holding accepted bearer keys; none = loopback only.
    api_keys_env: list[str] = msgspec.field(default_factory=list)
    #: Environment variable holding the control-API admin token.
    admin_token_env: str | None = None
    #: Environment variable holding a token that may read /metrics (any API key may too).
    metrics_token_env: str | None = None
    #: Host names (beside IP addresses and localhost) a request may be sent to on a path
    #: that needs no key: the defence against DNS rebinding.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: Origins ("https://app.example") whose web pages may send requests; others get 403.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    #: Requests that may wait per model before new ones get 429.
    queue_depth: PositiveInt = 256
    #: Seconds a request may wait in lmtui's queue (and for a load) before 504.
    queue_timeout: PositiveFloat = 300.0
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    #: Seconds an idle keep-alive connection stays open, on every path.
    idle_timeout: PositiveFloat = 75.0
    #: Seconds a request head may take to arrive from its first byte (408 after it).
    head_timeout: PositiveFloat = 10.0
    #: Seconds a request body may take to arrive after its head (408 after it).
    body_timeout: PositiveFloat = 60.0
    #: Client connections open at once, on every path; past it a new one gets a 503.
    #: Lowered at start to what the process's descriptor limit allows.
    max_connections: PositiveInt = 4096
    #: Client connections open at once from one address (a proxy in front of lmtui counts
    #: as one address).
    max_connections_per_address: PositiveInt = 1024
    #: Largest answer lmtui reads whole from a node (not streamed), in bytes; a larger one
    #: is a failed answer (another replica, or 502).
    max_answer_bytes: PositiveInt = 64 * 1024 * 1024
    #: PEM file of the router's TLS certificate (its chain after it): with ``tls_key`` set
    #: too, the router serves HTTPS only (TLS 1.2 or later). A relative path is relative to
    #: the config file's directory; "~" is expanded.
    tls_cert: str | None = None
    #: PEM file of the private key of ``tls_cert`` (not encrypted); keep it mode 0600.
    tls_key: str | None = None
    #: Requests per second one API key may send to /v1 (a token bucket); 0 = no limit.
    key_rate_limit: NonNegFloat = 0.0
    #: Requests one API key may send at once before ``key_rate_limit`` applies.
    key_rate_burst: PositiveInt = 100
    #: Requests per second one client address (an IPv6 client: its /64) may send to /v1;
    #: 0 = no limit.
    address_rate_limit: NonNegFloat = 0.0
    #: Requests one client address may send at once before ``address_rate_limit`` applies.
    address_rate_burst: PositiveInt = 100
    #: Failed authentications per second an address may go on making once its burst is
    #: spent; past that its requests to keyed paths get 429 without being judged. 0 = no
    #: limit.
    auth_failure_rate: NonNegFloat = 0.2
    #: Failed authentications an address may make at once.
    auth_failure_burst: PositiveInt = 20
    #: Seconds a request sent to a node may wait for its first byte before lmtui gives up
    #: on that node and serves it elsewhere (or queues it again). A request that is not
    #: streamed gets its first byte with the whole answer, so this also bounds how long a
    #: non-streamed generation may take. Five minutes: a 100k-token prompt on a slow Mac.
    first_byte_timeout: PositiveFloat = 300.0
    #: Send the same ``user`` to the same replica while it has a free slot.
    session_affinity: bool = False
    #: Most replicas of one model the ``spread`` strategy creates.
    max_replicas: PositiveInt = 4
    #: Queue depth above which the ``replicas`` strategy adds a replica.
    replica_queue_threshold: PositiveInt = 4
    #: Keep a SQLite log of finished requests in the user data directory.
    request_log: bool = True
    #: Days of requests the log keeps; older rows are deleted (0 = keep everything).
    request_log_days: NonNegFloat = 30.0
    #: Seconds a request may wait for a local replica (in lmtui's queue, for a load)
    #: before it goes to a ``[[peers]]`` entry that serves its model. Requests no local
    #: node can serve at all (its every replica down, no node able to load it, every try
    #: failed before the first byte) go at once. Without peers it changes nothing.
    fallback_after: NonNegFloat = 10.0
    #: Requests already queued for a model at which the next one goes to a peer at once,
    #: without waiting ``fallback_after`` (0 = off).
    fallback_queue: NonNegInt = 0


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Memory management across the cluster."""

    #: Memory kept free on every node for the OS and other programs, in GB.
    reserved_gb: NonNegFloat = 8.0
    #: How to choose what to evict: least recently used (``lru``), weighing reload cost
    #: (``cost``), or request rate × reload time / size (``gdsf``).
    eviction: Literal["lru", "cost", "gdsf"] = "lru"
    #: Among nodes where a load fits, which takes it: the one it leaves the least free
    #: memory on (``best-fit``), the one with the most free memory (``most-free``), or the
    #: one whose models are asked for least (``spread``). See docs/architecture.md.
    placement: Literal["best-fit", "most-free", "spread"] = "spread"
    #: Unload an unpinned model idle this many seconds (0 = never); ``low`` priority models
    #: at half of it, ``high`` ones never (unless ``idle_ttl_by_priority`` says otherwise).
    idle_ttl: NonNegFloat = 0.0
    #: Idle TTL in seconds per priority (0 = never), replacing the rule above for the
    #: priorities named, e.g. ``{ low = 300, high = 7200 }``.
    idle_ttl_by_priority: dict[Literal["low", "normal", "high"], NonNegFloat] = msgspec.field(
        default_factory=dict
    )
    #: Never evict a model loaded less than this many seconds ago (against thrashing).
    min_residency: NonNegFloat = 30.0
    #: Load the most requested models onto free memory (never evicting anything for it): at
    #: start, when a node comes back and after an eviction or unload frees room.
    preload: bool = True
    #: Only the first this many models of the demand ranking are preloaded (0 = none).
    preload_max: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 8
    #: Fraction of each node's (and host's) budget a preload leaves free.
    preload_keep_free: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    #: Models asked for less often than this (decayed requests per hour) are not preloaded.
    preload_min_rate: NonNegFloat = 1.0


class WebConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``lmtui --web``: the dashboard in a browser, through textual-serve."""

    #: HOST:PORT the web dashboard listens on (``--web HOST:PORT`` overrides it). Beyond
    #: loopback it needs ``[router] admin_token_env``, and every browser must present it.
    listen: str = "127.0.0.1:8020"
    #: Browser sessions open at once: each runs its own dashboard process (about 90 MB and
    #: a stream of the control API's events), so a forgotten tab cannot grow without bound.
    max_sessions: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4


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
    #: Replicas the ``replicas`` strategy keeps loaded at all times.
    min_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Memory footprint in GB, when the backend's figure is wrong or missing.
    size_gb: PositiveFloat | None = None
    #: Concurrent requests per instance of this model, overriding the node's ``slots`` and
    #: what the server reports (e.g. a model loaded with a smaller ``parallel``).
    slots: PositiveInt | None = None
    #: Seconds a request for this model may wait for a node's first byte; overrides the
    #: node's and [router] first_byte_timeout.
    first_byte_timeout: PositiveFloat | None = None
    #: Unload it when idle this many seconds (0 = never), whatever its priority says;
    #: carried out by Ollama itself (``keep_alive``) and by lmtui everywhere.
    ttl: NonNegFloat | None = None


class PeerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Another OpenAI-compatible service (another lmtui, a llama-swap, a hosted API) that
    takes a model's requests when the cluster cannot serve them in time (``[[peers]]``)."""

    #: Unique name, shown in the dashboard, the request log (as node ``peer:NAME``), the
    #: metrics and the ``x-lmtui-peer`` header of the answers it gave.
    name: str
    #: Base URL of its API without /v1 (a path before it is kept: https://host/api).
    url: str
    #: Name of the environment variable holding its API key (never the key itself).
    api_key_env: str | None = None
    #: The models (the names clients send; ``*`` and ``?`` wildcards) it may serve.
    models: list[str]
    #: Local model name -> the peer's name for it, where they differ.
    rename: dict[str, str] = msgspec.field(default_factory=dict)
    #: Peers are tried lowest first; ties in the order of the file.
    priority: int = 0
    #: Requests it may have in flight at once; past it the next peer is tried.
    max_concurrent: PositiveInt = 16
    #: Requests per second it may be sent (a token bucket; 0 = no limit).
    rate_limit: NonNegFloat = 0.0
    #: Requests it may be sent at once before ``rate_limit`` applies.
    rate_burst: PositiveInt = 10
    #: Requests it may be sent per ``budget_window`` (0 = no budget). Counted from the
    #: request log at start, so a restart does not reset it.
    budget: NonNegInt = 0
    #: The budget's window in seconds (a sliding window; a day by default).
    budget_window: PositiveFloat = 86400.0
    #: Seconds to wait for its first byte (a non-streamed answer's whole body).
    first_byte_timeout: PositiveFloat = 120.0


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole ``config.toml``. Build one with :func:`load_config`."""

    #: The servers of the cluster, one ``[[nodes]]`` table each.
    nodes: list[NodeConfig] = msgspec.field(default_factory=list)
    poll: PollConfig = msgspec.field(default_factory=PollConfig)
    router: RouterConfig = msgspec.field(default_factory=RouterConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    web: WebConfig = msgspec.field(default_factory=WebConfig)
    #: Per-model settings, one ``[[models]]`` table each; models not listed get defaults.
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    #: Services that take requests the cluster cannot serve in time, one ``[[peers]]``
    #: table each.
    peers: list[PeerConfig] = msgspec.field(default_factory=list)
    #: The dashboard's keys, remapped: binding id -> a key, comma-separated keys or an
    #: array of keys, e.g. ``theme = "T"`` (see :mod:`lmtui.config.keymap` for the ids).
    #: A remapped binding no longer answers to its default key.
    keymap: dict[str, str | list[str]] = msgspec.field(default_factory=dict)

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; KeyError when there is none."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def reserved_bytes(self, node: NodeConfig) -> int:
        """Memory lmtui keeps free on ``node``, in bytes (node setting, else [pool])."""
        gb = node.reserved_gb if node.reserved_gb is not None else self.pool.reserved_gb
        return int(gb * GB)

    def model(self, name: str) -> ModelConfig | None:
        """The ``[[models]]`` entry called ``name`` or aliased so, else None."""
        for m in self.models:
            if name == m.name or name in m.aliases:
                return m
        return None

    def resolve_model(self, name: str) -> str:
        """The canonical name for ``name`` (an alias maps to its model); unknown names pass."""
        m = self.model(name)
        return m.name if m is not None else name

    def apply_overrides(self, ov: Overrides) -> EffectiveSettings:
        """Layer run-time overrides over this config, without changing either.

        Pins are the config's ``pinned = true`` models plus ``ov.pinned`` minus
        ``ov.unpinned`` (aliases resolved). Drained nodes no longer in the config are
        dropped: the node was removed, so its drain has nothing left to apply to.
        """
        pinned = {m.name for m in self.models if m.pinned}
        pinned |= {self.resolve_model(n) for n in ov.pinned}
        pinned -= {self.resolve_model(n) for n in ov.unpinned}
        names = {n.name for n in self.nodes}
        return EffectiveSettings(
            pinned=frozenset(pinned),
            strategy=ov.strategy or self.router.strategy,
            drained=frozenset(n for n in ov.drained if n in names),
        )


# --- run-time overrides ------------------------------------------------------------------


class Overrides(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """What the user changed at run time; saved to ``overrides.toml`` in the state dir.

    The update methods return a new value, so a saved ``Overrides`` is never changed under
    the writer's feet; lists stay sorted and free of repeats, so the file diffs cleanly.
    """

    #: Models pinned at run time (in addition to ``pinned = true`` in the config).
    pinned: list[str] = msgspec.field(default_factory=list)
    #: Models the config pins that the user unpinned at run time.
    unpinned: list[str] = msgspec.field(default_factory=list)
    #: Strategy chosen at run time; None = the config's ``[router] strategy``.
    strategy: Strategy | None = None
    #: Nodes drained at run time: no new requests or loads go there.
    drained: list[str] = msgspec.field(default_factory=list)

    def set_pinned(self, model: str, pinned: bool, *, config_pinned: bool) -> Overrides:
        """Pin or unpin ``model`` (its canonical name); ``config_pinned``: the config pins it.

        An unpin is recorded only against a config pin, and a pin only where the config
        has none, so the file holds exactly the differences from the config.
        """
        pins, unpins = set(self.pinned), set(self.unpinned)
        if pinned:
            unpins.discard(model)
            if not config_pinned:
                pins.add(model)
        else:
            pins.discard(model)
            if config_pinned:
                unpins.add(model)
        return msgspec.structs.replace(self, pinned=sorted(pins), unpinned=sorted(unpins))

    def set_drained(self, node: str, drained: bool) -> Overrides:
        """Drain or undrain ``node``."""
        nodes = set(self.drained) | {node} if drained else set(self.drained) - {node}
        return msgspec.structs.replace(self, drained=sorted(nodes))

    def set_strategy(self, strategy: Strategy | None) -> Overrides:
        """Choose a strategy at run time; None returns to the config's."""
        return msgspec.structs.replace(self, strategy=strategy)


class EffectiveSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Config plus overrides: what the engine should do now."""

    pinned: frozenset[str]
    strategy: Strategy
    drained: frozenset[str]


# --- value formats ------------------------------------------------------------------------


def parse_listen(listen: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:4000``); raise ValueError saying what is wrong.

    The one parser of listen addresses, for ``[router] listen`` and ``--listen`` alike.
    ``any_port`` admits port 0 (the OS picks one: tests and benchmarks that read the bound
    port back); a configured router needs a port its bot can be told.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(
            f"{listen!r} is not HOST:PORT (e.g. '127.0.0.1:4000', or '0.0.0.0:4000' to accept"
            " connections from other machines)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. '[::1]:4000'")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{listen!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not (0 if any_port else 1) <= port <= 65535:
        raise ValueError(f"{listen!r}: port {port} is out of range (1-65535)")
    return host, port


def parse_port_range(text: str) -> tuple[int, int]:
    """``"41000-41099"`` -> (41000, 41099); ValueError when malformed, empty or out of range."""
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{text!r} is not a port range FIRST-LAST, e.g. '41000-41099'")
    lo, hi = int(first), int(last)
    if not 1 <= lo <= 65535 or not 1 <= hi <= 65535:
        raise ValueError(f"{text!r}: ports must be within 1-65535")
    if lo > hi:
        raise ValueError(f"{text!r} is empty: the first port is above the last")
    return lo, hi
