"""One client request's answer, whichever HTTP server received it.

The router writes every answer through an :class:`Exchange`: a whole response at once
(``send``), or a stream (``start_stream``, ``write``..., ``end``). Two servers hand it
requests (see ``front.py``): lmtui's fast HTTP/1.1 front for the plain requests the bot
sends, and ``aiohttp.web`` for everything else, so the router's logic exists once.

A write to a client that has gone raises ``ConnectionResetError`` with both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web


class Exchange(Protocol):
    #: True once ``start_stream`` has sent the head of a streamed answer.
    streaming: bool

    async def send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        """The whole answer, with a ``Content-Length``."""

    async def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        """Send the head of an answer whose body follows in pieces."""

    async def write(self, chunk: bytes) -> None:
        """One piece of a streamed body, sent at once; waits while the client is slow."""

    async def end(self, chunk: bytes = b"") -> None:
        """The last piece (may be empty) and the end of a streamed body."""


class AiohttpExchange:
    """An answer through ``aiohttp.web``: the handler returns ``response`` afterwards."""

    __slots__ = ("request", "response", "streaming")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.streaming = False

    async def send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.response = web.Response(body=body, status=status, headers=headers)

    async def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(self.request)
        self.response, self.streaming = resp, True

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self, chunk: bytes = b"") -> None:
        assert self.response is not None
        await self.response.write_eof(chunk)
