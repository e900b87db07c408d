"""Session affinity keeps per-user state only while it is on.

Found by the soak (bench/soak.py): with ``session_affinity = false`` (the default) every
distinct ``user`` still went into the dispatcher's affinity map, up to 10,000 entries, and
lmtui's RSS climbed steadily while a bot sent a new ``user`` per conversation.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from lmtui.core.model import Health, InstanceObservation, Node, NodeKind, NodeObservation
from lmtui.core.scheduler import RequestInfo, SchedulerSettings
from lmtui.engine.dispatch import Dispatcher
from lmtui.engine.store import Store


@pytest.mark.parametrize("affinity", [False, True])
async def test_users_are_remembered_only_with_session_affinity(affinity: bool) -> None:
    store = Store([Node("n", NodeKind.LLAMACPP, "http://n", health=Health.HEALTHY)])
    store.apply(NodeObservation("n", time.time(), 0.0, instances=(InstanceObservation("m", "m"),)))
    settings = dataclasses.replace(SchedulerSettings(), session_affinity=affinity)
    d = Dispatcher(store, {}, settings)
    try:
        for i in range(50):
            lease = await d.acquire(
                RequestInfo("m", user=f"user-{i}", request_id=f"r{i}"), deadline=time.time() + 5
            )
            d.release(lease)
        assert len(d._affinity) == (50 if affinity else 0)
    finally:
        d.close()
