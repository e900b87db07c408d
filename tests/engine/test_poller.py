"""The poll loop and the store, with scripted backends (no network)."""

import asyncio

from lmtui.backends.base import Backend, BackendUnreachable
from lmtui.config import NodeConfig
from lmtui.core.health import HealthPolicy
from lmtui.core.model import Health, InstanceObservation, Node, NodeKind, NodeObservation
from lmtui.engine.poller import Poller
from lmtui.engine.store import Store
from lmtui.http import UpstreamPool


class Scripted(Backend):
    """Answers each poll after ``delay`` seconds; fails while ``failing`` is set."""

    kind = NodeKind.LLAMACPP

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__(
            NodeConfig(name=name, kind=NodeKind.LLAMACPP, url="http://127.0.0.1:1"),
            UpstreamPool("http://127.0.0.1:1"),  # never used: polls are scripted
            api_key=None,
        )
        self.delay = delay
        self.failing = False
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.models: tuple[str, ...] = ("m",)

    async def poll(self, now: float) -> NodeObservation:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            if self.failing:
                raise BackendUnreachable("connection refused")
            return NodeObservation(
                self.name,
                now,
                self.delay,
                instances=tuple(InstanceObservation(m, m) for m in self.models),
            )
        finally:
            self.active -= 1


class Broken(Scripted):
    async def poll(self, now: float) -> NodeObservation:
        raise KeyError("a bug in an adapter")


async def wait_for(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def store_for(*names: str) -> Store:
    return Store([Node(name=n, kind=NodeKind.LLAMACPP, url="http://x") for n in names])


async def test_polls_never_overlap_even_when_slower_than_the_interval() -> None:
    b = Scripted("a", delay=0.05)
    store = store_for("a")
    poller = Poller(store, {"a": b}, interval_s=0.01)
    await poller.start()
    await wait_for(lambda: b.calls >= 5)
    await poller.stop()
    assert b.max_active == 1


async def test_a_failing_node_goes_suspect_then_down_and_recovers() -> None:
    b = Scripted("a")
    store = store_for("a")
    poller = Poller(
        store, {"a": b}, interval_s=0.01, policy=HealthPolicy(down_after=2, max_backoff_s=0.05)
    )
    await poller.start()
    await wait_for(lambda: store.snapshot.nodes["a"].health is Health.HEALTHY)
    assert ("a", "m") in store.snapshot.instances
    b.failing = True
    await wait_for(lambda: store.snapshot.nodes["a"].health is Health.DOWN)
    node = store.snapshot.nodes["a"]
    assert node.last_error == "connection refused" and node.consecutive_failures >= 2
    b.failing = False
    await wait_for(lambda: store.snapshot.nodes["a"].health is Health.HEALTHY)
    await poller.stop()
    kinds = [e.message for e in store.events]
    assert any("down" in m for m in kinds) and any("was down" in m for m in kinds)


async def test_an_adapter_bug_marks_the_node_failing_without_stopping_other_loops() -> None:
    bad, good = Broken("bad"), Scripted("good")
    store = store_for("bad", "good")
    poller = Poller(store, {"bad": bad, "good": good}, interval_s=0.01)
    await poller.start()
    await wait_for(lambda: store.snapshot.nodes["bad"].health is Health.DOWN and good.calls >= 5)
    await poller.stop()
    assert "internal error: KeyError" in (store.snapshot.nodes["bad"].last_error or "")
    assert store.snapshot.nodes["good"].health is Health.HEALTHY


async def test_watch_coalesces_and_always_ends_on_the_latest_snapshot() -> None:
    store = store_for("a")
    seen: list[int] = []

    async def consume() -> None:
        async for snap in store.watch():
            seen.append(snap.version)
            await asyncio.sleep(0.02)  # a slow consumer

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for i in range(50):
        store.apply(NodeObservation("a", float(i), 0.0, instances=()))
    await wait_for(lambda: seen and seen[-1] == store.snapshot.version)
    task.cancel()
    assert len(seen) < 50  # bursts coalesce
    assert seen == sorted(seen)


async def test_a_refresh_never_overlaps_the_loops_poll_and_sees_a_fresh_answer() -> None:
    """``poll_once`` is also called by the dispatcher after a load and by the controller
    after an unload, while the node's own loop may be polling: still one poll at a time.
    A refresh that arrives during a poll gets a poll that starts after it (the running one
    may have read the node before the change), shared by every refresh waiting then."""
    b = Scripted("a", delay=0.05)
    store = store_for("a")
    poller = Poller(store, {"a": b}, interval_s=0.01)
    await poller.start()
    await wait_for(lambda: b.active == 1)
    calls = b.calls
    await asyncio.gather(*(poller.poll_once("a") for _ in range(5)))
    await poller.stop()
    assert b.max_active == 1
    # The five refreshes shared one poll after the loop's (the loop may have polled once
    # more in between, never five times).
    assert calls + 1 <= b.calls <= calls + 3
