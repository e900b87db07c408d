"""The rules that turn observations into snapshots (lmtui.core.state)."""

from types import MappingProxyType

import pytest

from lmtui.core.events import EventKind
from lmtui.core.health import HealthPolicy, next_poll_delay
from lmtui.core.model import (
    GiB,
    Health,
    HostMemory,
    InstanceObservation,
    InstanceState,
    MemoryObservation,
    Node,
    NodeKind,
    NodeMetrics,
    NodeObservation,
    PollFailure,
    Snapshot,
)
from lmtui.core.state import FoldContext, NodeSettings, fold


def snap(*names: str) -> Snapshot:
    return Snapshot(
        nodes=MappingProxyType(
            {n: Node(name=n, kind=NodeKind.LLAMACPP, url=f"http://{n}") for n in names}
        )
    )


def ok(node: str, at: float, *insts: InstanceObservation, **kw) -> NodeObservation:
    return NodeObservation(node=node, at=at, latency_s=0.01, instances=tuple(insts), **kw)


CTX = FoldContext(policy=HealthPolicy(down_after=2))


def test_health_moves_healthy_suspect_down_and_back() -> None:
    s = snap("a")
    s, ev = fold(s, ok("a", 1.0), CTX)
    assert s.nodes["a"].health is Health.HEALTHY
    assert [e.kind for e in ev] == [EventKind.NODE_HEALTH]
    s, ev = fold(s, PollFailure("a", 2.0, 0.5, "connection refused"), CTX)
    assert s.nodes["a"].health is Health.SUSPECT
    assert s.nodes["a"].last_error == "connection refused"
    s, ev = fold(s, PollFailure("a", 3.0, 0.5, "connection refused"), CTX)
    assert s.nodes["a"].health is Health.DOWN
    assert ev and "down" in ev[0].message
    s, _ = fold(s, PollFailure("a", 4.0, 0.5, "connection refused"), CTX)
    assert s.nodes["a"].consecutive_failures == 3
    s, ev = fold(s, ok("a", 5.0), CTX)
    assert s.nodes["a"].health is Health.HEALTHY
    assert s.nodes["a"].consecutive_failures == 0
    assert "was down" in ev[0].message


def test_backoff_doubles_while_down_and_is_capped() -> None:
    p = HealthPolicy(down_after=2, max_backoff_s=10)
    assert next_poll_delay(1.0, 0, p) == 1.0
    assert next_poll_delay(1.0, 1, p) == 1.0
    assert next_poll_delay(1.0, 2, p) == 2.0
    assert next_poll_delay(1.0, 3, p) == 4.0
    assert next_poll_delay(1.0, 50, p) == 10.0


def test_versions_increase_and_snapshots_are_immutable() -> None:
    s0 = snap("a")
    s1, _ = fold(s0, ok("a", 1.0, InstanceObservation("m", "m")), CTX)
    assert s1.version == s0.version + 1
    assert s0.instances == {}
    with pytest.raises(TypeError):
        s1.instances[("a", "x")] = None  # type: ignore[index]


def test_instances_appear_and_a_manual_unload_is_noticed() -> None:
    s, ev = fold(snap("a"), ok("a", 1.0, InstanceObservation("m1", "m1", size_bytes=5 * GiB)), CTX)
    assert ("a", "m1") in s.instances
    assert any(e.kind is EventKind.INSTANCE_UP for e in ev)
    s, ev = fold(s, ok("a", 2.0), CTX)
    assert s.instances == {}
    down = [e for e in ev if e.kind is EventKind.INSTANCE_DOWN]
    assert down and "m1" in down[0].message


def test_failed_poll_keeps_instances_and_other_nodes_untouched() -> None:
    s, _ = fold(snap("a", "b"), ok("a", 1.0, InstanceObservation("m1", "m1")), CTX)
    s, _ = fold(s, ok("b", 1.0, InstanceObservation("m2", "m2")), CTX)
    s, _ = fold(s, PollFailure("a", 2.0, 3.0, "timed out"), CTX)
    assert set(s.instances) == {("a", "m1"), ("b", "m2")}


