"""EngineClient: the one interface the UI uses to see and command the engine.

Two implementations speak the same commands:

- ``InProcessClient``: the UI and the engine share one process (``lmtui``);
- ``HttpEngineClient``: the UI attaches to a remote ``lmtui --serve`` over its control API
  (``lmtui --connect URL``), following ``GET /lmtui/v1/events``.

Both send the command structs of ``commands.py`` through one ``execute``, which refuses a
write when the client is read-only; the typed helpers below only build a struct and call it.
Commands raise ``CommandError`` with the engine's reason when they cannot be carried out.
"""

from __future__ import annotations

import abc
import contextlib
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from lmtui.core.events import Event
from lmtui.core.model import Snapshot
from lmtui.core.placement import PendingLoads, PoolSettings
from lmtui.core.rebalance import RebalancePlan
from lmtui.engine import commands as cmd
from lmtui.engine.codec import event_from_builtins, plan_from_builtins, snapshot_from_builtins
from lmtui.engine.commands import CommandError, Result, check_writable, to_body
from lmtui.engine.details import ModelDetails, details_from_builtins, model_details
from lmtui.engine.engine import Engine
from lmtui.engine.history import History, sample_from_builtins


@dataclass(frozen=True, slots=True)
class Update:
    """A snapshot and the events recorded since the previous update to this watcher."""

    snapshot: Snapshot
    events: list[Event] = field(default_factory=list)


class EngineClient(abc.ABC):
    #: Where the cluster description came from ("demo", a config path, a URL).
    source: str = ""
    read_only: bool = False

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The latest snapshot known to this client."""

    @abc.abstractmethod
    def recent_events(self, limit: int = 200) -> list[Event]:
        """The newest events, oldest first."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[Update]:
        """Yield an update whenever the cluster changes (bursts coalesce)."""

    def history(self) -> History:
        """The last minutes of requests/s, queues, tokens/s and memory (one point a second,
        ``engine/history.py``); empty for a client that has none."""
        h = getattr(self, "_history", None)
        if h is None:
            h = self._history = History()
        return h

    async def model_details(self, model: str) -> ModelDetails | None:
        """A model's settings and request percentiles, or None when the engine cannot say."""
        return None

    def placement_inputs(self) -> tuple[PoolSettings, PendingLoads]:
        """The pool settings and pending loads the engine places loads with, for the load
        dialog's preview (``core/fit.py``). A client that cannot see them (attached) gives
        the defaults: run-time pins still count, as the snapshot's instances carry them."""
        return PoolSettings(), frozenset()

    async def processes(self, node: str) -> list[dict[str, Any]]:
        """The server processes lmtui runs on ``node`` with their last log lines (only a
        ``llamacpp-pool`` node has any). Raises CommandError when they cannot be read."""
        raise CommandError(f"{node}: runs no processes of lmtui's", 404)

    # -- commands -------------------------------------------------------------------------

    @abc.abstractmethod
    async def strategy(self) -> str:
        """The routing strategy in force."""

    async def execute(self, command: cmd.Command) -> Result:
        """Carry out ``command`` on the engine (refused if it writes and this client is
        read-only)."""
        check_writable(command, read_only=self.read_only)
        return await self._send(command)

    @abc.abstractmethod
    async def _send(self, command: cmd.Command) -> Result:
        """Deliver a command to the engine and return what it did."""

    # Typed helpers: each builds one struct. A new command needs none of these.

    async def load(self, model: str, node: str | None = None) -> str:
        return (await self.execute(cmd.Load(model=model, node=node))).message

    async def unload(self, node: str, instance_id: str, *, force: bool = False) -> str:
        command = cmd.Unload(node=node, instance_id=instance_id, force=force)
        return (await self.execute(command)).message

    async def evict(self, node: str, instance_id: str) -> str:
        return (await self.execute(cmd.Evict(node=node, instance_id=instance_id))).message

    async def pin(self, model: str, pinned: bool = True) -> str:
        command = cmd.Pin(model=model) if pinned else cmd.Unpin(model=model)
        return (await self.execute(command)).message

    async def drain(self, node: str, drained: bool = True) -> str:
        command = cmd.Drain(node=node) if drained else cmd.Undrain(node=node)
        return (await self.execute(command)).message

    async def set_strategy(self, name: str) -> str:
        return (await self.execute(cmd.SetStrategy(strategy=name))).message

    async def rebalance(self, *, apply: bool = False) -> RebalancePlan:
        plan = (await self.execute(cmd.Rebalance(apply=apply))).plan
        assert plan is not None  # a rebalance always answers with its plan
        return plan


