"""Adapters that read and control each kind of node.

Importing this package pulls in aiohttp (client side), msgspec and prometheus_client: never
textual, so headless modes and the engine stay light.
"""

from lmtui.backends.base import (
    Backend,
    BackendBadResponse,
    BackendError,
    BackendUnreachable,
    NotSupported,
)
from lmtui.backends.registry import BACKENDS, backend_for

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendBadResponse",
    "BackendError",
    "BackendUnreachable",
    "NotSupported",
    "backend_for",
]
