"""The wait queue: FIFO per model, depth limit (429), deadlines (504), cancel, fail."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.core.queue import Admitted, Rejected, RequestQueue


def test_fifo_per_model_and_models_do_not_block_each_other() -> None:
    q = RequestQueue(max_depth=10)
    for i, model in enumerate(["a", "b", "a", "b", "a"]):
        assert isinstance(q.admit(f"r{i}", model, now=float(i), deadline=100.0), Admitted)
    assert q.depth("a") == 3 and q.depth("b") == 2 and len(q) == 5
    assert q.depths() == {"a": 3, "b": 2}
    assert q.peek("a") is not None and q.peek("a").request_id == "r0"  # type: ignore[union-attr]
    assert [q.next_for("a").request_id for _ in range(3)] == ["r0", "r2", "r4"]  # type: ignore[union-attr]
    assert q.next_for("a") is None
    popped = q.next_for("b")
    assert popped is not None and popped.request_id == "r1" and popped.waited(5.0) == 4.0
    assert q.depths() == {"b": 1}


def test_a_request_back_from_a_failed_replica_keeps_its_turn() -> None:
    q = RequestQueue(max_depth=10)
    for i in range(3):
        q.admit(f"r{i}", "a", now=float(i), deadline=100.0)
    q.admit("back", "a", now=5.0, deadline=100.0, front=True)
    assert [q.next_for("a").request_id for _ in range(4)] == ["back", "r0", "r1", "r2"]  # type: ignore[union-attr]


def test_full_queue_answers_429_with_retry_after() -> None:
    q = RequestQueue(max_depth=2, retry_after_s=5.0)
    first = q.admit("r1", "m", 0.0, 300.0)
    assert isinstance(first, Admitted) and first.position == 1
    assert isinstance(q.admit("r2", "m", 0.0, 300.0), Admitted)
    full = q.admit("r3", "m", 1.0, 300.0)
    assert isinstance(full, Rejected) and full.status == 429
    assert 1.0 <= full.retry_after_s <= 5.0
    assert "m" in full.reason
    assert "r3" not in q and q.depth("m") == 2
    # Another model is not affected by m's full queue.
    assert isinstance(q.admit("r4", "other", 1.0, 300.0), Admitted)
    # A place frees up: admitted again.
    q.next_for("m")
    assert isinstance(q.admit("r3", "m", 2.0, 300.0), Admitted)


def test_retry_after_is_no_later_than_the_earliest_deadline() -> None:
    q = RequestQueue(max_depth=1, retry_after_s=30.0)
    q.admit("r1", "m", 0.0, 3.0)
    full = q.admit("r2", "m", 0.0, 300.0)
    assert isinstance(full, Rejected) and full.retry_after_s == 3.0


def test_expire_removes_only_requests_past_their_deadline() -> None:
    q = RequestQueue()
    q.admit("late", "m", 0.0, 10.0)
    q.admit("later", "m", 0.0, 20.0)
    q.admit("early", "n", 0.0, 5.0)
    assert q.next_deadline() == 5.0
    assert q.expire(4.9) == []
    assert q.expire(10.0) == ["early", "late"]
    assert q.depth("m") == 1 and q.next_deadline() == 20.0
    assert q.expire(10.0) == []


def test_cancel_leaves_at_once_and_only_once() -> None:
    q = RequestQueue()
    q.admit("a", "m", 0.0, 10.0)
    q.admit("b", "m", 0.0, 10.0)
    assert q.position("b") == 2
    gone = q.cancel("a")
    assert gone is not None and gone.request_id == "a"
    assert q.cancel("a") is None
    assert q.position("b") == 1 and q.position("a") is None
    # A cancelled request never expires later.
    assert q.expire(100.0) == ["b"]


def test_fail_and_fail_model() -> None:
    q = RequestQueue()
    for rid in ("a", "b", "c"):
        q.admit(rid, "m", 0.0, 10.0)
    q.admit("x", "other", 0.0, 10.0)
    assert q.fail("b") is not None and q.fail("b") is None
    assert [r.request_id for r in q.fail_model("m")] == ["a", "c"]
    assert q.fail_model("m") == []
    assert q.depth("m") == 0 and len(q) == 1
    assert q.expire(100.0) == ["x"]


def test_duplicate_id_is_an_error_but_reuse_after_the_end_is_fine() -> None:
    q = RequestQueue()
    q.admit("r", "m", 0.0, 5.0)
    with pytest.raises(ValueError):
        q.admit("r", "m", 0.0, 5.0)
    assert q.next_for("m") is not None
    q.admit("r", "m", 1.0, 50.0)
    # The first admission's deadline (5.0) must not expire the second one.
    assert q.expire(10.0) == []
    assert q.next_deadline() == 50.0
    assert q.expire(50.0) == ["r"]


def test_max_depth_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RequestQueue(max_depth=0)


MODELS = ("m1", "m2", "m3")
op_st = st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(MODELS), st.floats(0, 20)),
    st.tuples(st.just("pop"), st.sampled_from(MODELS)),
    st.tuples(st.just("cancel"), st.integers(0, 60)),
    st.tuples(st.just("fail"), st.integers(0, 60)),
    st.tuples(st.just("fail_model"), st.sampled_from(MODELS)),
    st.tuples(st.just("expire"), st.floats(0, 5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=80), st.integers(1, 4))
def test_every_admitted_request_ends_exactly_once_in_fifo_order(
    ops: list[tuple], max_depth: int
) -> None:
    q = RequestQueue(max_depth=max_depth)
    now = 0.0
    ids = [f"r{i}" for i in range(61)]
    next_id = 0
    # The reference: what should be waiting, per model, oldest first, with deadlines.
    waiting: dict[str, list[str]] = {m: [] for m in MODELS}
    deadline: dict[str, float] = {}
    admitted: set[str] = set()
    rejected: set[str] = set()
    ended: Counter[str] = Counter()

    def drop(rid: str) -> None:
        for lst in waiting.values():
            if rid in lst:
                lst.remove(rid)

    for op in ops:
        kind = op[0]
        if kind == "admit" and next_id < len(ids):
            rid, model = ids[next_id], op[1]
            next_id += 1
            res = q.admit(rid, model, now, now + op[2])
            if isinstance(res, Admitted):
                assert len(waiting[model]) < max_depth
                admitted.add(rid)
                waiting[model].append(rid)
                deadline[rid] = now + op[2]
                assert res.position == len(waiting[model])
            else:
                assert res.status == 429 and len(waiting[model]) == max_depth
                rejected.add(rid)
        elif kind == "pop":
            req = q.next_for(op[1])
            expected = waiting[op[1]].pop(0) if waiting[op[1]] else None
            assert (req.request_id if req else None) == expected  # FIFO: the oldest left
            if req is not None:
                ended[req.request_id] += 1
        elif kind in ("cancel", "fail"):
            rid = ids[op[1]]
            req = (q.cancel if kind == "cancel" else q.fail)(rid)
            assert (req is not None) == any(rid in lst for lst in waiting.values())
            if req is not None:
                ended[rid] += 1
                drop(rid)
        elif kind == "fail_model":
            failed = [r.request_id for r in q.fail_model(op[1])]
            assert failed == waiting[op[1]]
            waiting[op[1]] = []
            ended.update(failed)
        elif kind == "expire":
            now += op[1]
            expired = q.expire(now)
            due = {r for lst in waiting.values() for r in lst if deadline[r] <= now}
            assert set(expired) == due
            for rid in expired:
                ended[rid] += 1
                drop(rid)
        for m in MODELS:
            assert q.depth(m) == len(waiting[m]) <= max_depth
        assert len(q) == len(admitted) - sum(ended.values())

    # Whatever is left ends by its deadline at the latest.
    ended.update(q.expire(now + 1_000.0))
    assert len(q) == 0
    assert set(ended) == admitted
    assert all(n == 1 for n in ended.values())
    assert not rejected & set(ended)
