"""Simulated LM Studio over real loopback HTTP."""

from __future__ import annotations

import asyncio

import httpx
from sim_helpers import FAST, chat_body

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

QWEN = SimModel("qwen2.5-7b-instruct", 4.7)
LLAMA = SimModel("llama-3.1-8b-instruct", 4.9, params="8B")
EMBED = SimModel("nomic-embed-text-v1.5", 0.3, kind="embedding", params="137M", quant="F16")


def lms(**kw: object) -> SimNodeSpec:
    base: dict[str, object] = {"models": [QWEN, LLAMA, EMBED], "loaded": ["qwen2.5-7b-instruct"]}
    base.update(kw)
    return SimNodeSpec("lms", NodeKind.LMSTUDIO, **base)  # type: ignore[arg-type]


async def test_discovery_routes_and_shapes(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms()], time_scale=FAST) as c:
        url = c.url("lms")
        assert (await client.get(url + "/lmstudio-greeting")).json() == {"lmstudio": True}
        models = {m["key"]: m for m in (await client.get(url + "/api/v1/models")).json()["models"]}
        assert set(models) == {QWEN.key, LLAMA.key, EMBED.key}
        qwen = models[QWEN.key]
        assert qwen["type"] == "llm" and qwen["size_bytes"] == QWEN.size_bytes
        assert qwen["loaded_instances"][0]["config"]["parallel"] == 4
        assert models[LLAMA.key]["loaded_instances"] == []
        embed = models[EMBED.key]
        assert embed["type"] == "embedding" and "architecture" not in embed
        v0 = (await client.get(url + "/api/v0/models")).json()
        states = {m["id"]: m["state"] for m in v0["data"]}
        assert v0["object"] == "list"
        assert states == {QWEN.key: "loaded", LLAMA.key: "not-loaded", EMBED.key: "not-loaded"}
        # JIT on: /v1/models lists every downloaded model.
        ids = [m["id"] for m in (await client.get(url + "/v1/models")).json()["data"]]
        assert sorted(ids) == sorted([QWEN.key, LLAMA.key, EMBED.key])


async def test_v1_load_and_unload(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms()], time_scale=FAST) as c:
        url, node = c.url("lms"), c.node("lms")
        r = await client.post(
            url + "/api/v1/models/load", json={"model": LLAMA.key, "echo_load_config": True}
        )
        body = r.json()
        assert r.status_code == 200 and body["status"] == "loaded"
        assert body["type"] == "llm" and body["instance_id"] == LLAMA.key
        assert body["load_time_seconds"] > 0 and "load_config" in body
        assert node.loaded_models() == sorted([QWEN.key, LLAMA.key])
        # A second copy gets its own instance id.
        second = (await client.post(url + "/api/v1/models/load", json={"model": LLAMA.key})).json()[
            "instance_id"
        ]
        assert second == f"{LLAMA.key}:2"
        r = await client.post(url + "/api/v1/models/unload", json={"instance_id": LLAMA.key})
        assert r.json() == {"instance_id": LLAMA.key}
        r = await client.post(url + "/api/v1/models/unload", json={"instance_id": "nope"})
        assert r.status_code == 404 and "error" in r.json()
        assert (
            await client.post(url + "/api/v1/models/load", json={"model": "nope"})
        ).status_code == 404


async def test_memory_refusal_is_an_error_json(client: httpx.AsyncClient) -> None:
    big = SimModel("llama-3.3-70b-instruct", 42.5, params="70B")
    spec = lms(models=[QWEN, big], memory_gb=32.0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        r = await client.post(c.url("lms") + "/api/v1/models/load", json={"model": big.key})
        assert r.status_code == 400
        assert "insufficient system resources" in r.json()["error"]["message"]
        assert c.node("lms").loaded_models() == [QWEN.key]
        assert c.node("lms").memory_used_gb() == QWEN.size_gb


async def test_chat_jit_load_auto_evict_and_usage(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms(loaded=[])], time_scale=FAST) as c:
        url, node = c.url("lms"), c.node("lms")
        r = await client.post(url + "/v1/chat/completions", json=chat_body(QWEN.key))
        body = r.json()
        assert r.status_code == 200 and body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] == 16
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["message"]["content"]
        assert node.loaded_models() == [QWEN.key]
        # auto-evict: the next JIT load replaces the previous JIT-loaded model.
        await client.post(url + "/v1/chat/completions", json=chat_body(LLAMA.key))
        assert node.loaded_models() == [LLAMA.key]
        v0 = (await client.post(url + "/api/v0/chat/completions", json=chat_body(LLAMA.key))).json()
        assert set(v0["stats"]) >= {
            "tokens_per_second",
            "time_to_first_token",
            "generation_time",
            "stop_reason",
        }
        emb = (
            await client.post(
                url + "/v1/embeddings", json={"model": EMBED.key, "input": ["a", "b"]}
            )
        ).json()
        assert [d["index"] for d in emb["data"]] == [0, 1]
        assert len(emb["data"][0]["embedding"]) > 0


