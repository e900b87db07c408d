"""Defences against requests a web page makes: CSRF and DNS rebinding.

A page open in the operator's browser can send requests to ``http://127.0.0.1:4000``: a
form or a ``fetch`` without CORS can POST ``text/plain`` to ``/lmtui/v1/drain``, and a page
on a name the attacker points at 127.0.0.1 (DNS rebinding) even becomes "same origin" and
reads the answers. Without keys (lmtui's default on loopback) nothing else stops either.
Three rules, the same on the fast front and on aiohttp's paths:

1. **Content type.** A POST must say ``Content-Type: application/json`` (parameters such as
   ``; charset=utf-8`` allowed): browsers cannot send that cross-origin without a CORS
   preflight, which lmtui never grants. 415 otherwise.
2. **Origin.** A request that carries an ``Origin`` (browsers add it to every cross-origin
   request and to every POST) is refused unless that origin is lmtui's own — the scheme and
   the ``Host`` the request was sent to — or listed in ``[router] allowed_origins``. 403.
3. **Host.** Where a path needs no key (no ``api_keys_env`` for ``/v1``, no admin token for
   the control API), the ``Host`` must be an IP address, ``localhost``, or a name in
   ``[router] allowed_hosts``: a rebinding page's requests carry its own name. 403. With
   keys, a page cannot present them, so any name is fine (a LAN hostname, a proxy).

Failed authentications on any path are counted and logged here too (``AuthFailures``).

Clients that are not browsers (the ``openai`` SDKs, ``requests``' ``json=``, the dashboard)
send JSON and no ``Origin``, and are not affected.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

#: (status, message, error code) of a refusal.
Refusal = tuple[int, str, str]


class BrowserGuard:
    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        scheme: str = "http",
    ) -> None:
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.allowed_origins = frozenset(o.lower().rstrip("/") for o in allowed_origins)
        self.scheme = scheme
        #: Host headers already judged: a client sends the same one on every request, and
        #: parsing an IP address per request is work the fast front need not repeat.
        self._hosts: dict[str, bool] = {}

    def check(
        self,
        method: str,
        host: str | None,
        origin: str | None,
        content_type: str | None,
        *,
        keyed: bool,
    ) -> Refusal | None:
        """None when the request may go on; ``keyed``: the path needs a key or token."""
        if not keyed and not self.host_allowed(host):
            return (
                403,
                f"Host {_shown(host)} is not this lmtui's: add it to [router] allowed_hosts "
                "(a name that is not an IP address or localhost, on a path without a key)",
                "host_not_allowed",
            )
        if origin is not None and not self.origin_allowed(origin, host):
            return (
                403,
                f"cross-origin request from {_shown(origin)} refused: add the origin to "
                "[router] allowed_origins to allow it",
                "origin_not_allowed",
            )
        if method == "POST" and not is_json(content_type):
            return (
                415,
                "the request body must be sent as Content-Type: application/json",
                "unsupported_media_type",
            )
        return None

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        known = self._hosts.get(host)
        if known is None:
            known = self._judge_host(host)
            if len(self._hosts) < 256:  # bounded: the values are the client's choice
                self._hosts[host] = known
        return known

    def _judge_host(self, host: str) -> bool:
        name = _hostname(host)
        if name == "localhost" or name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        o = origin.lower().rstrip("/")
        if o in self.allowed_origins:
            return True
        return host is not None and o == f"{self.scheme}://{host.lower()}"


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json"


def _hostname(host: str) -> str:
    """``host`` of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def _shown(value: str | None) -> str:
    """A client-chosen header value as it may appear in an error message: bounded, quoted."""
    if value is None:
        return "(none)"
    return repr(value[:100] + ("…" if len(value) > 100 else ""))


#: Addresses whose failures are remembered for the once-a-minute log line.
MAX_FAILING_ADDRESSES = 1024


class AuthFailures:
    """Failed authentications: counted (``lmtui_auth_failures_total{path}``) and logged at
    most once per address per minute, with how many there were — never with the secret
    that was presented. ``where`` is ``v1``, ``control`` or ``metrics``. ``on_failure``
    is told the address of each (the failed-authentication limit of ``ratelimit.py``)."""

    def __init__(
        self,
        count: Callable[[str], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 60.0,
        on_failure: Callable[[str | None], None] | None = None,
    ) -> None:
        self.count = count
        self.on_failure = on_failure
        self.clock = clock
        self.every_s = every_s
        #: address → (when it was last logged, failures since).
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def record(self, address: str | None, where: str) -> None:
        if self.count is not None:
            self.count(where)
        if self.on_failure is not None:
            self.on_failure(address)
        addr = (address or "unknown")[:64]
        now = self.clock()
        logged, since = self._seen.pop(addr, (-math.inf, 0))
        since += 1
        if now - logged >= self.every_s:
            log.warning(
                "authentication failed from %s on %s (%d time(s) since the last report)",
                addr,
                where,
                since,
            )
            logged, since = now, 0
        self._seen[addr] = (logged, since)
        while len(self._seen) > MAX_FAILING_ADDRESSES:
            self._seen.popitem(last=False)
