"""The overrides file: run-time changes (pins, strategy, drained nodes) that survive restarts.

lmtui never rewrites the user's ``config.toml``. What the user changes while lmtui runs is
saved here instead, as an :class:`~lmtui.config.Overrides` table in
``state_dir()/overrides.toml``, and layered over the config at start with
:meth:`~lmtui.config.Config.apply_overrides`.

Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash or power
cut mid-write leaves the previous file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import msgspec
import tomli_w

from lmtui.config.errors import ConfigError
from lmtui.config.load import decode_toml, read_text
from lmtui.config.schema import Overrides

log = logging.getLogger(__name__)

_HEADER = (
    "# lmtui run-time changes (pins, strategy, drained nodes), written by lmtui.\n"
    "# Your config.toml is never changed; delete this file to return to it.\n\n"
)


def corrupt_path(path: Path) -> Path:
    """Where :func:`load_overrides` keeps a corrupt overrides file: ``<name>.corrupt``."""
    return path.with_name(path.name + ".corrupt")


def load_overrides(path: Path, *, strict: bool = False) -> Overrides:
    """Read the overrides file; a missing file means no overrides.

    A corrupt file (bad TOML, unknown keys, wrong types) is lmtui's own state, not the
    user's config, so by default it must not stop lmtui (or a chat bot's router) from
    starting: the file is moved aside to :func:`corrupt_path` (replacing an older one) for
    inspection, a warning is logged, and empty overrides are returned; the next save
    writes a fresh file. With ``strict=True`` the line-precise ConfigError is raised
    instead and the file is left in place. An unreadable file (permissions) always raises
    ConfigError: moving it aside would not help and might fail the same way.
    """
    if not path.exists():
        return Overrides()
    text = read_text(path)
    try:
        return decode_toml(path, text, Overrides)[0]
    except ConfigError as exc:
        if strict:
            raise
        aside = corrupt_path(path)
        os.replace(path, aside)
        log.warning("ignoring corrupt overrides file (kept as %s): %s", aside, exc)
        return Overrides()


def save_overrides(path: Path, ov: Overrides) -> None:
    """Write ``ov`` to ``path`` atomically: after a crash the file is the old one or the new.

    The text goes to a temporary file in the same directory (so the rename cannot cross
    file systems), is flushed and fsynced, then renamed over ``path`` with ``os.replace``;
    the directory is fsynced so the rename itself survives a power cut. The directory is
    created if needed. OSError propagates, and the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (_HEADER + tomli_w.dumps(msgspec.to_builtins(ov))).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Windows cannot open a directory; there the rename is durable without this step.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
