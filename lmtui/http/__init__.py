"""Everything lmtui uses to speak HTTP to its nodes: the router's requests and the polls'.

- ``http1.py``: the lean keep-alive HTTP/1.1 client for ``http://`` nodes
  (:class:`UpstreamPool`, :class:`UpstreamResponse`), about half the CPU per request of
  aiohttp's client (the figures are in its docstring). It parses answers by hand for now;
  the planned reliability work replaces that parser with llhttp (httptools) here, behind
  the same interface, so nothing outside this package changes.
- ``tls.py``: the same interface over aiohttp for ``https://`` nodes
  (:class:`TlsUpstreamPool`, :class:`TlsResponse`).
- :func:`pool_for`: the one place that chooses between them, by scheme. The router and the
  polls both get their pools from it, with their own limits.

Both pools raise one exception, :class:`UpstreamError`; its ``before_response`` says
whether the answer's head had arrived, i.e. whether another replica may still be tried.

A pool needs a running event loop only from its first request on: it opens connections
(or, for TLS, its aiohttp session) lazily, so it can be built with an ``Engine`` before any
loop runs.

This package imports nothing else of lmtui's; ``backends`` and ``engine`` import it.
"""

from __future__ import annotations

from typing import TypeAlias
from urllib.parse import urlsplit

from lmtui.http.http1 import UpstreamError, UpstreamPool, UpstreamResponse
from lmtui.http.tls import TlsResponse, TlsUpstreamPool

__all__ = [
    "Pool",
    "Response",
    "TlsResponse",
    "TlsUpstreamPool",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "pool_for",
]

#: Keep-alive connections to one node: ``request``, then ``close`` when done with them.
Pool: TypeAlias = UpstreamPool | TlsUpstreamPool
#: One answer: ``status``, ``headers``, then ``read`` or ``next_chunk``, and ``release``.
Response: TypeAlias = UpstreamResponse | TlsResponse


def pool_for(
    base_url: str,
    *,
    max_connections: int = 256,
    connect_timeout: float = 10.0,
    read_timeout: float | None = 900.0,
) -> Pool:
    """The pool for a node at ``base_url``: the lean one for ``http://``, the aiohttp one
    for ``https://``. ``read_timeout`` bounds each wait for bytes (None: no limit)."""
    cls = TlsUpstreamPool if urlsplit(base_url).scheme == "https" else UpstreamPool
    return cls(
        base_url,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