async def test_jit_off_refuses_unloaded_model(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms(jit=False)], time_scale=FAST) as c:
        r = await client.post(c.url("lms") + "/v1/chat/completions", json=chat_body(LLAMA.key))
        assert r.status_code == 404 and "error" in r.json()
        ids = [m["id"] for m in (await client.get(c.url("lms") + "/v1/models")).json()["data"]]
        assert ids == [QWEN.key]


async def test_jit_ttl_expires(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms(loaded=[])], time_scale=FAST) as c:
        url, node = c.url("lms"), c.node("lms")
        # 30 simulated seconds of TTL = 0.3 s real.
        await client.post(url + "/v1/chat/completions", json=chat_body(QWEN.key, ttl=30))
        assert node.loaded_models() == [QWEN.key]
        while node.loaded_models():
            await asyncio.sleep(0.02)
        entry = (await client.get(url + "/api/v1/models")).json()["models"][0]
        assert entry["loaded_instances"] == []


async def test_lmstudio_03_is_serial_and_has_no_v1(client: httpx.AsyncClient) -> None:
    spec = lms(version="0.3.31", loaded=[QWEN.key, LLAMA.key])
    # A slower clock so the two requests certainly overlap in arrival.
    async with asyncio.timeout(10), SimCluster([spec], time_scale=0.05) as c:
        url, node = c.url("lms"), c.node("lms")
        r = await client.get(url + "/api/v1/models")
        # What every real LM Studio does for an endpoint it lacks: 200 and an error body.
        assert r.status_code == 200
        assert r.json() == {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}
        assert (await client.get(url + "/api/v0/models")).status_code == 200
        await asyncio.gather(
            client.post(url + "/v1/chat/completions", json=chat_body(QWEN.key, max_tokens=40)),
            client.post(url + "/v1/chat/completions", json=chat_body(LLAMA.key, max_tokens=40)),
        )
        first, second = sorted(node.records, key=lambda j: j.started or 0)
        assert {first.model, second.model} == {QWEN.key, LLAMA.key}
        assert second.arrived < first.finished  # both were inside the server at once...
        assert second.started >= first.finished  # ...but the second waited for the first


async def test_lmstudio_04_runs_requests_in_parallel(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms()], time_scale=0.05) as c:
        url, node = c.url("lms"), c.node("lms")
        await asyncio.gather(
            *(
                client.post(url + "/v1/chat/completions", json=chat_body(QWEN.key, max_tokens=40))
                for _ in range(2)
            )
        )
        first, second = sorted(node.records, key=lambda j: j.started or 0)
        assert second.started < first.finished


async def test_parallel_limit_queues_inside_the_server(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms(parallel=2)], time_scale=0.05) as c:
        url, node = c.url("lms"), c.node("lms")
        await asyncio.gather(
            *(
                client.post(url + "/v1/chat/completions", json=chat_body(QWEN.key, max_tokens=40))
                for _ in range(3)
            )
        )
        jobs = sorted(node.records, key=lambda j: j.started or 0)
        # The third started only when one of the first two finished.
        assert jobs[2].started >= min(jobs[0].finished, jobs[1].finished)


async def test_api_key(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([lms(api_key="s3cret")], time_scale=FAST) as c:
        url = c.url("lms")
        assert (await client.get(url + "/api/v1/models")).status_code == 401
        ok = await client.get(url + "/api/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_unknown_routes_answer_200_with_an_error_on_every_version(
    client: httpx.AsyncClient,
) -> None:
    async with asyncio.timeout(10), SimCluster([lms()], time_scale=FAST) as c:
        r = await client.get(c.url("lms") + "/api/v2/nothing")
        assert r.status_code == 200
        assert r.json() == {"error": "Unexpected endpoint or method. (GET /api/v2/nothing)"}
        r = await client.delete(c.url("lms") + "/api/v1/models")  # a known path, wrong method
        assert r.status_code == 200
        assert r.json() == {"error": "Unexpected endpoint or method. (DELETE /api/v1/models)"}
