"""Prometheus metrics: event counters, histograms, and snapshot gauges read at scrape time."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmtui.core.model import Health, HostMemory, Instance, Node, NodeKind, Snapshot
from lmtui.engine.metrics import OTHER_MODEL, Metrics

GiB = 1024**3
Labels = tuple[tuple[str, str], ...]


def scrape(metrics: Metrics) -> dict[str, dict[Labels, float]]:
    """Render and parse: sample name -> {sorted label pairs -> value}."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def lbl(**kw: str) -> Labels:
    return tuple(sorted(kw.items()))


def snapshot(
    *,
    in_flight: int = 0,
    health: Health = Health.HEALTHY,
    queue: int = 0,
    memory: HostMemory | None = None,
) -> Snapshot:
    nodes = {
        "mac": Node(
            "mac",
            NodeKind.LMSTUDIO,
            "http://127.0.0.1:1234",
            health=health,
            memory=memory,
            poll_latency_s=0.012,
            tokens_per_second=42.5,
        ),
        "box": Node("box", NodeKind.OLLAMA, "http://127.0.0.1:11434", health=Health.DOWN),
    }
    inst = Instance(
        "mac", "qwen3-8b", "qwen3-8b:1", slots_total=4, slots_busy=1, in_flight=in_flight
    )
    return Snapshot(
        version=1,
        nodes=MappingProxyType(nodes),
        instances=MappingProxyType({inst.key: inst}),
        queue_depth=MappingProxyType({"qwen3-8b": queue} if queue else {}),
    )


def test_request_counter_and_histograms_carry_labels() -> None:
    m = Metrics(Snapshot)
    m.request_done("qwen3-8b", "mac", "ok", queue_wait_s=0.002, ttft_s=0.4, duration_s=3.0)
    m.request_done("qwen3-8b", "mac", "ok", queue_wait_s=0.0, ttft_s=0.2, duration_s=1.0)
    m.request_done(
        "qwen3-8b", "mac", "upstream_error", queue_wait_s=0.0, ttft_s=None, duration_s=0.1
    )
    s = scrape(m)

    req = s["lmtui_requests_total"]
    assert req[lbl(model="qwen3-8b", node="mac", outcome="ok")] == 2
    assert req[lbl(model="qwen3-8b", node="mac", outcome="upstream_error")] == 1

    wait = s["lmtui_queue_wait_seconds_bucket"]
    assert wait[lbl(model="qwen3-8b", le="0.001")] == 2  # the two 0 s waits
    assert wait[lbl(model="qwen3-8b", le="0.0025")] == 3
    assert wait[lbl(model="qwen3-8b", le="600.0")] == 3
    assert s["lmtui_queue_wait_seconds_count"][lbl(model="qwen3-8b")] == 3

    # TTFT only for requests that got a first token; duration for every dispatched one.
    assert s["lmtui_time_to_first_token_seconds_count"][lbl(model="qwen3-8b", node="mac")] == 2
    assert s["lmtui_time_to_first_token_seconds_sum"][
        lbl(model="qwen3-8b", node="mac")
    ] == pytest.approx(0.6)
    assert s["lmtui_request_duration_seconds_count"][lbl(model="qwen3-8b", node="mac")] == 3
    assert s["lmtui_request_duration_seconds_sum"][
        lbl(model="qwen3-8b", node="mac")
    ] == pytest.approx(4.1)


def test_undispatched_requests_count_without_skewing_histograms() -> None:
    m = Metrics(Snapshot)
    m.request_done("big", None, "rejected_429", queue_wait_s=0.0, ttft_s=None, duration_s=0.0)
    m.request_done("big", None, "timeout_504", queue_wait_s=30.0, ttft_s=None, duration_s=30.0)
    s = scrape(m)
    req = s["lmtui_requests_total"]
    assert req[lbl(model="big", node="", outcome="rejected_429")] == 1
    assert req[lbl(model="big", node="", outcome="timeout_504")] == 1
    # The 429 never queued: only the 504's 30 s wait is in the histogram.
    assert s["lmtui_queue_wait_seconds_count"][lbl(model="big")] == 1
    assert s["lmtui_queue_wait_seconds_sum"][lbl(model="big")] == 30.0
    # Neither reached an instance, so no per-node duration series exists for them.
    assert not any(
        dict(k).get("model") == "big" for k in s.get("lmtui_request_duration_seconds_count", {})
    )


