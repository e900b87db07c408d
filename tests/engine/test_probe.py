"""``lmtui probe`` against simulated nodes on loopback: a serial LM Studio 0.3 server, a
parallel 0.4 one, two ports of one host, a node that is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtui.cli import main
from lmtui.config import Config, NodeConfig
from lmtui.core.model import NodeKind
from lmtui.probe import Prober, Trial
from lmtui.sim import SimCluster, SimModel, SimNodeSpec


def spec(name: str, version: str, parallel: int = 4) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("m1", 2.0)],
        loaded=["m1"],
        parallel=parallel,
        version=version,
    )


def config_of(cluster: SimCluster, specs: list[SimNodeSpec]) -> Config:
    nodes = [NodeConfig(name=s.name, kind=s.kind, url=cluster.url(s.name)) for s in specs]
    return Config(nodes=nodes)


async def test_serial_and_parallel_servers_get_their_verdicts() -> None:
    specs = [spec("old", "0.3.9"), spec("new", "0.4.2", parallel=4)]
    # time_scale 1: a reply takes long enough (tenths of a second) that the scheduling
    # noise of a busy machine does not decide the verdict.
    async with SimCluster(specs, time_scale=1.0) as cluster:
        prober = Prober(config_of(cluster, specs), requests=4, max_tokens=8, timeout=30)
        trials, notes = await prober.run([])
    by = {t.target: t for t in trials}
    old, new = by["old/m1"], by["new/m1"]
    assert not old.errors and not new.errors
    assert old.verdict() == "serial" and old.parallel == 1
    assert new.parallel >= 3 and new.verdict().startswith("parallel ×")
    # Both nodes are on 127.0.0.1: the cross-port trial ran too, and these two servers
    # (separate processes' worth of state) do run side by side.
    (host,) = [t for t in trials if t.target.startswith("127.0.0.1")]
    assert host.requests == 2 and host.parallel == 2
    assert notes == []


async def test_a_down_node_and_an_unknown_name_are_notes_not_failures() -> None:
    specs = [spec("a", "0.4.2"), spec("b", "0.4.2")]
    async with SimCluster(specs, time_scale=0.05) as cluster:
        await cluster.node("b").set_down(True)
        prober = Prober(config_of(cluster, specs), requests=2, max_tokens=4, timeout=10)
        trials, notes = await prober.run(["a", "b", "zz"])
    assert [t.target for t in trials] == ["a/m1"]
    assert any(n.startswith("b: not probed") for n in notes)
    assert "zz: no such node in the config" in notes


def test_verdict_arithmetic() -> None:
    serial = Trial("n/m", 4, 1.0, wall_s=4.0, sum_s=10.0)
    assert serial.speedup == 2.5 and serial.verdict() == "parallel ×2"
    assert Trial("n/m", 4, 1.0, wall_s=4.0, sum_s=4.4).verdict() == "serial"
    full = Trial("n/m", 4, 1.0, wall_s=1.0, sum_s=4.0, slots_said=2)
    assert full.verdict() == "parallel ×4+"
    assert full.advice() == "slots = 4 or more: try --requests 8 (configured/polled: 2)"
    failed = Trial("n/m", 2, 1.0, wall_s=1.0, sum_s=0.0, errors=["x", "y"])
    assert failed.verdict() == "failed"


async def test_the_command_line_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = [spec("a", "0.4.2")]
    async with SimCluster(specs, time_scale=0.05) as cluster:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[nodes]]\nname = "a"\nkind = "lmstudio"\nurl = "{cluster.url("a")}"\n')
        import asyncio

        rc = await asyncio.to_thread(
            main, ["probe", "--config", str(cfg), "--requests", "2", "--json"]
        )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    (trial,) = out["trials"]
    assert trial["target"] == "a/m1" and trial["requests"] == 2 and "verdict" in trial


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["probe", "--requests", "99"])
    assert e.value.code == 2