def test_slots_override_and_engine_in_flight_survive_a_repoll() -> None:
    ctx = FoldContext(node_settings=MappingProxyType({"a": NodeSettings(slots=3)}))
    s, _ = fold(snap("a"), ok("a", 1.0, InstanceObservation("m", "m", slots_total=1)), ctx)
    assert s.instances[("a", "m")].slots_total == 3
    s2, _ = fold(snap("a"), ok("a", 1.0, InstanceObservation("m", "m")), CTX)
    assert s2.instances[("a", "m")].slots_total == 1  # unknown -> serial, the safe guess


def test_memory_override_is_total_minus_loaded() -> None:
    ctx = FoldContext(node_settings=MappingProxyType({"a": NodeSettings(memory_bytes=64 * GiB)}))
    s, _ = fold(snap("a"), ok("a", 1.0, InstanceObservation("m", "m", size_bytes=20 * GiB)), ctx)
    mem = s.nodes["a"].memory
    assert mem is not None and mem.total_bytes == 64 * GiB and mem.available_bytes == 44 * GiB
    # a measured reading does not replace the configured override
    s, _ = fold(s, MemoryObservation("a", 2.0, HostMemory(8 * GiB, 1 * GiB, "ssh-linux")), ctx)
    assert s.nodes["a"].memory.total_bytes == 64 * GiB  # type: ignore[union-attr]


def test_measured_memory_and_memory_errors() -> None:
    s, _ = fold(
        snap("a"), MemoryObservation("a", 1.0, HostMemory(16 * GiB, 4 * GiB, "psutil")), CTX
    )
    assert s.nodes["a"].memory.available_bytes == 4 * GiB  # type: ignore[union-attr]
    s, _ = fold(s, MemoryObservation("a", 2.0, None, error="ssh: host key changed"), CTX)
    assert s.nodes["a"].memory_error == "ssh: host key changed"
    assert s.nodes["a"].memory is not None  # the last good reading stays


def test_tokens_per_second_from_counter_difference() -> None:
    s, _ = fold(snap("a"), ok("a", 10.0, metrics=NodeMetrics(predicted_tokens_total=100)), CTX)
    assert s.nodes["a"].tokens_per_second is None
    s, _ = fold(s, ok("a", 12.0, metrics=NodeMetrics(predicted_tokens_total=300)), CTX)
    assert s.nodes["a"].tokens_per_second == pytest.approx(100.0)
    s, _ = fold(s, ok("a", 13.0, metrics=NodeMetrics(predicted_tokens_total=5)), CTX)
    assert s.nodes["a"].tokens_per_second == 0.0  # server restarted: counter reset


def test_pins_and_state_changes() -> None:
    ctx = FoldContext(pinned=frozenset({"m"}))
    s, _ = fold(
        snap("a"), ok("a", 1.0, InstanceObservation("m", "m", state=InstanceState.LOADING)), ctx
    )
    assert s.instances[("a", "m")].pinned
    s, ev = fold(s, ok("a", 2.0, InstanceObservation("m", "m")), ctx)
    assert s.instances[("a", "m")].state is InstanceState.LOADED
    assert [e.kind for e in ev] == [EventKind.INSTANCE_STATE]


def test_loads_lmtui_runs_itself_are_reported_by_the_engine_not_the_fold() -> None:
    ctx = FoldContext(own_loads=frozenset({("a", "m")}))
    loading = InstanceObservation("m", "m", state=InstanceState.LOADING)
    s, ev = fold(snap("a"), ok("a", 1.0, loading), ctx)
    assert s.instances[("a", "m")].state is InstanceState.LOADING
    assert [e.kind for e in ev] == [EventKind.NODE_HEALTH]  # the first poll's "healthy"
    s, ev = fold(s, ok("a", 2.0, InstanceObservation("m", "m")), ctx)
    assert s.instances[("a", "m")].state is InstanceState.LOADED and ev == []
    # A failure is still news, and someone else's load on another node too.
    failed = InstanceObservation("m", "m", state=InstanceState.FAILED, error="exit 1")
    _s, ev = fold(s, ok("a", 3.0, failed), ctx)
    assert [e.kind for e in ev] == [EventKind.INSTANCE_STATE]
    _s, ev = fold(snap("b"), ok("b", 1.0, InstanceObservation("m", "m")), ctx)
    assert [e.kind for e in ev] == [EventKind.NODE_HEALTH, EventKind.INSTANCE_UP]