def test_load_eviction_route_counters() -> None:
    m = Metrics(Snapshot)
    m.load("qwen3-8b", "mac", "on_demand", ok=True, seconds=4.0)
    m.load("qwen3-8b", "box", "on_demand", ok=False, seconds=0.5)
    m.eviction("llama-70b", "mac", "lru")
    m.route("qwen3-8b", "mac", "loaded")
    m.route("qwen3-8b", "mac", "loaded")
    m.route("qwen3-8b", "box", "failover")
    s = scrape(m)
    loads = s["lmtui_loads_total"]
    assert loads[lbl(model="qwen3-8b", node="mac", reason="on_demand", ok="true")] == 1
    assert loads[lbl(model="qwen3-8b", node="box", reason="on_demand", ok="false")] == 1
    assert s["lmtui_load_seconds_bucket"][lbl(model="qwen3-8b", node="mac", le="5.0")] == 1
    assert s["lmtui_load_seconds_bucket"][lbl(model="qwen3-8b", node="mac", le="2.5")] == 0
    assert s["lmtui_evictions_total"][lbl(model="llama-70b", node="mac", reason="lru")] == 1
    routes = s["lmtui_routes_total"]
    assert routes[lbl(model="qwen3-8b", node="mac", reason="loaded")] == 2
    assert routes[lbl(model="qwen3-8b", node="box", reason="failover")] == 1


def test_gauges_follow_the_snapshot_at_scrape_time() -> None:
    current = [
        snapshot(in_flight=1, queue=3, memory=HostMemory(64 * GiB, 20 * GiB, source="psutil"))
    ]
    m = Metrics(lambda: current[0])
    s = scrape(m)
    inst = lbl(node="mac", model="qwen3-8b", instance="qwen3-8b:1")
    assert s["lmtui_queue_depth"][lbl(model="qwen3-8b")] == 3
    assert s["lmtui_in_flight"][inst] == 1
    assert s["lmtui_instance_slots"][inst] == 4
    assert s["lmtui_node_up"][lbl(node="mac", kind="lmstudio")] == 1
    assert s["lmtui_node_up"][lbl(node="box", kind="ollama")] == 0
    assert s["lmtui_node_memory_bytes"][lbl(node="mac", kind="total")] == 64 * GiB
    assert s["lmtui_node_memory_bytes"][lbl(node="mac", kind="available")] == 20 * GiB
    assert s["lmtui_node_poll_latency_seconds"][lbl(node="mac")] == pytest.approx(0.012)
    assert s["lmtui_node_tokens_per_second"][lbl(node="mac")] == pytest.approx(42.5)
    # The down node has no memory or latency reading: no made-up zeros.
    assert lbl(node="box", kind="total") not in s["lmtui_node_memory_bytes"]
    assert lbl(node="box") not in s["lmtui_node_poll_latency_seconds"]

    # The store publishes a new snapshot; the next scrape shows it with no call to Metrics.
    current[0] = snapshot(in_flight=3, queue=0, health=Health.SUSPECT)
    s = scrape(m)
    assert s["lmtui_in_flight"][inst] == 3
    assert s["lmtui_node_up"][lbl(node="mac", kind="lmstudio")] == 1  # suspect still routes
    assert "lmtui_queue_depth" not in s or lbl(model="qwen3-8b") not in s["lmtui_queue_depth"]
    assert "lmtui_node_memory_bytes" not in s

    current[0] = snapshot(health=Health.DOWN)
    assert scrape(m)["lmtui_node_up"][lbl(node="mac", kind="lmstudio")] == 0


def test_broken_snapshot_source_still_serves_counters() -> None:
    def boom() -> Snapshot:
        raise RuntimeError("store gone")

    m = Metrics(boom)
    m.route("m", "n", "loaded")
    s = scrape(m)
    assert s["lmtui_routes_total"][lbl(model="m", node="n", reason="loaded")] == 1
    assert "lmtui_node_up" not in s


