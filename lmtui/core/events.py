"""Events: every change worth telling the operator about, and every decision, with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    NODE_HEALTH = "node-health"
    INSTANCE_UP = "instance-up"
    INSTANCE_DOWN = "instance-down"
    INSTANCE_STATE = "instance-state"
    ROUTE = "route"
    LOAD = "load"
    UNLOAD = "unload"
    EVICT = "evict"
    REJECT = "reject"
    COMMAND = "command"
    ERROR = "error"


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    kind: EventKind
    message: str
    node: str | None = None
    model: str | None = None
    level: Level = Level.INFO
