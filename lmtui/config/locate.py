"""Find the source line of every key in a TOML document, for line-precise config errors.

``tomllib`` returns plain dicts with no positions, and msgspec reports a failure as a path
such as ``$.nodes[1].ssh.port``. This module scans the same text once and maps each path
(as a tuple: ``("nodes", 1, "ssh", "port")``) to the line where it is written:

- a key (``port = 22``, dotted ``ssh.port = 22``, keys inside an inline table
  ``ssh = {port = 22}``) maps to the line of the key;
- a table maps to its header line (``[router]``, ``[nodes.ssh]``), or to the line of the
  first key that created it implicitly (``ssh.port = 22``);
- the n-th ``[[nodes]]`` entry maps to ``("nodes", n)`` (0-based, as msgspec counts), and a
  sub-table header ``[nodes.ssh]`` belongs to the latest ``[[nodes]]`` above it;
- the n-th element of an array value maps to the line where that element starts.

The scanner only runs on text that ``tomllib`` has already accepted, so it skips values
rather than validating them. It never raises on odd input: the caller falls back to line 0.
"""

from __future__ import annotations

import tomllib
from bisect import bisect_left

#: One step of a path: a key name or an array index.
PathPart = str | int
KeyPath = tuple[PathPart, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Characters that end a bare scalar value (number, bool, date-time) inside a line.
_SCALAR_END = frozenset(",]}\n\r#")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.newlines = [k for k, ch in enumerate(text) if ch == "\n"]
        self.lines: dict[KeyPath, int] = {}
        # Resolved path of each array of tables -> how many entries it has so far.
        self.aot_counts: dict[KeyPath, int] = {}
        self.current: KeyPath = ()

    # --- positions -------------------------------------------------------------------

    def line(self) -> int:
        """1-based line of the current position."""
        return bisect_left(self.newlines, self.i) + 1

    def record(self, path: KeyPath, line: int) -> None:
        # The first definition wins: it is where the user declared the thing.
        self.lines.setdefault(path, line)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    # --- whitespace and comments -----------------------------------------------------

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.i += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.s.find("\n", self.i)
            self.i = len(self.s) if end < 0 else end

    def skip_blank(self) -> None:
        """Skip whitespace, comments and newlines (between statements, inside arrays)."""
        while True:
            start = self.i
            self.skip_ws()
            self.skip_comment()
            if self.peek() in ("\n", "\r"):
                self.i += 1
            if self.i == start:
                return

    # --- keys ------------------------------------------------------------------------

    def parse_simple_key(self) -> str:
        ch = self.peek()
        if ch in ('"', "'"):
            start = self.i
            self.skip_single_line_string(ch)
            raw = self.s[start : self.i]
            # Let tomllib decode escapes in quoted keys exactly as it did when loading.
            return next(iter(tomllib.loads(f"{raw} = 0")))
        start = self.i
        while self.peek() in _BARE_KEY_CHARS and self.peek():
            self.i += 1
        if self.i == start:
            raise ValueError(f"expected a key at offset {self.i}")
        return self.s[start : self.i]

    def parse_key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self.skip_ws()
            keys.append(self.parse_simple_key())
            self.skip_ws()
            if self.peek() != ".":
                return keys
            self.i += 1

    # --- values ----------------------------------------------------------------------

    def skip_single_line_string(self, quote: str) -> None:
        self.i += 1
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "\\" and quote == '"':
                self.i += 2
                continue
            self.i += 1
            if ch == quote:
                return

    def skip_multiline_string(self, quote: str) -> None:
        delim = quote * 3
        self.i += 3
        while self.i < len(self.s):
            if quote == '"' and self.s[self.i] == "\\":
                self.i += 2
                continue
            if self.s.startswith(delim, self.i):
                self.i += 3
                # Up to two more quotes right before the closing delimiter are content.
                for _ in range(2):
                    if self.peek() == quote:
                        self.i += 1
                return
            self.i += 1

    def parse_value(self, path: KeyPath) -> None:
        ch = self.peek()
        if ch == "{":
            self.parse_inline_table(path)
        elif ch == "[":
            self.parse_array(path)
        elif ch in ('"', "'"):
            if self.s.startswith(ch * 3, self.i):
                self.skip_multiline_string(ch)
            else:
                self.skip_single_line_string(ch)
        else:
            while self.peek() and self.peek() not in _SCALAR_END:
                self.i += 1

    def parse_inline_table(self, path: KeyPath) -> None:
        self.i += 1
        while self.i < len(self.s):
            self.skip_blank()
            if self.peek() == "}":
                self.i += 1
                return
            self.parse_keyval(path)
            self.skip_blank()
            if self.peek() == ",":
                self.i += 1

    def parse_array(self, path: KeyPath) -> None:
        self.i += 1
        index = 0
        while self.i < len(self.s):
            self.skip_blank()
            if self.peek() == "]":
                self.i += 1
                return
            item = (*path, index)
            self.record(item, self.line())
            self.parse_value(item)
            index += 1
            self.skip_blank()
            if self.peek() == ",":
                self.i += 1

    def parse_keyval(self, base: KeyPath) -> None:
        line = self.line()
        keys = self.parse_key()
        self.skip_ws()
        if self.peek() != "=":
            raise ValueError(f"expected '=' at offset {self.i}")
        self.i += 1
        self.skip_ws()
        # Dotted keys create their parent tables implicitly, on this line.
        for n in range(1, len(keys) + 1):
            self.record((*base, *keys[:n]), line)
        self.parse_value((*base, *keys))

    # --- tables ----------------------------------------------------------------------

    def resolve(self, keys: list[str]) -> KeyPath:
        """Turn header keys into a path, stepping into the latest entry of arrays of tables."""
        out: KeyPath = ()
        for key in keys:
            out = (*out, key)
            count = self.aot_counts.get(out)
            if count:
                out = (*out, count - 1)
        return out

    def parse_header(self) -> None:
        line = self.line()
        is_array = self.s.startswith("[[", self.i)
        self.i += 2 if is_array else 1
        keys = self.parse_key()
        self.i += 2 if is_array else 1
        if is_array:
            prefix = self.resolve(keys[:-1])
            table = (*prefix, keys[-1])
            count = self.aot_counts.get(table, 0)
            self.aot_counts[table] = count + 1
            target: KeyPath = (*table, count)
        else:
            target = self.resolve(keys)
        for n in range(1, len(target) + 1):
            self.record(target[:n], line)
        self.current = target

    def run(self) -> dict[KeyPath, int]:
        while True:
            self.skip_blank()
            if self.i >= len(self.s):
                return self.lines
            start = self.i
            if self.peek() == "[":
                self.parse_header()
            else:
                self.parse_keyval(self.current)
            if self.i <= start:  # pragma: no cover - guards against a scanner bug looping
                raise ValueError(f"scanner stuck at offset {self.i}")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path in the TOML ``text`` to its 1-based line.

    ``text`` must be valid TOML. Returns an empty dict if the scanner meets something it
    does not understand, so a locator bug can only cost line numbers, never hide an error.
    """
    try:
        return _Scanner(text).run()
    except (ValueError, IndexError, tomllib.TOMLDecodeError):
        return {}


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """Line of ``path``, else of its nearest ancestor that is written in the file, else 0."""
    for n in range(len(path), 0, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return 0


def format_path(path: KeyPath) -> str:
    """``("nodes", 1, "ssh", "port")`` -> ``nodes[1].ssh.port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
