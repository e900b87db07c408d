"""Sparklines from the metric history: pure text, then as the node table and header show it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.engine.history import History, Sample
from lmtui.tui.render import NODE_COLUMNS
from lmtui.tui.trend import BLOCKS, buckets, fmt_rate, header_trend, spark, sparkline
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, fixed_cluster, fixed_history
from .test_app import until

TREND = [k for k, _ in NODE_COLUMNS].index("trend")


def test_buckets_average_each_slice_and_leave_gaps_blank() -> None:
    points = [(0.5, 1.0), (1.5, 3.0), (1.7, 5.0), (3.5, None)]
    assert buckets(points, end=4.0, width=4, span_s=4.0) == [1.0, 4.0, None, None]
    # Points older than the window are not counted.
    assert buckets([(-10.0, 9.0), (3.9, 2.0)], end=4.0, width=2, span_s=4.0) == [None, 2.0]


def reference_buckets(
    points: list[tuple[float, float | None]], end: float, width: int, span: float
) -> list[float | None]:
    """The buckets as the docstring of ``bucket_bounds`` defines them, one point at a time."""
    start, step = end - span, span / width
    out: list[float | None] = []
    for b in range(width):
        lo, hi = start + b * step, start + (b + 1) * step
        known = [
            v
            for at, v in points
            if v is not None and start < at <= end and lo <= at and (at < hi or b == width - 1)
        ]
        out.append(sum(known) / len(known) if known else None)
    return out


def close(a: list[float | None], b: list[float | None], scale: float = 0.0) -> bool:
    """Equal but for rounding: relative to each value, and to ``scale`` (the running sums'
    size: a bucket's mean is a difference of two of them)."""
    return len(a) == len(b) and all(
        x is y
        or (
            x is not None
            and y is not None
            and abs(x - y) <= 1e-9 * max(1.0, abs(y)) + 1e-12 * scale
        )
        for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.01, 40.0),
            st.one_of(st.none(), st.floats(0.0, 1e6)),
            # Whether the sample has the node (a node gone for a whole window is dropped,
            # then starts again), and whether a sparkline is drawn after it.
            st.booleans(),
            st.booleans(),
        ),
        max_size=80,
    ),
    width=st.integers(0, 12),
    window=st.floats(2.0, 40.0),
)
def test_the_histories_buckets_are_the_means_of_its_points(
    steps: list[tuple[float, float | None, bool, bool]], width: int, window: float
) -> None:
    """What the sparklines draw from (``History.bucket_means``, running sums kept up to
    date as samples come and leave the window) and the detail screens' plots
    (``buckets``) are the means of the points in each bucket, counted one point at a time,
    with the newest point, whatever the gaps, the unknown values and the redraws."""
    h = History(window_s=window, step_s=1.0)
    at = 1000.0
    total = 0.0  # every value summed: the most the running sums can have grown to
    for k, (gap, value, present, drawn) in enumerate(steps):
        at += gap
        nodes = {"n": (value, 0.0, None, None)} if present or k == len(steps) - 1 else {}
        total += (value or 0.0) if nodes else 0.0
        h.add(Sample(at, (0.0, 0.0, None, None), nodes))
        if not drawn and k < len(steps) - 1:
            continue
        means, newest = h.bucket_means("node", "n", "requests", width)
        points = h.points("node", "n", "requests")
        want = reference_buckets(points, h.last_at, width, h.window_s) if width else []
        assert close(means, want, total), (means, want)
        assert close(buckets(points, h.last_at, width, h.window_s), want)
        assert newest == (points[-1] if points and width > 0 else None)
        if width and points:  # and the sums hold the window's points, no more
            assert len(h._running["node", "n", 0].times) == len(points)


def test_a_sparkline_after_a_burst_still_tells_a_trickle_from_nothing() -> None:
    """The running sums start again from zero once a burst has left the window, or its
    size would swallow what came after it (1e15 + 0.01 == 1e15)."""
    h = History(window_s=10.0, step_s=1.0)
    for k in range(40):
        value = 1e15 if k < 10 else 0.01 if k % 2 else 0.0
        h.add(Sample(float(k), (0.0, 0.0, None, None), {"n": (value, 0.0, None, None)}))
        means, _ = h.bucket_means("node", "n", "requests", 2)
    assert means == [pytest.approx(0.005), pytest.approx(0.005)]


def test_zero_and_busy_never_look_alike_and_gaps_are_blank() -> None:
    line = spark([0.0, 0.01, 10.0, None, 5.0])
    assert line[0] == BLOCKS[0]
    assert line[1] == BLOCKS[1]  # tiny next to the peak, but above zero
    assert line[2] == BLOCKS[-1]
    assert line[3] == " "
    assert spark([0.0, 0.0]) == BLOCKS[0] * 2
    assert [fmt_rate(v) for v in (None, 0, 0.43, 12.34, 512, 12_345)] == [
        "—",
        "0",
        "0.4",
        "12.3",
        "512",
        "12.3k",
    ]


def test_a_series_the_newest_sample_left_out_shows_no_current_value() -> None:
    h = History()
    h.add(Sample(1.0, (1.0, 0.0, None, None), {"a": (2.0, 0, None, None)}))
    h.add(Sample(2.0, (1.0, 0.0, None, None), {}))
    assert sparkline(h, "node", "a", "requests").plain.endswith("—")
    assert sparkline(h, "node", "nobody", "requests").plain == ""
    assert header_trend(History()) is None


async def test_the_node_table_and_header_draw_the_history() -> None:
    from lmtui.tui.app import build_app

    snap, events = fixed_cluster()
    client = FakeClient(snap, events, history=fixed_history())
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        nodes = app.query_one(NodeTable)
        mac = nodes.shown_row("mac-studio")[TREND].plain
        assert mac.endswith("3.0") and mac[:10].strip(" ▁")  # rising: not flat
        # old-mini is down: its history stopped a minute ago, so no current rate.
        assert nodes.shown_row("old-mini")[TREND].plain.endswith("—")
        header = app.query_one(ClusterHeader)
        await until(pilot, lambda: "req/s" in header.trend_text)
        assert "tok/s" in header.trend_text and header.line_count == 2


async def test_unchanged_rows_are_reused_and_widths_follow_added_and_removed_rows() -> None:
    """The model table redraws only rows whose instance changed, and the content widths it
    keeps incrementally still grow with a long row and shrink back once it goes."""
    from lmtui.tui.app import build_app
    from lmtui.tui.widgets.model_table import ModelTable

    from .fakes import instance, next_version

    snap, events = fixed_cluster()
    client = FakeClient(snap, events)
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        models = app.query_one(ModelTable)
        before = {k: models.shown_row(k) for k in models.shown_keys}
        widths = models._content_widths()
        long = instance("gpu-box", "a-model-with-a-remarkably-long-name-indeed")
        client.push(next_version(snap, instances=[*snap.instances.values(), long]))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert models.last_sync_stats == (1, 0, 0)
        assert all(models.shown_row(k) is cells for k, cells in before.items())
        assert models._content_widths()[0] == len(long.model)
        assert models._content_widths() == models._measure_widths()
        snap2 = client.snapshot()
        client.push(next_version(snap2, instances=list(snap.instances.values())))
        await until(pilot, lambda: app.shown_version == snap2.version + 1)
        assert models._content_widths() == widths == models._measure_widths()
