"""OpenAI-style error bodies: what every client library knows how to read.

{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
"""

from __future__ import annotations

import msgspec
from aiohttp import web

_encode = msgspec.json.Encoder().encode


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    return _encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(message, type_, code, param),
        content_type="application/json",
        headers=headers,
    )


JSON_HEADERS = {"Content-Type": "application/json"}
#: The 401 error: message, type, code.
UNAUTHORIZED = (
    "Incorrect or missing API key. Send 'Authorization: "
    "Bearer <key>' with a key from [router] api_keys_env.",
    "invalid_request_error",
    "invalid_api_key",
)
