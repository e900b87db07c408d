"""A modest, bounded stream of chat requests to simulated nodes, so the demo shows activity.

Requests go only to the cluster's own loopback URLs. Arrivals are Poisson at ``rate_per_s``
(real seconds); at most ``max_in_flight`` run at once and arrivals beyond that are skipped,
so the generator can never pile up work.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp

from lmtui.core.model import NodeKind
from lmtui.sim.cluster import SimCluster
from lmtui.sim.node import SimNode

_PROMPTS = (
    "Summarise the last deployment log in three bullet points.",
    "Write a haiku about memory bandwidth.",
    "Explain continuous batching to a new engineer.",
    "Translate 'the queue is empty' into French and German.",
    "List five edge cases for a rate limiter.",
    "Draft a short reply thanking a customer for the bug report.",
)


class TrafficGenerator:
    """Sends chat requests to random nodes and models of ``cluster`` until stopped."""

    def __init__(
        self,
        cluster: SimCluster,
        rate_per_s: float = 1.0,
        seed: int = 0,
        *,
        max_in_flight: int = 8,
        stream_fraction: float = 0.5,
        cold_fraction: float = 0.05,
        timeout_s: float = 300.0,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.cluster = cluster
        self.rate_per_s = rate_per_s
        self.max_in_flight = max_in_flight
        self.stream_fraction = stream_fraction
        #: Share of requests for a model that is not loaded (JIT load / autoload).
        self.cold_fraction = cold_fraction
        self.timeout_s = timeout_s
        #: Base URL to send every request to instead of the node's own (lmtui's router, so
        #: the demo shows lmtui routing, queueing and loading); None sends to the nodes.
        self.via: str | None = None
        self.rng = random.Random(seed)
        self.sent = self.ok = self.failed = self.skipped = 0
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    async def start(self) -> None:
        """Begin sending (returns at once)."""
        if self._loop_task is not None:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
        )
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending and cancel requests still running."""
        tasks = [*([self._loop_task] if self._loop_task else []), *self._requests]
        for t in tasks:
            t.cancel()
        # gather, not a suppressed await per task: a cancellation of the caller itself (a
        # second Ctrl-C) must propagate, not be taken for one of these tasks ending.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._requests.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rate_per_s))
            if len(self._requests) >= self.max_in_flight:
                self.skipped += 1
                continue
            target = self._pick()
            if target is None:
                continue
            task = asyncio.create_task(self._send(*target))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    def _pick(self) -> tuple[SimNode, str, str, dict[str, Any]] | None:
        nodes = [n for n in self.cluster.nodes if n.url and not n.faults.down]
        if not nodes:
            return None
        node = self.rng.choice(nodes)
        llms = [m.key for m in node.spec.models if not m.is_embedding]
        loaded = [k for k in node.loaded_models() if k in llms]
        pool = llms if (not loaded or self.rng.random() < self.cold_fraction) else loaded
        if not pool:
            return None
        model = self.rng.choice(pool)
        stream = self.rng.random() < self.stream_fraction
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": self.rng.choice(_PROMPTS)}],
            "max_tokens": self.rng.randint(32, 256),
            "stream": stream,
        }
        path = "/v1/chat/completions"
        if self.via is None and node.spec.kind is NodeKind.OLLAMA and self.rng.random() < 0.5:
            path = "/api/chat"  # Ollama's own API streams NDJSON
            body["options"] = {"num_predict": body.pop("max_tokens")}
        return node, path, model, body

    async def _send(self, node: SimNode, path: str, model: str, body: dict[str, Any]) -> None:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {node.spec.api_key}"} if node.spec.api_key else {}
        base = node.url
        if self.via is not None:
            base, headers = self.via, {}
        self.sent += 1
        try:
            async with self._session.post(base + path, json=body, headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
        except (aiohttp.ClientError, TimeoutError):
            self.failed += 1
