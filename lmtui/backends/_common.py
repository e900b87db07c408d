"""Helpers shared by the HTTP adapters: tolerant field access, JSON decoding, refresh timers.

The parsers in the adapter modules are pure functions over decoded JSON. They read optional
fields through the ``opt_*`` helpers below (a field of the wrong type counts as missing, since
servers differ by version) and call :func:`bad` for shapes that leave nothing usable, so a
node that answers garbage raises :class:`BackendBadResponse` instead of a ``KeyError`` deep
inside the poll loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NoReturn

import msgspec

from lmtui.backends.base import Backend, BackendBadResponse, Reply
from lmtui.core.model import InstanceObservation


def bad(what: str) -> NoReturn:
    """Raise :class:`BackendBadResponse` for an unusable answer."""
    raise BackendBadResponse(what)


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else BackendBadResponse naming ``what``."""
    if not isinstance(value, dict):
        bad(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def expect_list(value: Any, what: str) -> list[Any]:
    """``value`` if it is a JSON array, else BackendBadResponse naming ``what``."""
    if not isinstance(value, list):
        bad(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def opt_dict(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The object at ``key``, or an empty one when missing or not an object."""
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def opt_int(d: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` holding a number, as ``int`` (booleans do not count)."""
    for key in keys:
        v = d.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return None


def opt_str(d: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` holding a non-empty string."""
    for key in keys:
        v = d.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def error_message(body: Any) -> str | None:
    """The message of an error body: ``{"error": "msg"}`` or ``{"error": {"message": ...}}``."""
    if not isinstance(body, dict) or "error" not in body:
        return None
    err = body["error"]
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def decode_json(r: Reply, what: str) -> Any:
    """Decode a response body as JSON; malformed bodies are BackendBadResponse.

    msgspec decodes several times faster than the stdlib, which matters when one process
    polls a few hundred nodes every second.
    """
    try:
        return msgspec.json.decode(r.content)
    except msgspec.DecodeError as e:
        raise BackendBadResponse(f"{what}: malformed JSON: {r.text[:80]!r}") from e


class AuthRequired(BackendBadResponse):
    """The node answered 401: it needs an API key lmtui does not have (or the wrong one)."""


def status_error(r: Reply, what: str, node: str) -> BackendBadResponse:
    """The error for an unexpected HTTP status, with advice where there is some to give."""
    if r.status_code == 401:
        return AuthRequired(
            f"{what}: HTTP 401 Unauthorized: node {node!r} needs an API key; set its "
            "api_key_env to the name of an environment variable holding the key"
        )
    detail = error_message(_try_json(r)) or r.text[:200]
    return BackendBadResponse(f"{what}: HTTP {r.status_code}: {detail}")


def command_answer(r: Reply, what: str, node: str) -> Any:
    """The decoded answer to a command; a non-2xx status or ``{"error": ...}`` raises."""
    if not 200 <= r.status_code < 300:
        raise status_error(r, what, node)
    answer = decode_json(r, what) if r.content.strip() else {}
    msg = error_message(answer)
    if msg is not None:
        bad(f"{what}: {msg}")
    return answer


def _try_json(r: Reply) -> Any:
    try:
        return msgspec.json.decode(r.content)
    except msgspec.DecodeError:
        return None


def override_slots(
    instances: Iterable[InstanceObservation], slots: int | None
) -> tuple[InstanceObservation, ...]:
    """Apply the node config's ``slots`` (it overrides whatever the server reported)."""
    if slots is None:
        return tuple(instances)
    return tuple(replace(i, slots_total=slots) for i in instances)


class Every:
    """A refresh timer for data that changes rarely (versions, model lists).

    ``due(now)`` is true on the first call, after ``reset()`` (a failed poll: the server may
    have restarted or been upgraded), and once ``period`` seconds passed since the last
    ``done(now)``.
    """

    __slots__ = ("_last", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: float | None = None

    def due(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.period or now < self._last

    def done(self, now: float) -> None:
        self._last = now

    def reset(self) -> None:
        self._last = None


class HttpBackend(Backend):
    """A :class:`Backend` with the request helpers every HTTP adapter shares."""

    async def fetch(self, path: str, *, params: dict[str, str] | None = None) -> Reply:
        """GET ``path``; the raw response (status not checked)."""
        return await self.request("GET", path, params=params)

    async def fetch_json(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        absent: tuple[int, ...] = (),
    ) -> Any:
        """GET ``path`` as JSON; ``None`` when the status is one of ``absent``.

        ``absent`` lists statuses that mean "this server does not offer that" (llama.cpp
        answers 501 for /slots without ``--slots``) rather than "this server is broken".
        """
        r = await self.request("GET", path, params=params)
        if r.status_code in absent:
            return None
        if r.status_code != 200:
            raise status_error(r, f"GET {path}", self.name)
        return decode_json(r, f"GET {path}")

    async def fetch_text(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        absent: tuple[int, ...] = (),
    ) -> str | None:
        """GET ``path`` as text; ``None`` when the status is one of ``absent``."""
        r = await self.request("GET", path, params=params)
        if r.status_code in absent:
            return None
        if r.status_code != 200:
            raise status_error(r, f"GET {path}", self.name)
        return r.text

    async def post_json(self, path: str, body: Any, *, timeout_s: float | None = None) -> Any:
        """POST a JSON body; a non-2xx status or an ``{"error": ...}`` answer raises.

        Both become :class:`BackendBadResponse` with the server's own message, which is
        what a user needs to see ("model 'x' not found").
        """
        r = await self.request("POST", path, json=body, timeout=timeout_s)
        return command_answer(r, f"POST {path}", self.name)


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    """ "0.13.3" → (0, 13, 3); None when the string does not start with a number (unknown,
    or a build name such as llama.cpp's "b1-0c1e570"), so callers can say "not known"."""
    if not version:
        return None
    m = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(p) for p in m.group(1).split(".")) if m else None
