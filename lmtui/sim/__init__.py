"""Simulated LM Studio, Ollama, llama.cpp and vLLM servers on loopback.

Real HTTP servers with the real payload shapes, driven by a small model of time (load,
prompt, decode, TTL) scaled by ``time_scale``. Used by the demo cluster, by the adapters'
tests and by the benchmarks. Depends on ``lmtui.core`` only.
"""

from __future__ import annotations

from lmtui.sim.cluster import SimCluster
from lmtui.sim.demo import demo_specs
from lmtui.sim.faults import Faults
from lmtui.sim.node import SimNode
from lmtui.sim.spec import SimModel, SimNodeSpec
from lmtui.sim.traffic import TrafficGenerator

__all__ = [
    "Faults",
    "SimCluster",
    "SimModel",
    "SimNode",
    "SimNodeSpec",
    "TrafficGenerator",
    "demo_specs",
]
