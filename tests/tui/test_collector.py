"""Full garbage collections run after a frame is written, not inside one (``collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lmtui.tui.app import build_app
from lmtui.tui.collector import NEVER, SUPPORTED, YOUNG, IdleCollector
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


def full_collections() -> tuple[list[int], object]:
    started: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            started.append(1)

    gc.callbacks.append(on_gc)
    return started, on_gc


def test_the_collector_takes_full_collections_over_and_gives_them_back(
    thresholds: tuple[int, int, int],
) -> None:
    t0, t1, t2 = thresholds
    c = IdleCollector()
    c.start()
    assert c.active and gc.get_threshold() == (max(t0, YOUNG), t1, NEVER)
    started, hook = full_collections()
    try:
        gc.collect(2)  # a clean count: the young collections below are what makes it due
        started.clear()
        for _ in range(t2 - 1):
            gc.collect(1)
        assert not c.due()
        gc.collect(1)
        assert c.due()
        assert started == []  # a young collection no longer brings a full one
        c.collect()
        assert started == [1] and c.collections == 1 and not c.due()
        c.collect()  # no longer due: nothing
        assert started == [1]
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
    assert not c.active and gc.get_threshold() == (t0, t1, 0) and not c.due()
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
        started, hook = full_collections()
        try:
            done = app.collector.collections
            for _ in range(every):
                gc.collect(1)
            assert app.collector.due()
            started.clear()
            snap = next_version(snap)
            app.show_snapshot(snap)  # the update is drawn, its frame not yet written
            assert started == []
            await until(pilot, lambda: app.collector.collections > done)
            assert started and not app.collector.due()
            assert app.query_one(NodeTable).row_count == 3
        finally:
            gc.callbacks.remove(hook)
    # The app's end gives full collections back to the interpreter.
    assert gc.get_threshold() == thresholds
