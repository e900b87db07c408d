"""Shared pieces of the fault suite: an engine over simulated nodes, four real clients, the
verdict on each request and the check that nothing leaked. (The fixtures are in
``conftest.py``; this module has a name of its own so every test file can import it.)

Every case of ``tests/faults`` drives lmtui's router over loopback with real clients (the
``openai`` client, ``httpx``, ``aiohttp`` and a raw socket read with ``h11``) while a node
misbehaves, then asserts two things:

- every request *ended*, within a bound, in a success or an explicit error: an HTTP error
  status with an error body, or a stream that ends with an error event and ``[DONE]``
  (:func:`verdict`); a hang, a reset with no answer, or a stream that simply stops are
  failures of the router, whatever the node did;
- afterwards nothing leaked (:func:`assert_no_leaks`): no in-flight count on any instance, no
  queue depth, no waiter, no pending load, no request the watchdog still watches, in the
  store and in ``/metrics`` alike, and nothing left running on the simulated nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import h11
import httpx
import openai
import pytest

from lmtui.config import Config, ModelConfig, NodeConfig, PollConfig, PoolConfig, RouterConfig
from lmtui.core.model import NodeKind
from lmtui.engine.engine import Engine
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

TESTS = Path(__file__).resolve().parents[1]
# The sshd and llama-server fixtures live with the e2e and real tiers; import them from there.
for sub in ("e2e", "real"):
    if str(TESTS / sub) not in sys.path:
        sys.path.insert(0, str(TESTS / sub))

MSG = [{"role": "user", "content": "Say hello in a few words."}]
#: No request of a fast case may take longer than this, whatever the fault (the router's
#: own bounds are set far below it in each case).
REQUEST_BOUND_S = 15.0


def lms(name: str, loaded: list[str], *, parallel: int = 4, **kw: Any) -> SimNodeSpec:
    """A simulated LM Studio 0.4 node with models m1 and m2 (4 GB each) on disk."""
    models = [SimModel("m1", 4.0), SimModel("m2", 4.0)]
    return SimNodeSpec(
        name, NodeKind.LMSTUDIO, models=models, loaded=loaded, parallel=parallel, **kw
    )


@asynccontextmanager
async def routed(
    specs: list[SimNodeSpec],
    *,
    time_scale: float = 0.01,
    router: RouterConfig | None = None,
    poll: PollConfig | None = None,
    models: list[ModelConfig] | None = None,
    node_overrides: dict[str, dict[str, Any]] | None = None,
    request_log: Path | None = None,
) -> AsyncIterator[tuple[SimCluster, Engine]]:
    """Simulated nodes and a real Engine serving HTTP on loopback, every node polled once.

    Each node's ``memory_gb`` in the config is its spec's (what the node claims); the
    ``memory_gb`` fault then makes the node's real memory smaller than that.
    """
    async with SimCluster(specs, time_scale=time_scale) as cluster:
        nodes = [
            NodeConfig(
                **{
                    "name": s.name,
                    "kind": s.kind,
                    "url": cluster.url(s.name),
                    "memory_gb": s.memory_gb,
                    **(node_overrides or {}).get(s.name, {}),
                }
            )
            for s in specs
        ]
        cfg = Config(
            nodes=nodes,
            poll=poll or PollConfig(interval=0.2, timeout=1.0),
            router=router or RouterConfig(queue_timeout=10.0, first_byte_timeout=3.0),
            models=models or [],
            pool=PoolConfig(reserved_gb=0, min_residency=0),
        )
        engine = Engine(cfg, listen="127.0.0.1:0", request_log=request_log)
        async with engine:
            await asyncio.gather(*(engine.poller.poll_once(n.name) for n in nodes))
            yield cluster, engine
            # Every case ends with the check that nothing leaked, before the engine stops.
            await assert_no_leaks(engine, cluster)


# --- the verdict on one request ------------------------------------------------------------


@dataclass
class Result:
    """How one request ended, as its client saw it."""

    #: "ok" (an answer), "error" (an explicit error) or "bad" (neither: a router bug).
    kind: str
    status: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def verdict(status: int, body: bytes, *, stream: bool) -> Result:
    """Judge a whole answer: an answer, an explicit error, or neither."""
    text = body.decode(errors="replace")
    if status >= 400:
        try:
            err = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return Result("bad", status, f"an error status without an error body: {text[:300]}")
        return Result("error", status, str(err.get("message", err))[:300])
    if not stream:
        try:
            doc = json.loads(body)
        except ValueError:
            return Result("bad", status, f"a {status} whose body is not JSON: {text[:300]}")
        if doc.get("choices") and doc["choices"][0].get("finish_reason"):
            return Result("ok", status)
        return Result("bad", status, f"an answer without a finished choice: {text[:300]}")
    # SSE as a client's parser reads it: an event is its data lines joined, up to a blank line.
    events: list[str] = []
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if lines:
                events.append("\n".join(lines))
            lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        events.append("\n".join(lines))
    if not events or events[-1] != "[DONE]":
        return Result("bad", status, f"a stream that does not end with [DONE]: {text[-300:]}")
    docs = []
    for e in events[:-1]:
        try:
            docs.append(json.loads(e))
        except ValueError:
            return Result("bad", status, f"an event that is not JSON (half an event?): {e[:300]}")
    errors = [d for d in docs if isinstance(d, dict) and "error" in d]
    if errors:
        return Result("error", status, str(errors[-1])[:300])
    finished = any(
        c.get("finish_reason") for d in docs if isinstance(d, dict) for c in d.get("choices", [])
    )
    if not finished:
        return Result("bad", status, f"a stream with [DONE] but no finish reason: {text[-300:]}")
    return Result("ok", status)


def chat_body(model: str = "m1", *, stream: bool = False, max_tokens: int = 8) -> dict[str, Any]:
    return {"model": model, "messages": MSG, "stream": stream, "max_tokens": max_tokens}


# --- four real clients ------------------------------------------------------------------------

Call = Callable[[str, dict[str, Any], float], Awaitable[Result]]


async def via_openai(base: str, body: dict[str, Any], bound: float = REQUEST_BOUND_S) -> Result:
    """The ``openai`` client, as the bot calls it (no retries of its own)."""
    async with openai.AsyncOpenAI(
        base_url=base + "/v1", api_key="x", max_retries=0, timeout=bound
    ) as c:
        kw = {k: v for k, v in body.items() if k != "stream"}
        try:
            if not body.get("stream"):
                r = await c.chat.completions.create(**kw)
                ok = bool(r.choices and r.choices[0].finish_reason)
                return Result("ok" if ok else "bad", 200, "" if ok else str(r))
            finish = None
            stream = await c.chat.completions.create(stream=True, **kw)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            # openai's SSE reader stops quietly at the end of the body, [DONE] or not: an
            # answer without a finish reason is a silently cut one.
            return Result("ok", 200) if finish else Result("bad", 200, "no finish reason")
        except openai.APIStatusError as e:
            return Result("error", e.status_code, str(e)[:300])
        except openai.APIConnectionError as e:
            return Result("bad", 0, f"connection error: {e!r}")
        except openai.APIError as e:  # an error event inside a stream
            return Result("error", 200, str(e)[:300])
        except ValueError as e:  # an event that is not JSON: half an event passed on
            return Result("bad", 200, f"the client could not parse the stream: {e!r}")


async def via_httpx(base: str, body: dict[str, Any], bound: float = REQUEST_BOUND_S) -> Result:
    async with httpx.AsyncClient(timeout=bound) as h:
        try:
            async with h.stream("POST", base + "/v1/chat/completions", json=body) as r:
                data = await r.aread()
        except httpx.TransportError as e:
            return Result("bad", 0, f"transport error: {e!r}")
        return verdict(r.status_code, data, stream=bool(body.get("stream")) and r.is_success)


async def via_aiohttp(base: str, body: dict[str, Any], bound: float = REQUEST_BOUND_S) -> Result:
    timeout = aiohttp.ClientTimeout(total=bound)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        try:
            async with s.post(base + "/v1/chat/completions", json=body) as r:
                data = await r.read()
        except aiohttp.ClientError as e:
            return Result("bad", 0, f"client error: {e!r}")
        return verdict(r.status, data, stream=bool(body.get("stream")) and r.status < 400)


async def via_socket(base: str, body: dict[str, Any], bound: float = REQUEST_BOUND_S) -> Result:
    """A raw socket: the bytes written by hand, the answer parsed by h11."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        await writer.drain()
        conn = h11.Connection(h11.CLIENT)
        # h11 needs to have seen the request it parses the answer to.
        conn.send(
            h11.Request(
                method="POST",
                target="/v1/chat/completions",
                headers=[("Host", "127.0.0.1"), ("Content-Length", str(len(payload)))],
            )
        )
        conn.send(h11.Data(data=payload))
        conn.send(h11.EndOfMessage())
        status, data = 0, b""
        async with asyncio.timeout(bound):
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    chunk = await reader.read(65536)
                    if not chunk:
                        why = f"connection closed mid-answer: {data[-200:]!r}"
                        return Result("bad", status, why)
                    conn.receive_data(chunk)
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                elif isinstance(ev, h11.Data):
                    data += bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    break
    except (ConnectionError, h11.ProtocolError) as e:
        return Result("bad", 0, f"socket error: {e!r}")
    finally:
        writer.close()
    return verdict(status, data, stream=bool(body.get("stream")) and status < 400)


