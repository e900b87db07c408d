"""Configuration: the TOML schema, strict validation with line-precise errors, the overrides file.

The user's ``config.toml`` is read, never written. Run-time changes (pins, strategy, drained
nodes) go to ``overrides.toml`` in the state directory (read and written atomically by
:mod:`lmtui.overrides`) and are layered over the config by :meth:`Config.apply_overrides`.

Every problem a user can meet while loading raises :class:`ConfigError`, whose ``str()`` is
a complete message in the compiler style ``file:line: key: what is wrong``::

    config.toml:14: nodes[2].url: 'htp://x' is not a valid URL (expected http:// or https://)

Array indexes in keys count from 0, as in the TOML data model (``nodes[0]`` is the first
``[[nodes]]``); the line number points at the entry itself.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from lmtui._config_checks import check_config, explain_validation_error
from lmtui._config_checks import parse_listen as parse_listen
from lmtui._config_checks import parse_port_range as parse_port_range
from lmtui._toml_locate import KeyPath, format_path, key_lines, line_of
from lmtui.core.model import NodeKind

GB = 1024**3

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
#: The router's routing strategies (see ARCHITECTURE.md, "Strategies").
Strategy = Literal["efficiency", "spread", "replicas"]

_T = TypeVar("_T")


class ConfigError(Exception):
    """A config or overrides file cannot be used; ``str()`` says where and why.

    ``line`` is 1-based; 0 means the problem concerns the file as a whole (missing,
    unreadable). ``key`` is the dotted path of the offending key, or "" when there is none.
    The CLI prints ``str(err)`` and exits with :attr:`exit_code`, without a traceback.
    """

    #: Process exit status for a configuration error (2, as for command-line misuse).
    exit_code = 2

    def __init__(self, path: Path | str, line: int, key: str, message: str) -> None:
        super().__init__(path, line, key, message)
        self.path = Path(path)
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line > 0 else str(self.path)
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


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
    #: Requests that may wait per model before new ones get 429.
    queue_depth: PositiveInt = 256
    #: Seconds a request may wait in lmtui's queue (and for a load) before 504.
    queue_timeout: PositiveFloat = 300.0
    #: Largest request body accepted, in bytes (413 above it).
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
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


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole ``config.toml``. Build one with :func:`load_config`."""

    #: The servers of the cluster, one ``[[nodes]]`` table each.
    nodes: list[NodeConfig] = msgspec.field(default_factory=list)
    poll: PollConfig = msgspec.field(default_factory=PollConfig)
    router: RouterConfig = msgspec.field(default_factory=RouterConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    #: Per-model settings, one ``[[models]]`` table each; models not listed get defaults.
    models: list[ModelConfig] = msgspec.field(default_factory=list)

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


# --- loading -------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; ConfigError (line 0) when missing or unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, 0, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, 0, "", "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(path, 0, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        # Editors on Windows may prepend a BOM; TOML itself does not allow one.
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, "", "not valid UTF-8 text") from None


def decode_toml(path: Path, text: str, schema: type[_T]) -> tuple[_T, dict[KeyPath, int]]:
    """Parse ``text`` as TOML into the msgspec ``schema``, strictly.

    Returns the value and the line of every key. Any failure raises a ConfigError with the
    line of the offending key (or tomllib's line for a syntax error).
    """
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POSITION.search(message)
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        if m is not None:
            message = message[: m.start()]
            if m.group(1):
                line = int(m.group(1))
                message += f" (column {m.group(2)})"
        raise ConfigError(path, line, "", f"invalid TOML: {message}") from None
    lines = key_lines(text)
    try:
        return msgspec.convert(data, schema, strict=True), lines
    except msgspec.ValidationError as exc:
        problem = explain_validation_error(exc, schema, data)
        raise _error_at(path, lines, problem.path, problem.message) from None


def _error_at(path: Path, lines: dict[KeyPath, int], key: KeyPath, message: str) -> ConfigError:
    return ConfigError(path, line_of(lines, key), format_path(key), message)


def _fill_defaults(cfg: Config) -> None:
    """Defaults that depend on other settings, resolved once here rather than by each user."""
    for node in cfg.nodes:
        if node.ssh is None:
            continue
        if node.ssh.host is None:
            node.ssh.host = urlsplit(node.url).hostname
        # Users write "~/.ssh/..."; expand it once here so every consumer gets a real path.
        if node.ssh.key_file is not None:
            node.ssh.key_file = os.path.expanduser(node.ssh.key_file)
        if node.ssh.known_hosts is not None:
            node.ssh.known_hosts = os.path.expanduser(node.ssh.known_hosts)


def load_config(path: Path | str) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` naming file, line and key.

    Beyond the schema (types, ranges, unknown keys) this checks unique node names, unique
    model names and aliases, URLs, ``router.listen`` and environment variable names. When
    several such problems exist, the first one in the file is reported. SSH hosts default
    to the host of the node's URL.
    """
    path = Path(path)
    text = read_text(path)
    cfg, lines = decode_toml(path, text, Config)
    problems = check_config(cfg, lines)
    if problems:
        first = min(problems, key=lambda p: line_of(lines, p.path))
        raise _error_at(path, lines, first.path, first.message)
    _fill_defaults(cfg)
    return cfg
