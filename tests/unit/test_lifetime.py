"""Idle TTLs (core/lifetime.py): which one holds, and when a node-held expiry falls short."""

from __future__ import annotations

from types import MappingProxyType

from lmtui.core.lifetime import Lifetimes, expiry_short, lifetime_refreshes, wanted_ttl
from lmtui.core.model import Instance, InstanceState

NOW = 10_000.0


def test_the_most_specific_ttl_wins() -> None:
    lt = Lifetimes(
        idle_ttl_s=600,
        by_priority=MappingProxyType({"low": 60.0, "high": 0.0}),
        per_model=MappingProxyType({"m": 30.0, "never": 0.0}),
        loaded_with=MappingProxyType({("n", "m"): 5.0}),
    )
    assert lt.ttl_for("m", "normal", "n") == 5.0  # the request that loaded it there
    assert lt.ttl_for("m", "normal", "other") == 30.0  # [[models]] ttl
    assert lt.ttl_for("never") is None  # ttl = 0: never
    assert lt.ttl_for("x", "low") == 60.0  # idle_ttl_by_priority
    assert lt.ttl_for("x", "high") is None
    assert lt.ttl_for("x", "normal") == 600.0  # [pool] idle_ttl
    # Without idle_ttl_by_priority: low idles out at half the default, high never.
    plain = Lifetimes(idle_ttl_s=600)
    assert plain.ttl_for("x", "low") == 300.0 and plain.ttl_for("x", "high") is None
    assert Lifetimes().ttl_for("x") is None
    assert wanted_ttl(lt, "m", "normal", pinned=True) is None


def inst(**kw: object) -> Instance:
    kw.setdefault("last_used", NOW - 10)
    return Instance("o", "m", "m", **kw)  # type: ignore[arg-type]


def test_an_expiry_short_of_what_lmtui_wants() -> None:
    # Pinned (None): anything under a year is short; Ollama's "forever" is not.
    assert expiry_short(inst(expires_at=NOW + 300), None, NOW) is not None
    assert expiry_short(inst(expires_at=NOW + 290 * 365 * 86400), None, NOW) is None
    # A TTL of 600 s from the last use (10 s ago): 590 s left is right, 290 s is short.
    assert expiry_short(inst(expires_at=NOW + 590), 600, NOW) is None
    assert expiry_short(inst(expires_at=NOW + 290), 600, NOW) is not None
    # Not judged: no expiry reported, busy, or not loaded.
    assert expiry_short(inst(), None, NOW) is None
    assert expiry_short(inst(expires_at=NOW + 1, in_flight=1), None, NOW) is None
    assert expiry_short(inst(expires_at=NOW + 1, state=InstanceState.LOADING), None, NOW) is None


def test_refreshes_only_what_lmtui_has_a_lifetime_for() -> None:
    pinned = Instance("o", "p", "p", expires_at=NOW + 60, last_used=NOW)
    ttl = Instance("o", "t", "t", expires_at=NOW + 60, last_used=NOW)
    free = Instance("o", "f", "f", expires_at=NOW + 60, last_used=NOW)
    elsewhere = Instance("l", "p", "p", expires_at=NOW + 60, last_used=NOW)
    lt = Lifetimes(per_model=MappingProxyType({"t": 3600.0}))
    out = lifetime_refreshes(
        [pinned, ttl, free, elsewhere], lt, {}, frozenset({"p"}), NOW, nodes=frozenset({"o"})
    )
    assert [(i.model, t) for i, t, _why in out] == [("p", None), ("t", 3600.0)]