CLIENTS: dict[str, Call] = {
    "openai": via_openai,
    "httpx": via_httpx,
    "aiohttp": via_aiohttp,
    "socket": via_socket,
}


async def burst_url(
    base: str, n: int, *, stream: bool | None = None, bound: float = REQUEST_BOUND_S, **kw: Any
) -> list[Result]:
    """``n`` concurrent requests to the router at ``base``, taking turns over the four
    clients (and, when ``stream`` is None, over streamed and plain); each must end within
    ``bound`` seconds."""
    names = list(CLIENTS)

    async def one(i: int) -> Result:
        s = (i % 2 == 1) if stream is None else stream
        call = CLIENTS[names[i % len(names)]]
        try:
            async with asyncio.timeout(bound):
                return await call(base, chat_body(stream=s, **kw), bound + 1)
        except TimeoutError:
            return Result("bad", 0, f"{names[i % len(names)]}: no end within {bound} s")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def burst(
    engine: Engine, n: int, *, stream: bool | None = None, bound: float = REQUEST_BOUND_S, **kw: Any
) -> list[Result]:
    """:func:`burst_url` to ``engine``'s router, and lmtui's own account checked: every
    request counted once, and as ``ok`` exactly when its client got an answer."""
    assert engine.router_url is not None
    before = outcomes(engine)
    results = await burst_url(engine.router_url, n, stream=stream, bound=bound, **kw)
    want = sum(before.values()) + n
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while sum(outcomes(engine).values()) < want:
                await asyncio.sleep(0.01)
    after = outcomes(engine)
    assert sum(after.values()) == want, (before, after)
    assert after.get("ok", 0) - before.get("ok", 0) == sum(r.ok for r in results), (
        before,
        after,
        results,
    )
    return results


