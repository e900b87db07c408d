"""The operator commands, each written once: one msgspec struct per command.

A command is a value. The control API decodes a request body straight into its struct
(``POST /lmtui/v1/<name>``: msgspec checks the fields and names the one that is wrong),
``Controller.execute`` carries it out, and ``EngineClient.execute`` sends it, in the same
process or over HTTP. Adding a command is one struct here and one branch in
``Controller.execute``; the API route, its OpenAPI description, the client and the read-only
check follow from the struct.

Names a client sends are bounded (``Name``) before they reach the engine, an event or a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec

from lmtui.core.rebalance import RebalancePlan
from lmtui.core.scheduler import Strategy

#: A model, node or instance name as a client gives it: never empty, never unbounded.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CommandError(Exception):
    """A command that cannot be carried out; ``status`` is its HTTP status in the API."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


#: Every command, by its name (the API's path segment); a subclass of Command adds itself.
COMMANDS: dict[str, type[Command]] = {}


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A command to the engine. ``name`` is its path under ``/lmtui/v1``."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name in COMMANDS:
            raise TypeError(f"two commands are called {cls.name!r}")
        COMMANDS[cls.name] = cls

    @property
    def writes(self) -> bool:
        """Whether it changes anything (a read-only client refuses those)."""
        return True


class Load(Command, frozen=True):
    """Load a model: on ``node`` (there and nowhere else), or one more replica where
    placement chooses; evicts idle models when it must."""

    name: ClassVar[str] = "load"
    model: Name
    node: Name | None = None


class Unload(Command, frozen=True):
    """Unload one instance; with ``force`` even while requests run on it."""

    name: ClassVar[str] = "unload"
    node: Name
    instance_id: Name
    force: bool = False


class Evict(Command, frozen=True):
    """Unload one idle, unpinned instance to free its memory."""

    name: ClassVar[str] = "evict"
    node: Name
    instance_id: Name


class Pin(Command, frozen=True):
    """Keep a model resident: never evicted, reloaded by the pool manager when it goes."""

    name: ClassVar[str] = "pin"
    model: Name


class Unpin(Command, frozen=True):
    """Let a pinned model be evicted again."""

    name: ClassVar[str] = "unpin"
    model: Name


class Drain(Command, frozen=True):
    """Send no new requests or loads to a node; requests running there finish."""

    name: ClassVar[str] = "drain"
    node: Name


class Undrain(Command, frozen=True):
    """Put a drained node back in rotation."""

    name: ClassVar[str] = "undrain"
    node: Name


class SetStrategy(Command, frozen=True):
    """Choose the routing strategy (``efficiency``, ``spread``, ...)."""

    name: ClassVar[str] = "strategy"
    #: Checked by the controller (a 400 that lists the choices); the description lists them.
    strategy: Annotated[Name, msgspec.Meta(extra_json_schema={"enum": [s.value for s in Strategy]})]


class Rebalance(Command, frozen=True):
    """The rebalance plan: upkeep the pool manager has not done yet (pins, min replicas,
    idle TTL) and proposals it never makes by itself (spread a hot model to an idle node,
    move models off a drained node, unload a cold model's extra replicas); carried out only
    when ``apply`` is true."""

    name: ClassVar[str] = "rebalance"
    apply: bool = False

    @property
    def writes(self) -> bool:
        return self.apply


@dataclass(frozen=True, slots=True)
class Result:
    """What a command did: a line for the operator, and the plan for a rebalance."""

    message: str
    plan: RebalancePlan | None = None


def check_writable(command: Command, *, read_only: bool) -> None:
    """Refuse a command that changes something when the caller is read-only."""
    if read_only and command.writes:
        raise CommandError("lmtui is read-only (--read-only)", 403)


def validate(command: Command) -> None:
    """Check a command's fields as the control API does when it decodes one (a struct built
    in process is not checked by its constructor). Raises CommandError (400)."""
    try:
        msgspec.convert(msgspec.to_builtins(command), type(command))
    except msgspec.ValidationError as e:
        raise CommandError(f"{command.name}: {e}", 400) from None


def to_body(command: Command) -> dict[str, Any]:
    """The command as its JSON request body."""
    body: dict[str, Any] = msgspec.to_builtins(command)
    return body


def openapi(prefix: str) -> dict[str, Any]:
    """An OpenAPI 3.1 description of every command endpoint, generated from the structs."""
    types = list(COMMANDS.values())
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type"],
            }
        },
        "required": ["error"],
    }
    components["Error"] = error
    components["Result"] = {
        "type": "object",
        "properties": {
            "ok": {"const": True},
            "message": {"type": "string"},
            "plan": {"type": "object", "description": "rebalance only: the plan's steps"},
            "applied": {"type": "boolean", "description": "rebalance only"},
        },
        "required": ["ok", "message"],
    }
    err_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, Any] = {}
    for kind, schema in zip(types, schemas, strict=True):
        doc = " ".join((kind.__doc__ or "").split())
        paths[f"{prefix}/{kind.name}"] = {
            "post": {
                "operationId": kind.name,
                "summary": doc,
                "requestBody": {
                    # Required as a content type: the browser guard refuses a POST that is not
                    # sent as application/json (an empty body is then read as {}).
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {
                    "200": {
                        "description": "carried out",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Result"}}
                        },
                    },
                    "400": {"description": "a field is missing or wrong", **err_ref},
                    "401": {"description": "missing or wrong admin token", **err_ref},
                    "403": {"description": "the control API is disabled", **err_ref},
                    "404": {"description": "no such node, model or instance", **err_ref},
                    "409": {"description": "cannot be done in the current state", **err_ref},
                    "502": {"description": "the node refused", **err_ref},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "lmtui control API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"admin": []}],
    }
