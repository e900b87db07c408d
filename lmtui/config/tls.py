"""The router's TLS files (``[router] tls_cert`` / ``tls_key``): checked when the config
loads, so a missing, unreadable or mismatched file is a config error naming its line, and
turned into the server's ``SSLContext`` by the engine with the same function.

Modern defaults: TLS 1.2 or later, no client-initiated renegotiation, and otherwise
``ssl.create_default_context`` for a server (no compression, OpenSSL's secure cipher list),
ALPN ``http/1.1`` (the only protocol lmtui speaks). No client certificates are asked for: the
bearer keys authenticate clients.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmtui.config.explain import Problem
from lmtui.config.schema import RouterConfig

if TYPE_CHECKING:
    import ssl


class TlsFileError(ValueError):
    """A TLS file that cannot be used; ``key`` is the config key it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def resolve(path: str, base: Path | None) -> str:
    """``path`` with "~" expanded and, when relative, taken from ``base`` (the config's
    directory)."""
    p = Path(os.path.expanduser(path))
    if base is not None and not p.is_absolute():
        p = base / p
    return str(p)


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        raise TlsFileError(key, f"{path}: file not found") from None
    except IsADirectoryError:
        raise TlsFileError(key, f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise TlsFileError(key, f"{path}: cannot read: {e.strerror or e}") from None
    if b"-----BEGIN " not in head:
        raise TlsFileError(key, f"{path}: not a PEM file (no '-----BEGIN' line)")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The router's server context for ``cert`` and ``key``; TlsFileError saying which file
    is wrong and why."""
    # Imported here: ssl brings socket with it, which the config loader's offline users
    # (``lmtui replay``) must not load.
    import ssl

    _readable("tls_cert", cert)
    _readable("tls_key", key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 renegotiation started by a client costs the server a handshake each time
    # (a cheap way to burn its CPU) and no client of lmtui needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        reason = (e.reason or str(e)).lower().replace("_", " ")
        if "mismatch" in reason:
            raise TlsFileError(
                "tls_key", f"{key}: this key does not belong to the certificate in {cert}"
            ) from None
        which, path = ("tls_key", key) if "key" in reason else ("tls_cert", cert)
        raise TlsFileError(which, f"{path}: not usable for TLS ({reason})") from None
    except OSError as e:
        raise TlsFileError("tls_cert", f"{cert}: cannot read: {e.strerror or e}") from None
    return ctx


def tls_problems(router: RouterConfig) -> list[Problem]:
    """What is wrong with ``[router] tls_cert`` / ``tls_key`` (paths already resolved)."""
    cert, key = router.tls_cert, router.tls_key
    if cert is None and key is None:
        return []
    if cert is None or key is None:
        missing, given = ("tls_key", "tls_cert") if key is None else ("tls_cert", "tls_key")
        return [Problem(("router", given), f"{given} needs {missing} too: set both to serve HTTPS")]
    try:
        server_context(cert, key)
    except TlsFileError as e:
        return [Problem(("router", e.key), str(e))]
    return []
