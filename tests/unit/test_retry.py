"""A failed plan step is reported once and retried ever more rarely."""

from __future__ import annotations

from lmtui.core.retry import StepBackoff

KEY = ("unload", "n", "m")


def test_a_failure_is_reported_once_and_the_wait_doubles_up_to_the_cap() -> None:
    b = StepBackoff(first_s=30, max_s=100)
    now = 0.0
    assert b.due(KEY, now, "s") and not b.reported(KEY, "s")
    assert b.failed(KEY, now, "s", "refused") is True
    waits = []
    for _ in range(4):
        f = b.get(KEY)
        assert f is not None
        assert not b.due(KEY, f.retry_at - 0.1, "s") and b.due(KEY, f.retry_at, "s")
        waits.append(f.delay_s)
        now = f.retry_at
        assert b.reported(KEY, "s")
        assert b.failed(KEY, now, "s", "refused") is False  # a repeat: quiet
    assert waits == [30, 60, 100, 100]


def test_success_or_a_new_situation_forgets_the_failure() -> None:
    b = StepBackoff()
    b.failed(KEY, 0.0, "s", "refused")
    b.succeeded(KEY)
    assert b.due(KEY, 1.0, "s") and len(b) == 0
    b.failed(KEY, 0.0, "s", "refused")
    assert not b.due(KEY, 1.0, "s")
    assert b.due(KEY, 1.0, "other")  # e.g. the node came back healthy
    assert b.failed(KEY, 1.0, "other", "refused") is True  # news again: reported