def test_observation_for_unknown_node_is_ignored() -> None:
    s = snap("a")
    s2, ev = fold(s, ok("zzz", 1.0), CTX)
    assert s2 is s and ev == []


def test_model_slots_override_wins_over_node_and_server() -> None:
    ctx = FoldContext(
        node_settings=MappingProxyType({"a": NodeSettings(slots=3)}),
        model_slots=MappingProxyType({"m": 1}),
    )
    s, _ = fold(
        snap("a"),
        ok(
            "a",
            1.0,
            InstanceObservation("m", "m", slots_total=4),
            InstanceObservation("n", "n", slots_total=4),
        ),
        ctx,
    )
    assert s.instances[("a", "m")].slots_total == 1
    assert s.instances[("a", "n")].slots_total == 3


def test_instance_limit_is_kept_until_a_poll_reads_it_again() -> None:
    s, _ = fold(snap("a"), ok("a", 1.0, max_instances=2), CTX)
    assert s.nodes["a"].max_instances == 2
    s, _ = fold(s, ok("a", 2.0), CTX)  # read once a minute: most polls do not say
    assert s.nodes["a"].max_instances == 2
    s, _ = fold(s, ok("a", 3.0, max_instances=4), CTX)
    assert s.nodes["a"].max_instances == 4


@pytest.mark.parametrize(
    ("size", "source", "override", "want"),
    [
        (4 * GiB, "server", None, (4 * GiB, "server")),
        (4 * GiB, "seen", None, (4 * GiB, "seen")),
        (4 * GiB, None, None, (4 * GiB, "server")),  # an adapter that does not say
        (None, None, None, (None, None)),
        (4 * GiB, "server", 6 * GiB, (6 * GiB, "config")),
        (None, None, 6 * GiB, (6 * GiB, "config")),
    ],
)
def test_size_source_is_carried_into_the_instance(
    size: int | None, source: str | None, override: int | None, want: tuple[object, object]
) -> None:
    ctx = FoldContext(model_sizes=MappingProxyType({"m": override} if override else {}))
    io = InstanceObservation("m", "m", size_bytes=size, size_source=source)  # type: ignore[arg-type]
    s, _ = fold(snap("a"), ok("a", 1.0, io), ctx)
    inst = s.instances[("a", "m")]
    assert (inst.size_bytes, inst.size_source) == want


def test_memory_reads_and_instance_changes_are_timed_for_the_host_correction() -> None:
    from lmtui.core.hosts import other_use_bytes
    from lmtui.core.model import HostMemory, MemoryObservation

    m = InstanceObservation("m", "m", size_bytes=10 * GiB)
    s, _ = fold(snap("a"), ok("a", 1.0, m), CTX)
    assert s.nodes["a"].instances_at == 1.0
    s, _ = fold(s, ok("a", 2.0, m), CTX)  # the same instances: no change
    assert s.nodes["a"].instances_at == 1.0
    mem = HostMemory(64 * GiB, 34 * GiB, "ssh-linux")  # 30 GB used, 10 of them by m
    s, _ = fold(s, MemoryObservation("a", 3.0, mem), CTX)
    assert s.nodes["a"].memory_at == 3.0
    assert other_use_bytes(s, ("a",)) == 20 * GiB
    s, _ = fold(s, ok("a", 4.0), CTX)  # m unloaded after the reading: it is not trusted
    assert s.nodes["a"].instances_at == 4.0
    assert other_use_bytes(s, ("a",)) == 0
    s, _ = fold(s, MemoryObservation("a", 5.0, HostMemory(64 * GiB, 44 * GiB, "ssh-linux")), CTX)
    assert other_use_bytes(s, ("a",)) == 20 * GiB
