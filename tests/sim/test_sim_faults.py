"""Every fault a simulated node can show, seen by a real HTTP client."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sim_helpers import FAST, chat_body

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

M = SimModel("m", 1.0)


def spec(kind: NodeKind = NodeKind.LMSTUDIO) -> SimNodeSpec:
    return SimNodeSpec("n", kind, models=[M], loaded=["m"])


async def test_down_refuses_then_comes_back_on_the_same_port(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        url = node.url
        assert (await client.get(url + "/lmstudio-greeting")).status_code == 200
        await node.set_down(True)
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/lmstudio-greeting")
        await node.set_down(False)
        assert node.url == url
        assert (await client.get(url + "/lmstudio-greeting")).status_code == 200
        assert node.loaded_models() == ["m"]  # a partition, not a wipe


async def test_down_cuts_kept_alive_and_running_requests(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=0.1) as c:
        node = c.node("n")
        long = asyncio.create_task(
            client.post(node.url + "/v1/chat/completions", json=chat_body("m", max_tokens=250))
        )
        while node.state.processing() < 1:
            await asyncio.sleep(0.005)
        await node.set_down(True)
        with pytest.raises(httpx.TransportError):
            await long
        await node.set_down(False)


async def test_hang_times_the_client_out(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.hang = True
        with pytest.raises(httpx.ReadTimeout):
            await client.get(node.url + "/api/v1/models", timeout=0.2)
        node.faults.hang = False
        assert (await client.get(node.url + "/api/v1/models")).status_code == 200


async def test_slow_is_real_seconds_not_scaled(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.slow_s = 0.5  # at time_scale 0.01 a scaled delay would be 5 ms
        with pytest.raises(httpx.ReadTimeout):
            await client.get(node.url + "/api/v1/models", timeout=0.1)
        node.faults.slow_s = 0.0


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        (NodeKind.LMSTUDIO, lambda b: isinstance(b["error"]["message"], str)),
        (NodeKind.OLLAMA, lambda b: isinstance(b["error"], str)),
        (NodeKind.LLAMACPP, lambda b: b["error"]["code"] == 500),
        (NodeKind.OPENAI, lambda b: b["object"] == "error" and b["code"] == 500),
    ],
)
async def test_error_rate_one_answers_500_in_the_kinds_shape(
    client: httpx.AsyncClient, kind: NodeKind, shape: object
) -> None:
    async with asyncio.timeout(10), SimCluster([spec(kind)], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.error_rate = 1.0
        for _ in range(3):
            r = await client.get(node.url + "/v1/models")
            assert r.status_code == 500
            assert shape(r.json())  # type: ignore[operator]
        node.faults.error_rate = 0.0
        assert (await client.get(node.url + "/v1/models")).status_code == 200


async def test_drop_mid_stream_leaves_an_incomplete_stream(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.drop_mid_stream = True
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream(
                "POST",
                node.url + "/v1/chat/completions",
                json=chat_body("m", max_tokens=100, stream=True),
            ) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    received.append(line)
        data = [x for x in received if x.startswith("data: ")]
        # One event per token: a whole answer would be 100 tokens, the role and the finish.
        assert 1 <= len(data) < 100
        assert not any('"finish_reason":"length"' in x for x in data)
        assert "data: [DONE]" not in received
        assert node.records[-1].outcome == "dropped"
        # Non-streaming requests are unaffected.
        node.faults.drop_mid_stream = False
        ok = await client.post(node.url + "/v1/chat/completions", json=chat_body("m"))
        assert ok.status_code == 200


async def test_post_hang_leaves_the_polls_alone(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.post_hang = True
        assert (await client.get(node.url + "/api/v1/models")).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.post(node.url + "/v1/chat/completions", json=chat_body("m"), timeout=0.3)
        node.faults.post_hang = False
        ok = await client.post(node.url + "/v1/chat/completions", json=chat_body("m"))
        assert ok.status_code == 200


async def test_truncate_stream_ends_the_body_cleanly_half_way(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec()], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.truncate_stream = True
        async with client.stream(
            "POST",
            node.url + "/v1/chat/completions",
            json=chat_body("m", max_tokens=100, stream=True),
        ) as r:
            body = await r.aread()  # no RemoteProtocolError: the chunked body ends properly
        assert r.status_code == 200
        assert b"data: [DONE]" not in body and b'"finish_reason":"length"' not in body
        assert not body.endswith(b"\n\n")  # cut inside an event
        assert node.records[-1].outcome == "truncated"


async def test_memory_gb_makes_loads_fail_for_want_of_memory(client: httpx.AsyncClient) -> None:
    big = SimNodeSpec("n", NodeKind.LMSTUDIO, memory_gb=64.0, models=[M, SimModel("big", 8.0)])
    async with asyncio.timeout(10), SimCluster([big], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.memory_gb = 4.0
        r = await client.post(node.url + "/api/v1/models/load", json={"model": "big"})
        assert r.status_code == 400 and "insufficient system resources" in r.text
        node.faults.clear()
        r = await client.post(node.url + "/api/v1/models/load", json={"model": "big"})
        assert r.status_code == 200, r.text


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([spec(NodeKind.OLLAMA)], time_scale=FAST) as c:
        node = c.node("n")
        node.faults.malformed_json = True
        r = await client.get(node.url + "/api/ps")
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
        assert (await client.get(node.url + "/")).text == "Ollama is running"  # not JSON
        node.faults.malformed_json = False
        assert "models" in (await client.get(node.url + "/api/ps")).json()


async def test_stop_is_prompt_with_requests_cut_by_clients() -> None:
    # Clients that hang up mid-request wake the TTL timer as the node stops; stopping must
    # still finish (a wait_for race once made it hang forever).
    spec = SimNodeSpec("n", NodeKind.OLLAMA, models=[M], loaded=["m"], parallel=2)
    async with asyncio.timeout(10):
        for _ in range(3):
            cluster = SimCluster([spec], time_scale=1.0)
            await cluster.start()
            node = cluster.node("n")
            async with httpx.AsyncClient(timeout=5.0) as h:
                tasks = [
                    asyncio.create_task(
                        h.post(node.url + "/v1/chat/completions", json=chat_body("m"))
                    )
                    for _ in range(4)
                ]
                while node.in_flight() < 4:
                    await asyncio.sleep(0.005)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await cluster.stop()
            assert node.in_flight() == 0
