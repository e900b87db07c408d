"""The one exception of the config package: :class:`ConfigError`, a file that cannot be used."""

from __future__ import annotations

from pathlib import Path


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
