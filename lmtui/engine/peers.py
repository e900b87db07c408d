"""Peers: services that take a model's requests when the cluster cannot serve them in time.

A peer (``[[peers]]``) is any OpenAI-compatible service: another lmtui, a llama-swap, a
hosted API. The router (``router.py``) sends a request to the first peer that serves its
model when the cluster cannot serve it locally in time:

- at once, when no local node can serve it at all: the model is known nowhere, no node can
  load it, its every replica is down, every try failed before the first byte, or no node
  serves the API path;
- when its queue for the model already holds ``[router] fallback_queue`` requests;
- after it has waited ``[router] fallback_after`` seconds for a local replica.

A peer that cannot take the request now is passed over, with the reason kept for the
answer: its budget is spent (``budget`` requests per sliding ``budget_window``), its rate
limit (``rate_limit`` / ``rate_burst``) or its concurrency (``max_concurrent``) is reached.
When no peer takes it, the request stays with the cluster (it goes on waiting, or gets the
local error) and the error says what each peer said.

Loops: a request lmtui sends to a peer carries ``x-lmtui-via``; a request that arrives with
it is never sent to a peer again, so two lmtuis that are each other's peer cannot bounce a
request between them.

The budget survives a restart: at start it is counted from the request log, where every
request a peer served is a row whose node is ``peer:NAME``.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from lmtui.config.schema import PeerConfig
from lmtui.core.model import PeerState
from lmtui.engine.ratelimit import Buckets

#: The node a peer's requests are recorded under (request log, metrics, outcome).
PREFIX = "peer:"
#: The header that marks an answer a peer gave; its value is the peer's name.
PEER_HEADER = "x-lmtui-peer"
#: The header lmtui adds to what it sends a peer: such a request never goes to a peer again.
VIA_HEADER = "x-lmtui-via"
#: Models whose peer list is cached: a bound on what clients' model names may fill.
MAX_CACHED_MODELS = 4096


def node_name(peer: str) -> str:
    """The node name a peer's requests are recorded under."""
    return PREFIX + peer


def is_peer_node(node: str | None) -> bool:
    return node is not None and node.startswith(PREFIX)


