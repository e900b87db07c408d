"""A set of simulated nodes started and stopped together."""

from __future__ import annotations

import asyncio
from types import TracebackType

from lmtui.sim.node import SimNode
from lmtui.sim.spec import SimNodeSpec


class SimCluster:
    """Simulated nodes on loopback. ``async with SimCluster(specs) as c: c.url("name")``.

    ``time_scale`` multiplies every simulated duration (load, prompt, decode, TTL): 0.01
    makes a 10 s load take 0.1 s. It does not touch the ``slow_s`` fault or HTTP timeouts.
    """

    def __init__(self, specs: list[SimNodeSpec], *, time_scale: float = 1.0, seed: int = 0) -> None:
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate node names: {', '.join(dupes)}")
        self.time_scale = time_scale
        self.seed = seed
        self.nodes: list[SimNode] = [SimNode(s, time_scale=time_scale, seed=seed) for s in specs]
        self._by_name = {n.spec.name: n for n in self.nodes}

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every node; if one fails to start, stop the others and re-raise."""
        results = await asyncio.gather(*(n.start() for n in self.nodes), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)

    def node(self, name: str) -> SimNode:
        """The node called ``name`` (KeyError naming the known nodes otherwise)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no simulated node {name!r}; have {sorted(self._by_name)}") from None

    def url(self, name: str) -> str:
        return self.node(name).url
