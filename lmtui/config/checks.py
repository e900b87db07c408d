"""Config validation beyond the schema: what msgspec's types and ranges cannot express.

Unique names, URL shape, ``HOST:PORT``, port ranges, that ``*_env`` settings hold variable
*names* (not secrets), what a ``llamacpp-pool`` node needs, and that ``[keymap]`` remaps
bindings that exist to keys shaped like keys. The schema's own errors
are put in plain words by :mod:`lmtui.config.explain`.

Each check returns :class:`~lmtui.config.explain.Problem` values (a key path and a
message), all of them; :mod:`lmtui.config.load` turns them into one ``ConfigError`` with
the line of each key. This module builds on the schema and is imported by the loader,
never the other way round.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from lmtui.config.explain import Problem, did_you_mean
from lmtui.config.keymap import BINDING_IDS, key_problem, split_keys
from lmtui.config.locate import KeyPath
from lmtui.config.schema import Config, parse_listen, parse_port_range
from lmtui.core.model import NodeKind

# --- checks a schema cannot express ----------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def url_problem(url: str, *, path_ok: bool = False) -> str | None:
    """What is wrong with a node's base URL, or None when it is usable. ``path_ok``: a
    path before the API's own is allowed (a peer at https://host/api)."""
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
    if path and not path_ok:
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
    try:
        parse_listen(cfg.web.listen)
    except ValueError as exc:
        problems.append(Problem(("web", "listen"), str(exc)))
    for j, env in enumerate(cfg.router.api_keys_env):
        if (msg := env_name_problem(env)) is not None:
            problems.append(Problem(("router", "api_keys_env", j), msg))
    if cfg.router.admin_token_env is not None and (
        msg := env_name_problem(cfg.router.admin_token_env)
    ):
        problems.append(Problem(("router", "admin_token_env"), msg))
    if cfg.router.metrics_token_env is not None and (
        msg := env_name_problem(cfg.router.metrics_token_env)
    ):
        problems.append(Problem(("router", "metrics_token_env"), msg))
    for j, origin in enumerate(cfg.router.allowed_origins):
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
            problems.append(
                Problem(
                    ("router", "allowed_origins", j),
                    f"{origin!r} is not an origin: write scheme://host[:port], "
                    'e.g. "https://chat.example.com"',
                )
            )

    problems += _check_model_names(cfg, lines)
    problems += _check_peers(cfg, lines)
    problems += _check_keymap(cfg)
    return problems


#: Longest peer model pattern or name: a model name is bounded so (apis.MAX_NAME) anyway.
MAX_PEER_MODEL = 256


def _check_peers(cfg: Config, lines: dict[KeyPath, int]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    nodes = {n.name for n in cfg.nodes}
    for i, peer in enumerate(cfg.peers):
        where: KeyPath = ("peers", i, "name")
        name = peer.name
        if not name.strip() or len(name) > 64 or any(c in name for c in ":/ \t\n"):
            problems.append(
                Problem(
                    where, f"{name!r} is not a peer name: 1-64 characters, no ':', '/' or spaces"
                )
            )
        elif name in seen:
            first = lines.get(("peers", seen[name], "name"), 0)
            problems.append(Problem(where, f"duplicate peer name {name!r} (first at line {first})"))
        elif name in nodes:
            problems.append(Problem(where, f"{name!r} is already a node's name"))
        else:
            seen[name] = i
        if (msg := url_problem(peer.url, path_ok=True)) is not None:
            problems.append(Problem(("peers", i, "url"), msg))
        if peer.api_key_env is not None and (msg := env_name_problem(peer.api_key_env)):
            problems.append(Problem(("peers", i, "api_key_env"), msg))
        if not peer.models:
            problems.append(
                Problem(("peers", i, "models"), 'name the models it may serve, e.g. ["*"] for all')
            )
        for j, m in enumerate(peer.models):
            if not m.strip() or len(m) > MAX_PEER_MODEL:
                problems.append(
                    Problem(
                        ("peers", i, "models", j),
                        f"a model name or pattern of 1-{MAX_PEER_MODEL} characters",
                    )
                )
        for local, remote in peer.rename.items():
            if not remote.strip() or len(remote) > MAX_PEER_MODEL or len(local) > MAX_PEER_MODEL:
                problems.append(
                    Problem(
                        ("peers", i, "rename", local),
                        f"a model name of 1-{MAX_PEER_MODEL} characters",
                    )
                )
    return problems


def _check_keymap(cfg: Config) -> list[Problem]:
    """Every ``[keymap]`` id names one of the dashboard's bindings; every key is a key."""
    problems: list[Problem] = []
    for binding, value in cfg.keymap.items():
        at: KeyPath = ("keymap", binding)
        if binding not in BINDING_IDS:
            problems.append(
                Problem(
                    at,
                    f"unknown binding '{binding}' in [keymap]"
                    f"{did_you_mean(binding, list(BINDING_IDS))}"
                    f" (bindings: {', '.join(BINDING_IDS)})",
                )
            )
            continue
        keys = split_keys(value)
        if not keys:
            problems.append(Problem(at, "give at least one key"))
        for j, key in enumerate(keys):
            if (msg := key_problem(key)) is not None:
                # An array item has a line of its own; keys in one string share the key's
                # (and "a,,b" is one empty key to mention, not one per comma).
                problem = Problem((*at, j) if isinstance(value, list) else at, msg)
                if problem not in problems:
                    problems.append(problem)
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