class Peer:
    """One ``[[peers]]`` entry with its live counters."""

    def __init__(
        self,
        cfg: PeerConfig,
        key: str | None,
        *,
        order: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = cfg.name
        self.node = node_name(cfg.name)
        self.url = cfg.url.rstrip("/")
        self.key = key
        self.priority = cfg.priority
        self.order = order
        self.max_concurrent = cfg.max_concurrent
        self.first_byte_timeout_s = cfg.first_byte_timeout
        self.budget = cfg.budget
        self.budget_window_s = cfg.budget_window
        self.rename = dict(cfg.rename)
        self.clock = clock
        exact = [m for m in cfg.models if not any(c in m for c in "*?[")]
        self._exact = frozenset(exact)
        globs = [m for m in cfg.models if m not in self._exact]
        self._glob = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        self._rate = (
            Buckets(cfg.rate_limit, cfg.rate_burst, max_entries=1, clock=clock)
            if cfg.rate_limit > 0
            else None
        )
        #: Times of the requests counted against the budget, oldest first; at most
        #: ``budget`` of them (the window's count never exceeds it).
        self._spent: deque[float] = deque()
        self.in_flight = 0
        self.served = 0
        self.failed = 0
        self.last_used = 0.0
        self.last_error: str | None = None

    @property
    def named_models(self) -> frozenset[str]:
        """The models it names without wildcards (listed in ``/v1/models``)."""
        return self._exact

    def serves(self, model: str) -> bool:
        return model in self._exact or (self._glob is not None and bool(self._glob.match(model)))

    def remote_name(self, model: str) -> str:
        """What the peer calls ``model``."""
        return self.rename.get(model, model)

    def _budget_used(self, now: float) -> int:
        spent = self._spent
        start = now - self.budget_window_s
        while spent and spent[0] <= start:
            spent.popleft()
        return len(spent)

    def refusal(self, now: float) -> str | None:
        """Why it cannot take a request now, or None when it can (nothing is spent)."""
        if self.in_flight >= self.max_concurrent:
            return f"{self.max_concurrent} requests in flight (max_concurrent)"
        if self.budget and self._budget_used(now) >= self.budget:
            again = self._spent[0] + self.budget_window_s - now
            return (
                f"its budget of {self.budget} requests per {_span(self.budget_window_s)} "
                f"is spent (the next in {_span(again)})"
            )
        if self._rate is not None and self._rate.wait(self.name) > 0:
            return f"over its rate limit ({self._rate.rate:g} requests/s)"
        return None

    def take(self, now: float) -> str | None:
        """Spend what one request costs: None when taken, else why it cannot be."""
        why = self.refusal(now)
        if why is not None:
            return why
        if self._rate is not None:
            self._rate.take(self.name)  # granted: refusal() saw a token there
        if self.budget:
            self._spent.append(now)
        self.in_flight += 1
        self.last_used = now
        return None

    def done(self, ok: bool | None, error: str | None = None) -> None:
        """A request it took has ended: well, badly, or (None) its client left."""
        self.in_flight = max(0, self.in_flight - 1)
        if ok is None:
            return
        if ok:
            self.served += 1
            self.last_error = None
        else:
            self.failed += 1
            self.last_error = (error or "failed")[:300]

    def restore(self, times: Iterable[float]) -> None:
        """Requests it served before a restart (from the request log), for the budget."""
        if not self.budget:
            return
        now = self.clock()
        start = now - self.budget_window_s
        kept = sorted(t for t in times if start < t <= now)[-self.budget :]
        self._spent = deque(kept)

    def state(self) -> PeerState:
        now = self.clock()
        return PeerState(
            name=self.name,
            in_flight=self.in_flight,
            served=self.served,
            failed=self.failed,
            budget_used=self._budget_used(now) if self.budget else 0,
            budget=self.budget,
            budget_window_s=self.budget_window_s if self.budget else 0.0,
            last_used=self.last_used,
            last_error=self.last_error,
        )


class Peers:
    """Every configured peer, in the order they are tried (priority, then the file's)."""

    def __init__(
        self,
        configs: Iterable[PeerConfig],
        keys: Mapping[str, str | None],
        *,
        fallback_after_s: float = 10.0,
        fallback_queue: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        peers = [Peer(c, keys.get(c.name), order=i, clock=clock) for i, c in enumerate(configs)]
        self.peers = sorted(peers, key=lambda p: (p.priority, p.order))
        self.by_name = {p.name: p for p in self.peers}
        self.fallback_after_s = fallback_after_s
        self.fallback_queue = fallback_queue
        self.clock = clock
        self._for: dict[str, tuple[Peer, ...]] = {}
        #: Called after any peer's counters changed (the store republishes the states).
        self.on_change: Callable[[], None] | None = None

    def __bool__(self) -> bool:
        return bool(self.peers)

    def for_model(self, model: str) -> tuple[Peer, ...]:
        """The peers that may serve ``model``, in the order they are tried."""
        found = self._for.get(model)
        if found is None:
            found = tuple(p for p in self.peers if p.serves(model))
            if len(self._for) >= MAX_CACHED_MODELS:
                self._for.clear()
            self._for[model] = found
        return found

    def available(self, model: str) -> bool:
        """Could a peer take a request for ``model`` now?"""
        now = self.clock()
        return any(p.refusal(now) is None for p in self.for_model(model))

    def named_models(self) -> dict[str, list[str]]:
        """Models peers name without wildcards → those peers' names, in the order tried."""
        out: dict[str, list[str]] = {}
        for p in self.peers:
            for m in sorted(p.named_models):
                out.setdefault(m, []).append(p.name)
        return out

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def states(self) -> list[PeerState]:
        return [p.state() for p in self.peers]


def _span(seconds: float) -> str:
    """``86400`` → ``24 h``; ``90`` → ``90 s``; ``5400`` → ``90 min``."""
    s = max(0.0, seconds)
    if s >= 7200:
        return f"{s / 3600:.0f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"
