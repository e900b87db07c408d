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

from lmtui.config.checks import check_config
from lmtui.config.errors import ConfigError, ConfigProblem
from lmtui.config.explain import Problem, convert_all
from lmtui.config.locate import KeyPath, format_path, key_lines, line_of
from lmtui.config.schema import Config
from lmtui.config.tls import resolve, tls_problems

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


def parse_toml(path: Path, text: str) -> dict[str, Any]:
    """Parse ``text`` as TOML; a syntax error is one ConfigError at tomllib's line (parsing
    cannot go on past it, so there is never more than one)."""
    try:
        return tomllib.loads(text)
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


def decode_toml(path: Path, text: str, schema: type[_T]) -> tuple[_T, dict[KeyPath, int]]:
    """Parse ``text`` as TOML into the msgspec ``schema``, strictly.

    Returns the value and the line of every key. A syntax error raises a ConfigError at
    tomllib's line; schema problems raise one ConfigError listing all of them, each with the
    line of its key.
    """
    data = parse_toml(path, text)
    lines = key_lines(text)
    converted = convert_all(data, schema)
    if converted.value is None or converted.problems:
        raise _error(path, lines, converted.problems)
    return converted.value, lines


def _error(path: Path, lines: dict[KeyPath, int], problems: list[Problem]) -> ConfigError:
    """One ConfigError for ``problems``, in file order (by line; ties keep their order)."""
    located = [
        ConfigProblem(path, line_of(lines, p.path), format_path(p.path), p.message)
        for p in problems
    ]
    return ConfigError.of(sorted(located, key=lambda p: p.line))


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
    model names and aliases, URLs, ``router.listen``, environment variable names and the
    TLS files (found, readable, a matching pair; a relative path is from the file's
    directory). Every problem in the file is reported, in file order, in one ConfigError;
    only a TOML syntax error stops at once. SSH hosts default to the host of the node's URL.
    """
    path = Path(path)
    text = read_text(path)
    data = parse_toml(path, text)
    lines = key_lines(text)
    converted = convert_all(data, Config)
    problems = list(converted.problems)
    if converted.value is not None:
        # The TLS files are found from the config's directory, then opened to check them.
        rc = converted.value.router
        if rc.tls_cert is not None:
            rc.tls_cert = resolve(rc.tls_cert, path.parent)
        if rc.tls_key is not None:
            rc.tls_key = resolve(rc.tls_key, path.parent)
        # Settings that stand in for bad ones are not the user's: their problems are not news.
        checked = check_config(converted.value, lines) + tls_problems(rc)
        problems += [p for p in checked if not converted.is_tainted(p.path)]
    if converted.value is None or problems:
        raise _error(path, lines, problems)
    cfg = converted.value
    _fill_defaults(cfg)
    return cfg
