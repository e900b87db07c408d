"""LM Studio's ``lms`` CLI over SSH: what the server's HTTP API does not say or do.

``lms ps --json`` lists every loaded instance with its ``status`` (``idle``,
``processingPrompt``, ``generating``, ``computingEmbedding``) and ``queued`` (requests in
its queue, the current one included): the busy truth for clients that bypass lmtui, which
no HTTP endpoint gives. It also has sizes, TTLs and ``parallel``, which REST v0 (LM
Studio before 0.4) lacks. ``lms load KEY --ttl S --parallel N --identifier ID -y`` and
``lms unload ID`` load and unload on any version, so a 0.3 server, which has no REST load,
becomes controllable; on 0.4 they carry the TTL and ``parallel`` that the REST load
documents no field for (LM Studio's REST and lms CLI docs).

Every argument is quoted for the remote shell; model keys and identifiers are bounded
before they are sent, and the output of ``lms ps`` is parsed defensively (a field of the
wrong type is left out, a list that is not one is BackendBadResponse).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from lmtui.backends.base import BackendBadResponse
from lmtui.backends.ssh import SshHost

#: ``lms load`` waits until the model is in memory: minutes for a large one from disk.
LOAD_TIMEOUT_S = 600.0
#: Longest model key or identifier passed to ``lms`` (LM Studio's are a few dozen chars).
MAX_NAME = 256
#: Largest ``lms ps --json`` output read (a few hundred bytes per instance).
MAX_PS_BYTES = 1024 * 1024
_BUSY = frozenset({"processingPrompt", "generating", "computingEmbedding"})


@dataclass(frozen=True, slots=True)
class LmsInstance:
    """One entry of ``lms ps --json``."""

    identifier: str
    model: str
    kind: str = "llm"
    size_bytes: int | None = None
    context_length: int | None = None
    #: Idle TTL in seconds, None for none.
    ttl_s: float | None = None
    #: When it was last used, seconds since the epoch (``lastUsedTime`` is in ms).
    last_used: float | None = None
    status: str = "idle"
    queued: int = 0
    parallel: int | None = None

    @property
    def busy(self) -> int:
        """Requests running on it now, as far as ``status`` and ``queued`` say."""
        if self.status not in _BUSY:
            return 0
        return max(1, min(self.queued, self.parallel or 1))

    @property
    def waiting(self) -> int:
        """Requests in its queue that are not running yet."""
        return max(0, self.queued - self.busy)


def _int(entry: dict[str, Any], key: str) -> int | None:
    v = entry.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _str(entry: dict[str, Any], key: str) -> str | None:
    v = entry.get(key)
    return v[:MAX_NAME] if isinstance(v, str) and v else None


def parse_ps(text: str) -> list[LmsInstance]:
    """Parse ``lms ps --json``: a JSON array of instances (an empty output is none)."""
    if len(text) > MAX_PS_BYTES:
        raise BackendBadResponse(f"lms ps --json: output over {MAX_PS_BYTES} bytes")
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BackendBadResponse(f"lms ps --json: not JSON ({e}): {text[:80]!r}") from None
    if not isinstance(data, list):
        raise BackendBadResponse(f"lms ps --json: expected a list, got {type(data).__name__}")
    out = []
    for entry in data:
        if not isinstance(entry, dict):
            continue
        model = _str(entry, "modelKey") or _str(entry, "path")
        ident = _str(entry, "identifier") or model
        if model is None or ident is None:
            continue
        ttl_ms = _int(entry, "ttlMs")
        used_ms = _int(entry, "lastUsedTime")
        status = _str(entry, "status") or "idle"
        out.append(
            LmsInstance(
                identifier=ident,
                model=model,
                kind="embedding" if entry.get("type") == "embedding" else "llm",
                size_bytes=_int(entry, "sizeBytes"),
                context_length=_int(entry, "contextLength"),
                ttl_s=ttl_ms / 1000 if ttl_ms else None,
                last_used=used_ms / 1000 if used_ms else None,
                status=status,
                queued=_int(entry, "queued") or 0,
                parallel=_int(entry, "parallel") or None,
            )
        )
    return out


def _name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME or any(c in value for c in "\0\n\r"):
        raise ValueError(f"{what} must be 1-{MAX_NAME} characters without line breaks")
    return shlex.quote(value)


class LmsCli:
    """``lms`` on one host, through its SSH connection."""

    def __init__(self, host: SshHost, path: str) -> None:
        self.host = host
        #: The command as the remote shell gets it: quoted, with a leading ~/ as $HOME.
        if path.startswith("~/"):
            self.command = '"$HOME"/' + shlex.quote(path[2:])
        else:
            self.command = shlex.quote(path)

    async def ps(self) -> list[LmsInstance]:
        return parse_ps(await self.host.run(f"{self.command} ps --json"))

    async def load(
        self,
        model: str,
        identifier: str,
        *,
        ttl: float | None = None,
        parallel: int | None = None,
        context_length: int | None = None,
    ) -> None:
        args = [
            self.command,
            "load",
            _name(model, "model"),
            "--identifier",
            _name(identifier, "identifier"),
        ]
        if ttl is not None and ttl > 0:
            args += ["--ttl", str(max(1, round(ttl)))]
        if parallel is not None:
            args += ["--parallel", str(int(parallel))]
        if context_length is not None:
            args += ["-c", str(int(context_length))]
        args.append("-y")
        await self.host.run(" ".join(args), timeout=LOAD_TIMEOUT_S)

    async def unload(self, identifier: str) -> None:
        await self.host.run(f"{self.command} unload {_name(identifier, 'identifier')}")

    async def close(self) -> None:
        await self.host.close()
