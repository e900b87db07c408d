"""Config validation beyond the schema, and plain-words explanations of schema errors.

msgspec checks types, ranges and unknown keys; this module turns its terse messages
("Expected `int` >= 1 - at `$.router.queue_depth`") into sentences a user can act on, and
checks what a schema cannot express: unique names, URL shape, ``HOST:PORT``, and that
``*_env`` settings hold variable *names*, not secrets.

Each check returns :class:`Problem` values (a key path and a message);
:mod:`lmtui.config.load` turns them into a ``ConfigError`` with the line of each key. This
module builds on :mod:`lmtui.config.schema` and is imported by the loader, never the other
way round.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from lmtui.config.locate import KeyPath
from lmtui.config.schema import Config, parse_listen, parse_port_range
from lmtui.core.model import NodeKind


class Problem(NamedTuple):
    """One thing wrong with a config: where (a key path) and what, in plain words."""

    path: KeyPath
    message: str


# --- schema errors ---------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
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


def _parse_msgspec_path(text: str) -> KeyPath:
    parts: list[str | int] = []
    for m in _PATH_PART.finditer(text):
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return tuple(parts)


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


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def explain_validation_error(err: msgspec.ValidationError, root: type, data: Any) -> Problem:
    """Turn a msgspec error from ``convert(data, root)`` into a path and a plain message."""
    m = _AT.match(str(err))
    raw = m.group("msg") if m else str(err)
    path = _parse_msgspec_path(m.group("path") or "") if m else ()
    root_info = mi.type_info(root)
    value = _value_at(data, path)

    if field := re.fullmatch(r"Object contains unknown field `(.+)`", raw):
        name = field.group(1)
        t = _type_at(root_info, path)
        valid = [f.encode_name for f in t.fields] if isinstance(t, mi.StructType) else []
        return Problem(
            (*path, name),
            f"unknown key '{name}' {where(path)}{_did_you_mean(name, valid)}"
            f" (valid keys: {', '.join(valid)})",
        )
    if field := re.fullmatch(r"Object missing required field `(.+)`", raw):
        name = field.group(1)
        choices = _choices(_type_at(root_info, (*path, name)))
        hint = f" (one of: {', '.join(choices)})" if choices else ""
        return Problem((*path, name), f"missing required key '{name}' {where(path)}{hint}")
    if enum := re.fullmatch(r"Invalid enum value (.+)", raw):
        given = enum.group(1)
        choices = _choices(_type_at(root_info, path))
        return Problem(
            path,
            f"{given} is not allowed here{_did_you_mean(given.strip(chr(39)), choices)}"
            f" (choose one of: {', '.join(choices)})",
        )
    if wrong := re.fullmatch(r"Expected `(.+?)`, got `(.+?)`", raw):
        expected, got = _describe_type(wrong.group(1)), wrong.group(2)
        message = f"expected {expected}, got {_shown(value)}"
        if got == "object" and wrong.group(1) == "array" and path and isinstance(path[-1], str):
            # The classic slip: [nodes] where [[nodes]] (one entry per node) was meant.
            message += f"; write [[{path[-1]}]] (double brackets) for each entry"
        elif got == "str" and expected in ("an integer", "a number", "true or false"):
            message += " (remove the quotes)"
        return Problem(path, message)
    if bound := re.fullmatch(r"Expected `(.+?)` (>=|<=|>|<) (\S+)", raw):
        limit = bound.group(3)
        with contextlib.suppress(ValueError):
            limit = f"{float(limit):g}"  # "0.0" reads better as "0"
        return Problem(path, f"must be {bound.group(2)} {limit}, got {_shown(value)}")
    return Problem(path, raw[:1].lower() + raw[1:])


# --- checks a schema cannot express ----------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def url_problem(url: str) -> str | None:
    """What is wrong with a node's base URL, or None when it is usable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{url!r} is not a valid URL (bad host or port)"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not a valid URL (expected http:// or https://)"
    if not parts.hostname:
        return f"{url!r} has no host (expected e.g. http://mac1.local:1234)"
    if port == 0:
        return f"{url!r} has port 0"
    if parts.username is not None or parts.password is not None:
        return (
            "the URL must not hold a user or password; put the API key in an environment"
            " variable and name it with api_key_env"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        base = url[: url.rfind("/v1")]
        return f"give the base URL without /v1 ({base!r}): lmtui adds the API paths itself"
    if path:
        return f"{url!r} has a path ({parts.path!r}); give the server's base URL, e.g. http://host:port"
    if parts.query or parts.fragment:
        return f"{url!r} has a query or fragment; give the server's base URL, e.g. http://host:port"
    return None


def env_name_problem(value: str) -> str | None:
    """What is wrong with an environment variable *name*, or None when it looks like one."""
    if "sk-" in value or len(value) > 64 or value.lower().startswith("bearer "):
        # Never echo it: this is very likely the secret itself, pasted in the wrong place.
        return (
            "this looks like an API key itself (value not shown); put the key in an environment"
            ' variable and give the variable\'s NAME here, e.g. "MAC1_API_KEY"'
        )
    if not _ENV_NAME.fullmatch(value):
        return (
            f"{value!r} is not an environment variable name (letters, digits and _, not"
            " starting with a digit)"
        )
    return None


def check_config(cfg: Config, lines: dict[KeyPath, int]) -> list[Problem]:
    """Every problem the schema cannot catch; ``lines`` is used only to cite first uses."""
    problems: list[Problem] = []

    node_seen: dict[str, int] = {}
    for i, node in enumerate(cfg.nodes):
        if not node.name.strip():
            problems.append(Problem(("nodes", i, "name"), "a node name must not be empty"))
        elif node.name in node_seen:
            first = lines.get(("nodes", node_seen[node.name], "name"), 0)
            problems.append(
                Problem(
                    ("nodes", i, "name"),
                    f"duplicate node name {node.name!r} (first defined at line {first})",
                )
            )
        else:
            node_seen[node.name] = i
        if (msg := url_problem(node.url)) is not None:
            problems.append(Problem(("nodes", i, "url"), msg))
        if node.api_key_env is not None and (msg := env_name_problem(node.api_key_env)):
            problems.append(Problem(("nodes", i, "api_key_env"), msg))
        problems += _check_pool(cfg, i)

    try:
        parse_listen(cfg.router.listen)
    except ValueError as exc:
        problems.append(Problem(("router", "listen"), str(exc)))
    for j, env in enumerate(cfg.router.api_keys_env):
        if (msg := env_name_problem(env)) is not None:
            problems.append(Problem(("router", "api_keys_env", j), msg))
    if cfg.router.admin_token_env is not None and (
        msg := env_name_problem(cfg.router.admin_token_env)
    ):
        problems.append(Problem(("router", "admin_token_env"), msg))

    problems += _check_model_names(cfg, lines)
    return problems


def _check_pool(cfg: Config, i: int) -> list[Problem]:
    """A ``llamacpp-pool`` node needs a ``[nodes.pool]`` section; no other kind takes one."""
    node = cfg.nodes[i]
    pool = node.pool
    if node.kind != NodeKind.LLAMACPP_POOL:
        if pool is not None:
            return [
                Problem(
                    ("nodes", i, "pool"),
                    f'[nodes.pool] is only for kind = "llamacpp-pool" (this node is {node.kind!s})',
                )
            ]
        return []
    if pool is None:
        return [
            Problem(
                ("nodes", i, "kind"),
                "a llamacpp-pool node needs a [nodes.pool] section with at least binary and "
                "models_dir or models",
            )
        ]
    problems: list[Problem] = []
    at: KeyPath = ("nodes", i, "pool")
    if not pool.binary.strip():
        problems.append(Problem((*at, "binary"), "binary must name the llama-server program"))
    try:
        parse_port_range(pool.ports)
    except ValueError as exc:
        problems.append(Problem((*at, "ports"), str(exc)))
    if not pool.models and not (pool.models_dir or "").strip():
        problems.append(
            Problem(at, "set models_dir (a directory of .gguf files) or models (name = path)")
        )
    for j, arg in enumerate(pool.args):
        flag = arg.split("=", 1)[0]
        if flag in _POOL_OWN_FLAGS:
            problems.append(
                Problem(
                    (*at, "args", j),
                    f"{flag} is set by lmtui for each server; remove it from args"
                    + (" and set the node's api_key_env" if "key" in flag else ""),
                )
            )
    if pool.host is not None and pool.host.strip("[]") in ("0.0.0.0", "::", ""):
        problems.append(
            Problem(
                (*at, "host"),
                f"{pool.host!r} cannot be reached: give the address lmtui reaches the servers at"
                " (they bind it too)",
            )
        )
    for name, path in pool.models.items():
        if not name.strip() or "@" in name or "/" in name:
            problems.append(
                Problem((*at, "models", name), f"{name!r} is not a usable model name (no @ or /)")
            )
        if not path.strip():
            problems.append(Problem((*at, "models", name), "the path must not be empty"))
    return problems


#: llama-server flags lmtui sets itself for each pool server (identity, port, key).
_POOL_OWN_FLAGS = frozenset(
    {"-m", "--model", "--port", "--host", "-a", "--alias", "--api-key", "--api-key-file"}
)


def _check_model_names(cfg: Config, lines: dict[KeyPath, int]) -> list[Problem]:
    """Names and aliases share one namespace: a request's ``model`` must mean one model."""
    problems: list[Problem] = []
    owner: dict[str, KeyPath] = {}  # name or alias -> where it was first claimed
    for i, model in enumerate(cfg.models):
        path: KeyPath = ("models", i, "name")
        if not model.name.strip():
            problems.append(Problem(path, "a model name must not be empty"))
        elif model.name in owner:
            first = lines.get(owner[model.name], 0)
            problems.append(
                Problem(path, f"duplicate model name {model.name!r} (also at line {first})")
            )
        else:
            owner[model.name] = path
    for i, model in enumerate(cfg.models):
        for j, alias in enumerate(model.aliases):
            path = ("models", i, "aliases", j)
            if alias == model.name:
                problems.append(Problem(path, f"alias {alias!r} repeats the model's own name"))
            elif alias in owner:
                claim = owner[alias]
                what = "the name" if claim[-1] == "name" else "an alias"
                other = cfg.models[int(claim[1])].name
                problems.append(
                    Problem(
                        path,
                        f"alias {alias!r} of model {model.name!r} is already {what} of model"
                        f" {other!r} (line {lines.get(claim, 0)})",
                    )
                )
            elif not alias.strip():
                problems.append(Problem(path, "an alias must not be empty"))
            else:
                owner[alias] = path
    return problems
