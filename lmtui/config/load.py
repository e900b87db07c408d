"""Reading ``config.toml``: TOML, then the schema, then the checks, into one :class:`Config`.

This is the module that ties the others together (schema, checks, locator), so none of them
needs to import another that imports it back.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from lmtui.config.checks import check_config, explain_validation_error
from lmtui.config.errors import ConfigError
from lmtui.config.locate import KeyPath, format_path, key_lines, line_of
from lmtui.config.schema import Config

_T = TypeVar("_T")

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
