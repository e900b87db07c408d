"""Rate limits: per API key, per client address, and on failed authentications.

Three tables of token buckets, each bounded:

- **per key** (``[router] key_rate_limit`` / ``key_rate_burst``): requests per second one
  API key may send to ``/v1``. Only keys that authenticated get a bucket, so this table
  holds at most one entry per configured key.
- **per address** (``address_rate_limit`` / ``address_rate_burst``): requests per second
  from one client address (an IPv6 client by its /64: one host commonly holds a whole
  /64, so counting single IPv6 addresses would limit nothing).
- **failed authentications** (``auth_failure_rate`` / ``auth_failure_burst``): a wrong key
  or token takes a token from its address's bucket; once the bucket is empty, every
  request from that address to a path that needs a key or token is answered 429 *without
  its key being looked at*, so a client cannot try 500 keys in 0.2 s — it gets its burst
  judged, then one more every ``1 / auth_failure_rate`` seconds.

Request limits are off by default (0): lmtui sits in front of a handful of local servers
serving one owner's bots, whose load is already bounded by the model queues
(``queue_depth``, 429 with ``Retry-After``), and any default rate low enough to stop a
flood would cut a batch of embeddings (measured on loopback: one client sends ~17k
requests/s through the router). The failed-authentication limit is on: a client with the
right key never fails, so limiting failures costs a correct client nothing.

Each bucket is one float per key, the *theoretical arrival time* of GCRA (the generic cell
rate algorithm, the token bucket in its cheapest form): a request is allowed when its
arrival time, pushed on by one emission interval, stays within ``burst`` intervals of now.
An entry whose time has passed is a full bucket, the same as no entry, so dropping it
loses nothing: a table that reaches its bound first drops those; if that frees less than a
quarter of it (a flood of addresses or keys within one burst window), the oldest entries
go too, so memory stays bounded whatever a client sends. Amortized, that is O(1) per
request.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from itertools import islice

#: Entries per table: addresses or keys remembered at once (~100 bytes each).
MAX_ENTRIES = 4096
#: Addresses whose /64 key is cached (IPv6 parsing costs more than the rest of a check).
_MAX_V6_CACHE = 1024


class Buckets:
    """Token buckets by key: ``rate`` tokens per second, ``burst`` at most; bounded."""

    __slots__ = ("_tat", "burst", "clock", "interval", "max_entries", "rate", "sweeps", "window")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        #: How far ahead of now a key's arrival time may run: ``burst`` intervals.
        self.window = burst * self.interval
        self.max_entries = max_entries
        self.clock = clock
        #: key → theoretical arrival time of its next request (GCRA).
        self._tat: dict[str, float] = {}
        #: Times the table reached its bound and was swept.
        self.sweeps = 0

    def __len__(self) -> int:
        return len(self._tat)

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when there was one, else the seconds until there is (the
        request is refused and nothing is spent)."""
        now = self.clock()
        tat = self._tat.get(key)
        if tat is None or tat < now:
            if tat is None and len(self._tat) >= self.max_entries:
                self._sweep(now)
            tat = now
        new = tat + self.interval
        over = new - now - self.window
        if over > 0:
            return over
        self._tat[key] = new
        return 0.0

    def wait(self, key: str) -> float:
        """What :meth:`take` would answer, without spending: 0.0 when a token is there."""
        tat = self._tat.get(key)
        if tat is None:
            return 0.0
        return max(0.0, tat + self.interval - self.clock() - self.window)

    def _sweep(self, now: float) -> None:
        self.sweeps += 1
        table = self._tat
        for key in [k for k, t in table.items() if t <= now]:
            del table[key]  # a full bucket: the same as no entry
        excess = len(table) - (self.max_entries * 3) // 4
        if excess > 0:  # a flood within one window: the oldest go
            for key in list(islice(table, excess)):
                del table[key]


