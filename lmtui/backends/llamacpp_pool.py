"""``llamacpp-pool``: lmtui starts one ``llama-server -m FILE --port N`` per loaded model.

Each server is a small state machine (after llama-swap's ``process.go``)::

    (none) --load--> starting --/health 200--> ready --unload/evict/TTL--> stopping --> (none)
                        |  exited, port taken, start_timeout      | died
                        +--> killed, load fails with its log tail  +--> gone, log tail logged

``load`` polls the new server's ``/health`` itself every 50 ms, so a ready server is routable
at once rather than on the next poll. A ready server is read like a single-model
``llama-server`` (one :class:`LlamaCppBackend` per server, on its own keep-alive pool), and
appears as instance ``model@port`` with that server's URL, which the router sends to.

The node is healthy while its host is reachable (local: always; SSH: the connection works),
with or without servers. Processes are found again after a crash: on its first poll the
backend reads its pid files, adopts every server still running the same command line that
it still wants, stops the others and deletes stale files. A clean engine stop
(:meth:`aclose`) stops every server, so nothing is left behind; adoption covers crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import platformdirs

from lmtui.backends._common import Every
from lmtui.backends.base import (
    ALL_APIS,
    Backend,
    BackendBadResponse,
    BackendError,
    monotonic,
    poll_pool,
)
from lmtui.backends.llamacpp import LlamaCppBackend
from lmtui.backends.pool_process import ProcessHost
from lmtui.backends.procpool import CatalogueEntry, StartSpec, choose_port, identity, safe_name
from lmtui.backends.procshell import LocalShell, Shell, SshShell
from lmtui.backends.prom import sum_metrics
from lmtui.backends.ssh import SshHost
from lmtui.config import NodeConfig, PoolNodeConfig
from lmtui.core.model import (
    AvailableModel,
    InstanceObservation,
    InstanceState,
    NodeKind,
    NodeObservation,
)
from lmtui.http import Pool

log = logging.getLogger(__name__)

#: How often a starting server's /health is asked (the goal: < 100 ms added to a cold start;
#: a step of 25 ms costs ~40 requests in a 1 s start, each a few µs of the server's time).
HEALTH_EVERY_S = 0.025
#: A process seen alive this long after its start has bound its port (a server that cannot
#: bind exits within milliseconds), so a /health 200 after that is its own.
BOUND_AFTER_S = 0.1
#: How often a starting server is checked for having exited (a shell round trip each).
ALIVE_EVERY_S = 0.25
#: Seconds between re-reads of the models directory and table.
CATALOGUE_EVERY_S = 60.0
#: Default state directory on a remote host (``$HOME`` there).
REMOTE_STATE_DIR = "~/.local/state/lmtui/pool"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

State = Literal["starting", "ready", "stopping"]


@dataclass(eq=False)
class Server:
    """One managed ``llama-server`` process."""

    model: str
    path: str
    port: int
    url: str
    stem: str
    started: float
    reader: LlamaCppBackend
    state: State = "starting"
    pid: int | None = None
    #: True when found running at start-up rather than started by this lmtui.
    adopted: bool = False
    deadline: float = 0.0
    size_bytes: int | None = None

    @property
    def instance_id(self) -> str:
        return f"{self.model}@{self.port}"


class LlamaCppPoolBackend(Backend):
    """A host where lmtui runs ``llama-server`` processes itself, locally or over SSH."""

    kind = NodeKind.LLAMACPP_POOL
    supports_load = True
    #: Its servers are llama-server processes: the same APIs (see LlamaCppBackend.apis).
    apis = ALL_APIS

    def __init__(
        self, node: NodeConfig, pool: Pool, *, api_key: str | None, timeout: float = 3.0
    ) -> None:
        super().__init__(node, pool, api_key=api_key, timeout=timeout)
        if node.pool is None:
            raise ValueError(f"node {node.name!r}: a llamacpp-pool node needs [nodes.pool]")
        self.cfg: PoolNodeConfig = node.pool
        self.first_port, self.last_port = self.cfg.port_range()
        url_host = urlsplit(node.url).hostname or "127.0.0.1"
        self.host = self.cfg.host or ("127.0.0.1" if url_host in LOOPBACK else url_host)
        shell: Shell
        if node.ssh is not None:
            shell = SshShell(SshHost(node.ssh, default_host=url_host, node_name=node.name))
            state_dir = self.cfg.state_dir or REMOTE_STATE_DIR
        else:
            shell = LocalShell(timeout=max(10.0, timeout))
            # Backends may not import lmtui.config.paths (layering); this is its state_dir().
            state_dir = self.cfg.state_dir or str(platformdirs.user_state_path("lmtui") / "pool")
        self.procs = ProcessHost(shell, state_dir, node.name)
        self.servers: dict[int, Server] = {}  # by port
        self.catalogue: dict[str, CatalogueEntry] = {}
        self._catalogue_refresh = Every(CATALOGUE_EVERY_S)
        self._adopted = False
        self._closing: set[asyncio.Task[None]] = set()
        self._poll_lock = asyncio.Lock()

    # --- polling ------------------------------------------------------------------------

    async def poll(self, now: float) -> NodeObservation:
        """Read the host and every server. Polls never overlap (the loop's and a refresh
        after a load would otherwise both adopt, or both judge the same server)."""
        async with self._poll_lock:
            return await self._poll(now)

    async def _poll(self, now: float) -> NodeObservation:
        started = monotonic()
        if self._catalogue_refresh.due(now) or not self._adopted:
            await self._read_catalogue()
            self._catalogue_refresh.done(now)
        if not self._adopted:
            await self._adopt()
            self._adopted = True
        # Servers lmtui watches here (a starting one is its load's business); the ps that
        # checks them is one round trip that also proves the host answers, servers or not.
        watched = [
            (s, s.pid)
            for s in self.servers.values()
            if s.pid is not None and (s.state == "ready" or (s.adopted and s.state == "starting"))
        ]
        running = await self.procs.running(pid for _, pid in watched)
        for srv, pid in watched:
            cmd = running.get(pid)
            if srv.pid == pid and (cmd is None or identity(srv.path, srv.port) not in cmd):
                await self._lost(srv)
        seen = await asyncio.gather(*(self._observe(s, now) for s in self.servers.values()))
        instances = tuple(i for i, _ in seen)
        parts = [o.metrics for _, o in seen if o is not None and o.metrics is not None]
        version = next((o.version for _, o in seen if o is not None and o.version), None)
        return NodeObservation(
            node=self.name,
            at=now,
            latency_s=monotonic() - started,
            instances=instances,
            available=tuple(
                AvailableModel(key=e.name, size_bytes=e.size_bytes) for e in self.catalogue.values()
            ),
            metrics=sum_metrics(parts) if parts else None,
            version=version,
            slots_default=self.node.slots,
        )

    async def _observe(
        self, srv: Server, now: float
    ) -> tuple[InstanceObservation, NodeObservation | None]:
        base = InstanceObservation(
            model=srv.model,
            instance_id=srv.instance_id,
            size_bytes=srv.size_bytes,
            slots_total=self.node.slots,
            url=srv.url,
        )
        if srv.state == "stopping":
            return replace(base, state=InstanceState.UNLOADING), None
        if srv.state == "starting":
            if srv.adopted:
                await self._check_adopted(srv)
            if srv.state == "starting":
                return replace(base, state=InstanceState.LOADING), None
        try:
            obs = await srv.reader.poll(now)
        except BackendError as e:
            log.debug("%s: reading %s failed: %s", self.name, srv.instance_id, e)
            return base, None
        inst = (obs.instances or (base,))[0]
        return replace(
            inst,
            model=srv.model,
            instance_id=srv.instance_id,
            url=srv.url,
            size_bytes=inst.size_bytes or srv.size_bytes,
        ), obs

    async def _read_catalogue(self) -> None:
        found, missing = await self.procs.catalogue(self.cfg.models_dir, self.cfg.models)
        for m in missing:
            log.warning("%s: model file not found: %s", self.name, m)
        self.catalogue = found

    # --- load / unload ------------------------------------------------------------------

    async def load(
        self, model: str, *, context_length: int | None = None, ttl: float | None = None
    ) -> str:
        """Start a server for ``model`` on a free port; return once ``/health`` says 200."""
        entry = self.catalogue.get(model)
        if entry is None:
            await self._read_catalogue()
            entry = self.catalogue.get(model)
        if entry is None:
            raise BackendBadResponse(f"{self.name}: no model {model!r} in its models_dir/models")
        srv = await self._reserve_port(entry)
        t0 = monotonic()
        try:
            spec = StartSpec(
                node=self.name,
                model=model,
                path=entry.path,
                port=srv.port,
                host=self.host,
                binary=self.cfg.binary,
                args=tuple(self.cfg.args),
                state_dir=self.procs.state_dir,
                marker=uuid.uuid4().hex,
                started=srv.started,
            )
            srv.pid = await self.procs.start(spec, self.api_key)
            await self._wait_ready(srv, t0 + self.cfg.start_timeout)
        except BaseException as e:
            why = str(e) if isinstance(e, BackendError | ValueError) else type(e).__name__
            tail = await asyncio.shield(self._fail(srv))
            if isinstance(e, asyncio.CancelledError):
                raise
            lines = "\n".join(tail) or "(the log is empty)"
            raise BackendBadResponse(
                f"{self.name}: {model} did not start on port {srv.port}: {why}; "
                f"last lines of its log:\n{lines}"
            ) from None
        srv.state = "ready"
        log.info("%s: %s ready on port %d in %.2f s", self.name, model, srv.port, monotonic() - t0)
        return srv.instance_id

    async def unload(self, model: str, instance_id: str) -> None:
        """Stop the server behind ``instance_id`` (SIGTERM, SIGKILL after stop_grace)."""
        srv = next((s for s in self.servers.values() if s.instance_id == instance_id), None)
        if srv is None:
            return  # already gone
        await self._stop(srv)

    async def aclose(self) -> None:
        """Stop every server (a clean engine stop leaves nothing behind), then disconnect."""
        await asyncio.gather(
            *(self._stop(s) for s in list(self.servers.values())), return_exceptions=True
        )
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.procs.close()

    async def _reserve_port(self, entry: CatalogueEntry) -> Server:
        taken: set[int] = set()
        while True:
            port = choose_port(self.first_port, self.last_port, taken | set(self.servers))
            if port is None:
                raise BackendBadResponse(
                    f"{self.name}: every port of {self.cfg.ports} is in use; widen ports"
                )
            srv = self._server(entry, port, time.time())
            # Reserved before any await, so concurrent loads never pick the same port.
            self.servers[port] = srv
            if not await self._listening(port):
                return srv
            self._forget(srv)
            taken.add(port)  # another program's: skip it

    def _server(self, entry: CatalogueEntry, port: int, started: float) -> Server:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{shown}:{port}"
        node = msgspec.structs.replace(self.node, kind=NodeKind.LLAMACPP, url=url, pool=None)
        reader = LlamaCppBackend(
            node,
            poll_pool(url, connect_timeout=self.timeout),
            api_key=self.api_key,
            timeout=self.timeout,
        )
        return Server(
            model=entry.name,
            path=entry.path,
            port=port,
            url=url,
            stem=f"{safe_name(self.name)}-{port}",
            started=started,
            reader=reader,
            size_bytes=entry.size_bytes,
        )

    async def _listening(self, port: int) -> bool:
        try:
            async with asyncio.timeout(min(1.0, self.timeout)):
                _, writer = await asyncio.open_connection(self.host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _wait_ready(self, srv: Server, deadline: float) -> None:
        started = checked = monotonic()
        bound = False  # seen alive long enough after its start to hold its port
        while True:
            if await self._healthy(srv):
                # Another program may answer on that port if ours could not bind it; once
                # ours was seen alive well after its start, the port is its own.
                if not bound and not await self._alive(srv):
                    raise BackendBadResponse("port taken by another program")
                return
            now = monotonic()
            if now >= deadline:
                raise BackendBadResponse(f"not ready within {self.cfg.start_timeout:g} s")
            if now - checked >= ALIVE_EVERY_S:
                checked = now
                if not await self._alive(srv):
                    raise BackendBadResponse("the process exited")
                bound = checked - started >= BOUND_AFTER_S
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _healthy(self, srv: Server) -> bool:
        try:
            r = await srv.reader.request("GET", "/health", timeout=1.0)
        except BackendError:
            return False
        return r.status_code == 200

    async def _alive(self, srv: Server) -> bool:
        return await self.procs.alive(srv.pid, srv.path, srv.port)

    async def _fail(self, srv: Server) -> tuple[str, ...]:
        """A start failed: read the log tail, kill what is left, forget the server."""
        tail: tuple[str, ...] = ()
        with contextlib.suppress(BackendError):
            tail = await self.procs.tail(srv.stem)
            if srv.pid is None:  # the start's answer was lost: find it by its command line
                srv.pid = await self.procs.find(srv.path, srv.port)
        await self._stop(srv, grace=0.0)
        return tail

    async def _stop(self, srv: Server, *, grace: float | None = None) -> None:
        srv.state = "stopping"
        try:
            if srv.pid is not None:
                wait = self.cfg.stop_grace if grace is None else grace
                if not await self.procs.stop(srv.pid, srv.path, srv.port, wait) and grace is None:
                    log.warning("%s: %s ignored SIGTERM: killed", self.name, srv.instance_id)
            await self.procs.forget(srv.stem)
        except BackendError as e:
            log.warning("%s: stopping %s: %s", self.name, srv.instance_id, e)
        finally:
            self._forget(srv)

    def _forget(self, srv: Server) -> None:
        if self.servers.get(srv.port) is srv:
            del self.servers[srv.port]
        # The reader goes with the server (closing its pool twice does no harm).
        task = asyncio.get_running_loop().create_task(srv.reader.pool.close())
        self._closing.add(task)  # held until done: a loose task may be collected
        task.add_done_callback(self._closing.discard)

    async def _lost(self, srv: Server) -> None:
        """A ready server died by itself: log why (its last lines) and forget it."""
        try:
            tail = await self.procs.tail(srv.stem)
            await self.procs.forget(srv.stem)
        except BackendError:
            tail = ()
        log.warning(
            "%s: %s (pid %s) exited; last lines of its log:\n%s",
            self.name,
            srv.instance_id,
            srv.pid,
            "\n".join(tail),
        )
        self._forget(srv)

    # --- adoption after a crash -----------------------------------------------------------

    async def _adopt(self) -> None:
        files = await self.procs.pid_files()
        running = await self.procs.running(pf.pid for _, pf in files if pf is not None)
        for name, pf in files:
            if pf is not None and pf.node != self.name:
                continue  # another node whose name makes the same file name: not ours
            cmd = running.get(pf.pid) if pf is not None else None
            if pf is None or cmd is None or identity(pf.path, pf.port) not in cmd:
                log.info("%s: removing stale pid file %s", self.name, name)
                await self.procs.remove(name)
                continue
            entry = self.catalogue.get(pf.model)
            srv = self._server(
                entry or CatalogueEntry(pf.model, pf.path, None), pf.port, pf.started
            )
            srv.pid, srv.adopted = pf.pid, True
            srv.deadline = monotonic() + self.cfg.start_timeout
            self.servers[pf.port] = srv
            in_range = self.first_port <= pf.port <= self.last_port
            if entry is None or entry.path != pf.path or not in_range:
                log.info("%s: stopping %s, which it no longer serves", self.name, srv.instance_id)
                await self._stop(srv)
            else:
                log.info("%s: adopted %s (pid %d)", self.name, srv.instance_id, pf.pid)
                await self._check_adopted(srv)

    async def _check_adopted(self, srv: Server) -> None:
        if await self._healthy(srv):
            srv.state = "ready"
        elif monotonic() > srv.deadline:
            log.warning("%s: adopted %s never became ready", self.name, srv.instance_id)
            await self._stop(srv)

    # --- the control API's view -----------------------------------------------------------

    async def processes(self) -> list[dict[str, Any]]:
        """Every managed server: model, port, pid, state, start time, URL, last log lines."""
        servers = list(self.servers.values())
        tails = await asyncio.gather(
            *(self.procs.tail(s.stem) for s in servers), return_exceptions=True
        )
        return [
            {
                "instance_id": s.instance_id,
                "model": s.model,
                "path": s.path,
                "port": s.port,
                "pid": s.pid,
                "state": s.state,
                "adopted": s.adopted,
                "started": s.started,
                "url": s.url,
                "last_lines": list(t) if isinstance(t, tuple) else [],
            }
            for s, t in zip(servers, tails, strict=True)
        ]
