"""LM Studio: REST v1 (0.4+) with a fallback to the legacy v0 API of 0.3.x servers.

The adapter remembers which API a node speaks, and re-probes v1 every
:data:`V1_REPROBE_S` seconds on a v0 node, since the user may upgrade LM Studio while
lmtui runs. Loading and unloading need v1; on a v0-only server they raise NotSupported and
point at ``lms`` over SSH.

"No v1" does not look like a 404: every LM Studio version answers an endpoint it lacks with
HTTP 200 and ``{"error": "Unexpected endpoint or method. (GET /api/v1/models)"}`` (its log
says "Returning 200 anyway"; lmstudio-bug-tracker #618, #1323, #2085). Such an answer from
``/api/v1/...`` means the endpoint is absent, like a 404 would.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlsplit

from lmtui.backends._common import (
    Every,
    HttpBackend,
    bad,
    decode_json,
    error_message,
    expect_dict,
    expect_list,
    opt_dict,
    opt_int,
    opt_str,
    override_slots,
    status_error,
)
from lmtui.backends.base import OPENAI_APIS, BackendError, NotSupported, monotonic
from lmtui.backends.lms import LmsCli, LmsInstance
from lmtui.backends.ssh import SshHost
from lmtui.core.model import (
    AvailableModel,
    InstanceObservation,
    NodeKind,
    NodeObservation,
)

#: Seconds between attempts to switch a v0 node back to v1 (the user may have upgraded).
V1_REPROBE_S = 60.0
#: LM Studio 0.4's default "Max Concurrent Predictions" for a llama.cpp-engine model.
V1_DEFAULT_PARALLEL = 4
#: Before 0.4 a server processed one request at a time, even across models.
V0_PARALLEL = 1
#: ``lms`` is a Node.js program: each run costs the host a process start (tenths of a second
#: of CPU), so ``lms ps`` runs at most this often; between runs a poll reuses its answer, and
#: a load or unload through lms makes the next poll run it again.
LMS_PS_EVERY_S = 5.0
#: After ``lms ps`` failed (no lms on the host), the next attempt waits this long.
LMS_RETRY_S = 60.0
#: Loading a large model from disk can take minutes; a poll timeout would cut it short.
LOAD_TIMEOUT_S = 600.0

Parsed = tuple[tuple[InstanceObservation, ...], tuple[AvailableModel, ...]]

log = logging.getLogger(__name__)

_KINDS = {"embeddings": "embedding"}  # v0 says "embeddings", v1 "embedding"


def _kind(entry: dict[str, Any]) -> str:
    t = opt_str(entry, "type") or "llm"
    return _KINDS.get(t, t)


def parse_v1_models(payload: Any) -> Parsed:
    """Parse ``GET /api/v1/models``: every downloaded model, with its loaded instances.

    Only ``key`` is required of a model (older 0.4 builds sent less than the current docs);
    a loaded instance without ``config.parallel`` gets 4 slots, the 0.4 default.
    """
    models = expect_list(expect_dict(payload, "/api/v1/models").get("models"), "models")
    instances: list[InstanceObservation] = []
    available: list[AvailableModel] = []
    for raw in models:
        entry = expect_dict(raw, "/api/v1/models entry")
        key = opt_str(entry, "key")
        if key is None:
            bad(f"/api/v1/models entry without a key: {str(entry)[:80]}")
        size = opt_int(entry, "size_bytes")
        available.append(
            AvailableModel(
                key=key,
                size_bytes=size,
                kind=_kind(entry),
                max_context_length=opt_int(entry, "max_context_length"),
                size_source="server" if size is not None else None,
            )
        )
        loaded = entry.get("loaded_instances")
        for inst in loaded if isinstance(loaded, list) else ():
            inst = expect_dict(inst, f"loaded instance of {key}")
            config = opt_dict(inst, "config")
            instances.append(
                InstanceObservation(
                    model=key,
                    instance_id=opt_str(inst, "id", "identifier", "instance_id") or key,
                    size_bytes=size,
                    size_source="server" if size is not None else None,
                    context_length=opt_int(config, "context_length"),
                    slots_total=opt_int(config, "parallel") or V1_DEFAULT_PARALLEL,
                )
            )
    return tuple(instances), tuple(available)


def parse_v0_models(payload: Any) -> Parsed:
    """Parse the legacy ``GET /api/v0/models`` (0.3.6+): loaded models have ``state: loaded``.

    A v0 server serializes all requests, so each loaded model gets one slot. The API
    reports no sizes.
    """
    data = expect_list(expect_dict(payload, "/api/v0/models").get("data"), "data")
    instances: list[InstanceObservation] = []
    available: list[AvailableModel] = []
    for raw in data:
        entry = expect_dict(raw, "/api/v0/models entry")
        model_id = opt_str(entry, "id")
        if model_id is None:
            bad(f"/api/v0/models entry without an id: {str(entry)[:80]}")
        available.append(
            AvailableModel(
                key=model_id,
                kind=_kind(entry),
                max_context_length=opt_int(entry, "max_context_length"),
            )
        )
        if entry.get("state") == "loaded":
            instances.append(
                InstanceObservation(
                    model=model_id,
                    instance_id=model_id,
                    context_length=opt_int(entry, "loaded_context_length"),
                    slots_total=V0_PARALLEL,
                )
            )
    return tuple(instances), tuple(available)


def unknown_endpoint(payload: Any) -> str | None:
    """LM Studio's answer for an endpoint it does not have, which comes with HTTP 200:
    ``{"error": "Unexpected endpoint or method. (GET /api/v1/models)"}``. Returns the
    message, or None for any other body (a real models list has no ``error``)."""
    if isinstance(payload, dict) and "error" in payload and "models" not in payload:
        return error_message(payload)
    return None


def parse_load_answer(payload: Any, model: str) -> str:
    """The instance id in a ``POST /api/v1/models/load`` answer.

    Current builds answer ``instance_id``, earlier 0.4 builds ``model_instance_id``.
    """
    body = expect_dict(payload, "/api/v1/models/load")
    return opt_str(body, "instance_id", "model_instance_id") or model


class LMStudioBackend(HttpBackend):
    """An LM Studio server (``lms server start``, default port 1234)."""

    kind = NodeKind.LMSTUDIO
    supports_load = True
    #: LM Studio's docs (lmstudio.ai/docs/developer/openai-compat, anthropic-compat):
    #: ``/v1/responses`` (0.3.29+) and the Anthropic ``/v1/messages`` (0.4); no
    #: count_tokens, no rerank. An endpoint it lacks answers HTTP 200 with an error body,
    #: which the router reads as "absent" too (engine/apis.py).
    apis = OPENAI_APIS | {"responses", "messages"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Which REST API the node answered last; None until the first poll.
        self.api: Literal["v1", "v0"] | None = None
        self._reprobe = Every(V1_REPROBE_S)
        #: Whether the fall back to v0 was logged (once per node).
        self._warned = False
        #: ``lms`` over SSH, when the node has an ``[nodes.ssh]`` section with ``lms`` set.
        self.lms: LmsCli | None = None
        ssh = self.node.ssh
        if ssh is not None and ssh.lms:
            url_host = urlsplit(self.node.url).hostname or "127.0.0.1"
            host = SshHost(ssh, default_host=url_host, node_name=self.name)
            self.lms = LmsCli(host, ssh.lms)
        #: Why the last ``lms ps`` failed (logged once per new reason); None: it worked.
        self.lms_error: str | None = None
        #: ``lms ps`` worked at the last poll: loads and unloads go through ``lms`` (an
        #: SSH section kept for host memory alone, with no ``lms`` there, changes nothing).
        self.lms_ok = False
        #: Instance ids of the last poll, to name a new instance as LM Studio would.
        self._ids: set[str] = set()
        #: The last ``lms ps`` answer, and when the next run (or retry) is due.
        self._ps: list[LmsInstance] | None = None
        self._ps_every = Every(LMS_PS_EVERY_S)
        self._lms_retry = Every(LMS_RETRY_S)

    @property
    def can_load(self) -> bool:
        """Loads need REST v1 (0.4+) or ``lms`` over SSH: a 0.3 server without SSH cannot
        load or unload."""
        return self.api != "v0" or self.lms_ok

    @property
    def no_load_reason(self) -> str | None:
        if self.can_load:
            return None
        return (
            "LM Studio before 0.4 has no REST load or unload: lmtui routes to the models "
            "loaded there; give the node an [nodes.ssh] section (for lms) or upgrade LM "
            "Studio to load and unload from lmtui"
        )

    def serves(self, api: str) -> bool:
        """``/v1/messages`` came with 0.4 (REST v1): a server that speaks only v0 lacks it;
        ``/v1/responses`` is in late 0.3 builds too, so only the server's answer tells."""
        if api == "messages" and self.api == "v0":
            return False
        return api in self.apis

    async def poll(self, now: float) -> NodeObservation:
        """Read the models (and their loaded instances) over v1, or v0 on older servers."""
        started = monotonic()
        try:
            if self.api == "v0" and not self._reprobe.due(now):
                parsed = parse_v0_models(await self._fetch_v0())
            else:
                parsed = await self._poll_v1_or_fallback(now)
        except BackendError:
            # It may come back upgraded (restarts are when upgrades happen): try v1 first.
            self._reprobe.reset()
            raise
        instances, available = parsed
        if self.lms is not None:
            instances, available = await self._with_lms(now, instances, available)
        self._ids = {i.instance_id for i in instances}
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=monotonic() - started,
            instances=override_slots(instances, self.node.slots),
            available=available,
            version="0.4+" if self.api == "v1" else "<0.4",
            slots_default=self.node.slots
            or (V1_DEFAULT_PARALLEL if self.api == "v1" else V0_PARALLEL),
            # Before 0.4 the whole server runs one request at a time, across all models.
            server_slots=None if self.api == "v1" or self.node.slots else V0_PARALLEL,
        )

    async def _with_lms(
        self,
        now: float,
        instances: tuple[InstanceObservation, ...],
        available: tuple[AvailableModel, ...],
    ) -> Parsed:
        """``lms ps`` over SSH replaces the HTTP view of the loaded instances: it has busy
        and queued truth, sizes, TTLs and ``parallel``. It runs at most every
        :data:`LMS_PS_EVERY_S`; when it fails, the poll keeps the HTTP view (the node is
        still up), the reason is logged once and lms is tried again after
        :data:`LMS_RETRY_S`."""
        assert self.lms is not None
        if self.lms_error is not None and not self._lms_retry.due(now):
            return instances, available
        if self._ps is not None and not self._ps_every.due(now):
            ps = self._ps
        else:
            try:
                ps = await self.lms.ps()
            except BackendError as e:
                why = str(e)[:300]
                if why != self.lms_error:
                    log.warning("%s: lms ps failed, using the HTTP API's view: %s", self.name, why)
                self.lms_error = why
                self.lms_ok = False
                self._ps = None
                self._lms_retry.done(now)
                return instances, available
            self._ps = ps
            self._ps_every.done(now)
            if self.lms_error is not None:
                log.info("%s: lms ps works again", self.name)
            self.lms_error = None
            self.lms_ok = True
        slots = V1_DEFAULT_PARALLEL if self.api == "v1" else V0_PARALLEL
        sizes = {e.model: e.size_bytes for e in ps if e.size_bytes is not None}
        available = tuple(
            replace(a, size_bytes=sizes[a.key], size_source="server")
            if a.size_bytes is None and a.key in sizes
            else a
            for a in available
        )
        return tuple(_from_lms(e, slots) for e in ps), available

    async def _poll_v1_or_fallback(self, now: float) -> Parsed:
        r = await self.fetch("/api/v1/models")
        payload = decode_json(r, "GET /api/v1/models") if r.status_code == 200 else None
        absent = self._v1_absent(r.status_code, payload)
        if absent is not None:
            # 0.3.x has no v1 API: use the legacy one and only re-probe v1 now and then.
            self._fall_back(absent)
            self._reprobe.done(now)
            return parse_v0_models(await self._fetch_v0())
        if r.status_code != 200:
            raise status_error(r, "GET /api/v1/models", self.name)
        parsed = parse_v1_models(payload)
        if self.api != "v1":
            self._warned = False  # upgraded: say so again should it ever go back
        self.api = "v1"
        return parsed

    @staticmethod
    def _v1_absent(status: int, payload: Any) -> str | None:
        """Why ``GET /api/v1/models`` says the v1 API is absent, or None when it is there:
        a 404, or LM Studio's HTTP 200 "Unexpected endpoint" answer."""
        if status == 404:
            return "HTTP 404"
        if status == 200:
            msg = unknown_endpoint(payload)
            return f"HTTP 200 {msg!r}" if msg is not None else None
        return None

    def _fall_back(self, why: str) -> None:
        self.api = "v0"
        if not self._warned:
            # Once per node (and again after an upgrade and downgrade): the poll repeats
            # this every V1_REPROBE_S, and the version column ("<0.4") keeps showing it.
            self._warned = True
            log.warning(
                "%s: LM Studio has no REST v1 (GET /api/v1/models answered %s); reading "
                "REST v0 (no sizes, one request at a time, no load/unload over HTTP)",
                self.name,
                why,
            )

    async def _fetch_v0(self) -> Any:
        payload = await self.fetch_json("/api/v0/models")
        msg = unknown_endpoint(payload)
        if msg is not None:
            bad(
                f"GET /api/v0/models: {msg}: this LM Studio has neither REST v1 nor v0 "
                "(v0 came with 0.3.6); upgrade it"
            )
        return payload

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Load ``model`` over REST v1; return the new instance's id.

        With ``lms`` over SSH the load goes through ``lms load`` (any version; it carries
        ``ttl`` and the node's ``slots`` as ``--parallel``). Over REST ``ttl`` is not sent:
        the v1 load endpoint documents no idle TTL, and lmtui's pool manager unloads idle
        instances itself (``core/lifetime.py``).
        """
        if self.lms is not None and self.lms_ok:
            ident = self._new_id(model)
            await self.lms.load(
                model, ident, ttl=ttl, parallel=self.node.slots, context_length=context_length
            )
            self._ids.add(ident)
            self._ps_every.reset()  # the next poll sees it
            return ident
        await self._require_v1("load")
        body: dict[str, Any] = {"model": model}
        if context_length is not None:
            body["context_length"] = context_length
        answer = await self._post_v1("/api/v1/models/load", body)
        return parse_load_answer(answer, model)

    async def unload(self, model: str, instance_id: str) -> None:
        """Unload one instance over REST v1, or with ``lms unload`` over SSH."""
        if self.lms is not None and self.lms_ok:
            await self.lms.unload(instance_id)
            self._ids.discard(instance_id)
            self._ps_every.reset()
            return
        await self._require_v1("unload")
        await self._post_v1("/api/v1/models/unload", {"instance_id": instance_id})

    async def _require_v1(self, what: str) -> None:
        if self.api is None:
            # Not polled yet: ask once which API the node has. (A 404 from the command
            # itself cannot tell "no v1 API" from "no such model".)
            r = await self.fetch("/api/v1/models")
            payload = decode_json(r, "GET /api/v1/models") if r.status_code == 200 else None
            absent = self._v1_absent(r.status_code, payload)
            if absent is not None:
                self._fall_back(absent)
            else:
                self.api = "v1"
        if self.api == "v0":
            raise NotSupported(
                f"{self.name}: this LM Studio is older than 0.4 and has no REST {what}; "
                f"give the node an [nodes.ssh] section so lmtui can use `lms {what}`, or "
                "upgrade LM Studio"
            )

    async def _post_v1(self, path: str, body: dict[str, Any]) -> Any:
        return await self.post_json(path, body, timeout_s=max(self.timeout, LOAD_TIMEOUT_S))

    def _new_id(self, model: str) -> str:
        """LM Studio's own naming: the key, then ``key:2``, ``key:3`` for further copies."""
        if model not in self._ids:
            return model
        n = 2
        while f"{model}:{n}" in self._ids:
            n += 1
        return f"{model}:{n}"

    async def aclose(self) -> None:
        if self.lms is not None:
            await self.lms.close()


def _from_lms(e: LmsInstance, default_slots: int) -> InstanceObservation:
    expires = e.last_used + e.ttl_s if e.last_used is not None and e.ttl_s else None
    return InstanceObservation(
        model=e.model,
        instance_id=e.identifier,
        size_bytes=e.size_bytes,
        size_source="server" if e.size_bytes is not None else None,
        context_length=e.context_length,
        slots_total=e.parallel or default_slots,
        slots_busy=e.busy,
        queued=e.waiting,
        last_used=e.last_used,
        expires_at=expires,
    )
