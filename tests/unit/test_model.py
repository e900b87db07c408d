"""The snapshot's model index and the router's cheap instance updates."""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType

from lmtui.core.model import Instance, InstanceState, Snapshot, evolve, with_load


def snap(*insts: Instance) -> Snapshot:
    return Snapshot(version=3, instances=MappingProxyType({i.key: i for i in insts}))


def keys(s: Snapshot, model: str) -> set[tuple[str, str]]:
    return {i.key for i in s.instances_of(model)}


def test_instances_of_finds_each_models_instances() -> None:
    a1, a2 = Instance("mac", "a", "a:1"), Instance("box", "a", "a:1")
    b = Instance("mac", "b", "b:1")
    s = snap(a1, a2, b)
    assert keys(s, "a") == {a1.key, a2.key}
    assert keys(s, "b") == {b.key}
    assert keys(s, "nope") == set()


def test_with_instance_serves_the_new_values_and_the_old_snapshot_keeps_its_own() -> None:
    a = Instance("mac", "a", "a:1", slots_total=4)
    s = snap(a)
    list(s.instances_of("a"))  # build the index
    busy = with_load(a, 2, 3, 10.0)
    s2 = s.with_instance(busy)
    assert s2.version == s.version + 1
    assert [i.in_flight for i in s2.instances_of("a")] == [2]
    assert [i.in_flight for i in s.instances_of("a")] == [0]


def test_with_instance_of_another_model_or_key_rebuilds_the_index() -> None:
    a = Instance("mac", "a", "x:1")
    s = snap(a)
    list(s.instances_of("a"))
    # Same key, different model (an instance id reused for another model).
    s2 = s.with_instance(evolve(a, model="b"))
    assert keys(s2, "a") == set() and keys(s2, "b") == {a.key}
    # A new key.
    c = Instance("box", "a", "a:2")
    s3 = s.with_instance(c)
    assert keys(s3, "a") == {a.key, c.key}


def test_with_load_is_evolve_of_the_three_load_fields() -> None:
    a = Instance(
        "mac", "a", "a:1", state=InstanceState.LOADING, slots_total=4, pinned=True, error="e"
    )
    assert with_load(a, 1, 2, 5.0) == evolve(a, in_flight=1, slots_busy=2, last_used=5.0)
    # Every field is copied (a field added to Instance later is covered too).
    b = with_load(a, a.in_flight, a.slots_busy, a.last_used)
    assert all(getattr(a, f.name) == getattr(b, f.name) for f in fields(Instance))


def test_the_index_is_not_part_of_equality() -> None:
    a = Instance("mac", "a", "a:1")
    s, t = snap(a), snap(a)
    list(s.instances_of("a"))
    assert s == t
