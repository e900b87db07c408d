"""The control API under ``/lmtui/v1``: the state, a live event stream, one endpoint per command.

    GET  /lmtui/v1/state                  the snapshot as JSON (+ strategy, recent events)
    GET  /lmtui/v1/events                 SSE: "snapshot" and "event" messages as they happen,
                                          and a "sample" of the metric history each second
    GET  /lmtui/v1/history                the last minutes of requests/s, queues, tokens/s
                                          and memory, per node, model and the cluster
    GET  /lmtui/v1/openapi.json           the command endpoints, described from their structs
    GET  /lmtui/v1/models/{model}         a model's settings and request percentiles
    GET  /lmtui/v1/nodes/{node}/processes a llamacpp-pool node's servers and their log tails
    POST /lmtui/v1/<command>              one per struct in ``commands.py``: load, unload,
                                          evict, pin, unpin, drain, undrain, strategy,
                                          rebalance; the body is the struct's fields as JSON

A command's body is decoded straight into its struct, so a wrong or missing field is a 400
that names it, and the endpoint list cannot drift from what ``Controller.execute`` takes.

Protected by its own admin token (``[router] admin_token_env``); without one it answers only
when lmtui listens on a loopback address.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from lmtui.backends.base import BackendError, NotSupported
from lmtui.core.events import Event
from lmtui.engine.codec import encode, event_to_builtins, plan_to_builtins, snapshot_to_builtins
from lmtui.engine.commands import COMMANDS, Command, CommandError, openapi
from lmtui.engine.control import Controller
from lmtui.engine.details import details_to_builtins, model_details
from lmtui.engine.errors import error_response
from lmtui.engine.guard import AuthFailures
from lmtui.engine.history import History, Sample, sample_to_builtins
from lmtui.engine.reqlog import RequestLog
from lmtui.engine.store import Store

PREFIX = "/lmtui/v1"
#: Events one event-stream watcher may have waiting to be written.
PENDING_EVENTS = 2000
#: History samples (one a second) one watcher may have waiting.
PENDING_SAMPLES = 60
#: Longest model name the model endpoint takes.
MAX_NAME = 512


class ControlApi:
    def __init__(
        self,
        controller: Controller,
        store: Store,
        *,
        token: str | None,
        enabled: bool,
        source: str = "",
        auth_failures: AuthFailures | None = None,
        history: History | None = None,
        request_log: RequestLog | None = None,
    ) -> None:
        #: Where the model endpoint reads its requests' percentiles (None: no log).
        self.request_log = request_log
        self.controller = controller
        #: The metric history an attached dashboard draws its sparklines from.
        self.history = history or History()
        self.auth_failures = auth_failures or AuthFailures()
        self.store = store
        self.token = token.encode() if token else None
        self.enabled = enabled
        #: Where the cluster description came from, for an attached UI's header.
        self.source = source
        self._openapi = encode(openapi(PREFIX))
        #: Set when lmtui stops: every event stream ends at once, so a watcher (an attached
        #: dashboard) does not hold the shutdown for the whole drain bound.
        self._closing = False
        self._wakes: set[asyncio.Event] = set()

    def close(self) -> None:
        """End every event stream now (lmtui is stopping); new ones end at once too."""
        self._closing = True
        for wake in self._wakes:
            wake.set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/state", self.state)
        app.router.add_get(f"{PREFIX}/events", self.events)
        app.router.add_get(f"{PREFIX}/history", self.get_history)
        app.router.add_get(f"{PREFIX}/openapi.json", self.describe)
        app.router.add_get(f"{PREFIX}/nodes/{{node}}/processes", self.processes)
        app.router.add_get(f"{PREFIX}/models/{{model}}", self.model)
        for name, kind in COMMANDS.items():
            app.router.add_post(f"{PREFIX}/{name}", self._command(kind))

    def _denied(self, request: web.Request) -> web.Response | None:
        if not self.enabled:
            return error_response(
                403,
                "the control API needs an admin token when lmtui "
                "listens beyond loopback: set [router] admin_token_env",
                "permission_error",
                "control_api_disabled",
            )
        if self.token is None:
            return None
        auth = request.headers.get("Authorization", "")
        given = auth[7:].encode() if auth[:7].lower() == "bearer " else b""
        if hmac.compare_digest(given, self.token):
            return None
        self.auth_failures.record(request.remote, "control")
        return error_response(
            401, "missing or wrong admin token", "invalid_request_error", "invalid_admin_token"
        )

    def _command(self, kind: type[Command]) -> Callable[[web.Request], Awaitable[web.Response]]:
        decoder = msgspec.json.Decoder(kind)

        async def handle(request: web.Request) -> web.Response:
            denied = self._denied(request)
            if denied is not None:
                return denied
            # The body has arrived within [router] body_timeout already: the engine's
            # middleware reads every body on aiohttp's side under that bound (408 past it).
            raw = await request.read()
            try:
                command = decoder.decode(raw if raw.strip() else b"{}")
            except msgspec.ValidationError as e:
                return error_response(400, f"{kind.name}: {e}", "invalid_request_error")
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
                # Bad UTF-8 in a string and nesting past the stack are the client's, too.
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                return error_response(400, f"invalid JSON: {why}", "invalid_request_error")
            try:
                result = await self.controller.execute(command)
            except CommandError as e:
                return error_response(e.status, e.message, "invalid_request_error")
            payload: dict[str, Any] = {"ok": True, "message": result.message}
            if result.plan is not None:
                payload["plan"] = plan_to_builtins(result.plan)
                payload["applied"] = command.writes
            return web.Response(body=encode(payload), content_type="application/json")

        return handle

    async def describe(self, request: web.Request) -> web.Response:
        """The OpenAPI description of the command endpoints."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        return web.Response(body=self._openapi, content_type="application/json")

    async def state(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        return web.Response(body=encode(self._state()), content_type="application/json")

    def _state(self) -> dict[str, Any]:
        store = self.store
        return {
            "snapshot": snapshot_to_builtins(store.snapshot),
            "strategy": self.controller.state.strategy.value,
            "source": self.source,
            "events": [event_to_builtins(e) for e in list(store.events)[-200:]],
        }

    async def get_history(self, request: web.Request) -> web.Response:
        """The whole metric history window (``engine/history.py``)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        return web.Response(
            body=encode(self.history.to_builtins()), content_type="application/json"
        )

    async def model(self, request: web.Request) -> web.Response:
        """A model's settings and its last hour's queue wait and TTFT percentiles."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        name = request.match_info["model"]
        if len(name) > MAX_NAME:
            return error_response(
                400, f"a model name is at most {MAX_NAME} characters", "invalid_request_error"
            )
        c = self.controller
        details = await model_details(
            c.config, self.request_log, name, c.clock(), pinned=c.state.pinned
        )
        return web.Response(
            body=encode(details_to_builtins(details)), content_type="application/json"
        )

    async def processes(self, request: web.Request) -> web.Response:
        """The server processes a node runs itself (only ``llamacpp-pool`` nodes do)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        name = request.match_info["node"]
        backend = self.controller.dispatcher.backends.get(name)
        if backend is None:
            return error_response(404, f"no node {name[:100]!r}", "invalid_request_error")
        try:
            procs = await backend.processes()
        except NotSupported as e:
            return error_response(404, f"{name}: {e}", "invalid_request_error")
        except BackendError as e:
            return error_response(502, f"{name}: {e}", "server_error")
        return web.Response(
            body=encode({"node": name, "processes": procs}), content_type="application/json"
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """SSE: a ``snapshot`` message at once and on every change (coalesced), and one
        ``event`` message per event, so an attached UI sees exactly what a local one sees."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        # Bounded: a watcher that reads slowly loses its oldest events, not lmtui's memory.
        pending: deque[Event] = deque(maxlen=PENDING_EVENTS)
        # One a second; a watcher that falls minutes behind loses the oldest.
        samples: deque[Sample] = deque(maxlen=PENDING_SAMPLES)
        wake = asyncio.Event()

        def on_change(_snap: object, events: list[Event]) -> None:
            pending.extend(events)
            wake.set()

        def on_sample(sample: Sample) -> None:
            samples.append(sample)
            wake.set()

        store = self.store
        unsubscribe = store.subscribe(on_change)
        unsubscribe_history = self.history.subscribe(on_sample)
        self._wakes.add(wake)
        try:
            seen = -1
            while not self._closing:
                # Cleared before the writes: an event that arrives while they are under way
                # wakes the next round at once instead of waiting for the keep-alive.
                wake.clear()
                batch = list(pending)
                pending.clear()
                for e in batch:
                    await resp.write(
                        b"event: event\ndata: " + encode(event_to_builtins(e)) + b"\n\n"
                    )
                while samples:
                    data = encode(sample_to_builtins(samples.popleft()))
                    await resp.write(b"event: sample\ndata: " + data + b"\n\n")
                snap = store.snapshot
                if snap.version != seen:
                    seen = snap.version
                    await resp.write(
                        b"event: snapshot\ndata: " + encode(snapshot_to_builtins(snap)) + b"\n\n"
                    )
                try:
                    async with asyncio.timeout(15):
                        await wake.wait()
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                if self._closing:
                    break
                # Coalesce bursts: at most ~20 snapshot messages a second per watcher.
                await asyncio.sleep(0.05)
            await resp.write_eof()  # lmtui is stopping: the stream ends cleanly
        except ConnectionResetError:
            pass  # the watcher left; a cancellation (lmtui stopping) propagates
        finally:
            self._wakes.discard(wake)
            unsubscribe()
            unsubscribe_history()
        return resp
