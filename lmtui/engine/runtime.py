"""Run-time state: the operator's choices layered over the config, with one owner.

Pins, the routing strategy and drained nodes start from the config and the overrides file
and change by command. ``RunState`` holds them and is the only place they live: the
controller is its one writer (``Controller.execute``), and everything the pure core takes
that depends on them is derived here, in one place — ``SchedulerSettings`` for the
dispatcher, ``FoldContext`` for the store, the nodes' starting ``drained`` flags. The other
components hold those derived values and receive new ones when a command changes the state;
none of them keeps a choice of its own.

Each change is saved to the overrides file (never to the user's config) as it is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from lmtui.config import GB, Config, Overrides
from lmtui.config.overrides import load_overrides, save_overrides
from lmtui.core.health import HealthPolicy
from lmtui.core.model import Node
from lmtui.core.scheduler import SchedulerSettings, Strategy
from lmtui.core.state import FoldContext, NodeSettings
from lmtui.engine.settings import scheduler_settings


class RunState:
    """The run-time choices (pins, strategy, drained nodes) over one config."""

    def __init__(
        self, config: Config, overrides: Overrides | None = None, path: Path | None = None
    ) -> None:
        self.config = config
        #: Where changes are saved; None keeps them in memory only (the demo, tests).
        self.path = path
        self.overrides = overrides or Overrides()
        self._effective = config.apply_overrides(self.overrides)

    @classmethod
    def load(cls, config: Config, path: Path | None) -> RunState:
        """The state the overrides file at ``path`` describes (none when ``path`` is None)."""
        return cls(config, load_overrides(path) if path is not None else None, path)

    # -- what is in force ---------------------------------------------------------------

    @property
    def pinned(self) -> frozenset[str]:
        return self._effective.pinned

    @property
    def strategy(self) -> Strategy:
        return Strategy(self._effective.strategy)

    @property
    def drained(self) -> frozenset[str]:
        return self._effective.drained

    # -- changes (the controller calls these) -------------------------------------------

    def set_pinned(self, model: str, pinned: bool) -> None:
        config_pinned = any(m.name == model and m.pinned for m in self.config.models)
        self._update(self.overrides.set_pinned(model, pinned, config_pinned=config_pinned))

    def set_drained(self, node: str, drained: bool) -> None:
        self._update(self.overrides.set_drained(node, drained))

    def set_strategy(self, strategy: Strategy) -> None:
        self._update(self.overrides.set_strategy(strategy.value))

    def _update(self, overrides: Overrides) -> None:
        self.overrides = overrides
        self._effective = self.config.apply_overrides(overrides)

    def save(self) -> None:
        """Write the overrides file. Raises OSError; the change is in force either way."""
        if self.path is not None:
            save_overrides(self.path, self.overrides)

    # -- what the core is given -----------------------------------------------------------

    def scheduler_settings(
        self, no_load_nodes: frozenset[str], no_unload_nodes: frozenset[str] = frozenset()
    ) -> SchedulerSettings:
        """The dispatcher's and the planner's settings; ``no_load_nodes`` /
        ``no_unload_nodes``: nodes whose backends cannot load / unload models (as far as
        they know now)."""
        return scheduler_settings(
            self.config, no_load_nodes, self.pinned, no_unload=no_unload_nodes
        )

    def fold_context(self) -> FoldContext:
        """How the store folds observations (health policy, per-node and per-model
        settings, pins)."""
        config = self.config
        return FoldContext(
            policy=HealthPolicy(
                down_after=config.poll.down_after, max_backoff_s=config.poll.max_backoff
            ),
            node_settings=MappingProxyType(
                {
                    n.name: NodeSettings(
                        slots=n.slots,
                        memory_bytes=int(n.memory_gb * GB) if n.memory_gb is not None else None,
                    )
                    for n in config.nodes
                }
            ),
            pinned=self.pinned,
            model_sizes=MappingProxyType(
                {m.name: int(m.size_gb * GB) for m in config.models if m.size_gb is not None}
            ),
            model_slots=MappingProxyType({m.name: m.slots for m in config.models if m.slots}),
        )

    def nodes(self) -> list[Node]:
        """The nodes as the store starts with them: from the config, drained as chosen."""
        config = self.config
        return [
            Node(
                name=n.name,
                kind=n.kind,
                url=n.url,
                reserved_bytes=config.reserved_bytes(n),
                drained=n.name in self.drained,
            )
            for n in config.nodes
        ]


def with_no_load_nodes(
    settings: SchedulerSettings,
    nodes: frozenset[str],
    no_unload: frozenset[str] | None = None,
) -> SchedulerSettings:
    """``settings`` with ``nodes`` as the nodes that cannot load and ``no_unload`` (when
    given) as those that cannot unload; unchanged when equal."""
    pool = settings.pool
    if no_unload is None:
        no_unload = pool.no_unload_nodes
    if nodes == pool.no_load_nodes and no_unload == pool.no_unload_nodes:
        return settings
    return replace(settings, pool=replace(pool, no_load_nodes=nodes, no_unload_nodes=no_unload))


def with_request_rate(settings: SchedulerSettings, rates: Mapping[str, float]) -> SchedulerSettings:
    """``settings`` with ``rates`` as the models' request rates (the pool manager's demand)."""
    return replace(settings, pool=replace(settings.pool, request_rate=rates))


def with_pinned(settings: SchedulerSettings, pinned: frozenset[str]) -> SchedulerSettings:
    """``settings`` with ``pinned`` as the pinned models: the one part of the scheduler's
    settings a command changes (what the engine learnt — capabilities, request rates —
    stays as it is)."""
    if pinned == settings.pool.pinned:
        return settings
    return replace(settings, pool=replace(settings.pool, pinned=pinned))
