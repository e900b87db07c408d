"""The HTTP layer's bounds, shared by the server-side front and the upstream client.

The values a request head is judged by are aiohttp's own (``max_line_size``,
``max_field_size``, ``max_headers``: 8190, 8190 and 128 in aiohttp 3.x): the fast front
hands anything over them to aiohttp, so the two paths give the same answer to the same
bytes. The server's limits that an operator may change are ``[router]`` keys; they reach
the front as one :class:`ServerLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest request or response head (request/status line and headers), in bytes.
MAX_HEAD = 64 * 1024
#: Longest header name or value aiohttp's parser accepts (``max_field_size``).
MAX_FIELD = 8190
#: Most header lines aiohttp's parser accepts (``max_headers``).
MAX_HEADERS = 128
#: Interim answers (``100 Continue``, ``103 Early Hints``) a node may send before its real
#: one; more is a broken or hostile node, not a slow one.
MAX_INTERIM = 32


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client connection may take of lmtui (the ``[router]`` keys of the same
    names; seconds and counts)."""

    #: An idle keep-alive connection closes after this (``idle_timeout``).
    idle_timeout: float = 75.0
    #: A request head must arrive within this from its first byte (``head_timeout``).
    head_timeout: float = 10.0
    #: A request body must arrive within this from the end of its head (``body_timeout``).
    body_timeout: float = 60.0
    #: Client connections open at once, on every path (``max_connections``).
    max_connections: int = 4096
    #: Client connections open at once from one address (``max_connections_per_address``).
    max_connections_per_address: int = 1024


#: Descriptors kept for everything but client connections: node pools, polls, SSH, the
#: request log, the dashboard.
FD_RESERVE = 256


def fd_bounded(max_connections: int) -> int:
    """``max_connections``, lowered to what the process's descriptor limit leaves after
    :data:`FD_RESERVE` (first raising the soft limit towards the hard one, as servers do:
    a soft limit of 1,024 is common and too small for a router). Past the limit a new
    connection is refused with a 503, so the node polls never meet EMFILE."""
    try:
        import resource
    except ImportError:  # not on this platform: trust the configured figure
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        for value in (top, 10240):  # macOS refuses more than kern.maxfilesperproc
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
                soft = value
                break
            except (ValueError, OSError):
                continue
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_RESERVE))