def address_key(address: str | None, _cache: dict[str, str] = {}) -> str:  # noqa: B006
    """The bucket key of a client address: itself for IPv4, its /64 for IPv6."""
    if not address:
        return "unknown"
    if ":" not in address:
        return address
    key = _cache.get(address)
    if key is None:
        try:
            ip = ipaddress.IPv6Address(address.split("%", 1)[0])
        except ValueError:
            key = address[:64]
        else:
            mapped = ip.ipv4_mapped
            key = str(mapped) if mapped else str(ipaddress.IPv6Network((ip, 64), strict=False))
        if len(_cache) < _MAX_V6_CACHE:  # bounded: the addresses are the clients'
            _cache[address] = key
    return key


class RateLimited(Exception):
    """A request over a limit: 429 with ``Retry-After`` and the OpenAI error JSON."""

    def __init__(self, limit: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        #: Which limit: ``key``, ``address`` or ``auth_failures`` (the metric's label).
        self.limit = limit
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """The ``Retry-After`` value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))

    @property
    def error(self) -> tuple[str, str, str]:
        """Message, type, code, as OpenAI answers a request over its rate limit."""
        return (self.message, "requests", "rate_limit_exceeded")


class RateLimits:
    """The router's three limits; a limit whose rate is 0 is off (its table is None)."""

    def __init__(
        self,
        *,
        key_rate: float = 0.0,
        key_burst: int = 100,
        address_rate: float = 0.0,
        address_burst: int = 100,
        auth_failure_rate: float = 0.2,
        auth_failure_burst: int = 20,
        on_limited: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        def buckets(rate: float, burst: int) -> Buckets | None:
            return Buckets(rate, burst, clock=clock, max_entries=max_entries) if rate else None

        self.by_key = buckets(key_rate, key_burst)
        self.by_address = buckets(address_rate, address_burst)
        self.failures = buckets(auth_failure_rate, auth_failure_burst)
        #: Is a per-key or per-address request limit on? (An attribute: read per request.)
        self.limits_requests = self.by_key is not None or self.by_address is not None
        #: Counts a refusal by its limit (``lmtui_rate_limited_total{limit}``).
        self.on_limited = on_limited

    def _limited(self, limit: str, message: str, wait: float) -> RateLimited:
        if self.on_limited is not None:
            self.on_limited(limit)
        return RateLimited(limit, f"{message} Please try again in {math.ceil(wait)}s.", wait)

    @property
    def failing(self) -> bool:
        """Has any address failed to authenticate lately? (When not, the common case, no
        address needs looking up.)"""
        return self.failures is not None and bool(self.failures._tat)

    def check_failures(self, address: str | None) -> RateLimited | None:
        """Refuse an address that ran out of failed authentications (before its key is
        judged); None when it may be judged."""
        f = self.failures
        if f is None or not f._tat:
            return None
        wait = f.wait(address_key(address))
        if not wait:
            return None
        return self._limited(
            "auth_failures",
            "Too many failed authentications from this address "
            f"([router] auth_failure_burst = {f.burst}, auth_failure_rate = {f.rate:g}/s).",
            wait,
        )

    def auth_failed(self, address: str | None) -> None:
        """Spend one of the address's failed authentications."""
        if self.failures is not None:
            self.failures.take(address_key(address))

    def check_request(self, address: str | None, key: int) -> RateLimited | None:
        """Spend one request of the address and of the key (its index among the router's
        keys; -1 without one); a refusal when either is spent."""
        if self.by_address is not None:
            wait = self.by_address.take(address_key(address))
            if wait:
                b = self.by_address
                return self._limited(
                    "address",
                    "Rate limit reached for requests from this address ([router] "
                    f"address_rate_limit = {b.rate:g}/s, address_rate_burst = {b.burst}).",
                    wait,
                )
        if self.by_key is not None and key >= 0:
            wait = self.by_key.take(str(key))
            if wait:
                b = self.by_key
                return self._limited(
                    "key",
                    "Rate limit reached for requests with this API key ([router] "
                    f"key_rate_limit = {b.rate:g}/s, key_rate_burst = {b.burst}).",
                    wait,
                )
        return None
