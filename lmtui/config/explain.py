"""Schema errors in plain words, and all of them at once.

msgspec checks types, ranges and unknown keys, but stops at the first failure and says it
tersely ("Expected `int` >= 1 - at `$.router.queue_depth`"). :func:`convert_all` converts
TOML data into a schema and keeps going: after each failure it explains it
(:func:`explain_validation_error`), sets the offending value aside and converts again, so
a file with three mistakes is reported with three messages, not one per attempt.

Setting a value aside means: an unknown key is dropped; a bad value of a setting with a
default is dropped (the default stands in); a bad or missing required value, or a bad
array item, is replaced by a placeholder of the right type. What stands in for the user's
value is marked *tainted* (for a required value or a whole table, the entry it belongs
to), so that the checks that run afterwards on the converted value do not report problems
of the stand-in (an empty placeholder name, say) as the user's.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
import typing
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import msgspec
import msgspec.inspect as mi

from lmtui.config.locate import KeyPath

_T = TypeVar("_T")

#: Schema problems reported from one file at most; past this, the file is likely not a
#: config at all and more lines would not help.
MAX_PROBLEMS = 50


class Problem(NamedTuple):
    """One thing wrong with a config: where (a key path) and what, in plain words."""

    path: KeyPath
    message: str


# --- one error in plain words -----------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def _parse_msgspec_path(text: str, root: mi.Type, data: Any) -> KeyPath:
    """``.nodes[1].ssh.port`` -> ``("nodes", 1, "ssh", "port")``.

    msgspec does not name the key of a table value it rejects (``.pool.models[...]``), so
    that step is found again: the first key whose value does not convert on its own.
    """
    parts: list[str | int] = []
    for m in _PATH_PART.finditer(text):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            key = _bad_dict_key(root, tuple(parts), data)
            if key is None:
                break  # the table is as close as it gets
            parts.append(key)
    return tuple(parts)


def _bad_dict_key(root: mi.Type, path: KeyPath, data: Any) -> str | None:
    table, parent = _value_at(data, path), _type_at(root, path[:-1])
    if not path or not isinstance(table, dict) or not isinstance(parent, mi.StructType):
        return None
    hints = {f.encode_name: f.type for f in msgspec.structs.fields(parent.cls)}
    args = typing.get_args(hints.get(str(path[-1])))
    if len(args) != 2:
        return None
    for key, value in table.items():
        try:
            msgspec.convert(value, args[1], strict=True)
        except msgspec.ValidationError:
            return str(key)
    return None


def _unwrap(t: mi.Type | None) -> mi.Type | None:
    """``X | None`` -> ``X``: TOML has no null, so the None branch never explains anything."""
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return rest[0] if len(rest) == 1 else t
    return t


def _type_at(root: mi.Type, path: KeyPath) -> mi.Type | None:
    t: mi.Type | None = root
    for part in path:
        t = _unwrap(t)
        if isinstance(part, int):
            t = t.item_type if isinstance(t, mi.ListType) else None
        elif isinstance(t, mi.StructType):
            t = next((f.type for f in t.fields if f.encode_name == part), None)
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            t = None
    return _unwrap(t)


def _choices(t: mi.Type | None) -> list[str]:
    if isinstance(t, mi.EnumType):
        return [str(m.value) for m in t.cls]
    if isinstance(t, mi.LiteralType):
        return [str(v) for v in t.values]
    return []


def where(path: KeyPath) -> str:
    """Where the table at ``path`` is, as written: ``in [[nodes]]``, ``in [nodes.ssh]``."""
    names = ".".join(p for p in path if isinstance(p, str))
    if not names:
        return "at the top level"
    return f"in [[{names}]]" if isinstance(path[-1], int) else f"in [{names}]"


def _describe_type(spec: str) -> str:
    words = [_TYPE_NAMES.get(t.strip(), t.strip()) for t in spec.split("|") if t.strip() != "null"]
    return " or ".join(words)


def _value_at(data: Any, path: KeyPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def did_you_mean(word: str, options: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the option closest to ``word``, or "" when none is."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


#: What kind of failure an error is, which decides how :func:`convert_all` sets it aside.
_Kind = Literal["unknown", "missing", "value"]


def explain_validation_error(err: msgspec.ValidationError, root: type, data: Any) -> Problem:
    """Turn a msgspec error from ``convert(data, root)`` into a path and a plain message."""
    return _explain(err, mi.type_info(root), data)[0]


def _explain(err: msgspec.ValidationError, root_info: mi.Type, data: Any) -> tuple[Problem, _Kind]:
    m = _AT.match(str(err))
    raw = m.group("msg") if m else str(err)
    path = _parse_msgspec_path(m.group("path") or "", root_info, data) if m else ()
    value = _value_at(data, path)

    if field := re.fullmatch(r"Object contains unknown field `(.+)`", raw):
        name = field.group(1)
        t = _type_at(root_info, path)
        valid = [f.encode_name for f in t.fields] if isinstance(t, mi.StructType) else []
        return Problem(
            (*path, name),
            f"unknown key '{name}' {where(path)}{did_you_mean(name, valid)}"
            f" (valid keys: {', '.join(valid)})",
        ), "unknown"
    if field := re.fullmatch(r"Object missing required field `(.+)`", raw):
        name = field.group(1)
        choices = _choices(_type_at(root_info, (*path, name)))
        hint = f" (one of: {', '.join(choices)})" if choices else ""
        problem = Problem((*path, name), f"missing required key '{name}' {where(path)}{hint}")
        return problem, "missing"
    if enum := re.fullmatch(r"Invalid enum value (.+)", raw):
        given = enum.group(1)
        choices = _choices(_type_at(root_info, path))
        return Problem(
            path,
            f"{given} is not allowed here{did_you_mean(given.strip(chr(39)), choices)}"
            f" (choose one of: {', '.join(choices)})",
        ), "value"
    if wrong := re.fullmatch(r"Expected `(.+?)`, got `(.+?)`", raw):
        expected, got = _describe_type(wrong.group(1)), wrong.group(2)
        message = f"expected {expected}, got {_shown(value)}"
        if got == "object" and wrong.group(1) == "array" and path and isinstance(path[-1], str):
            # The classic slip: [nodes] where [[nodes]] (one entry per node) was meant.
            message += f"; write [[{path[-1]}]] (double brackets) for each entry"
        elif got == "str" and expected in ("an integer", "a number", "true or false"):
            message += " (remove the quotes)"
        return Problem(path, message), "value"
    if bound := re.fullmatch(r"Expected `(.+?)` (>=|<=|>|<) (\S+)", raw):
        limit = bound.group(3)
        with contextlib.suppress(ValueError):
            limit = f"{float(limit):g}"  # "0.0" reads better as "0"
        return Problem(path, f"must be {bound.group(2)} {limit}, got {_shown(value)}"), "value"
    return Problem(path, raw[:1].lower() + raw[1:]), "value"


# --- every error, one after the other ------------------------------------------------------


class Converted(NamedTuple, Generic[_T]):
    """What :func:`convert_all` made of the data."""

    #: The converted value, with every problem set aside; None when that was not possible.
    value: _T | None
    #: Every schema problem found, in the order msgspec met them.
    problems: list[Problem]
    #: Paths whose value in ``value`` is a stand-in, not the user's: checks of the
    #: converted value should not report problems at or below them.
    tainted: list[KeyPath]

    def is_tainted(self, path: KeyPath) -> bool:
        """``path`` is, or lies below, a value that stands in for a bad one."""
        return any(path[: len(t)] == t for t in self.tainted)


def convert_all(data: dict[str, Any], root: type[_T]) -> Converted[_T]:
    """Convert ``data`` (from tomllib) into ``root`` strictly, collecting every problem.

    ``data`` is not changed: the values set aside are removed from a copy.
    """
    work = copy.deepcopy(data)
    root_info = mi.type_info(root)
    problems: list[Problem] = []
    tainted: list[KeyPath] = []
    seen: set[tuple[_Kind, KeyPath]] = set()
    while len(problems) < MAX_PROBLEMS:
        try:
            return Converted(msgspec.convert(work, root, strict=True), problems, tainted)
        except msgspec.ValidationError as exc:
            problem, kind = _explain(exc, root_info, work)
        if (kind, problem.path) in seen:
            break  # a stand-in failed too: never loop (a schema this module does not know)
        seen.add((kind, problem.path))
        problems.append(problem)
        taint = _set_aside(work, root_info, kind, problem.path)
        if taint is None:
            break
        tainted.append(taint)
    return Converted(None, problems, tainted)


def _set_aside(data: Any, root: mi.Type, kind: _Kind, path: KeyPath) -> KeyPath | None:
    """Remove or replace the bad value at ``path`` in ``data``; the path now tainted, or
    None when the value cannot be set aside."""
    if not path:
        return None
    parent, key = _value_at(data, path[:-1]), path[-1]
    parent_type = _type_at(root, path[:-1])
    if kind == "unknown" and isinstance(parent, dict):
        parent.pop(key, None)
        return path
    if isinstance(parent_type, mi.StructType) and isinstance(parent, dict):
        field = next((f for f in parent_type.fields if f.encode_name == key), None)
        if field is None:
            return None
        if kind == "missing" or field.required:
            # The entry cannot do without it: a stand-in, and the whole entry is suspect
            # (a placeholder kind would otherwise raise problems of a kind the user never chose).
            parent[key] = _placeholder(field.type)
            return path[:-1]
        del parent[key]
        # A broken section (a table) leaves its entry suspect too; a broken value only itself.
        return path[:-1] if isinstance(_unwrap(field.type), mi.StructType) else path
    if isinstance(parent_type, mi.DictType) and isinstance(parent, dict):
        parent.pop(key, None)
        return path
    if isinstance(parent_type, mi.ListType) and isinstance(parent, list) and isinstance(key, int):
        parent[key] = _placeholder(parent_type.item_type)
        return path
    return None


def _placeholder(t: mi.Type) -> Any:
    """A value of type ``t`` that passes its constraints, to stand in for a bad one."""
    t = _unwrap(t) or t
    if isinstance(t, mi.UnionType):
        t = next(u for u in t.types if not isinstance(u, mi.NoneType))
    if isinstance(t, mi.StructType):
        return {f.encode_name: _placeholder(f.type) for f in t.fields if f.required}
    if isinstance(t, mi.BoolType):
        return False
    if isinstance(t, (mi.IntType, mi.FloatType)):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 0)
        return int(low) if isinstance(t, mi.IntType) else float(low)
    if isinstance(t, mi.EnumType):
        return next(iter(t.cls)).value
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.ListType):
        return []
    if isinstance(t, mi.DictType):
        return {}
    return ""
