"""One size format: a model's size reads the same in a table, a dialog and a reason."""

from __future__ import annotations

from lmtui.core.model import GiB
from lmtui.core.placement import PoolSettings, place
from lmtui.core.units import fmt_bytes
from lmtui.tui import render


def test_one_formatter_for_every_view() -> None:
    assert render.fmt_bytes is fmt_bytes
    assert fmt_bytes(int(4.5 * GiB)) == "4.5 GB" and fmt_bytes(300 * 1024**2) == "300 MB"
    assert fmt_bytes(None) == "—" and fmt_bytes(None, unknown="?") == "?"


def test_a_placement_reason_uses_the_tables_units() -> None:
    from test_scheduler import mk_node, mk_snap

    snap = mk_snap([mk_node("a", 32)], [])
    p = place(snap, "m", 0.0, PoolSettings(size_overrides={"m": int(4.5 * GiB)}))
    assert "4.5 GB" in p.reason and "GiB" not in p.reason
