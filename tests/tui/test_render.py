"""The pure row and cell renderers: what each table cell says for a given state."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.text import Text

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import GiB, Health, InstanceState, NodeKind, NodeMetrics, PeerState
from lmtui.tui.render import (
    DEMO_BANNER,
    INSTANCE_COLUMNS,
    NODE_COLUMNS,
    cells_equal,
    event_line,
    fmt_ago,
    fmt_bytes,
    fmt_duration,
    header_context,
    header_text,
    instance_ages,
    instance_matches,
    instance_row,
    instance_row_aged,
    instance_row_key,
    memory_bar,
    node_row,
    peers_text,
    truncate,
)

from .fakes import FIXED_NOW, fixed_cluster, instance, node, snapshot

NODE_COL = {key: i for i, (key, _) in enumerate(NODE_COLUMNS)}
INST_COL = {key: i for i, (key, _) in enumerate(INSTANCE_COLUMNS)}


@pytest.mark.parametrize(
    "n,expected",
    [
        (None, "—"),
        (0, "0 MB"),
        (274 * 1024**2, "274 MB"),
        (GiB, "1.0 GB"),
        (int(4.5 * GiB), "4.5 GB"),
        (192 * GiB, "192.0 GB"),
    ],
)
def test_fmt_bytes(n: int | None, expected: str) -> None:
    assert fmt_bytes(n) == expected


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (None, "—"),
        (0, "0s ago"),
        (12.9, "12s ago"),
        (59, "59s ago"),
        (60, "1m ago"),
        (3599, "59m ago"),
        (7200, "2h ago"),
        (86400 * 3 + 5, "3d ago"),
        (-4, "0s ago"),  # a node clock slightly ahead of ours must not print "-4s ago"
    ],
)
def test_fmt_ago(seconds: float | None, expected: str) -> None:
    assert fmt_ago(seconds) == expected


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (None, "—"),
        (0, "0s"),
        (45, "45s"),
        (270, "4m 30s"),
        (3600 + 300, "1h 05m"),
        (86400 * 2 + 3600, "2d 01h"),
        (10**10, "∞"),
    ],
)
def test_fmt_duration(seconds: float | None, expected: str) -> None:
    assert fmt_duration(seconds) == expected


def test_truncate_marks_the_cut_and_flattens_newlines() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("a\nmulti-line\n  error", 100) == "a multi-line error"
    cut = truncate("x" * 50, 10)
    assert len(cut) == 10 and cut.endswith("…")


def test_memory_bar_fills_in_proportion_and_colours_by_fullness() -> None:
    bar = memory_bar(16 * GiB, 64 * GiB, width=8)
    assert bar.plain == "██░░░░░░ 16.0/64.0 GB"
    assert any(span.style == "green" for span in bar.spans)
    full = memory_bar(60 * GiB, 64 * GiB, width=8)
    assert full.plain.startswith("████████")
    assert any(span.style == "red" for span in full.spans)
    assert any(span.style == "yellow" for span in memory_bar(50, 64, width=8).spans)


def test_memory_bar_splits_models_other_use_free_and_reserve() -> None:
    bar = memory_bar(20 * GiB, 100 * GiB, width=10, other=30 * GiB, budget=80 * GiB)
    assert bar.plain == "██▒▒▒░░░·· 20.0+30.0/100.0 GB"
    styles = {bar.plain[s.start]: s.style for s in bar.spans}
    assert styles["▒"] == "magenta" and styles["█"] == "green"
    # Other use past what is left is cut to the total; a negative one is none.
    assert memory_bar(90 * GiB, 100 * GiB, width=10, other=50 * GiB).plain.startswith("█████████▒")
    assert memory_bar(10 * GiB, 100 * GiB, width=10, other=-5).plain.endswith(" 10.0/100.0 GB")


def test_memory_bar_unknown_keeps_width() -> None:
    assert memory_bar(None, None, width=10).plain.startswith("unknown   ")
    assert memory_bar(5, 0).plain.startswith("unknown")


def test_node_row_shows_status_memory_load_and_error() -> None:
    snap, _ = fixed_cluster()
    mac = node_row(snap.nodes["mac-studio"], snap, FIXED_NOW)
    assert len(mac) == len(NODE_COLUMNS)
    assert mac[NODE_COL["name"]].plain == "mac-studio"
    assert mac[NODE_COL["kind"]].plain == "lmstudio"
    assert mac[NODE_COL["status"]].plain == "healthy"
    assert mac[NODE_COL["status"]].style == "bold green"
    # 25.3 GB in its two models, 46.0 GB more in use on the host by its own figure.
    assert mac[NODE_COL["memory"]].plain.endswith("25.3+46.0/192.0 GB")
    assert mac[NODE_COL["models"]].plain == "2"
    assert mac[NODE_COL["in_flight"]].plain == "3"  # 3 + 0 busy slots on its instances
    assert mac[NODE_COL["tps"]].plain == "42.5"
    assert mac[NODE_COL["latency"]].plain == "12"
    assert mac[NODE_COL["error"]].plain == ""

    down = node_row(snap.nodes["old-mini"], snap, FIXED_NOW)
    assert down[NODE_COL["status"]].plain == "down"
    assert down[NODE_COL["status"]].style == "bold red"
    assert down[NODE_COL["memory"]].plain.startswith("unknown")
    assert down[NODE_COL["tps"]].plain == "—"
    assert down[NODE_COL["latency"]].plain == "3000"
    assert down[NODE_COL["error"]].plain.startswith("ConnectError")
    assert down[NODE_COL["error"]].plain.endswith("…")


@pytest.mark.parametrize(
    "health,style",
    [
        (Health.HEALTHY, "bold green"),
        (Health.SUSPECT, "bold yellow"),
        (Health.DOWN, "bold red"),
        (Health.UNKNOWN, "dim"),
    ],
)
def test_status_colour_per_health(health: Health, style: str) -> None:
    n = node("a", health=health)
    cell = node_row(n, snapshot([n]), FIXED_NOW)[NODE_COL["status"]]
    assert (cell.plain, cell.style) == (health.value, style)


def test_node_row_drained_and_server_reported_load() -> None:
    n = node(
        "v",
        NodeKind.OPENAI,
        drained=True,
        metrics=NodeMetrics(requests_processing=7, requests_waiting=5),
    )
    row = node_row(n, snapshot([n], [instance("v", "m", slots_busy=2, queued=1)]), FIXED_NOW)
    assert row[NODE_COL["status"]].plain == "healthy (drained)"
    # vLLM counts requests from every client; it sees more than the instance rows do.
    assert row[NODE_COL["in_flight"]].plain == "7"
    assert row[NODE_COL["queued"]].plain == "5"


def test_instance_row_cells() -> None:
    snap, _ = fixed_cluster()
    qwen = snap.instances[("mac-studio", "qwen3-30b-a3b")]
    row = instance_row(qwen, FIXED_NOW)
    assert len(row) == len(INSTANCE_COLUMNS)
    assert [c.plain for c in row] == [
        "qwen3-30b-a3b",
        "mac-studio",
        "loaded",
        "yes",
        "17.2 GB",
        "3/4",
        "0",
        "12s ago",
        "—",
    ]
    gemma = instance_row(snap.instances[("mac-studio", "gemma-3-12b")], FIXED_NOW)
    assert gemma[INST_COL["pinned"]].plain == ""
    assert gemma[INST_COL["last_used"]].plain == "2h ago"
    assert gemma[INST_COL["ttl"]].plain == "4m 30s"
    # Time passes with no new poll: relative cells move, the rest stays.
    later = instance_row(snap.instances[("mac-studio", "gemma-3-12b")], FIXED_NOW + 60)
    assert later[INST_COL["ttl"]].plain == "3m 30s"
    assert cells_equal(later[INST_COL["model"]], gemma[INST_COL["model"]])


def test_instance_row_loading_failed_and_forever() -> None:
    loading = instance("n", "m", state=InstanceState.LOADING, load_progress=0.4)
    assert instance_row(loading, FIXED_NOW)[INST_COL["state"]].plain == "loading 40%"
    failed = instance("n", "m", state=InstanceState.FAILED, error="out of memory")
    cell = instance_row(failed, FIXED_NOW)[INST_COL["state"]]
    assert cell.plain == "failed: out of memory" and cell.style == "bold red"
    forever = instance("n", "m", expires_at=FIXED_NOW + 10**10)  # Ollama keep_alive < 0
    assert instance_row(forever, FIXED_NOW)[INST_COL["ttl"]].plain == "∞"
    # In-flight through lmtui above the polled busy count wins.
    busy = instance("n", "m", slots_busy=0, in_flight=2, slots_total=4)
    assert instance_row(busy, FIXED_NOW)[INST_COL["slots"]].plain == "2/4"


@pytest.mark.parametrize(
    ("size", "source", "cell"),
    [
        (int(4.5 * GiB), "server", "4.5 GB"),
        (int(4.5 * GiB), "seen", "~4.5 GB"),  # the router dropped meta when it unloaded
        (int(4.5 * GiB), "config", "~4.5 GB"),  # [[models]] size_gb
        (300 * 1024**2, "seen", "~300 MB"),
        (None, None, "?"),  # nobody knows: placement assumes a default
    ],
)
def test_size_cell_says_where_the_figure_came_from(
    size: int | None, source: str | None, cell: str
) -> None:
    inst = instance("n", "m", size_bytes=size, size_source=source)
    assert instance_row(inst, FIXED_NOW)[INST_COL["size"]].plain == cell


def test_instance_row_key_and_filter() -> None:
    inst = instance("gpu-box", "llama3.1:8b", "llama3.1:8b#2")
    assert instance_row_key(inst) == "gpu-box/llama3.1:8b#2"
    assert instance_matches(inst, "")
    assert instance_matches(inst, "LLAMA")
    assert instance_matches(inst, "gpu")
    assert instance_matches(inst, "#2")
    assert not instance_matches(inst, "qwen")


def test_header_totals_and_source() -> None:
    snap, _ = fixed_cluster()
    text = header_text(snap, "/home/me/.config/lmtui/config.toml").plain
    assert "2/3 healthy" in text
    assert "130.2/256.0 GB" in text
    assert "models 3" in text  # the loading instance is not counted as loaded
    assert "in-flight 4" in text
    assert "queued 3" in text  # 1 in lmtui's queue + 2 inside gpu-box
    assert "tok/s 42.5" in text
    assert text.endswith("config.toml")
    assert "demo cluster" in header_text(snap, "demo").plain
    assert "read-only" in header_text(snap, "x", read_only=True).plain


def test_header_counts_peers_only_when_there_are_some() -> None:
    snap, _ = fixed_cluster()
    assert "peers" not in header_text(snap, "x").plain
    quiet = {"far": PeerState(name="far", served=12)}
    assert "peers 12" in header_text(replace(snap, peers=quiet), "x").plain
    busy = {
        "far": PeerState(name="far", served=12, in_flight=2),
        "cloud": PeerState(name="cloud", served=3, budget=3, budget_used=3),
    }
    text = peers_text(replace(snap, peers=busy))
    assert text.plain == "15 (+2 now) cloud budget spent"
    assert any("red" in str(span.style) for span in text.spans)
    failing = {"far": PeerState(name="far", failed=1, last_error="HTTP 500")}
    assert peers_text(replace(snap, peers=failing)).plain == "0 far failing"


def test_header_context_says_strategy_mode_and_source() -> None:
    text = header_context("http://pool:8765", strategy="spread", mode="attached").plain
    assert text == "strategy spread  attached  http://pool:8765"
    # Not known yet (the engine has not answered): left out, not guessed.
    assert header_context("demo").plain == "embedded  demo cluster"

    assert "no config found" in DEMO_BANNER


def test_event_line_has_time_and_level_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        line = event_line(Event(FIXED_NOW, EventKind.NODE_HEALTH, "n is down", level=Level.ERROR))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line.plain == "22:13:20 n is down"
    assert any(s.style == "bold red" for s in line.spans)


def test_cells_equal_sees_style_changes() -> None:
    assert cells_equal(Text("x", style="red"), Text("x", style="red"))
    assert not cells_equal(Text("x", style="red"), Text("x", style="green"))
    assert not cells_equal(Text("x"), Text("y"))
    assert not cells_equal(Text("1", justify="right"), Text("1"))


@pytest.mark.parametrize(
    ("last_used", "expires_at"),
    [(-12, 270), (-59, 30), (-3600, None), (None, 10**12), (-1, -5)],
)
@pytest.mark.parametrize("later", [0.0, 1.0, 61.0, 4000.0])
def test_an_aged_row_is_the_row_drawn_afresh(
    last_used: float | None, expires_at: float | None, later: float
) -> None:
    """The model table's clock tick remakes two cells; they must be the cells a full
    ``instance_row`` draws at the later time, the other seven unchanged."""
    inst = instance(
        "mac-studio",
        "qwen3",
        last_used=None if last_used is None else FIXED_NOW + last_used,
        expires_at=None if expires_at is None else FIXED_NOW + expires_at,
    )
    drawn = instance_row(inst, FIXED_NOW, 2)
    aged = instance_row_aged(drawn, instance_ages(inst, FIXED_NOW + later))
    fresh = instance_row(inst, FIXED_NOW + later, 2)
    assert [(c.plain, c.style, c.justify, c.spans) for c in aged] == [
        (c.plain, c.style, c.justify, c.spans) for c in fresh
    ]
