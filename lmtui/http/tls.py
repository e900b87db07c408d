"""lmtui's upstream for ``https://`` nodes: aiohttp behind ``UpstreamPool``'s interface.

The lean client in ``http1.py`` speaks plain HTTP only (local LLM servers almost always
do). A node behind TLS goes through ``aiohttp.ClientSession`` instead, wrapped so that the
router and the polls have one code path: the same ``request``, ``read``, ``next_chunk`` and
``release``, and the same ``UpstreamError``. Like the lean client, it sends the request
target as given (no re-quoting) and asks for no compression.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from yarl import URL

from lmtui.http.http1 import UpstreamError


class TlsResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole body; ``UpstreamError`` if it breaks off or grows past ``max_bytes``."""
        try:
            if max_bytes is None:
                return await self._resp.read()
            parts: list[bytes] = []
            size = 0
            async for piece in self._resp.content.iter_any():
                size += len(piece)
                if size > max_bytes:
                    self._resp.close()
                    raise UpstreamError(
                        f"body larger than {max_bytes} bytes", before_response=False
                    )
                parts.append(piece)
            return b"".join(parts)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}", before_response=False) from e

    async def next_chunk(self) -> bytes | None:
        try:
            data, _ = await self._resp.content.readchunk()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}", before_response=False) from e
        return data or None

    @property
    def at_end(self) -> bool:
        return self._resp.content.at_eof()

    def release(self) -> None:
        self._resp.release()


class TlsUpstreamPool:
    """``UpstreamPool``'s interface over one pooled aiohttp session."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 900.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._limit = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> TlsResponse:
        if self._session is None:
            # Made on first use: a session belongs to the running loop, and a pool may be
            # built before there is one. No Accept-Encoding: the router passes bodies
            # through as they come, and its client never asked for a compressed one.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        try:
            # No body at all rather than an empty one: aiohttp would add "Content-Length: 0"
            # and an octet-stream Content-Type to a GET.
            resp = await self._session.request(
                method,
                URL(self.base_url + path, encoded=True),
                data=body or None,
                headers=dict(headers),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise UpstreamError(f"{type(e).__name__}: {e}", before_response=True) from e
        return TlsResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
