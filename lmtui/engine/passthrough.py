"""The named-node passthrough: ``/lmtui/v1/nodes/<node>/<path...>`` proxies to that node.

For what the router does not route — a server's own API (``/props``, ``/api/tags``,
``/v1/audio/...``), a path a new server version adds — a client names the node and gets its
answer as is: any method, the path and query string unchanged, the body passed through.
The node's own key (``registry.node_api_key``) replaces the client's credentials, so a
client needs only lmtui's: an API key (``[router] api_keys_env``) or the admin token,
as for the router (neither configured: open, since lmtui then binds loopback only).

Bounded like the router: a request body up to ``[router] max_body_bytes`` (aiohttp's
``client_max_size``, and ``idle_timeout`` for it to arrive), an answer up to
``max_answer_bytes`` (a longer one is cut and its connection closed), the first byte within
``first_byte_timeout``. Hop-by-hop headers (RFC 9110 §7.6.1 and those ``Connection``
names) are removed both ways. The node's ``GET .../processes`` of the control API
(``llamacpp-pool`` processes) is lmtui's own and is not passed through.

Every request is counted in ``lmtui_passthrough_requests_total{node,method,status}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from lmtui.engine.errors import UNAUTHORIZED, error_response
from lmtui.engine.router import Router
from lmtui.http import UpstreamError

log = logging.getLogger(__name__)

PREFIX = "/lmtui/v1/nodes/"
#: Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), and those the
#: pool writes itself or lmtui replaces (``Host``, the length, the credentials).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
    # The answer is passed on as it comes: ask for it uncompressed, so that what the
    # client is told (Content-Encoding) is what it gets, through either upstream client.
    "accept-encoding",
}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "set-cookie", "date", "server"}
#: Methods counted under their own name; anything else is "other" (bounded labels).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

OnDone = Callable[[str, str, int], None]


def _dropped(headers: object, base: frozenset[str]) -> frozenset[str]:
    """``base`` plus the headers a ``Connection`` header names (hop-by-hop too)."""
    conn = getattr(headers, "get", lambda _k, _d=None: None)("connection")
    if not conn:
        return base
    return base | {h.strip().lower() for h in conn.split(",") if h.strip()}


class Passthrough:
    def __init__(
        self,
        router: Router,
        *,
        admin_token: str | None,
        on_done: OnDone | None = None,
    ) -> None:
        self.router = router
        self._keys = [*router.api_keys, *([admin_token.encode()] if admin_token else [])]
        self.on_done = on_done

    @property
    def keyed(self) -> bool:
        """Whether a key or token is needed (the guard's Host rule applies otherwise)."""
        return bool(self._keys)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", PREFIX + "{node}/{path:.*}", self.handle)
        app.router.add_route("*", PREFIX + "{node}", self.handle)

    def _authorized(self, request: web.Request) -> bool:
        if not self._keys:
            return True
        auth = request.headers.get("Authorization", "")
        given = auth[7:].encode() if auth[:7].lower() == "bearer " else b""
        ok = False
        for key in self._keys:  # every key compared: the time tells nothing
            ok |= hmac.compare_digest(given, key)
        return ok

    async def handle(self, request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        status = 0
        try:
            resp = await self._handle(request, node)
            status = resp.status
            return resp
        finally:
            if self.on_done is not None and node in self.router.node_urls:
                method = request.method if request.method in _METHODS else "other"
                self.on_done(node, method, status or 499)

    async def _handle(self, request: web.Request, node: str) -> web.StreamResponse:
        r = self.router
        if not self._authorized(request):
            r.auth_failures.record(request.remote, "v1")
            return error_response(401, *UNAUTHORIZED)
        base = r.node_urls.get(node)
        if base is None:
            shown = node[:100]
            return error_response(
                404, f"no node named {shown!r} in the config", "invalid_request_error", "no_node"
            )
        # The path after the node's name, as the client sent it (percent-encoding and query
        # string untouched).
        raw = request.raw_path
        rest = raw[len(PREFIX) :]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        target = rest[cut:]
        if not target.startswith("/"):
            target = "/" + target
        if (request.content_length or 0) > r.max_body_bytes:
            return error_response(413, *r.too_large)
        try:
            async with asyncio.timeout(r.body_timeout_s):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, *r.too_large)
        except TimeoutError:
            resp = error_response(
                408,
                f"the request body did not arrive within {r.body_timeout_s:g} s",
                "invalid_request_error",
                "request_timeout",
            )
            resp.force_close()
            return resp
        drop = _dropped(request.headers, _NOT_FORWARDED)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        headers["Accept-Encoding"] = "identity"
        key = r.node_keys.get(node)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        pool = r._pool(node)
        try:
            async with asyncio.timeout(r.node_first_byte_s.get(node, r.first_byte_timeout_s)):
                up = await pool.request(request.method, target, body, headers)
        except (UpstreamError, TimeoutError, ValueError) as e:
            what = "sent no answer in time" if isinstance(e, TimeoutError) else str(e)
            return error_response(
                502, f"node {node} failed: {what}"[:500], "upstream_error", "upstream_error"
            )
        try:
            back = _dropped(up.headers, _NOT_RETURNED)
            out_headers = {k: v for k, v in up.headers.items() if k not in back}
            try:
                chunk = await up.next_chunk()
            except UpstreamError as e:
                return error_response(
                    502, f"node {node} failed: {e}"[:500], "upstream_error", "upstream_error"
                )
            if chunk is None or up.at_end:
                return web.Response(status=up.status, body=chunk or b"", headers=out_headers)
            stream = web.StreamResponse(status=up.status, headers=out_headers)
            await stream.prepare(request)
            sent = 0
            while chunk is not None:
                sent += len(chunk)
                if sent > r.max_answer_bytes:
                    log.warning(
                        "passthrough: %s answered %s %s with more than %d bytes; cut",
                        node,
                        request.method,
                        target[:200],
                        r.max_answer_bytes,
                    )
                    stream.force_close()
                    return stream
                await stream.write(chunk)
                try:
                    chunk = await up.next_chunk()
                except UpstreamError:
                    stream.force_close()  # cut mid-answer: the client sees it end early
                    return stream
            await stream.write_eof()
            return stream
        finally:
            up.release()
