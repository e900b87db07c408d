"""Where lmtui keeps its files, and which config file to read.

Every lookup of a user directory goes through the functions here, so tests patch one
place (``monkeypatch.setattr(lmtui.config.paths, "config_dir", ...)``) and never read the
developer's own config. Directories follow each platform's convention via platformdirs: on
Linux ``~/.config/lmtui`` (config, and the user's ``themes`` folder),
``~/.local/state/lmtui`` (state: the overrides file) and ``~/.local/share/lmtui`` (data:
the request log); XDG_* variables are honoured there.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from lmtui.config.errors import ConfigError

APP_NAME = "lmtui"
#: Environment variable naming the config file, checked after ``--config``.
CONFIG_ENV = "LMTUI_CONFIG"
CONFIG_FILE = "config.toml"
OVERRIDES_FILE = "overrides.toml"
THEMES_DIR = "themes"


def config_dir() -> Path:
    """Directory of the user's ``config.toml`` (read, never written by lmtui)."""
    return platformdirs.user_config_path(APP_NAME)


def themes_dir() -> Path:
    """The user's own themes, ``config_dir()/themes`` (one Textual theme per ``*.toml``);
    the dashboard loads them after lmtui's, and a missing folder is fine."""
    return config_dir() / THEMES_DIR


def state_dir() -> Path:
    """Directory of lmtui's own run-time state (the overrides file)."""
    return platformdirs.user_state_path(APP_NAME)


def data_dir() -> Path:
    """Directory of lmtui's data (the SQLite request log)."""
    return platformdirs.user_data_path(APP_NAME)


def overrides_path() -> Path:
    """The overrides file: ``state_dir()/overrides.toml``."""
    return state_dir() / OVERRIDES_FILE


def find_config(cli_path: Path | None) -> Path | None:
    """The config file to load: ``--config``, else ``$LMTUI_CONFIG``, else the default.

    Returns None when neither option is given and ``config_dir()/config.toml`` does not
    exist (the CLI then offers the demo). A file named explicitly by ``--config`` or
    ``LMTUI_CONFIG`` must exist: a typo there raises ConfigError (line 0) rather than
    silently starting something the user did not ask for.
    """
    if cli_path is not None:
        return _must_exist(cli_path, "given with --config")
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return _must_exist(Path(env).expanduser(), f"named by {CONFIG_ENV}")
    default = config_dir() / CONFIG_FILE
    return default if default.is_file() else None


def _must_exist(path: Path, how: str) -> Path:
    if path.is_dir():
        raise ConfigError(path, 0, "", f"is a directory, not a config file ({how})")
    if not path.is_file():
        raise ConfigError(path, 0, "", f"config file not found ({how})")
    return path
