"""Simulated llama.cpp llama-server (single and router mode), checked against real captures."""

from __future__ import annotations

import asyncio
import json

import httpx
from sim_helpers import FAST, FIXTURES, chat_body, fixture_json, sse_events

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

GEMMA = SimModel("gemma", 0.3, params="270M", max_context=32768)
ULYSSES = SimModel("ulysses", 6.0)
ETERNAL = SimModel("eternal", 6.0)


def single(**kw: object) -> SimNodeSpec:
    base: dict[str, object] = {"models": [GEMMA], "parallel": 2}
    base.update(kw)
    return SimNodeSpec("lc", NodeKind.LLAMACPP, **base)  # type: ignore[arg-type]


def router(**kw: object) -> SimNodeSpec:
    base: dict[str, object] = {
        "models": [ETERNAL, ULYSSES],
        "parallel": 2,
        "router_mode": True,
        "models_max": 1,
    }
    base.update(kw)
    return SimNodeSpec("rt", NodeKind.LLAMACPP, **base)  # type: ignore[arg-type]


def metric_names(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


async def wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    while (await client.get(url + "/health")).status_code != 200:
        await asyncio.sleep(0.01)


async def test_single_mode_loads_at_start_with_503(client: httpx.AsyncClient) -> None:
    big = SimModel("big", 30.0)  # 10.5 simulated seconds to load = 0.5 s real
    async with asyncio.timeout(10), SimCluster([single(models=[big])], time_scale=0.05) as c:
        url = c.url("lc")
        for path in ("/health", "/props", "/slots", "/metrics"):
            r = await client.get(url + path)
            assert r.status_code == 503, path
            assert r.json() == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
        models = (await client.get(url + "/v1/models")).json()
        assert models["data"][0]["meta"] is None
        await wait_healthy(client, url)
        assert (await client.get(url + "/health")).json() == {"status": "ok"}
        models = (await client.get(url + "/v1/models")).json()
        assert models["data"][0]["meta"]["size"] == big.size_bytes


async def test_single_mode_shapes_match_real_server(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([single()], time_scale=FAST) as c:
        url = c.url("lc")
        await wait_healthy(client, url)
        props = (await client.get(url + "/props")).json()
        real_props = fixture_json("single/props.json")
        assert set(props) == set(real_props)
        assert set(props["default_generation_settings"]["params"]) == set(
            real_props["default_generation_settings"]["params"]
        )
        assert props["total_slots"] == 2
        slots = (await client.get(url + "/slots")).json()
        assert slots == fixture_json("single/slots-idle.json")[:0] + [
            {"id": i, "n_ctx": slots[0]["n_ctx"], "speculative": False, "is_processing": False}
            for i in range(2)
        ]
        models = (await client.get(url + "/v1/models")).json()
        real_models = fixture_json("single/v1-models.json")
        assert set(models) == set(real_models)
        assert set(models["data"][0]) == set(real_models["data"][0])
        assert set(models["data"][0]["meta"]) == set(real_models["data"][0]["meta"])
        metrics = (await client.get(url + "/metrics")).text
        real_metrics = (FIXTURES / "single/metrics.txt").read_text()
        assert metrics.splitlines() == real_metrics.splitlines()  # idle: all zero, same text
        r = await client.post(url + "/v1/chat/completions", content=b"{no")
        assert r.status_code == 500
        assert set(r.json()["error"]) == set(fixture_json("single/error-bad-json.json")["error"])


async def test_single_chat_and_stream_match_real_server(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([single()], time_scale=FAST) as c:
        url = c.url("lc")
        await wait_healthy(client, url)
        body = (await client.post(url + "/v1/chat/completions", json=chat_body("x"))).json()
        real = fixture_json("single/chat-completion.json")
        assert set(body) >= set(real)
        assert set(body["timings"]) == set(real["timings"])
        assert set(body["usage"]) == set(real["usage"])
        r = await client.post(url + "/v1/chat/completions", json=chat_body("x", stream=True))
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        real_events = sse_events((FIXTURES / "single/chat-completion-stream.txt").read_text())
        assert events[-1] == real_events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        real_chunks = [json.loads(e) for e in real_events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == real_chunks[0]["choices"][0]["delta"]
        assert set(chunks[1]) == set(real_chunks[1])
        assert set(chunks[-1]) == set(real_chunks[-1])  # final chunk carries timings
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
        assert len(text.split()) == 16
        native = (
            await client.post(url + "/completion", json={"prompt": "Once", "n_predict": 7})
        ).json()
        assert native["stop"] is True and native["tokens_predicted"] == 7


async def test_busy_slots_and_counters(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([single(parallel=1)], time_scale=0.05) as c:
        url, node = c.url("lc"), c.node("lc")
        await wait_healthy(client, url)
        before = metric(
            (await client.get(url + "/metrics")).text, "llamacpp:tokens_predicted_total"
        )
        tasks = [
            asyncio.create_task(
                client.post(url + "/v1/chat/completions", json=chat_body("x", max_tokens=100))
            )
            for _ in range(2)
        ]
        while node.state.processing() < 1 or node.state.waiting < 1:
            await asyncio.sleep(0.005)
        slots = (await client.get(url + "/slots")).json()
        assert slots[0]["is_processing"] is True
        assert set(slots[0]) == set(fixture_json("single/slots-busy.json")[1])
        busy = (await client.get(url + "/metrics")).text
        assert metric(busy, "llamacpp:requests_processing") == 1
        assert metric(busy, "llamacpp:requests_deferred") == 1
        await asyncio.gather(*tasks)
        after = (await client.get(url + "/metrics")).text
        assert metric(after, "llamacpp:tokens_predicted_total") == before + 200
        assert metric(after, "llamacpp:requests_processing") == 0


async def test_api_key_guards_metrics_slots_props(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([single(api_key="k")], time_scale=FAST) as c:
        url = c.url("lc")
        await wait_healthy(client, url)  # /health needs no key
        for path in ("/metrics", "/slots", "/props"):
            r = await client.get(url + path)
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
            ok = await client.get(url + path, headers={"Authorization": "Bearer k"})
            assert ok.status_code == 200
        assert (await client.get(url + "/v1/models")).status_code == 200


async def test_router_lists_loads_and_unloads(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([router()], time_scale=0.05) as c:
        url, node = c.url("rt"), c.node("rt")
        assert (await client.get(url + "/health")).json() == {"status": "ok"}
        listing = (await client.get(url + "/models")).json()
        real = fixture_json("router/models-none-loaded.json")
        assert set(listing) == set(real)
        assert set(listing["data"][0]) == set(real["data"][0])
        assert set(listing["data"][0]["status"]) == set(real["data"][0]["status"])
        assert [m["status"]["value"] for m in listing["data"]] == ["unloaded", "unloaded"]
        r = await client.post(url + "/models/load", json={"model": "ulysses"})
        assert r.json() == fixture_json("router/load-response.json")
        status = {
            m["id"]: m["status"]["value"]
            for m in (await client.get(url + "/models")).json()["data"]
        }
        assert status == {"eternal": "unloaded", "ulysses": "loading"}
        while node.loaded_models() != ["ulysses"]:
            await asyncio.sleep(0.01)
        loaded = (await client.get(url + "/models")).json()["data"]
        real_loaded = fixture_json("router/models-one-loaded.json")["data"][1]
        assert set(loaded[1]) == set(real_loaded) and loaded[1]["status"]["value"] == "loaded"
        for path in ("/props", "/slots", "/metrics"):
            assert (await client.get(url + path, params={"model": "ulysses"})).status_code == 200
        props = (await client.get(url + "/props", params={"model": "ulysses"})).json()
        assert set(props) == set(fixture_json("router/props-ulysses.json"))
        r = await client.get(url + "/metrics")
        assert r.status_code == 400
        assert r.json() == json.loads((FIXTURES / "router/metrics-no-model.txt").read_text())
        r = await client.post(url + "/v1/chat/completions", json=chat_body("nosuch"))
        assert r.status_code == 400
        assert r.json() == fixture_json("router/error-unknown-model.json")
        r = await client.post(url + "/models/unload", json={"model": "ulysses"})
        assert r.json() == fixture_json("router/unload-response.json")
        assert node.loaded_models() == []


async def test_router_autoload_evicts_lru_at_models_max(client: httpx.AsyncClient) -> None:
    spec = router(loaded=["ulysses"])
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url, node = c.url("rt"), c.node("rt")
        body = (
            await client.post(url + "/v1/chat/completions", json=chat_body("eternal", max_tokens=8))
        ).json()
        real = fixture_json("router/chat-autoload-second-model.json")
        assert set(body) >= set(real) and body["model"] == "eternal"
        assert node.loaded_models() == ["eternal"]
        status = {
            m["id"]: m["status"]["value"]
            for m in (await client.get(url + "/models")).json()["data"]
        }
        assert status == {"eternal": "loaded", "ulysses": "unloaded"}


async def test_router_memory_refusal_marks_the_model_failed(client: httpx.AsyncClient) -> None:
    spec = router(memory_gb=4.0, models_max=0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url = c.url("rt")
        r = await client.post(url + "/v1/chat/completions", json=chat_body("eternal"))
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        entry = (await client.get(url + "/models")).json()["data"][0]
        assert entry["status"]["value"] == "unloaded" and entry["status"]["failed"] is True


async def test_router_props_without_model_match_real_server(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([router()], time_scale=FAST) as c:
        props = (await client.get(c.url("rt") + "/props")).json()
        assert props == fixture_json("router/props-router.json")
    async with asyncio.timeout(10), SimCluster([router(models_max=0)], time_scale=FAST) as c:
        # --models-max 0 (no limit) is sent as given.
        assert (await client.get(c.url("rt") + "/props")).json()["max_instances"] == 0


async def test_router_load_at_limit_evicts_idle_and_refuses_while_busy(
    client: httpx.AsyncClient,
) -> None:
    spec = router(loaded=["ulysses"], decode_tok_per_s=1.0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url, node = c.url("rt"), c.node("rt")
        chat = asyncio.create_task(
            client.post(url + "/v1/chat/completions", json=chat_body("ulysses", max_tokens=200))
        )
        while node.in_flight() == 0:
            await asyncio.sleep(0.01)
        r = await client.post(url + "/models/load", json={"model": "eternal"})
        assert r.status_code == 500
        assert r.json() == fixture_json("router/load-at-limit-while-busy.json")
        entries = {m["id"]: m["status"] for m in (await client.get(url + "/models")).json()["data"]}
        assert entries["eternal"] == {**entries["eternal"], "value": "unloaded"}
        assert "failed" not in entries["eternal"]  # transient: not a failed model
        assert node.loaded_models() == ["ulysses"]
        chat.cancel()
        while node.in_flight():
            await asyncio.sleep(0.01)
        # Idle now: the same load unloads the least recently used model and loads.
        r = await client.post(url + "/models/load", json={"model": "eternal"})
        assert r.json() == fixture_json("router/load-response.json")
        assert node.loaded_models() == [] and node.loading_models() == ["eternal"]


async def test_router_load_of_a_running_model_is_refused(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(10), SimCluster([router(loaded=["ulysses"])], time_scale=FAST) as c:
        r = await client.post(c.url("rt") + "/models/load", json={"model": "ulysses"})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "model is already running"


async def test_router_autoload_at_limit_waits_for_an_idle_model(client: httpx.AsyncClient) -> None:
    spec = router(loaded=["ulysses"], decode_tok_per_s=20.0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url, node = c.url("rt"), c.node("rt")
        first = asyncio.create_task(
            client.post(url + "/v1/chat/completions", json=chat_body("ulysses", max_tokens=50))
        )
        while node.in_flight() == 0:
            await asyncio.sleep(0.01)
        second = await client.post(url + "/v1/chat/completions", json=chat_body("eternal"))
        assert second.status_code == 200 and second.json()["model"] == "eternal"
        assert (await first).status_code == 200  # it was not evicted mid-request
        ulysses, eternal = sorted(node.records, key=lambda j: j.model, reverse=True)
        assert ulysses.finished is not None and eternal.started is not None
        assert eternal.started >= ulysses.finished


async def test_router_model_not_downloaded_shows_downloading(client: httpx.AsyncClient) -> None:
    fresh = SimModel("fresh", 1.0, downloaded=False)
    spec = router(models=[ULYSSES, fresh], models_max=0, download_gb_per_s=0.5)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=0.1) as c:
        url, node = c.url("rt"), c.node("rt")
        assert (await client.post(url + "/models/load", json={"model": "fresh"})).json() == {
            "success": True
        }
        status = {
            m["id"]: m["status"]["value"]
            for m in (await client.get(url + "/models")).json()["data"]
        }
        assert status["fresh"] == "downloading"
        # Posting again while it downloads changes nothing (the real router's load returns).
        assert (await client.post(url + "/models/load", json={"model": "fresh"})).status_code == 200
        while node.loaded_models() != ["fresh"]:
            await asyncio.sleep(0.01)


async def test_router_idle_model_sleeps_and_wakes(client: httpx.AsyncClient) -> None:
    # 20 s simulated = 0.2 s real: long enough that a woken model is seen awake.
    spec = router(loaded=["ulysses"], models_max=0, sleep_idle_s=20.0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url = c.url("rt")

        async def status() -> str:
            data = (await client.get(url + "/models")).json()["data"]
            return {m["id"]: m["status"]["value"] for m in data}["ulysses"]

        while await status() != "sleeping":
            await asyncio.sleep(0.01)
        props = (await client.get(url + "/props", params={"model": "ulysses"})).json()
        assert props["is_sleeping"] is True and props["total_slots"] == 2
        assert await status() == "sleeping"  # /props does not wake it
        await client.get(url + "/slots", params={"model": "ulysses"})
        assert await status() == "loaded"


async def test_router_unload_answers_before_the_model_is_gone(client: httpx.AsyncClient) -> None:
    # 1 s simulated to exit = 0.2 s real: time for the checks below while it exits.
    async with asyncio.timeout(10), SimCluster([router(loaded=["ulysses"])], time_scale=0.2) as c:
        url, node = c.url("rt"), c.node("rt")
        r = await client.post(url + "/models/unload", json={"model": "ulysses"})
        assert r.json() == fixture_json("router/unload-response.json")
        # As measured on a real router: still listed loaded, still holding the only place.
        entries = {
            m["id"]: m["status"]["value"]
            for m in (await client.get(url + "/models")).json()["data"]
        }
        assert entries["ulysses"] == "loaded"
        r = await client.post(url + "/models/load", json={"model": "eternal"})
        assert r.status_code == 500
        assert r.json() == fixture_json("router/load-at-limit-while-busy.json")
        while node.memory_used_gb() > 0:
            await asyncio.sleep(0.01)
        r = await client.post(url + "/models/load", json={"model": "eternal"})
        assert r.json() == fixture_json("router/load-response.json")


async def test_router_load_that_cannot_succeed_is_accepted_then_failed(
    client: httpx.AsyncClient,
) -> None:
    # The real router answers success and loads in the background; the model's process
    # then exits and /models reports it failed.
    spec = router(memory_gb=4.0, models_max=0)
    async with asyncio.timeout(10), SimCluster([spec], time_scale=FAST) as c:
        url = c.url("rt")
        r = await client.post(url + "/models/load", json={"model": "eternal"})
        assert r.json() == fixture_json("router/load-response.json")
        entry = (await client.get(url + "/models")).json()["data"][0]
        assert entry["status"]["value"] == "unloaded" and entry["status"]["failed"] is True
