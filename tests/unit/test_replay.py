"""lmtui replay: traces, the seeded model rule, the virtual-time loop and its invariants."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtui.config import GB
from lmtui.core.placement import PLACEMENT_RULES
from lmtui.replay import (
    ModelSpec,
    NodeSpec,
    Replay,
    Scenario,
    TraceError,
    TraceRequest,
    assign_zipf,
    compare,
    parse_trace,
    read_trace,
)
from lmtui.replay.cli import main
from lmtui.replay.reference import NextUse
from lmtui.replay.trace import scale_rate

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "azure-conv-500.csv"


def node(name: str = "n", gb: float = 20, **kw: Any) -> NodeSpec:
    # Loads take exactly load_fixed_s: the disk is as fast as can be.
    fields: dict[str, Any] = {"reserved_gb": 0, "load_fixed_s": 1.0, "disk_gb_s": 1e12}
    fields.update(kw)
    return NodeSpec(name, gb, **fields)


def model(name: str, gb: float = 10, **kw: Any) -> ModelSpec:
    return ModelSpec(name, int(gb * GB), **kw)


def reqs(*spec: tuple[float, str], tokens_out: int = 0) -> list[TraceRequest]:
    return [TraceRequest(at, m, 0, tokens_out) for at, m in spec]


def without_speed(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "speed"}


# -- traces ----------------------------------------------------------------------------


def test_azure_trace_reads_times_from_zero_and_a_last_line_without_newline() -> None:
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109"
    )
    got = parse_trace(io.StringIO(text))
    assert [r.model for r in got] == [None, None]
    assert got[0].at == 0.0
    assert got[1].at == pytest.approx(4.314579, abs=1e-5)
    assert (got[1].tokens_in, got[1].tokens_out) == (396, 109)


def test_fixture_slice_of_the_azure_trace() -> None:
    got = read_trace(FIXTURE)
    assert len(got) == 500
    assert all(a.at <= b.at for a, b in itertools.pairwise(got))


def test_export_log_layout_has_models_and_falls_back_to_the_logged_duration() -> None:
    text = (
        "at,model,node,queue_wait_s,ttft_s,duration_s,tokens_in,tokens_out,outcome\n"
        "1700000010.5,qwen,n1,0.5,0.1,3.5,,,ok\n"
        "1700000000.0,gemma,n1,0,0.1,1.0,100,20,ok\n"
    )
    got = parse_trace(io.StringIO(text))
    assert [(r.at, r.model) for r in got] == [(0.0, "gemma"), (10.5, "qwen")]
    assert got[0].service_s is None and got[1].service_s == 3.0


@pytest.mark.parametrize(
    "text,where",
    [
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,3\n", ":2:"),
        ("when,ContextTokens,GeneratedTokens\n1,2,3\n", ":1: no time column"),
        ("", "empty file"),
        ("at,tokens_in,tokens_out\n", "no requests"),
    ],
)
def test_a_bad_trace_names_the_line(text: str, where: str) -> None:
    with pytest.raises(TraceError, match=where):
        parse_trace(io.StringIO(text), "t.csv")


def test_rate_scale_stretches_arrivals() -> None:
    got = scale_rate(reqs((0, "a"), (10, "a")), 0.25)
    assert [r.at for r in got] == [0, 40]


# -- the model rule --------------------------------------------------------------------


def test_zipf_assignment_is_seeded_and_documented() -> None:
    trace = read_trace(FIXTURE)
    a, models_a, rule = assign_zipf(trace, n_models=60, seed=3)
    b, models_b, _ = assign_zipf(trace, n_models=60, seed=3)
    c, _, _ = assign_zipf(trace, n_models=60, seed=4)
    assert a == b and models_a == models_b
    assert [r.model for r in a] != [r.model for r in c]
    assert all(4 * GB <= m.size_bytes <= 40 * GB for m in models_a)
    counts = {m.name: sum(r.model == m.name for r in a) for m in models_a}
    assert max(counts, key=counts.__getitem__) == "m01"
    assert rule["seed"] == 3 and "zipf(s=1)" in rule["rule"]


def test_next_use() -> None:
    nxt = NextUse(reqs((1, "a"), (5, "a"), (2, "b")))
    assert nxt.after("a", 0) == 1 and nxt.after("a", 1) == 0 and nxt.after("a", 2) == 3
    assert nxt.after("a", 6) == float("inf") and nxt.after("zz", 0) == float("inf")


# -- the loop, on cases worked by hand ---------------------------------------------------


def test_clairvoyant_reference_beats_lru_on_a_cycle_bigger_than_the_node() -> None:
    # Room for two of three models, asked for in a cycle a b c a b c a b c: LRU always
    # evicts the one needed next (nine loads). Furthest next use: c evicts b, a hits, b
    # evicts a, c hits, a evicts c, b hits, c loads: six.
    trace = reqs(*((10.0 * k, "abc"[k % 3]) for k in range(9)))
    sc = Scenario(
        nodes=(node(),),
        models=(model("a"), model("b"), model("c")),
        service="instant",
        min_residency_s=0,
    )
    rep = compare(trace, sc, ["lru"])
    assert rep["policies"]["lru"]["cold_loads"] == 9
    assert rep["reference_variants"]["furthest"]["cold_loads"] == 6
    assert rep["reference"]["cold_loads"] == 6
    assert rep["policies"]["lru"]["vs_reference"]["cold_loads"] == 1.5
    assert rep["policies"]["lru"]["first_loads"] == 3
    assert "not a proven optimum" in rep["reference"]["note"]


def test_a_busy_instance_is_not_evicted_the_next_model_stalls_until_it_is_done() -> None:
    # One model fits. a: load 1 s, served at 1 for 10 s (100 tokens at 10/s). b arrives at
    # 2, finds a busy: stalls until 11, loads until 12.
    sc = Scenario(
        nodes=(node(gb=10, decode_tps=10),), models=(model("a"), model("b")), min_residency_s=0
    )
    res = Replay(sc, reqs((0, "a"), (2, "b"), tokens_out=100), "lru", audit=True).run()
    assert res.waits == pytest.approx([1.0, 10.0])
    assert (res.loads, res.evictions, res.stalls) == (2, 1, 1)
    assert res.stall_s == pytest.approx(9.0)
    assert res.duration_s == pytest.approx(22.0)
    assert res.nodes["n"].busy_s == pytest.approx(20.0)


def test_requests_wait_for_a_slot_and_a_loaded_model_is_a_hit() -> None:
    sc = Scenario(nodes=(node(slots=1, decode_tps=10),), models=(model("a"),))
    res = Replay(sc, reqs((0, "a"), (0.5, "a"), (5, "a"), tokens_out=10), "lru").run()
    # load until 1; first served 1-2, second 2-3; third at 5 finds it loaded and free.
    assert res.waits == pytest.approx([1.0, 1.5, 0.0])
    assert (res.loads, res.hits) == (1, 1)


def test_min_residency_holds_a_young_model_and_a_wake_up_ends_the_stall() -> None:
    sc = Scenario(
        nodes=(node(gb=10),), models=(model("a"), model("b")), service="instant", min_residency_s=30
    )
    res = Replay(sc, reqs((0, "a"), (2, "b")), "lru", audit=True).run()
    # a is loaded at 1 and may go at 31; b loads 31-32.
    assert res.waits[1] == pytest.approx(30.0, abs=1e-3)
    assert res.stalls == 1


def test_a_pinned_model_is_loaded_before_traffic_and_never_evicted() -> None:
    sc = Scenario(
        nodes=(node(gb=20),),
        models=(model("p", pinned=True), model("a"), model("b")),
        service="instant",
        min_residency_s=0,
    )
    res = Replay(sc, reqs((5, "a"), (10, "b"), (15, "p"), (20, "a")), "lru", audit=True).run()
    assert res.hits == 1  # only p, loaded at the start
    assert res.loads == 4  # p, a, b (evicting a), a (evicting b)


def test_a_model_that_fits_nowhere_is_rejected() -> None:
    sc = Scenario(nodes=(node(gb=10),), models=(model("big", 30),))
    res = Replay(sc, reqs((0, "big")), "lru").run()
    assert (res.served, res.rejected, res.loads) == (0, 1, 0)


def test_queue_timeout_expires_waiting_requests() -> None:
    sc = Scenario(
        nodes=(node(gb=10, slots=1, decode_tps=1),),
        models=(model("a"),),
        queue_timeout_s=5,
    )
    res = Replay(sc, reqs((0, "a"), (0, "a"), tokens_out=100), "lru").run()
    assert (res.served, res.expired) == (1, 1)


def test_replay_is_deterministic_for_a_seed() -> None:
    trace, models, rule = assign_zipf(read_trace(FIXTURE), n_models=20, seed=7)
    sc = Scenario(nodes=(node("a", 64), node("b", 32)), models=models, assignment=rule)
    first = compare(trace, sc)
    second = compare(trace, sc)
    assert without_speed(first) == without_speed(second)
    assert set(first["policies"]) == {"lru", "cost", "gdsf"}
    assert json.dumps(without_speed(first))  # plain data


def test_gdsf_waits_for_a_load_under_way_rather_than_evict_the_hot_model() -> None:
    # 20 GB: "hot" (8 GB, twice a second) and two rare models (6 GB each) that arrive at
    # 10 and 10.1 fill it while they load (1 s each). A third rare one at 10.2 finds only
    # hot evictable. LRU evicts hot, whose next request (10.5) must load it again; gdsf
    # waits until the first rare one is loaded and served (11), and evicts that instead.
    sc = Scenario(
        nodes=(node(gb=20),),
        models=(model("hot", 8), model("r1", 6), model("r2", 6), model("r3", 6)),
        service="instant",
        min_residency_s=0,
    )
    trace = sorted(
        reqs(*((0.5 * k, "hot") for k in range(60)), (10.0, "r1"), (10.1, "r2"), (10.2, "r3"))
    )
    lru = Replay(sc, trace, "lru", audit=True).run()
    gdsf = Replay(sc, trace, "gdsf", audit=True).run()
    assert (lru.loads, gdsf.loads) == (5, 4)
    assert (gdsf.stalls, gdsf.evictions) == (1, 1)
    # r3 waits for r1's load (until 11) and then for its own (until 12); nobody else waits
    # longer than a load.
    assert max(gdsf.waits) == pytest.approx(1.8)
    assert sum(gdsf.waits) < sum(lru.waits)
    assert Replay(sc, trace, "gdsf").skip_bigger is False  # see Replay._pump_stalled


# -- invariants, on random traces and clusters --------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Scenario, list[TraceRequest]]:
    n_models = draw(st.integers(1, 6))
    models = tuple(
        model(f"m{k}", draw(st.integers(1, 12)), pinned=draw(st.booleans()) and k == 0)
        for k in range(n_models)
    )
    nodes = tuple(
        node(f"n{k}", draw(st.integers(8, 30)), slots=draw(st.integers(1, 3)), decode_tps=10)
        for k in range(draw(st.integers(1, 3)))
    )
    gaps = draw(st.lists(st.floats(0, 5), min_size=1, max_size=40))
    at, trace = 0.0, []
    for gap in gaps:
        at += gap
        trace.append(
            TraceRequest(at, f"m{draw(st.integers(0, n_models - 1))}", 0, draw(st.integers(0, 60)))
        )
    # Some nodes share a machine: the audit checks each host's budget too.
    hosts = {n.name: f"h{draw(st.integers(0, 1))}" for n in nodes if draw(st.booleans())}
    sc = Scenario(
        nodes=nodes,
        models=models,
        service=draw(st.sampled_from(["busy", "instant"])),
        strategy=draw(st.sampled_from(["efficiency", "spread"])),
        placement=draw(st.sampled_from(PLACEMENT_RULES)),
        hosts=hosts,
        min_residency_s=draw(st.sampled_from([0.0, 3.0])),
    )
    return sc, trace


@settings(max_examples=120, deadline=None)
@given(scenarios(), st.sampled_from(["lru", "cost", "gdsf", "furthest", "furthest_size"]))
def test_plans_stay_within_budget_and_unload_only_idle_unpinned_instances(
    case: tuple[Scenario, list[TraceRequest]], policy: str
) -> None:
    from lmtui.replay import reference

    sc, trace = case
    order = reference.order(policy, trace) if policy.startswith("furthest") else None
    # audit raises ReplayInvariantError on a plan over a node's budget (checked at every
    # load, the only step that adds memory) or one that unloads a busy or pinned instance.
    res = Replay(sc, trace, policy, order=order, audit=True).run()
    assert res.served + res.rejected + res.expired == len(trace)
    assert all(w >= 0 for w in res.waits)
    assert res.first_loads <= res.loads
    for name, st_ in res.nodes.items():
        assert st_.in_flight == 0
        assert st_.byte_s <= res.budgets[name] * res.duration_s + 1


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.sampled_from(["lru", "cost"]))
def test_not_asking_bigger_stalled_models_changes_no_decision(
    case: tuple[Scenario, list[TraceRequest]], policy: str
) -> None:
    sc, trace = case
    fast = Replay(sc, trace, policy).run()
    slow = Replay(sc, trace, policy)
    slow.skip_bigger = False
    exact = slow.run()
    fast.wall_s = exact.wall_s = 0.0
    assert fast == exact


# -- the command -------------------------------------------------------------------------


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(FIXTURE), "--requests", "200", "--json", "--seed", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""  # no progress when stderr is not a terminal
    rep = json.loads(out)
    assert set(rep) >= {"policies", "reference", "scenario"}
    assert set(rep["policies"]) == {"lru", "cost", "gdsf"}
    for f in (*rep["policies"].values(), rep["reference"]):
        assert {"cold_loads", "reload_s", "hit_ratio", "wait_p50_s", "wait_p99_s"} <= set(f)
        assert set(f["nodes"]) == {"mac-512", "mac-192", "mac-64"}
    assert rep["scenario"]["assignment"]["seed"] == 2
    assert rep["scenario"]["requests"] == 200


def test_cli_table_one_policy_on_given_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--requests", "100", "--policy", "lru", "--nodes", "128,64", "--service", "instant"]
    code = main([str(FIXTURE), *args, "--rate-scale", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "reference (" in out and "not a proven optimum" in out
    assert "zipf(s=1) over 60 models" in out and "n1-128" in out and "rate ×0.5" in out
    assert "\ncost " not in out


def test_cli_progress_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(FIXTURE), "--requests", "400", "--policy", "lru", "--progress"]) == 0
    assert "requests" in capsys.readouterr().err


def test_cli_cluster_from_lmtui_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[pool]\nreserved_gb = 4\nmin_residency = 0\n[router]\nstrategy = "spread"\n'
        '[[nodes]]\nname = "big"\nkind = "ollama"\nurl = "http://big:11434"\n'
        "memory_gb = 96\nslots = 2\n"
    )
    assert main([str(FIXTURE), "--requests", "50", "--cluster", str(cfg), "--json"]) == 0
    sc = json.loads(capsys.readouterr().out)["scenario"]
    assert sc["nodes"][0] | {"load_s": "", "service_s": ""} == {
        "name": "big",
        "memory_gb": 96,
        "reserved_gb": 4,
        "slots": 2,
        "load_s": "",
        "service_s": "",
    }
    assert (sc["strategy"], sc["min_residency_s"]) == ("spread", 0)


def test_cli_cluster_hosts_and_placement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.toml"
    nodes = "".join(
        f'[[nodes]]\nname = "{n}"\nkind = "lmstudio"\nurl = "http://mac:{port}"\nmemory_gb = 64\n'
        for n, port in (("a", 1234), ("b", 1235))
    )
    cfg.write_text('[pool]\nplacement = "best-fit"\n' + nodes)
    args = [str(FIXTURE), "--requests", "80", "--cluster", str(cfg), "--json", "--audit"]
    assert main(args) == 0
    sc = json.loads(capsys.readouterr().out)["scenario"]
    assert sc["hosts"] == {"a": "addr:mac", "b": "addr:mac"}
    assert sc["placement"] == "best-fit"
    assert main([*args, "--placement", "most-free"]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"]["placement"] == "most-free"


def test_a_shared_host_holds_less_than_its_nodes_alone() -> None:
    # Two 20 GB nodes on one machine hold one 15 GB model at a time, not two.
    sc = Scenario(
        nodes=(node("a"), node("b")),
        models=(model("x", 15), model("y", 15)),
        service="instant",
        min_residency_s=0.0,
        hosts={"a": "mac", "b": "mac"},
    )
    trace = reqs((0, "x"), (5, "y"), (10, "x"), (15, "y"))
    shared = Replay(sc, trace, "lru", audit=True).run()
    apart = Replay(Scenario(**{**_fields(sc), "hosts": {}}), trace, "lru", audit=True).run()
    assert (apart.loads, shared.loads) == (2, 4)
    assert shared.evictions == 3


def _fields(sc: Scenario) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(sc, f.name) for f in dataclasses.fields(sc)}


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: p / "missing.csv", "missing.csv"),
        (lambda p: (p / "bad.csv").write_text("at,tokens_in\n1,2\n") and p / "bad.csv", "token"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    assert main([str(setup(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmtui replay: ") and message in err and err.count("\n") == 1


def test_cli_cluster_node_without_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[nodes]]\nname = "x"\nkind = "ollama"\nurl = "http://x:11434"\n')
    assert main([str(FIXTURE), "--cluster", str(cfg)]) == 2
    assert "memory_gb" in capsys.readouterr().err
