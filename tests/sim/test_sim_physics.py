"""The pure model of time and memory behind the simulator."""

from __future__ import annotations

import random

import pytest

from lmtui.core.model import NodeKind
from lmtui.sim import SimModel, SimNodeSpec, physics


def test_load_time_grows_with_size_and_shrinks_with_disk_speed() -> None:
    assert physics.load_time_s(40, 4) == pytest.approx(physics.LOAD_OVERHEAD_S + 10)
    assert physics.load_time_s(40, 8) < physics.load_time_s(40, 4)


def test_batching_slows_each_slot_but_grows_the_aggregate() -> None:
    one = physics.per_slot_decode_rate(40, 1)
    four = physics.per_slot_decode_rate(40, 4)
    assert one == 40
    assert four < one
    assert 4 * four > one


def test_prompt_tokens_from_message_text() -> None:
    short = physics.prompt_tokens_of_messages([{"role": "user", "content": "hi"}])
    long = physics.prompt_tokens_of_messages([{"role": "user", "content": "word " * 400}])
    assert long > short + 400
    assert physics.prompt_tokens_of_messages([{"content": [{"type": "text", "text": "abcd"}]}])


def test_completion_tokens_respect_max_tokens_and_seed() -> None:
    assert physics.completion_tokens(5, random.Random(1)) == (5, "length")
    a = [physics.completion_tokens(None, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    n, reason = a[0]
    assert physics.DEFAULT_COMPLETION_TOKENS[0] <= n <= physics.DEFAULT_COMPLETION_TOKENS[1]
    assert reason == "stop"


def test_chunks_keep_a_stream_in_pieces_but_bounded_in_count() -> None:
    # Fast (time-scaled) decoding: chunk size is bounded by the wish for ~8 chunks.
    assert physics.chunk_tokens(1e6, 200, 200, min_interval_s=0.1, min_chunks=8) == 25
    # Real-time decoding at 40 tok/s: a chunk every 0.1 s holds 4 tokens.
    assert physics.chunk_tokens(40, 200, 200, min_interval_s=0.1, min_chunks=8) == 4
    assert physics.chunk_tokens(40, 2, 200, min_interval_s=0.1, min_chunks=8) == 2


R = physics.Resident


def test_plan_room_refuses_without_eviction() -> None:
    plan = physics.plan_room([R("a", 30, False, 1.0)], 40, 64)
    assert not plan.ok and "GB" in (plan.refused or "")


def test_plan_room_evicts_idle_lru_first_and_never_busy() -> None:
    residents = [R("old", 20, False, 1.0), R("busy", 20, True, 0.5), R("new", 20, False, 2.0)]
    plan = physics.plan_room(residents, 20, 64, evict_for_memory=True)
    assert plan.evict == ("old",)
    plan = physics.plan_room(residents, 60, 64, evict_for_memory=True)
    assert not plan.ok  # only the busy one would be left to evict


def test_plan_room_count_limit() -> None:
    residents = [R("a", 1, False, 2.0), R("b", 1, False, 1.0)]
    assert physics.plan_room(residents, 1, 64, max_count=2, evict_for_count=True).evict == ("b",)
    assert not physics.plan_room(residents, 1, 64, max_count=2).ok
    assert not physics.plan_room([], 100, 64, evict_for_memory=True).ok


def test_spec_defaults_per_kind() -> None:
    lms = SimNodeSpec("a", NodeKind.LMSTUDIO)
    assert lms.keep_alive_s == 3600.0 and not lms.serial
    assert SimNodeSpec("b", NodeKind.LMSTUDIO, version="0.3.31").serial
    assert SimNodeSpec("c", NodeKind.OLLAMA).keep_alive_s == 300.0
    with pytest.raises(ValueError, match="not in models"):
        SimNodeSpec("d", NodeKind.OLLAMA, models=[SimModel("m", 1)], loaded=["x"])
