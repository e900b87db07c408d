"""The control API under ``/lmtui/v1``: the state, a live event stream, one endpoint per command.

    GET  /lmtui/v1/state                  the snapshot as JSON (+ strategy, recent events)
    GET  /lmtui/v1/events                 SSE: "snapshot" and "event" messages as they happen
    POST /lmtui/v1/load      {model, node?}
    POST /lmtui/v1/unload    {node, instance_id, force?}
    POST /lmtui/v1/evict     {node, instance_id}
    POST /lmtui/v1/pin       {model}        /unpin {model}
    POST /lmtui/v1/drain     {node}         /undrain {node}
    POST /lmtui/v1/strategy  {strategy}
    POST /lmtui/v1/rebalance {apply?: bool} the plan (applied only when apply is true)
    GET  /lmtui/v1/nodes/{node}/processes   a llamacpp-pool node's servers and their log tails

Protected by its own admin token (``[router] admin_token_env``); without one it answers only
when lmtui listens on a loopback address.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from lmtui.backends.base import BackendError, NotSupported
from lmtui.core.events import Event
from lmtui.engine.codec import encode, event_to_builtins, plan_to_builtins, snapshot_to_builtins
from lmtui.engine.control import CommandError
from lmtui.engine.errors import error_response

if TYPE_CHECKING:
    from lmtui.engine.engine import Engine

PREFIX = "/lmtui/v1"
#: Events one event-stream watcher may have waiting to be written.
PENDING_EVENTS = 2000
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlApi:
    def __init__(self, engine: Engine, token: str | None, *, enabled: bool) -> None:
        self.engine = engine
        self.token = token.encode() if token else None
        self.enabled = enabled

    def add_routes(self, app: web.Application) -> None:
        c = self.engine.controller
        app.router.add_get(f"{PREFIX}/state", self.state)
        app.router.add_get(f"{PREFIX}/events", self.events)
        app.router.add_get(f"{PREFIX}/nodes/{{node}}/processes", self.processes)
        commands: dict[str, Handler] = {
            "load": lambda b: c.load(_str(b, "model"), _opt(b, "node")),
            "unload": lambda b: c.unload(
                _str(b, "node"), _str(b, "instance_id"), force=bool(b.get("force", False))
            ),
            "evict": lambda b: c.evict(_str(b, "node"), _str(b, "instance_id")),
            "pin": lambda b: c.pin(_str(b, "model"), True),
            "unpin": lambda b: c.pin(_str(b, "model"), False),
            "drain": lambda b: c.drain(_str(b, "node"), True),
            "undrain": lambda b: c.drain(_str(b, "node"), False),
            "strategy": lambda b: c.set_strategy(_str(b, "strategy")),
            "rebalance": self._rebalance,
        }
        for name, fn in commands.items():
            app.router.add_post(f"{PREFIX}/{name}", self._command(fn))

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
        return error_response(
            401, "missing or wrong admin token", "invalid_request_error", "invalid_admin_token"
        )

    def _command(self, fn: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            denied = self._denied(request)
            if denied is not None:
                return denied
            try:
                raw = await request.read()
                body = msgspec.json.decode(raw) if raw.strip() else {}
                if not isinstance(body, dict):
                    raise CommandError("the body must be a JSON object", 400)
                result = await fn(body)
            except msgspec.DecodeError as e:
                return error_response(400, f"invalid JSON: {e}", "invalid_request_error")
            except CommandError as e:
                return error_response(e.status, e.message, "invalid_request_error")
            payload = result if isinstance(result, dict) else {"message": result}
            return web.Response(
                body=encode({"ok": True, **payload}), content_type="application/json"
            )

        return handle

    async def _rebalance(self, body: dict[str, Any]) -> dict[str, Any]:
        plan = await self.engine.controller.rebalance(apply=bool(body.get("apply", False)))
        return {"plan": plan_to_builtins(plan), "applied": bool(body.get("apply", False))}

    async def state(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        return web.Response(body=encode(self._state()), content_type="application/json")

    def _state(self) -> dict[str, Any]:
        eng = self.engine
        return {
            "snapshot": snapshot_to_builtins(eng.store.snapshot),
            "strategy": eng.dispatcher.strategy.value if eng.dispatcher else None,
            "source": eng.source,
            "events": [event_to_builtins(e) for e in list(eng.store.events)[-200:]],
        }

    async def processes(self, request: web.Request) -> web.Response:
        """The server processes a node runs itself (only ``llamacpp-pool`` nodes do)."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        name = request.match_info["node"]
        backend = self.engine.backends.get(name)
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
        wake = asyncio.Event()

        def on_change(_snap: object, events: list[Event]) -> None:
            pending.extend(events)
            wake.set()

        store = self.engine.store
        unsubscribe = store.subscribe(on_change)
        try:
            seen = -1
            while True:
                # Cleared before the writes: an event that arrives while they are under way
                # wakes the next round at once instead of waiting for the keep-alive.
                wake.clear()
                batch = list(pending)
                pending.clear()
                for e in batch:
                    await resp.write(
                        b"event: event\ndata: " + encode(event_to_builtins(e)) + b"\n\n"
                    )
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
                # Coalesce bursts: at most ~20 snapshot messages a second per watcher.
                await asyncio.sleep(0.05)
        except ConnectionResetError:
            pass  # the watcher left; a cancellation (lmtui stopping) propagates
        finally:
            unsubscribe()
        return resp


def _str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise CommandError(f"missing or empty string field {key!r}", 400)
    return v


def _opt(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise CommandError(f"field {key!r} must be a string", 400)
    return v
