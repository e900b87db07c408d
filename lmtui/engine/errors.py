"""OpenAI-style error bodies: what every client library knows how to read.

{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
"""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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


class _ClientErrorsAreDebug(logging.Filter):
    """aiohttp logs every request its parser rejects as an ERROR with a traceback (~12
    lines, from anything a client can send). Such a record becomes one DEBUG line: the
    error's kind and first line, bounded — the client got its 400 already."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            text = (exc.message or str(exc)).strip()
            first = text.splitlines()[0] if text else ""
            said = record.getMessage()
            record.msg = "%s; rejected: %s %s"
            record.args = (said, f"{exc.code} {type(exc).__name__}", first[:200])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_FILTER = _ClientErrorsAreDebug()


def quiet_client_errors() -> None:
    """Install the filter on aiohttp's server logger (once; idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