class InProcessClient(EngineClient):
    def __init__(self, engine: Engine, *, read_only: bool = False) -> None:
        self.engine = engine
        self.source = engine.source
        self.read_only = read_only

    def snapshot(self) -> Snapshot:
        return self.engine.store.snapshot

    def history(self) -> History:
        return self.engine.history

    def placement_inputs(self) -> tuple[PoolSettings, PendingLoads]:
        d = self.engine.dispatcher
        return d.settings.pool, d.pending_loads

    async def model_details(self, model: str) -> ModelDetails | None:
        e = self.engine
        return await model_details(
            e.config, e.request_log, model, e.clock(), pinned=e.controller.state.pinned
        )

    async def processes(self, node: str) -> list[dict[str, Any]]:
        from lmtui.backends.base import BackendError, NotSupported

        backend = self.engine.backends.get(node)
        if backend is None:
            raise CommandError(f"no node {node[:100]!r}", 404)
        try:
            return await backend.processes()
        except NotSupported as e:
            raise CommandError(f"{node}: {e}", 404) from e
        except BackendError as e:
            raise CommandError(f"{node}: {e}", 502) from e

    def recent_events(self, limit: int = 200) -> list[Event]:
        return list(self.engine.store.events)[-limit:]

    async def watch(self) -> AsyncIterator[Update]:
        pending: list[Event] = []
        unsubscribe = self.engine.store.subscribe(lambda _s, ev: pending.extend(ev))
        try:
            async for snap in self.engine.store.watch():
                events, pending[:] = list(pending), []
                yield Update(snap, events)
        finally:
            unsubscribe()

    async def strategy(self) -> str:
        return self.engine.controller.state.strategy.value

    async def _send(self, command: cmd.Command) -> Result:
        return await self.engine.controller.execute(command)


class HttpEngineClient(EngineClient):
    """Attach to a remote engine's control API (``lmtui --connect URL``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        read_only: bool = False,
        http: httpx.AsyncClient | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.source = self.url
        self.read_only = read_only
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(10.0), verify=tls_context(ca_file)
        )
        self._snap = Snapshot()
        self._strategy = ""
        self._events: deque[Event] = deque(maxlen=500)

    async def connect(self) -> None:
        """Read the state once, so the first screen is not empty. Raises CommandError."""
        state = await self._call("GET", "state")
        self._snap = snapshot_from_builtins(state["snapshot"])
        self._strategy = state.get("strategy") or ""
        self._events.extend(event_from_builtins(e) for e in state.get("events", []))
        await self._load_history()

    async def _load_history(self) -> None:
        """The engine's whole history window; an engine from before it kept one has none."""
        try:
            data = await self._call("GET", "history")
        except CommandError:
            return
        if isinstance(data, dict):
            self.history().load_builtins(data)

    async def aclose(self) -> None:
        await self.http.aclose()

    def snapshot(self) -> Snapshot:
        return self._snap

    def recent_events(self, limit: int = 200) -> list[Event]:
        return list(self._events)[-limit:]

    async def watch(self) -> AsyncIterator[Update]:
        pending: list[Event] = []
        async with self.http.stream(
            "GET", f"{self.url}/lmtui/v1/events", timeout=httpx.Timeout(10.0, read=None)
        ) as r:
            if r.status_code != 200:
                raise CommandError(
                    f"{self.url}: HTTP {r.status_code} on /lmtui/v1/events", r.status_code
                )
            kind = ""
            if self.history().last_at:
                # A re-watch: fill the gap the lost stream left (samples seen are skipped).
                await self._load_history()
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if kind == "event":
                        ev = event_from_builtins(data)
                        self._events.append(ev)
                        pending.append(ev)
                    elif kind == "sample":
                        sample = sample_from_builtins(data) if isinstance(data, dict) else None
                        if sample is not None:
                            self.history().add(sample)
                    elif kind == "snapshot":
                        self._snap = snapshot_from_builtins(data)
                        events, pending = pending, []
                        yield Update(self._snap, events)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = await self.http.request(method, f"{self.url}/lmtui/v1/{path}", json=body)
        except httpx.HTTPError as e:
            raise CommandError(f"cannot reach {self.url}: {e}", 503) from e
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code >= 400:
            msg = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise CommandError(msg or f"HTTP {r.status_code}", r.status_code)
        return data

    async def model_details(self, model: str) -> ModelDetails | None:
        try:
            data = await self._call("GET", f"models/{quote(model, safe='')}")
        except CommandError as e:
            if e.status == 404:
                return None  # an engine from before this endpoint
            raise
        return details_from_builtins(data) if isinstance(data, dict) else None

    async def processes(self, node: str) -> list[dict[str, Any]]:
        data = await self._call("GET", f"nodes/{quote(node, safe='')}/processes")
        procs = data.get("processes") if isinstance(data, dict) else None
        return [p for p in procs if isinstance(p, dict)] if isinstance(procs, list) else []

    async def strategy(self) -> str:
        with contextlib.suppress(CommandError):
            self._strategy = (await self._call("GET", "state")).get("strategy") or ""
        return self._strategy

    async def _send(self, command: cmd.Command) -> Result:
        data = await self._call("POST", command.name, to_body(command))
        plan = data.get("plan")
        return Result(
            str(data.get("message", "")), plan_from_builtins(plan) if plan is not None else None
        )


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """How ``--connect https://...`` checks the engine's certificate: against ``ca_file``
    (``--ca``: a private CA, a self-signed certificate or the engine's own) when given,
    else against the system's store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are honoured)
    and certifi's, which httpx would use alone. Host names are checked; TLS 1.2 or later."""
    if ca_file is not None:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise CommandError(f"--ca {ca_file}: cannot use it: {e}", 400) from None
        # A certificate in the file is trusted as it is, CA or not (Python 3.13's default):
        # the engine's own certificate file works too, as ``lmtui --web``'s sessions use
        # the router's ``tls_cert`` when its CA is not at hand.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        import certifi

        ctx = ssl.create_default_context()
        ctx.load_verify_locations(certifi.where())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


__all__ = ["EngineClient", "HttpEngineClient", "InProcessClient", "Update"]
