"""Admission to lmtui's own wait queue: per-model FIFO, a depth limit, deadlines.

The async router wraps this structure; it holds no futures and reads no clock. Every
admitted request ends exactly once, in one of four ways, and then is gone:

- served: :meth:`RequestQueue.next_for` popped it (its turn came);
- cancelled: :meth:`RequestQueue.cancel` (the client disconnected);
- expired: :meth:`RequestQueue.expire` returned it (deadline passed → 504);
- failed: :meth:`RequestQueue.fail` / :meth:`RequestQueue.fail_model` (e.g. the model's
  load failed for good → 503).

A request refused at the door (:class:`Rejected`, 429) was never admitted and never ends.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How a queued request left the queue."""

    SERVED = "served"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """One request waiting for a replica of ``model``."""

    request_id: str
    model: str
    enqueued_at: float
    deadline: float
    #: Admission order across all models; FIFO within a model follows it.
    seq: int

    def waited(self, now: float) -> float:
        """Seconds spent in the queue so far."""
        return max(0.0, now - self.enqueued_at)


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request is queued; ``position`` is its 1-based place in its model's queue."""

    request: QueuedRequest
    position: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The queue is full: answer ``status`` with ``Retry-After: retry_after_s``."""

    status: int
    retry_after_s: float
    reason: str


class RequestQueue:
    """Per-model FIFO queues with a depth limit per model and a deadline per request."""

    def __init__(self, max_depth: int = 256, retry_after_s: float = 5.0) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth
        #: Upper bound of the Retry-After we suggest on 429.
        self.retry_after_s = retry_after_s
        self._by_model: dict[str, OrderedDict[str, QueuedRequest]] = {}
        self._model_of: dict[str, str] = {}
        # (deadline, seq, id), lazily cleaned: entries whose request already ended are
        # skipped. The seq tells a reused id's old entry from its new one.
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0

    # -- admission ---------------------------------------------------------------------

    def admit(
        self, request_id: str, model: str, now: float, deadline: float, *, front: bool = False
    ) -> Admitted | Rejected:
        """Queue ``request_id`` for ``model`` unless that model's queue is full (429).

        ``front`` puts it at the head: a request that had already been given a replica,
        which failed it before its first byte, keeps its turn rather than starting over.

        Raises ``ValueError`` if the id is already waiting: ids must be unique while queued.
        """
        if request_id in self._model_of:
            raise ValueError(f"request {request_id!r} is already queued")
        q = self._by_model.get(model)
        if q is not None and len(q) >= self.max_depth:
            # The earliest deadline in the queue is the latest a place will surely free up;
            # suggesting longer than retry_after_s only makes clients give up.
            soonest = min(r.deadline for r in q.values())
            retry = min(self.retry_after_s, max(1.0, soonest - now))
            reason = f"{len(q)} requests already waiting for {model} (limit {self.max_depth})"
            return Rejected(429, retry, reason)
        if q is None:
            q = self._by_model[model] = OrderedDict()
        req = QueuedRequest(request_id, model, now, deadline, self._seq)
        self._seq += 1
        q[request_id] = req
        if front:
            q.move_to_end(request_id, last=False)
        self._model_of[request_id] = model
        heapq.heappush(self._deadlines, (deadline, req.seq, request_id))
        return Admitted(req, len(q))

    # -- the four ways out -------------------------------------------------------------

    def next_for(self, model: str) -> QueuedRequest | None:
        """Pop the oldest request waiting for ``model`` (it is served), or ``None``.

        This does not look at deadlines: call :meth:`expire` first so that a request past
        its deadline gets its 504 instead of a late answer.
        """
        q = self._by_model.get(model)
        if not q:
            return None
        _, req = q.popitem(last=False)
        self._forget(req)
        return req

    def cancel(self, request_id: str) -> QueuedRequest | None:
        """Remove a waiting request at once (client gone). ``None`` if it is not waiting."""
        return self._remove(request_id)

    def fail(self, request_id: str) -> QueuedRequest | None:
        """Remove a waiting request that cannot be served. ``None`` if it is not waiting."""
        return self._remove(request_id)

    def fail_model(self, model: str) -> list[QueuedRequest]:
        """Remove every request waiting for ``model``, oldest first (its load failed)."""
        q = self._by_model.pop(model, None)
        if not q:
            return []
        for req in q.values():
            del self._model_of[req.request_id]
        self._compact()
        return list(q.values())

    def expire(self, now: float) -> list[str]:
        """Remove and return the ids whose deadline is at or before ``now``, oldest deadline
        first."""
        expired: list[str] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq, rid = heapq.heappop(self._deadlines)
            if self._is_waiting(rid, seq):
                self._remove(rid, compact=False)
                expired.append(rid)
        return expired

    # -- reading -----------------------------------------------------------------------

    def depth(self, model: str) -> int:
        """Requests waiting for ``model``."""
        q = self._by_model.get(model)
        return len(q) if q else 0

    def depths(self) -> dict[str, int]:
        """Requests waiting per model, for the snapshot's ``queue_depth``."""
        return {m: len(q) for m, q in self._by_model.items() if q}

    def peek(self, model: str) -> QueuedRequest | None:
        """The request :meth:`next_for` would pop, without popping it."""
        q = self._by_model.get(model)
        return next(iter(q.values())) if q else None

    def position(self, request_id: str) -> int | None:
        """1-based place of a waiting request in its model's queue, or ``None``."""
        model = self._model_of.get(request_id)
        if model is None:
            return None
        for i, rid in enumerate(self._by_model[model], start=1):
            if rid == request_id:
                return i
        return None  # pragma: no cover - _model_of and _by_model agree

    def next_deadline(self) -> float | None:
        """The earliest deadline among waiting requests (when to call :meth:`expire`)."""
        while self._deadlines:
            _, seq, rid = self._deadlines[0]
            if self._is_waiting(rid, seq):
                break
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def __len__(self) -> int:
        return len(self._model_of)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._model_of

    # -- internals ---------------------------------------------------------------------

    def _is_waiting(self, request_id: str, seq: int) -> bool:
        model = self._model_of.get(request_id)
        if model is None:
            return False
        return self._by_model[model][request_id].seq == seq

    def _remove(self, request_id: str, *, compact: bool = True) -> QueuedRequest | None:
        model = self._model_of.get(request_id)
        if model is None:
            return None
        req = self._by_model[model].pop(request_id)
        self._forget(req, compact=compact)
        return req

    def _forget(self, req: QueuedRequest, *, compact: bool = True) -> None:
        del self._model_of[req.request_id]
        if not self._by_model.get(req.model):
            self._by_model.pop(req.model, None)
        if compact:
            self._compact()

    def _compact(self) -> None:
        # Ended requests stay in the deadline heap until popped; rebuild it when they
        # outnumber the living, so memory stays proportional to what is waiting.
        if len(self._deadlines) > 2 * len(self._model_of) + 64:
            self._deadlines = [e for e in self._deadlines if self._is_waiting(e[2], e[1])]
            heapq.heapify(self._deadlines)
