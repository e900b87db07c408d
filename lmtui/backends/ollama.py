"""Ollama: ``/api/ps`` (loaded), ``/api/tags`` (downloaded), ``/api/version``.

Ollama runs one instance per model, so the instance id is the model name. Its parallelism
(``OLLAMA_NUM_PARALLEL``, default 1) is not exposed over HTTP: slots come from the node
config's ``slots``. Loading is a generate call with no prompt and a ``keep_alive``;
unloading is the same with ``keep_alive: 0``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec

from lmtui.backends._common import (
    Every,
    HttpBackend,
    bad,
    error_message,
    expect_dict,
    expect_list,
    opt_int,
    opt_str,
    status_error,
    version_tuple,
)
from lmtui.backends.base import OPENAI_APIS, BackendBadResponse, BackendError, monotonic
from lmtui.core.model import AvailableModel, InstanceObservation, NodeKind, NodeObservation

#: OLLAMA_NUM_PARALLEL's default: one request at a time per model.
DEFAULT_SLOTS = 1
#: Seconds between reads of the downloaded models (they change only on ``ollama pull``/``rm``).
TAGS_REFRESH_S = 10.0
#: Seconds between reads of the server version.
VERSION_REFRESH_S = 300.0
#: A load reads the whole model from disk; allow it far longer than a poll.
LOAD_TIMEOUT_S = 600.0


def parse_expires_at(value: Any) -> float | None:
    """An RFC 3339 time with a zone offset (Go's format, nanoseconds) as epoch seconds.

    Go's zero time (year 1) and anything unparsable mean "not known". ``keep_alive < 0``
    gives a time centuries ahead, which is kept: it reads as "never expires" downstream.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return t if t > 0 else None


def _models(payload: Any, what: str) -> list[Any]:
    models = expect_dict(payload, what).get("models")
    # An idle server may send "models": null rather than an empty list.
    return [] if models is None else expect_list(models, f"{what} models")


def canonical_name(name: str | None) -> str | None:
    """``qwen2.5:latest`` → ``qwen2.5``: Ollama treats a name without a tag as ``:latest``,
    and clients (and the other node kinds) name models without it, so one model has one
    name across the cluster. Other tags (``qwen2.5:7b``) are part of the name and stay."""
    if name is not None and name.endswith(":latest"):
        return name[: -len(":latest")]
    return name


def parse_ps(payload: Any, slots: int = DEFAULT_SLOTS) -> tuple[InstanceObservation, ...]:
    """Parse ``GET /api/ps``. ``name`` is missing on some versions: use ``model`` then."""
    out: list[InstanceObservation] = []
    for raw in _models(payload, "/api/ps"):
        entry = expect_dict(raw, "/api/ps entry")
        name = canonical_name(opt_str(entry, "name", "model"))
        if name is None:
            bad(f"/api/ps entry without a name or model: {str(entry)[:80]}")
        out.append(
            InstanceObservation(
                model=name,
                instance_id=name,
                size_bytes=opt_int(entry, "size"),
                context_length=opt_int(entry, "context_length"),
                slots_total=slots,
                expires_at=parse_expires_at(entry.get("expires_at")),
            )
        )
    return tuple(out)


def parse_tags(payload: Any) -> tuple[AvailableModel, ...]:
    """Parse ``GET /api/tags``: every downloaded model with its file size."""
    out: list[AvailableModel] = []
    for raw in _models(payload, "/api/tags"):
        entry = expect_dict(raw, "/api/tags entry")
        name = canonical_name(opt_str(entry, "name", "model"))
        if name is None:
            bad(f"/api/tags entry without a name or model: {str(entry)[:80]}")
        out.append(AvailableModel(key=name, size_bytes=opt_int(entry, "size")))
    return tuple(out)


def parse_version(payload: Any) -> str | None:
    """Parse ``GET /api/version`` → ``{"version": "0.5.7"}``."""
    return opt_str(expect_dict(payload, "/api/version"), "version")


def parse_generate_answer(body: bytes) -> dict[str, Any]:
    """The last object of a ``/api/generate`` answer; an ``{"error": ...}`` line raises.

    Without a prompt Ollama answers one JSON object, but a streamed answer is NDJSON, and
    an error found after the 200 status arrives as one more line: read every line.
    """
    last: dict[str, Any] | None = None
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError as e:
            raise BackendBadResponse(f"/api/generate: malformed JSON: {line[:80]!r}") from e
        msg = error_message(obj)
        if msg is not None:
            bad(f"/api/generate: {msg}")
        last = expect_dict(obj, "/api/generate answer")
    if last is None:
        bad("/api/generate: empty answer")
    return last


def keep_alive(ttl: float | None) -> str | int:
    """``keep_alive`` for a load: ``"<ttl>s"``, or -1 (forever: lmtui's pool manages it).

    Never left out: a load without one gets ``OLLAMA_KEEP_ALIVE`` (5 minutes by default),
    and since Ollama 0.1.49 that stays the model's lifetime under requests that carry none,
    which is every request lmtui proxies (``/v1`` ignores a ``keep_alive`` field)."""
    if ttl is None or ttl < 0:
        return -1
    return f"{max(1, round(ttl))}s"


class OllamaBackend(HttpBackend):
    """An Ollama server (default port 11434)."""

    kind = NodeKind.OLLAMA
    supports_load = True
    sets_lifetime = True
    #: Ollama's docs (docs.ollama.com/api/openai-compatibility, anthropic-compatibility):
    #: ``/v1/responses`` since v0.13.3 (stateless), the Anthropic ``/v1/messages`` since
    #: v0.14.0 (ollama.com/blog/claude); no count_tokens, no rerank.
    apis = OPENAI_APIS | {"responses", "messages"}
    #: The first version with each API beyond the OpenAI three.
    API_SINCE = {"responses": (0, 13, 3), "messages": (0, 14, 0)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tags = Every(TAGS_REFRESH_S)
        self._version = Every(VERSION_REFRESH_S)
        self._available: tuple[AvailableModel, ...] | None = None
        self._version_str: str | None = None

    def serves(self, api: str) -> bool:
        """By the version ``/api/version`` reported; an unknown version says yes."""
        if api not in self.apis:
            return False
        since = self.API_SINCE.get(api)
        have = version_tuple(self._version_str)
        return since is None or have is None or have >= since

    async def poll(self, now: float) -> NodeObservation:
        """Read loaded models every poll; downloaded models and version when due.

        The reads are independent, so they go out together. Between refreshes the last
        downloaded-models list and version are reported again (no request needed).
        """
        started = monotonic()
        want_tags, want_version = self._tags.due(now), self._version.due(now)
        try:
            ps, tags, version = await asyncio.gather(
                self.fetch_json("/api/ps"),
                self.fetch_json("/api/tags") if want_tags else _none(),
                self.fetch_json("/api/version", absent=(404,)) if want_version else _none(),
            )
            slots = self.node.slots or DEFAULT_SLOTS
            instances = parse_ps(ps, slots)
            if want_tags:
                self._available = parse_tags(tags)
            if want_version and version is not None:
                self._version_str = parse_version(version)
        except BackendError:
            # The server may come back restarted or upgraded: re-read everything then.
            self._tags.reset()
            self._version.reset()
            raise
        if want_tags:
            self._tags.done(now)
        if want_version:
            self._version.done(now)
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=monotonic() - started,
            instances=instances,
            available=self._available,
            version=self._version_str,
            slots_default=slots,
        )

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Load ``model`` by a generate call without a prompt; the instance id is the name."""
        body: dict[str, Any] = {"model": model, "keep_alive": keep_alive(ttl)}
        if context_length is not None:
            body["options"] = {"num_ctx": context_length}
        await self._generate(body)
        return model

    async def set_lifetime(self, model: str, instance_id: str, ttl: float | None) -> None:
        """Set a loaded model's lifetime again: the same call as a load (no prompt, a
        ``keep_alive``), which on a model in memory only replaces its ``keep_alive`` and
        restarts its timer (``useLoadedRunner`` in Ollama's scheduler)."""
        await self._generate({"model": instance_id or model, "keep_alive": keep_alive(ttl)})

    async def unload(self, model: str, instance_id: str) -> None:
        """Unload ``model`` now (``keep_alive: 0``)."""
        await self._generate({"model": instance_id or model, "keep_alive": 0})

    async def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.request(
            "POST", "/api/generate", json=body, timeout=max(self.timeout, LOAD_TIMEOUT_S)
        )
        if r.status_code != 200:
            raise status_error(r, "POST /api/generate", self.name)
        return parse_generate_answer(r.content)


async def _none() -> None:
    return None
