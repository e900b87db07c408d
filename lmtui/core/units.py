"""How lmtui writes a size: one policy for tables, dialogs, event reasons and logs.

Sizes are binary (1 GB here is 1024³ bytes, as ``memory_gb`` and ``size_gb`` in the config
are), written "GB" everywhere so the same model never reads "4.5 GiB" in a dialog and
"4.5 GB" in a table. Below 1 GB the figure is in MB: embedding models are often a few
hundred MB, which "0.3 GB" would blur.
"""

from __future__ import annotations

GiB = 1024**3
MiB = 1024**2
#: What an unknown size reads as.
UNKNOWN = "—"


def fmt_bytes(n: int | None, unknown: str = UNKNOWN) -> str:
    """``"4.2 GB"`` with one decimal, ``"274 MB"`` below 1 GB, ``unknown`` for None."""
    if n is None:
        return unknown
    if abs(n) < GiB:
        return f"{n / MiB:.0f} MB"
    return f"{n / GiB:.1f} GB"
