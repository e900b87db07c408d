"""vLLM-like nodes, the cluster, the demo specs, the traffic generator and the sim CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sim_helpers import FAST, chat_body

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec, TrafficGenerator, demo_specs
from lmtui.sim import cli as sim_cli

QWEN32 = SimModel("Qwen/Qwen2.5-32B-Instruct", 19.9, params="32B", max_context=32768)


async def test_vllm_routes_and_metrics(client: httpx.AsyncClient) -> None:
    spec = SimNodeSpec("v", NodeKind.OPENAI, models=[QWEN32], parallel=1)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=0.05) as c:
        url, node = c.url("v"), c.node("v")
        r = await client.get(url + "/health")
        assert r.status_code == 200 and r.content == b""
        data = (await client.get(url + "/v1/models")).json()["data"]
        assert data[0]["id"] == QWEN32.key and data[0]["max_model_len"] == 32768
        tasks = [
            asyncio.create_task(
                client.post(url + "/v1/chat/completions", json=chat_body(QWEN32.key, max_tokens=60))
            )
            for _ in range(2)
        ]
        while node.state.processing() < 1 or node.state.waiting < 1:
            await asyncio.sleep(0.005)
        text = (await client.get(url + "/metrics")).text
        label = f'{{engine="0",model_name="{QWEN32.key}"}}'
        assert f"vllm:num_requests_running{label} 1.0" in text
        assert f"vllm:num_requests_waiting{label} 1.0" in text
        assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
        await asyncio.gather(*tasks)
        r = await client.post(url + "/v1/chat/completions", json=chat_body("other"))
        assert r.status_code == 404 and r.json()["object"] == "error"


async def test_demo_cluster_runs_with_traffic(client: httpx.AsyncClient) -> None:
    specs = demo_specs()
    assert [s.name for s in specs] == [
        "mac-studio-1",
        "mac-studio-2",
        "linux-ollama",
        "linux-llamacpp",
    ]
    kinds = {s.name: s.kind for s in specs}
    assert kinds["mac-studio-2"] is NodeKind.LMSTUDIO and specs[1].serial
    assert sum(len(s.models) for s in specs) >= 12
    async with asyncio.timeout(20), SimCluster(specs, time_scale=FAST, seed=3) as c:
        assert len({n.port for n in c.nodes}) == 4
        for name in kinds:
            assert c.url(name).startswith("http://127.0.0.1:")
        with pytest.raises(KeyError, match="mac-studio-1"):
            c.node("nope")
        gen = TrafficGenerator(c, rate_per_s=50.0, seed=1, max_in_flight=4)
        await gen.start()
        while gen.ok < 10:
            await asyncio.sleep(0.02)
        assert gen.in_flight <= 4
        await gen.stop()
        assert gen.failed == 0
        assert sum(len(n.records) for n in c.nodes) >= 10


def test_duplicate_names_are_refused() -> None:
    s = SimNodeSpec("a", NodeKind.OLLAMA)
    with pytest.raises(ValueError, match="duplicate"):
        SimCluster([s, SimNodeSpec("a", NodeKind.OLLAMA)])


def test_example_config_parses() -> None:
    path = Path(sim_cli.__file__).with_name("sim.example.toml")
    specs, options = sim_cli.load_config(path)
    assert [s.kind for s in specs] == [
        NodeKind.LMSTUDIO,
        NodeKind.OLLAMA,
        NodeKind.LLAMACPP,
        NodeKind.OPENAI,
    ]
    assert specs[0].models[2].kind == "embedding"
    assert options == {"time_scale": 1.0, "seed": 0}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[nodes]\nname = 1", "invalid TOML"),
        ('[[nodes]]\nname = "a"\nkind = "ollama"\ncolour = "red"\n', "'colour'"),
        (
            '[[nodes]]\nname = "a"\nkind = "ollama"\n[[nodes.models]]\nkey = "m"\nsize = 1\n',
            "nodes[0].models[0]: unknown key 'size'",
        ),
        ('[[nodes]]\nname = "a"\nkind = "lmstudioo"\n', "unknown kind"),
        ('[[nodes]]\nname = "a"\nkind = "ollama"\nparallel = "two"\n', "nodes[0].parallel"),
        ('[[nodes]]\nkind = "ollama"\n', "missing key 'name'"),
        ("wat = 1\n", "unknown key 'wat'"),
    ],
)
def test_cli_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert sim_cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_cli.main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_node_block_is_pasteable_toml() -> None:
    import tomllib

    spec = SimNodeSpec("box-1", NodeKind.OLLAMA, memory_gb=64, parallel=2, api_key="x")
    block = tomllib.loads(sim_cli.node_block(spec, "http://127.0.0.1:1234"))
    assert block["nodes"][0] == {
        "name": "box-1",
        "kind": "ollama",
        "url": "http://127.0.0.1:1234",
        "memory_gb": 64.0,
        "slots": 2,
        "api_key_env": "LMTUI_KEY_BOX_1",
    }


async def test_cli_serve_prints_blocks_and_stops(tmp_path: Path) -> None:
    import io
    import os
    import signal

    specs = [SimNodeSpec("a", NodeKind.LLAMACPP, models=[SimModel("m", 1.0)])]
    out = io.StringIO()
    task = asyncio.create_task(sim_cli.serve(specs, time_scale=FAST, seed=0, traffic=0, out=out))
    async with asyncio.timeout(10):
        while "Ctrl-C" not in out.getvalue():
            await asyncio.sleep(0.01)
        assert 'kind = "llamacpp"' in out.getvalue()
        os.kill(os.getpid(), signal.SIGINT)  # handled by serve's signal handler
        assert await task == 0


async def test_stopping_the_traffic_lets_a_cancellation_of_the_caller_through() -> None:
    """A second Ctrl-C cancels ``--serve`` while it stops the demo's traffic: stop() must
    not take that cancellation for one of its own tasks ending (it used to swallow it, so
    lmtui went on draining and exited 0 instead of 130)."""
    traffic = TrafficGenerator(SimCluster([]))

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a request closing its connection

    traffic._requests.add(asyncio.create_task(slow_to_stop()))
    stopper = asyncio.create_task(traffic.stop())
    await asyncio.sleep(0.05)  # stop() is waiting for the request task
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
