"""The embedded demo cluster: simulated nodes on loopback, some traffic, and a Config for them.

A new user runs ``lmtui`` with no config and sees this cluster live. It is built from the same
simulator pieces the tests use, so what the demo shows is what the adapters really read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from lmtui.config import Config, NodeConfig, PollConfig
from lmtui.sim import SimCluster, SimNodeSpec, TrafficGenerator, demo_specs


def config_for(cluster: SimCluster, specs: list[SimNodeSpec], *, interval: float = 1.0) -> Config:
    """A Config whose nodes are the running simulated nodes (memory from the specs)."""
    nodes = []
    for spec in specs:
        nodes.append(
            NodeConfig(
                name=spec.name,
                kind=spec.kind,
                url=cluster.url(spec.name),
                memory_gb=spec.memory_gb,
                # Ollama does not expose OLLAMA_NUM_PARALLEL, so it must be configured.
                slots=spec.parallel if spec.kind.value == "ollama" else None,
            )
        )
    return Config(nodes=nodes, poll=PollConfig(interval=interval))


@dataclass
class Demo:
    """A running demo cluster: its config and the traffic it generates."""

    config: Config
    traffic: TrafficGenerator

    def route_traffic_via(self, router_url: str | None) -> None:
        """Send the demo's traffic through lmtui's router (when it listens), so the screen
        shows lmtui's own routing, queueing and on-demand loads."""
        self.traffic.via = router_url


@asynccontextmanager
async def demo_cluster(
    *, traffic_per_s: float = 1.5, time_scale: float = 1.0, seed: int = 7
) -> AsyncIterator[Demo]:
    """Start the demo cluster (and its traffic) for the duration of the block."""
    specs = demo_specs()
    async with SimCluster(specs, time_scale=time_scale, seed=seed) as cluster:
        traffic = TrafficGenerator(cluster, rate_per_s=traffic_per_s, seed=seed)
        await traffic.start()
        try:
            yield Demo(config_for(cluster, specs), traffic)
        finally:
            await traffic.stop()
