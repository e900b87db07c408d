"""Decayed request counts (lmtui.core.demand): decay, the bound, rates, seeding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.core.demand import DemandRates


def test_a_request_counts_half_after_one_half_life() -> None:
    d = DemandRates(half_life_s=600)
    d.note("m", 1000.0)
    tau = 600 / math.log(2)
    assert d.rates(1000.0)["m"] == pytest.approx(1 / tau)
    assert d.rates(1600.0)["m"] == pytest.approx(0.5 / tau)
    assert d.rates(2800.0)["m"] == pytest.approx(0.125 / tau)


def test_a_steady_rate_is_estimated_in_requests_per_second() -> None:
    d = DemandRates(half_life_s=300)
    for k in range(20_000):  # 0.5 requests/s for ~5.5 hours
        d.note("m", 2.0 * k)
    assert d.rates(40_000.0)["m"] == pytest.approx(0.5, rel=0.02)


def test_faded_models_are_forgotten_and_the_bound_holds() -> None:
    d = DemandRates(half_life_s=60, max_models=8)
    for k in range(100):
        d.note(f"m{k}", float(k))
        assert len(d) <= 8
    # The most recent (heaviest) survive the trims.
    assert "m99" in d.rates(100.0)
    assert d.rates(100.0 + 60 * 20) == {}


def test_rates_survive_a_clock_that_jumps_or_goes_back() -> None:
    d = DemandRates(half_life_s=600)
    d.note("m", 0.0)
    d.note("m", 10.0**7)  # months later, with no tick in between: no overflow
    assert d.rates(10.0**7)["m"] == pytest.approx(math.log(2) / 600)
    d.note("m", 10.0**7 - 600)  # a request stamped before the last tick
    assert d.rates(10.0**7)["m"] == pytest.approx(1.5 * math.log(2) / 600)


def test_seed_is_the_same_as_noting_each_request() -> None:
    a, b = DemandRates(), DemandRates()
    a.seed([("x", 100.0, 3), ("y", 200.0, 1)])
    for _ in range(3):
        b.note("x", 100.0)
    b.note("y", 200.0)
    assert a.rates(500.0) == pytest.approx(b.rates(500.0))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 10_000)), max_size=40))
def test_rates_do_not_depend_on_when_ticks_came(events: list[tuple[str, float]]) -> None:
    events.sort(key=lambda e: e[1])
    ticked, plain = DemandRates(half_life_s=300), DemandRates(half_life_s=300)
    for model, at in events:
        ticked.note(model, at)
        ticked.rates(at)
        plain.note(model, at)
    final_t = 10_000.0
    got, want = ticked.rates(final_t), plain.rates(final_t)
    # A tick forgets a count that has faded below 1/1000 of a request; nothing else differs.
    faded = 1e-3 * math.log(2) / 300
    for m in want.keys() | got.keys():
        assert got.get(m, 0.0) == pytest.approx(want.get(m, 0.0), rel=1e-9, abs=faded)
