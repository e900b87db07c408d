"""The one exception of the config package: :class:`ConfigError`, a file that cannot be used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class ConfigProblem(NamedTuple):
    """One thing wrong in a file, located: ``str()`` is ``file:line: key: what is wrong``.

    ``line`` is 1-based; 0 means the problem concerns the file as a whole (missing,
    unreadable). ``key`` is the dotted path of the offending key, or "" when there is none.
    """

    path: Path
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line > 0 else str(self.path)
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(Exception):
    """A config or overrides file cannot be used; ``str()`` says where and why.

    It carries every problem found in the file (:attr:`problems`, in file order), one per
    line of ``str()``. ``path``, ``line``, ``key`` and ``message`` are those of the first.
    The CLI prints ``str(err)`` and exits with :attr:`exit_code`, without a traceback.
    """

    #: Process exit status for a configuration error (2, as for command-line misuse).
    exit_code = 2

    def __init__(
        self,
        path: Path | str,
        line: int,
        key: str,
        message: str,
        *,
        more: Sequence[ConfigProblem] = (),
    ) -> None:
        super().__init__(path, line, key, message)
        self.path = Path(path)
        self.line = line
        self.key = key
        self.message = message
        #: Every problem, this one first, then ``more``.
        self.problems: tuple[ConfigProblem, ...] = (
            ConfigProblem(self.path, line, key, message),
            *more,
        )

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem]) -> ConfigError:
        """One error for several problems (at least one), in the order given."""
        first, *more = problems
        return cls(first.path, first.line, first.key, first.message, more=more)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