def test_instances_have_separate_registries() -> None:
    a, b = Metrics(Snapshot), Metrics(Snapshot)
    a.route("m", "n", "loaded")
    assert scrape(a)["lmtui_routes_total"][lbl(model="m", node="n", reason="loaded")] == 1
    assert "lmtui_routes_total" not in scrape(b)


def test_every_metric_is_prefixed() -> None:
    m = Metrics(lambda: snapshot(memory=HostMemory(GiB, GiB)))
    m.request_done("m", "mac", "ok", queue_wait_s=0.0, ttft_s=0.1, duration_s=0.2)
    m.load("m", "mac", "preload", ok=True, seconds=1.0)
    m.eviction("m", "mac", "lru")
    m.route("m", "mac", "loaded")
    names = set(scrape(m))
    assert len(names) > 20
    assert all(n.startswith("lmtui_") for n in names), names


def test_model_label_cardinality_is_capped() -> None:
    m = Metrics(Snapshot, max_models=3)
    for i in range(50):
        m.request_done(f"junk-{i}", None, "error", queue_wait_s=0, ttft_s=None, duration_s=0)
    m.route("junk-1", "n", "loaded")  # a model seen before the cap keeps its name
    s = scrape(m)
    req = s["lmtui_requests_total"]
    models = {dict(k)["model"] for k in req}
    assert models == {"junk-0", "junk-1", "junk-2", OTHER_MODEL}
    assert req[lbl(model=OTHER_MODEL, node="", outcome="error")] == 47
    assert s["lmtui_routes_total"][lbl(model="junk-1", node="n", reason="loaded")] == 1


def test_a_model_the_cluster_does_not_know_never_becomes_a_label() -> None:
    """Five 8 MB model names used to grow the scrape by 40 MB each: an unknown model is
    one ``unknown`` label, and any name is cut at MAX_LABEL characters."""
    from lmtui.engine.metrics import MAX_LABEL, UNKNOWN_MODEL

    m = Metrics(Snapshot)
    for i in range(5):
        huge = f"{i}" * 8_000_000
        m.request_done(huge, None, "not_found", queue_wait_s=0, ttft_s=None, duration_s=0)
        m.request_done(huge, None, "bad_request", queue_wait_s=0, ttft_s=None, duration_s=0)
    m.request_done("x" * 10_000, "n", "ok", queue_wait_s=0, ttft_s=0.1, duration_s=0.2)
    body, _ = m.render()
    assert len(body) < 200_000
    req = scrape(m)["lmtui_requests_total"]
    assert req[lbl(model=UNKNOWN_MODEL, node="", outcome="not_found")] == 5
    assert req[lbl(model=UNKNOWN_MODEL, node="", outcome="bad_request")] == 5
    assert req[lbl(model="x" * MAX_LABEL, node="n", outcome="ok")] == 1


def test_histogram_bucket_bounds_are_inclusive() -> None:
    """Prometheus's ``le``: a value equal to a bound counts in that bound's bucket."""
    m = Metrics(Snapshot)
    m.request_done("m", "n", "ok", queue_wait_s=0.001, ttft_s=0.0025, duration_s=10.0)
    m.request_done("m", "n", "ok", queue_wait_s=0.0011, ttft_s=1e6, duration_s=1e6)
    s = scrape(m)
    wait = s["lmtui_queue_wait_seconds_bucket"]
    assert wait[lbl(model="m", le="0.001")] == 1
    assert wait[lbl(model="m", le="0.0025")] == 2
    ttft = s["lmtui_time_to_first_token_seconds_bucket"]
    assert ttft[lbl(model="m", node="n", le="0.001")] == 0
    assert ttft[lbl(model="m", node="n", le="0.0025")] == 1
    assert ttft[lbl(model="m", node="n", le="600.0")] == 1
    assert ttft[lbl(model="m", node="n", le="+Inf")] == 2
    dur = s["lmtui_request_duration_seconds_bucket"]
    assert dur[lbl(model="m", node="n", le="5.0")] == 0
    assert dur[lbl(model="m", node="n", le="10.0")] == 1
    assert s["lmtui_request_duration_seconds_sum"][lbl(model="m", node="n")] == 10.0 + 1e6
    assert "lmtui_request_duration_seconds_created" in s
