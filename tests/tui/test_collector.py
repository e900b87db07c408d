"""Garbage collections run after a frame is written, not inside one (``collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lmtui.tui.app import build_app
from lmtui.tui.collector import NEVER, SAFETY, SUPPORTED, IdleCollector
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, next_version
from .test_app import until
from .test_keyed_table import SIZE
from .test_render_fast_path import cluster

pytestmark = pytest.mark.skipif(
    not SUPPORTED or not gc.isenabled(), reason="a generational collector, switched on"
)


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The interpreter's thresholds, put back whatever the test did."""
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def collections() -> tuple[list[int], object]:
    """The generation of each collection that starts from now on."""
    started: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(on_gc)
    return started, on_gc


def test_the_collector_takes_the_thresholds_over_and_gives_them_back(
    thresholds: tuple[int, int, int],
) -> None:
    t0, t1, t2 = thresholds
    c = IdleCollector()
    c.start()
    assert c.active and gc.get_threshold() == (max(t0, SAFETY), NEVER, NEVER)
    started, hook = collections()
    try:
        gc.collect(2)  # a clean count: what follows is what makes one due
        assert c.due() is None
        kept = [[] for _ in range(t0 + 50)]  # more objects made than freed: a young one
        assert c.due() == 0 and len(kept) > t0
        started.clear()
        c.collect()
        assert started == [0] and c.young == 1 and c.due() is None
        for _ in range(t1 - 2):  # the young one above counted as one already
            gc.collect(0)
        assert c.due() is None
        kept += [[] for _ in range(t0 + 50)]
        assert c.due() == 1  # the young collection due would make one of generation 1
        started.clear()
        c.collect()
        assert started == [1] and c.middle == 1 and c.due() is None
        for _ in range(t2 - 2):
            gc.collect(1)
        assert c.due() is None  # one collection of generation 1 short of a full one
        for _ in range(t1):
            gc.collect(0)
        assert c.due() == 2
        started.clear()
        c.collect()
        assert started == [2] and c.collections == 1 and c.due() is None
        c.collect()  # nothing due: nothing
        assert started == [2]
    finally:
        gc.callbacks.remove(hook)
    c.stop()
    assert not c.active and gc.get_threshold() == (t0, t1, t2)


def test_the_collector_leaves_a_switched_off_or_repaced_collector_alone(
    thresholds: tuple[int, int, int],
) -> None:
    t0, t1, _ = thresholds
    gc.set_threshold(t0, t1, 0)  # full collections off by the user's own choice
    c = IdleCollector()
    c.start()
    assert not c.active and gc.get_threshold() == (t0, t1, 0) and c.due() is None
    gc.set_threshold(*thresholds)
    gc.disable()
    try:
        c.start()
        assert not c.active
    finally:
        gc.enable()


async def test_a_due_full_collection_runs_after_the_frame_not_inside_it(
    thresholds: tuple[int, int, int],
) -> None:
    every = thresholds[2]
    snap = cluster(3, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version and app.collector.active)
        assert gc.get_threshold()[2] == NEVER
        started, hook = collections()
        try:
            done = app.collector.collections
            for _ in range(every):
                gc.collect(1)
            assert app.collector.due()
            started.clear()
            snap = next_version(snap)
            app.show_snapshot(snap)  # the update is drawn, its frame not yet written
            assert started == []  # no generation, young ones neither
            await until(pilot, lambda: app.collector.collections > done)
            assert 2 in started and not app.collector.due()
            assert app.query_one(NodeTable).row_count == 3
        finally:
            gc.callbacks.remove(hook)
    # The app's end gives full collections back to the interpreter.
    assert gc.get_threshold() == thresholds