def assert_all_ended(results: list[Result], *, ok: bool = False) -> None:
    """Every request ended in an answer or an explicit error (all answers when ``ok``)."""
    bad = [r for r in results if r.kind == "bad" or (ok and not r.ok)]
    assert not bad, bad


# --- nothing leaked -------------------------------------------------------------------------


def _gauges(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def leaks(engine: Engine, cluster: SimCluster | None = None) -> list[str]:
    """What is still held after every request ended (empty when nothing leaked)."""
    found: list[str] = []
    snap = engine.store.snapshot
    found += [f"in-flight {k}: {i.in_flight}" for k, i in snap.instances.items() if i.in_flight]
    found += [f"queue depth {m}: {d}" for m, d in snap.queue_depth.items() if d]
    d = engine.dispatcher
    found += [f"waiter {r}" for r in d._waiters]
    if len(d.queue):
        found.append(f"queue entries: {d.queue.depths()}")
    found += [f"pending load {k}" for k in d._pending]
    if engine.router is not None and engine.router._attempts:
        found.append(f"watched attempts: {[a.node for a in engine.router._attempts]}")
    body, _ctype = engine.metrics.render()
    text = body.decode()
    for name in ("lmtui_in_flight", "lmtui_queue_depth"):
        found += [f"{name}{k} = {v}" for k, v in _gauges(text, name).items() if v]
    if cluster is not None:
        found += [f"{n.spec.name} runs {n.in_flight()}" for n in cluster.nodes if n.in_flight()]
    return found


def outcomes(engine: Engine) -> dict[str, int]:
    """Finished requests by outcome, as ``lmtui_requests_total`` counts them."""
    body, _ctype = engine.metrics.render()
    counts: dict[str, int] = {}
    for labels, value in _gauges(body.decode(), "lmtui_requests_total").items():
        outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
        counts[outcome] = counts.get(outcome, 0) + int(value)
    return counts


async def assert_no_leaks(
    engine: Engine, cluster: SimCluster | None = None, timeout: float = 5.0
) -> None:
    """Wait (bounded) for the unwinding of cancelled work, then require nothing held."""
    try:
        async with asyncio.timeout(timeout):
            while leaks(engine, cluster):
                await asyncio.sleep(0.02)
    except TimeoutError:
        pass
    assert leaks(engine, cluster) == []


# --- the slow tiers' prerequisites --------------------------------------------------------------


def require(ok: bool, reason: str) -> None:
    """Skip without ``ok`` on a developer machine; fail under CI (``CI=true``)."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}. CI=true, so this is an error rather than a skip.")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
