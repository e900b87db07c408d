"""One simulated node: a real aiohttp server on 127.0.0.1 speaking its kind's API.

Faults are applied by one middleware in front of every route, in the order a real failure
would show them: refused/dropped connection, no answer (every request, or only POSTs), slow
answer, 500, garbled JSON; a stream cut or truncated mid-way is the kinds' ``write_chunk``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from aiohttp import web

from lmtui.sim.faults import Faults
from lmtui.sim.kinds import KindServer, SimHTTPError, server_class
from lmtui.sim.kinds.base import StreamDropped, StreamTruncated, json_response
from lmtui.sim.spec import SimNodeSpec
from lmtui.sim.state import Job, SimState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What a node under ``malformed_json`` sends instead of its JSON: cut off mid-object.
MALFORMED_BODY = b'{"models": [{"id": "trunc'
#: Seconds aiohttp waits for running handlers when the node stops; hung requests are
#: cancelled after that, so stopping never waits for a fault.
SHUTDOWN_TIMEOUT_S = 0.2


class SimNode:
    """A running simulated server. Create, ``await start()``, use ``url``, ``await stop()``."""

    def __init__(self, spec: SimNodeSpec, *, time_scale: float = 1.0, seed: int = 0) -> None:
        self.spec = spec
        self.faults = Faults()
        self.time_scale = time_scale
        # Per-node stream so a node behaves the same whatever its neighbours do.
        self.rng = random.Random(f"{seed}:{spec.name}")
        self.state = SimState(spec, time_scale=time_scale, rng=self.rng, faults=self.faults)
        self.server: KindServer = server_class(spec.kind)(spec, self.faults, self.state, self.rng)
        self.port = spec.port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def __repr__(self) -> str:
        return f"<SimNode {self.spec.name} {self.spec.kind} {self.url or 'stopped'}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 (``spec.port`` or a free port) and load the start models."""
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._middleware])
        self.server.add_routes(app)
        # handler_cancellation: a client that hangs up cancels its request, as with the real
        # servers (llama.cpp and Ollama stop generating for a closed connection).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await self._runner.setup()
        await self._open()
        self.state.start()
        await self.server.on_start()

    async def stop(self) -> None:
        """Close the socket, drop every connection and stop the timers."""
        if self._runner is None:
            return
        self._drop_connections()
        await self._runner.cleanup()
        self._runner = None
        self._site = None
        await self.state.stop()

    async def set_down(self, down: bool) -> None:
        """Close (refuse connections) or reopen the listening socket, on the same port."""
        self.faults.down = down
        if self._runner is None:
            return
        if down and self._site is not None:
            await self._site.stop()
            self._site = None
            # A dead server also drops the connections clients keep alive. Give the loop a
            # moment to really close the sockets, so a client's pooled connection is seen
            # as closed (and it reconnects, to be refused) rather than half-open.
            self._drop_connections()
            for _ in range(20):
                await asyncio.sleep(0.005)
                if not self._runner.server or not self._runner.server.connections:
                    break
        elif not down and self._site is None:
            await self._open()

    async def _open(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            self.port = int(self._runner.addresses[-1][1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _drop_connections(self) -> None:
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()

    # --- introspection (tests, demo) ----------------------------------------------------

    def loaded_models(self) -> list[str]:
        """Keys of fully loaded models, sorted (one entry per key)."""
        return sorted(
            {i.key for i in self.state.instances.values() if i.state == "loaded" and not i.stopping}
        )

    def loading_models(self) -> list[str]:
        return sorted({i.key for i in self.state.instances.values() if i.state == "loading"})

    def memory_used_gb(self) -> float:
        """GB held by loaded and loading instances."""
        return self.state.memory_used_gb()

    def in_flight(self) -> int:
        """Requests inside the server: running or waiting for a slot."""
        return self.state.in_flight()

    @property
    def records(self) -> list[Job]:
        """Finished requests in completion order, with arrival/start/finish times."""
        return list(self.state.records)

    # --- the fault and auth middleware --------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        f = self.faults
        if f.down:
            # Set directly rather than through set_down: drop the connection, no answer.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        # Faults is a plain dataclass that tests flip directly, so a hung request polls
        # the flag (20 times a second, only while hanging) to notice when it is cleared.
        while f.hang or (f.post_hang and request.method == "POST"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if f.slow_s > 0:
            await asyncio.sleep(f.slow_s)
        try:
            if (f.error_rate > 0 and self.rng.random() < f.error_rate) or (
                f.post_errors and request.method == "POST"
            ):
                raise SimHTTPError(500, self.server.error_body(500, "simulated server error"))
            self._check_auth(request)
            self.server.precheck(request)
            resp = await handler(request)
        except SimHTTPError as e:
            resp = json_response(e.body, e.status)
        except StreamDropped:
            raise asyncio.CancelledError from None
        except StreamTruncated as e:
            return e.response  # already ended: nothing more goes out
        except web.HTTPException as e:
            if e.status in (404, 405):
                body = self.server.route_not_found(request.method, request.path, e.status)
                resp = json_response(body, self.server.unknown_route_status or e.status)
            else:
                raise
        if (
            f.malformed_json
            and isinstance(resp, web.Response)
            and resp.content_type == "application/json"
        ):
            resp = web.Response(body=MALFORMED_BODY, status=200, content_type="application/json")
        return resp

    def _check_auth(self, request: web.Request) -> None:
        key = self.spec.api_key
        if not key or request.path in self.server.public_paths:
            return
        if request.headers.get("Authorization", "") != f"Bearer {key}":
            raise self.server.auth_error()
