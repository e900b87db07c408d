"""Configuration: the TOML schema, strict validation with line-precise errors, the overrides file.

The user's ``config.toml`` is read, never written. Run-time changes (pins, strategy, drained
nodes) go to ``overrides.toml`` in the state directory (read and written atomically by
:mod:`lmtui.config.overrides`) and are layered over the config by
:meth:`Config.apply_overrides`.

Every problem a user can meet while loading raises :class:`ConfigError`, whose ``str()`` is
a complete message in the compiler style ``file:line: key: what is wrong``::

    config.toml:14: nodes[2].url: 'htp://x' is not a valid URL (expected http:// or https://)

Array indexes in keys count from 0, as in the TOML data model (``nodes[0]`` is the first
``[[nodes]]``); the line number points at the entry itself.

The package, bottom up (each module imports only those above it)::

    locate     where each key of a TOML text is written (line numbers)
    errors     ConfigError
    schema     the msgspec structs, defaults, the HOST:PORT and port-range parsers
    keymap     the ids of the dashboard's bindings, the shape of a key
    explain    schema errors in plain words, every one of them
    checks     what the schema cannot express
    load       read_text, decode_toml, load_config
    overrides  the run-time overrides file (atomic writes)
    paths      where lmtui's files are, which config file to read
"""

from lmtui.config.errors import ConfigError, ConfigProblem
from lmtui.config.keymap import BINDING_IDS, key_strings
from lmtui.config.load import decode_toml, load_config, read_text
from lmtui.config.schema import (
    GB,
    Config,
    EffectiveSettings,
    ModelConfig,
    NodeConfig,
    Overrides,
    PeerConfig,
    PollConfig,
    PoolConfig,
    PoolNodeConfig,
    RouterConfig,
    SshConfig,
    Strategy,
    WebConfig,
    parse_listen,
    parse_port_range,
)

__all__ = [
    "BINDING_IDS",
    "GB",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "EffectiveSettings",
    "ModelConfig",
    "NodeConfig",
    "Overrides",
    "PeerConfig",
    "PollConfig",
    "PoolConfig",
    "PoolNodeConfig",
    "RouterConfig",
    "SshConfig",
    "Strategy",
    "WebConfig",
    "decode_toml",
    "key_strings",
    "load_config",
    "parse_listen",
    "parse_port_range",
    "read_text",
]
