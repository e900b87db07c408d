"""Simulated Ollama over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import httpx
from sim_helpers import FAST, chat_body

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec
from lmtui.sim.kinds.ollama import BUSY, parse_keep_alive

SMALL = SimModel("llama3.2:3b", 2.0, params="3B")
MID = SimModel("qwen2.5-7b-instruct", 5.0)
BIG = SimModel("gemma-3-12b-it", 8.0, params="12B")


def ollama(**kw: object) -> SimNodeSpec:
    base: dict[str, object] = {"models": [SMALL, MID, BIG], "loaded": [SMALL.key]}
    base.update(kw)
    return SimNodeSpec("ol", NodeKind.OLLAMA, **base)  # type: ignore[arg-type]


def test_parse_keep_alive() -> None:
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("-1") == -1
    assert parse_keep_alive("-1m") == -60
    assert parse_keep_alive("soon") is None


async def test_discovery_shapes(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([ollama()], time_scale=FAST) as c:
        url = c.url("ol")
        assert (await client.get(url + "/")).text == "Ollama is running"
        assert (await client.get(url + "/api/version")).json() == {"version": "0.12.6"}
        tags = (await client.get(url + "/api/tags")).json()["models"]
        assert [t["name"] for t in tags] == [
            "llama3.2:3b",
            "qwen2.5-7b-instruct:latest",
            "gemma-3-12b-it:latest",
        ]
        assert set(tags[0]) >= {"name", "model", "modified_at", "size", "digest", "details"}
        ps = (await client.get(url + "/api/ps")).json()["models"]
        assert len(ps) == 1
        entry = ps[0]
        assert entry["model"] == "llama3.2:3b" and entry["size"] == SMALL.size_bytes
        assert entry["size_vram"] == SMALL.size_bytes and entry["context_length"] > 0
        expires = datetime.fromisoformat(entry["expires_at"])
        assert expires.utcoffset() is not None  # RFC 3339 with an offset
        # keep_alive 5 min (simulated) ahead, i.e. 3 s real at this time scale
        assert 0 < expires.timestamp() - datetime.now().timestamp() < 10
        models = (await client.get(url + "/v1/models")).json()
        assert models["object"] == "list" and len(models["data"]) == 3


async def test_generate_load_and_unload(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([ollama()], time_scale=FAST) as c:
        url, node = c.url("ol"), c.node("ol")
        r = await client.post(url + "/api/generate", json={"model": MID.key, "keep_alive": "30m"})
        body = r.json()
        assert body["done"] is True and body["response"] == ""
        assert MID.key in node.loaded_models()
        r = await client.post(url + "/api/generate", json={"model": MID.key, "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert MID.key not in node.loaded_models()
        r = await client.post(
            url + "/api/chat", json={"model": MID.key, "messages": [], "keep_alive": -1}
        )
        assert r.json()["done_reason"] == "load"
        ps = (await client.get(url + "/api/ps")).json()["models"]
        forever = next(m for m in ps if m["model"] == "qwen2.5-7b-instruct:latest")
        assert datetime.fromisoformat(forever["expires_at"]).year > 2100
        r = await client.post(url + "/api/generate", json={"model": "nope", "prompt": "hi"})
        assert r.status_code == 404 and "not found" in r.json()["error"]


async def test_chat_streams_ndjson_and_honours_stream_false(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([ollama()], time_scale=FAST) as c:
        url = c.url("ol")
        body = {
            "model": SMALL.key,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 12},
        }
        r = await client.post(url + "/api/chat", json=body)
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert len(lines) >= 3 and all(not x["done"] for x in lines[:-1])
        final = lines[-1]
        assert final["done"] is True and final["done_reason"] == "length"
        assert final["eval_count"] == 12 and final["prompt_eval_count"] > 0
        text = "".join(x["message"]["content"] for x in lines[:-1])
        assert len(text.split()) == 12
        r = await client.post(
            url + "/api/generate",
            json={
                "model": SMALL.key,
                "prompt": "hi",
                "stream": False,
                "options": {"num_predict": 5},
            },
        )
        one = r.json()
        assert one["done"] is True and len(one["response"].split()) == 5
        oa = (await client.post(url + "/v1/chat/completions", json=chat_body(SMALL.key))).json()
        assert oa["usage"]["completion_tokens"] == 16


async def test_full_queue_answers_503(client: httpx.AsyncClient) -> None:
    spec = ollama(parallel=1, max_queue=1)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=0.05) as c:
        url, node = c.url("ol"), c.node("ol")
        long = {
            "model": SMALL.key,
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 200},
            "stream": False,
        }
        running = asyncio.create_task(client.post(url + "/api/chat", json=long))
        while node.state.processing() < 1:
            await asyncio.sleep(0.005)
        queued = asyncio.create_task(client.post(url + "/api/chat", json=long))
        while node.state.waiting < 1:
            await asyncio.sleep(0.005)
        r = await client.post(url + "/api/chat", json=long)
        assert r.status_code == 503
        assert r.json() == {"error": BUSY}
        for t in (running, queued):
            t.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)


async def test_loading_evicts_idle_models_lru_and_refuses_when_busy(
    client: httpx.AsyncClient,
) -> None:
    # 10 GB: SMALL (2) + MID (5) fit; BIG (8) needs both gone... or only what is idle.
    spec = ollama(memory_gb=10.0, loaded=[])
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url, node = c.url("ol"), c.node("ol")
        for m in (SMALL, MID):
            await client.post(url + "/api/generate", json={"model": m.key})
        assert node.loaded_models() == sorted([SMALL.key, MID.key])
        await client.post(url + "/api/generate", json={"model": BIG.key})
        assert node.loaded_models() == [BIG.key]
        assert node.memory_used_gb() <= 10.0
        # A busy model is never evicted: the load is refused with Ollama's error JSON.
        busy = asyncio.create_task(
            client.post(
                url + "/api/generate",
                json={
                    "model": BIG.key,
                    "prompt": "x",
                    "stream": False,
                    "options": {"num_predict": 250},
                },
            )
        )
        while node.state.processing() < 1:
            await asyncio.sleep(0.005)
        r = await client.post(url + "/api/generate", json={"model": MID.key})
        assert r.status_code == 500 and "more system memory" in r.json()["error"]
        assert (await busy).status_code == 200


async def test_max_loaded_models(client: httpx.AsyncClient) -> None:
    spec = ollama(max_loaded_models=1, loaded=[])
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url, node = c.url("ol"), c.node("ol")
        await client.post(url + "/api/generate", json={"model": SMALL.key})
        await client.post(url + "/api/generate", json={"model": MID.key})
        assert node.loaded_models() == [MID.key]


async def test_keep_alive_expiry(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([ollama(loaded=[])], time_scale=FAST) as c:
        url, node = c.url("ol"), c.node("ol")
        await client.post(url + "/api/generate", json={"model": MID.key, "keep_alive": "20s"})
        assert node.loaded_models() == [MID.key]
        while node.loaded_models():
            await asyncio.sleep(0.02)
        assert (await client.get(url + "/api/ps")).json() == {"models": []}


async def _expires_in(client: httpx.AsyncClient, url: str, key: str) -> float:
    for entry in (await client.get(url + "/api/ps")).json()["models"]:
        if entry["model"].startswith(key):
            return datetime.fromisoformat(entry["expires_at"]).timestamp() - time.time()
    raise AssertionError(f"{key} is not loaded")


YEAR = 365 * 86400


async def test_keep_alive_under_requests_follows_the_version(client: httpx.AsyncClient) -> None:
    """Since 0.1.49 a request without keep_alive keeps the model's; before, it reset it to
    OLLAMA_KEEP_ALIVE. /v1 ignores a keep_alive in the body on every version; a native
    request's keep_alive sets it."""
    specs = [
        SimNodeSpec("new", NodeKind.OLLAMA, models=[MID], version="0.12.6"),
        SimNodeSpec("old", NodeKind.OLLAMA, models=[MID], version="0.1.48"),
    ]
    async with asyncio.timeout(20), SimCluster(specs, time_scale=FAST) as c:
        for name, resets in (("new", False), ("old", True)):
            url = c.url(name)
            await client.post(url + "/api/generate", json={"model": MID.key, "keep_alive": -1})
            assert await _expires_in(client, url, MID.key) > YEAR
            # A /v1 request, even one that names a keep_alive (ignored there).
            body = chat_body(MID.key, max_tokens=2, keep_alive=-1)
            assert (await client.post(url + "/v1/chat/completions", json=body)).status_code == 200
            left = await _expires_in(client, url, MID.key)
            if resets:
                assert left < 10  # back to the 5 simulated minutes: 3 s real
            else:
                assert left > YEAR
            # A native request with its own keep_alive sets it, on both.
            native = {"model": MID.key, "prompt": "hi", "stream": False, "keep_alive": "10m"}
            native["options"] = {"num_predict": 2}
            assert (await client.post(url + "/api/generate", json=native)).status_code == 200
            assert 0 < await _expires_in(client, url, MID.key) < 10
            # And a native request without one: kept on the new version, reset on the old.
            del native["keep_alive"]
            await client.post(url + "/api/generate", json={"model": MID.key, "keep_alive": -1})
            assert (await client.post(url + "/api/generate", json=native)).status_code == 200
            assert (await _expires_in(client, url, MID.key) > YEAR) is not resets
