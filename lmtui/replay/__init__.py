"""``lmtui replay``: lmtui's scheduler, placement and eviction in virtual time over a trace.

Modules: :mod:`~lmtui.replay.trace` reads CSV traces; :mod:`~lmtui.replay.scenario` holds
the cluster, the service setting and the seeded model rule; :mod:`~lmtui.replay.sim` is the
event loop that drives ``lmtui.core``; :mod:`~lmtui.replay.reference` the clairvoyant
orders; :mod:`~lmtui.replay.run` one comparison; :mod:`~lmtui.replay.report` the figures;
:mod:`~lmtui.replay.export` turns lmtui's request log into a trace; :mod:`~lmtui.replay.cli`
the two commands. Pure and synchronous: no asyncio, no sockets, nothing of the engine.
"""

from lmtui.replay.run import compare
from lmtui.replay.scenario import ModelSpec, NodeSpec, Scenario, assign_zipf
from lmtui.replay.sim import POLICIES, Replay, ReplayInvariantError, RunResult
from lmtui.replay.trace import TraceError, TraceRequest, parse_trace, read_trace

__all__ = [
    "POLICIES",
    "ModelSpec",
    "NodeSpec",
    "Replay",
    "ReplayInvariantError",
    "RunResult",
    "Scenario",
    "TraceError",
    "TraceRequest",
    "assign_zipf",
    "compare",
    "parse_trace",
    "read_trace",
]
