"""The routed APIs beyond chat completions — Responses, Anthropic Messages, rerank — driven by
the real ``openai`` and ``anthropic`` SDKs against simulated nodes over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from _routing import client, routed

from lmtui.config import RouterConfig
from lmtui.core.model import NodeKind
from lmtui.engine.engine import Engine
from lmtui.sim import SimModel, SimNodeSpec

MSG = [{"role": "user", "content": "Say hello in a few words."}]
JSON_HEADERS = {"Content-Type": "application/json", "Host": "127.0.0.1"}


def node(
    name: str,
    kind: NodeKind = NodeKind.LMSTUDIO,
    *,
    version: str = "",
    parallel: int = 4,
    **kw: Any,
) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=kind,
        models=[SimModel("m1", 2.0)],
        loaded=["m1"],
        parallel=parallel,
        version=version,
        **kw,
    )


def anthropic_client(engine: Engine, **kw: Any) -> anthropic.AsyncAnthropic:
    assert engine.router_url is not None
    return anthropic.AsyncAnthropic(
        base_url=engine.router_url,
        api_key=kw.pop("api_key", "x"),
        max_retries=0,
        timeout=kw.pop("timeout", 20.0),
        **kw,
    )


def served(cluster: Any, name: str) -> int:
    return len(cluster.node(name).records)


# -- Responses ------------------------------------------------------------------------------


async def test_responses_are_routed_streamed_and_not() -> None:
    async with routed([node("a")]) as (cluster, engine):
        c = client(engine)
        r = await c.responses.create(model="m1", input="Say hi.", max_output_tokens=8)
        assert r.id.startswith("resp_")
        assert r.output_text
        assert r.usage is not None and r.usage.output_tokens == 8
        stream = await c.responses.create(
            model="m1", input="Say hi.", max_output_tokens=6, stream=True
        )
        types = [ev.type async for ev in stream]
        assert types[0] == "response.created"
        assert types[-1] == "response.completed"
        assert types.count("response.output_text.delta") == 6
        assert served(cluster, "a") == 2
        # Plain Responses requests take the fast front, as chat completions do.
        assert engine.front is not None and engine.front.served >= 2
        body, _ = engine.metrics.render()
        assert b'lmtui_api_requests_total{api="responses",outcome="ok"} 2.0' in body


async def test_previous_response_id_goes_to_the_replica_that_holds_it() -> None:
    # Two replicas that take turns when idle: without the pin, half the continuations would
    # land on the replica that never saw the response, which answers 400 "not found".
    async with routed([node("a"), node("b")]) as (cluster, engine):
        c = client(engine)
        first = await c.responses.create(model="m1", input="Remember 7.", max_output_tokens=4)
        holder = engine.router.response_ids.get(first.id)  # type: ignore[union-attr]
        assert holder is not None
        other = "b" if holder[0] == "a" else "a"
        before = served(cluster, other)
        prev = first.id
        for i in range(6):
            if i % 2:
                r = await c.responses.create(
                    model="m1", input="And now?", previous_response_id=prev, max_output_tokens=4
                )
                prev = r.id
            else:
                stream = await c.responses.create(
                    model="m1",
                    input="And now?",
                    previous_response_id=prev,
                    max_output_tokens=4,
                    stream=True,
                )
                async for ev in stream:
                    if ev.type == "response.created":
                        prev = ev.response.id
        assert served(cluster, other) == before
        # Unpinned requests still spread over both replicas.
        await asyncio.gather(
            *(c.responses.create(model="m1", input="x", max_output_tokens=2) for _ in range(4))
        )
        assert served(cluster, other) > before


async def test_a_continuation_may_leave_the_model_out() -> None:
    async with routed([node("a")]) as (_cluster, engine):
        first = await client(engine).responses.create(model="m1", input="hi", max_output_tokens=2)
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post(
                "/v1/responses",
                content=b'{"input": "more", "previous_response_id": "%s"}' % first.id.encode(),
                headers=JSON_HEADERS,
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "m1"
            r = await h.post("/v1/responses", content=b'{"input": "x"}', headers=JSON_HEADERS)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "missing_model"


async def test_the_response_id_map_is_bounded() -> None:
    from lmtui.engine.apis import ResponseIds

    ids = ResponseIds(max_ids=3)
    for i in range(5):
        ids.learn(f"resp_{i}", "a", "m1")
    assert len(ids) == 3
    assert ids.get("resp_0") is None and ids.get("resp_4") == ("a", "m1")


# -- Anthropic Messages ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [NodeKind.LLAMACPP, NodeKind.LMSTUDIO, NodeKind.OLLAMA])
async def test_messages_create_and_stream_with_the_anthropic_sdk(kind: NodeKind) -> None:
    version = "0.14.2" if kind is NodeKind.OLLAMA else ""
    async with routed([node("a", kind, version=version)]) as (cluster, engine):
        c = anthropic_client(engine)
        m = await c.messages.create(model="m1", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
        assert m.type == "message" and m.content[0].type == "text"
        assert m.content[0].text
        assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 8
        async with c.messages.stream(model="m1", max_tokens=5, messages=MSG) as s:  # type: ignore[arg-type]
            pieces = [t async for t in s.text_stream]
            final = await s.get_final_message()
        assert len(pieces) == 5 and final.usage.output_tokens == 5
        assert served(cluster, "a") == 2
        if kind is NodeKind.LLAMACPP:  # the only kind of the three that documents it
            n = await c.messages.count_tokens(model="m1", messages=MSG)  # type: ignore[arg-type]
            assert n.input_tokens > 0
            assert served(cluster, "a") == 2  # count_tokens generates nothing
        else:
            with pytest.raises(anthropic.NotFoundError, match="no node serves"):
                await c.messages.count_tokens(model="m1", messages=MSG)  # type: ignore[arg-type]


async def test_the_anthropic_stream_passes_through_unchanged() -> None:
    async with routed([node("a")]) as (_cluster, engine):  # noqa: SIM117
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            body = (
                b'{"model": "m1", "max_tokens": 3, "stream": true,'
                b' "messages": [{"role": "user", "content": "hi"}]}'
            )
            r = await h.post("/v1/messages", content=body, headers=JSON_HEADERS)
            assert r.status_code == 200
            events = [line[7:] for line in r.text.splitlines() if line.startswith("event: ")]
            assert events[0] == "message_start" and events[-1] == "message_stop"
            assert events.count("content_block_delta") == 3
            assert "[DONE]" not in r.text


async def test_messages_accept_x_api_key_and_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMTUI_TEST_KEY", "sekrit")
    router = RouterConfig(api_keys_env=["LMTUI_TEST_KEY"])
    async with routed([node("a")], router=router) as (_cluster, engine):
        # The SDK sends x-api-key.
        m = await anthropic_client(engine, api_key="sekrit").messages.create(
            model="m1",
            max_tokens=2,
            messages=MSG,  # type: ignore[arg-type]
        )
        assert m.content
        bearer = anthropic_client(engine, api_key=None, auth_token="sekrit")
        assert (await bearer.messages.create(model="m1", max_tokens=2, messages=MSG)).content  # type: ignore[arg-type]
        with pytest.raises(anthropic.AuthenticationError) as e:
            await anthropic_client(engine, api_key="wrong").messages.create(
                model="m1",
                max_tokens=2,
                messages=MSG,  # type: ignore[arg-type]
            )
        assert e.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": e.value.body["error"]["message"]},  # type: ignore[index]
        }
        # x-api-key is the Anthropic paths' header, not the OpenAI ones'.
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post(
                "/v1/chat/completions",
                content=b'{"model": "m1", "messages": []}',
                headers={**JSON_HEADERS, "x-api-key": "sekrit"},
            )
            assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_"),
    [
        (b"{not json", {}, 400, "invalid_request_error"),
        (b'{"max_tokens": 2, "messages": []}', {}, 400, "invalid_request_error"),
        (b'{"model": "nope", "max_tokens": 2, "messages": []}', {}, 404, "not_found_error"),
        (b'{"model": "m1"}', {"Content-Type": "text/plain"}, 415, "invalid_request_error"),
    ],
)
async def test_messages_errors_are_anthropic_shaped(
    body: bytes, headers: dict[str, str], status: int, type_: str
) -> None:
    async with routed([node("a")]) as (_cluster, engine):  # noqa: SIM117
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post("/v1/messages", content=body, headers={**JSON_HEADERS, **headers})
            assert r.status_code == status, r.text
            doc = r.json()
            assert doc["type"] == "error" and doc["error"]["type"] == type_
            assert doc["error"]["message"]


async def test_a_nodes_own_error_on_messages_becomes_anthropic_shaped() -> None:
    # llama-server answers a message whose content is neither text nor a list with its own
    # {"error": {"code", "message", "type"}} (messages-error-bad-content.json): the client
    # gets Anthropic's shape, which is all its SDK reads.
    async with routed([node("a", NodeKind.LLAMACPP)]) as (_cluster, engine):
        c = anthropic_client(engine)
        bad = [{"role": "user", "content": 5}]
        with pytest.raises(anthropic.BadRequestError) as e:
            await c.messages.create(model="m1", max_tokens=2, messages=bad)  # type: ignore[arg-type,list-item]
        assert e.value.body == {  # type: ignore[comparison-overlap]
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "Expected 'content' to be a string or an array",
            },
        }


# -- rerank ---------------------------------------------------------------------------------

RERANK = b'{"model": "m1", "query": "red apple", "documents": ["a red apple", "a blue sky", "red"]}'


async def test_rerank_is_routed() -> None:
    async with routed([node("a", NodeKind.LLAMACPP, reranking=True)]) as (_cluster, engine):  # noqa: SIM117
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["results"][0]["index"] == 0
            assert doc["usage"]["prompt_tokens"] > 0


async def test_rerank_without_reranking_anywhere_is_a_clear_501() -> None:
    async with routed([node("a", NodeKind.LLAMACPP)]) as (cluster, engine):
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(2):
                r = await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
                assert r.status_code == 501, r.text
                message = r.json()["error"]["message"]
                assert "no node serves POST /v1/rerank" in message
                assert "--reranking" in message
        assert engine.router.capabilities.absent_on("rerank") == ["a"]  # type: ignore[union-attr]
        # The second request was not sent to the node: it is known to lack the path.
        assert served(cluster, "a") == 0


async def test_rerank_goes_to_the_node_that_has_it() -> None:
    specs = [node("a", NodeKind.LLAMACPP), node("b", NodeKind.LLAMACPP, reranking=True)]
    async with routed(specs) as (_cluster, engine):
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            for _ in range(4):
                r = await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
                assert r.status_code == 200, r.text
        assert engine.router.capabilities.absent_on("rerank") in ([], ["a"])  # type: ignore[union-attr]


# -- paths a node lacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (NodeKind.LLAMACPP, "/v1/responses"),  # 404 "File Not Found"
        (NodeKind.LMSTUDIO, "/v1/messages"),  # HTTP 200 "Unexpected endpoint"
    ],
)
async def test_a_path_a_node_lacks_is_retried_on_a_node_that_has_it(
    kind: NodeKind, path: str
) -> None:
    specs = [node("a", kind, missing_paths=[path]), node("b", kind)]
    async with routed(specs) as (cluster, engine):
        c, ac = client(engine), anthropic_client(engine)
        for _ in range(4):  # idle replicas take turns: "a" is asked at least once
            if path == "/v1/responses":
                r = await c.responses.create(model="m1", input="hi", max_output_tokens=2)
                assert r.output_text
            else:
                m = await ac.messages.create(model="m1", max_tokens=2, messages=MSG)  # type: ignore[arg-type]
                assert m.content
        api = "responses" if path == "/v1/responses" else "messages"
        assert engine.router.capabilities.absent_on(api) == ["a"]  # type: ignore[union-attr]
        assert served(cluster, "a") == 0 and served(cluster, "b") == 4
        assert any("does not serve POST" in e.message for e in engine.store.events)
        # Chat completions still go to both.
        await asyncio.gather(
            *(
                c.chat.completions.create(model="m1", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
                for _ in range(4)
            )
        )
        assert served(cluster, "a") > 0


async def test_an_old_ollama_is_not_sent_what_its_version_lacks() -> None:
    specs = [
        node("old", NodeKind.OLLAMA, version="0.12.6"),
        node("new", NodeKind.OLLAMA, version="0.14.2"),
    ]
    async with routed(specs) as (cluster, engine):
        c, ac = client(engine), anthropic_client(engine)
        for _ in range(3):
            assert (await c.responses.create(model="m1", input="hi", max_output_tokens=2)).id
            assert (await ac.messages.create(model="m1", max_tokens=2, messages=MSG)).id  # type: ignore[arg-type]
        assert served(cluster, "old") == 0 and served(cluster, "new") == 6
        # Nothing learnt: the backend knew from the version.
        assert engine.router.capabilities.absent_on("responses") == []  # type: ignore[union-attr]


async def test_an_absent_path_is_asked_again_after_a_while() -> None:
    specs = [node("a", NodeKind.LLAMACPP)]
    async with routed(specs) as (cluster, engine):
        caps = engine.router.capabilities  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=engine.router_url or "") as h:
            r = await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
            assert r.status_code == 501
            cluster.node("a").spec.reranking = True  # "restarted with --reranking"
            assert (
                await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
            ).status_code == 501
            caps.reprobe_s = 0.0
            caps.mark_absent("a", "rerank")  # now due at once
            r = await h.post("/v1/rerank", content=RERANK, headers=JSON_HEADERS)
            assert r.status_code == 200, r.text


# -- the passthrough ------------------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A node that answers every request with what it received (and streams on /stream)."""
    from aiohttp import web

    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if request.path == "/v1/models" and request.method == "GET":  # the polls: m1 is here
            return web.json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]})
        if request.path in ("/metrics", "/version"):  # a server without them
            return web.Response(status=404)
        if request.path == "/stream":
            resp = web.StreamResponse(headers={"X-Node": "yes", "Keep-Alive": "timeout=5"})
            await resp.prepare(request)
            for i in range(3):
                await resp.write(b"line %d\n" % i)
                await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp
        return web.json_response(
            {"method": request.method, "path": request.raw_path, "len": len(body)},
            status=201 if request.method == "PUT" else 200,
            headers={"X-Node": "yes", "Connection": "X-Private", "X-Private": "hop"},
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def _engine_for(url: str, **router: Any) -> Engine:
    from lmtui.config import Config, NodeConfig, PollConfig

    cfg = Config(
        nodes=[NodeConfig(name="n1", kind=NodeKind.OPENAI, url=url, api_key_env="LMTUI_NODE_KEY")],
        poll=PollConfig(interval=5.0, timeout=1.0),
        router=RouterConfig(**router),
    )
    return Engine(cfg, listen="127.0.0.1:0")


async def test_the_passthrough_proxies_any_method_with_the_nodes_key(
    echo: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = echo
    monkeypatch.setenv("LMTUI_NODE_KEY", "node-secret")
    async with (
        await _engine_for(url) as engine,
        httpx.AsyncClient(base_url=engine.router_url or "") as h,
    ):
        seen.clear()
        r = await h.get(
            "/lmtui/v1/nodes/n1/api/tags?x=1&y=%2F",
            headers={
                "Host": "127.0.0.1",
                "Authorization": "Bearer client-key",
                "Connection": "keep-alive, X-Drop",
                "X-Drop": "1",
                "X-Keep": "2",
            },
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"method": "GET", "path": "/api/tags?x=1&y=%2F", "len": 0}
        assert r.headers["X-Node"] == "yes"
        assert "X-Private" not in r.headers  # named hop-by-hop by the node's Connection
        got = next(s for s in seen if s["path"].startswith("/api/tags"))
        assert got["headers"]["Authorization"] == "Bearer node-secret"
        assert got["headers"]["X-Keep"] == "2"
        assert "X-Drop" not in got["headers"]
        r = await h.post(
            "/lmtui/v1/nodes/n1/v1/things/7",
            content=b"raw bytes",
            headers={"Host": "127.0.0.1", "Content-Type": "text/plain"},
        )
        # Without keys the JSON rule of keyless paths applies (to POST, as everywhere: a
        # page can send a form POST, not a PUT, without a preflight).
        assert r.status_code == 415
        r = await h.put(
            "/lmtui/v1/nodes/n1/v1/things/7",
            content=b'{"a": 1}',
            headers={"Host": "127.0.0.1", "Content-Type": "application/json"},
        )
        assert r.status_code == 201 and r.json()["len"] == 8
        async with h.stream(
            "POST", "/lmtui/v1/nodes/n1/stream", content=b"{}", headers=JSON_HEADERS
        ) as s:
            lines = [line async for line in s.aiter_lines()]
            assert lines == ["line 0", "line 1", "line 2"]
            assert "Keep-Alive" not in s.headers
        r = await h.get("/lmtui/v1/nodes/nope/x", headers={"Host": "127.0.0.1"})
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
        metrics = (await h.get("/metrics", headers={"Host": "127.0.0.1"})).text
        assert (
            'lmtui_passthrough_requests_total{method="GET",node="n1",status="200"} 1.0' in metrics
        )
        assert (
            'lmtui_passthrough_requests_total{method="PUT",node="n1",status="201"} 1.0' in metrics
        )


async def test_the_passthrough_needs_an_api_key_or_the_admin_token(
    echo: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _seen = echo
    monkeypatch.setenv("LMTUI_KEY", "api-key")
    monkeypatch.setenv("LMTUI_ADMIN", "admin-token")
    engine = await _engine_for(url, api_keys_env=["LMTUI_KEY"], admin_token_env="LMTUI_ADMIN")
    async with engine, httpx.AsyncClient(base_url=engine.router_url or "") as h:
        path = "/lmtui/v1/nodes/n1/upload"
        r = await h.post(path, content=b"x")
        assert r.status_code == 401
        for key in ("api-key", "admin-token"):
            # With a key needed, a body of any type passes (an upload, a form).
            r = await h.post(
                path,
                content=b"x" * 10,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["len"] == 10
        r = await h.post(
            path,
            content=b"x" * (engine.config.router.max_body_bytes + 1),
            headers={"Authorization": "Bearer api-key", "Content-Type": "text/plain"},
        )
        assert r.status_code == 413


async def test_passthrough_to_a_node_that_is_down_is_a_502(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        await _engine_for("http://127.0.0.1:9") as engine,
        httpx.AsyncClient(base_url=engine.router_url or "") as h,
    ):
        r = await h.get("/lmtui/v1/nodes/n1/health", headers={"Host": "127.0.0.1"})
        assert r.status_code == 502
        assert "n1" in r.json()["error"]["message"]


# -- the per-API readers, on captured answers ------------------------------------------------

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama-server" / "apis"


@pytest.mark.parametrize(
    ("status", "body", "absent"),
    [
        (404, b'{"error":{"message":"File Not Found","type":"not_found_error","code":404}}', True),
        (404, b"404 page not found", True),  # Ollama (Go's mux)
        (404, b'{"detail":"Not Found"}', True),  # vLLM (FastAPI)
        # About the model, not the path: the request failed, the path is there.
        (404, b'{"error":{"message":"model \\"m1\\" not found, try pulling it first"}}', False),
        (501, (FIXTURES / "rerank-not-enabled.json").read_bytes(), True),
        (200, b'{"error":"Unexpected endpoint or method. (POST /v1/messages)"}', True),
        (200, b'{"error":"something else"}', False),
        (400, (FIXTURES / "messages-error-bad-content.json").read_bytes(), False),
    ],
)
def test_which_answers_say_a_path_is_absent(status: int, body: bytes, absent: bool) -> None:
    from lmtui.engine.apis import MESSAGES, RERANK

    api = RERANK if status == 501 else MESSAGES
    assert api.says_absent(status, body, ("m1", "m1")) is absent


def test_the_readers_find_ids_and_usage_in_real_answers() -> None:
    from lmtui.engine.apis import (
        MESSAGES,
        RESPONSES,
        response_id,
        stream_usage_into,
        usage_into,
    )
    from lmtui.engine.router import Outcome

    stream = (FIXTURES / "responses-stream.txt").read_bytes()
    assert response_id(stream[:8192]) == "resp_puZrMA6KPOplIY6gASmDdAehjlilwZfp"
    whole = (FIXTURES / "responses.json").read_bytes()
    assert response_id(whole) == "resp_Kkmc0YEIvV0Lz1X2BTJn1qY10AW3JXVA"
    out = Outcome(model="m")
    RESPONSES.stream_usage(out, stream)
    assert (out.tokens_in, out.tokens_out) == (26, 8)
    out = Outcome(model="m")
    assert usage_into(out, (FIXTURES / "messages.json").read_bytes())
    assert (out.tokens_in, out.tokens_out) == (26, 12)
    out = Outcome(model="m")
    assert usage_into(out, (FIXTURES / "messages-count-tokens.json").read_bytes())
    assert out.tokens_in == 26
    out = Outcome(model="m")
    stream_usage_into(out, (FIXTURES / "messages-stream.txt").read_bytes()[-4096:])
    assert out.tokens_out == 8
    # A node's OpenAI-shaped error on an Anthropic path becomes Anthropic's.
    bad = (FIXTURES / "messages-error-bad-content.json").read_bytes()
    assert MESSAGES.node_error(400, bad) == (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"Expected \'content\' to be a string or an array"}}'
    )
    assert MESSAGES.node_error(404, b"404 page not found").startswith(b'{"type":"error"')


def test_a_404_about_a_previous_response_is_not_an_absent_path() -> None:
    from lmtui.engine.apis import RESPONSES

    body = b'{"error":{"message":"Response with id \'resp_abc\' not found.","code":404}}'
    assert not RESPONSES.says_absent(404, body, ("m1", "m1", "resp_abc"))
    assert RESPONSES.says_absent(404, b"Not Found", ("m1", "m1", None))


async def test_messages_are_served_by_the_fast_front_with_their_headers(
    echo: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = echo
    monkeypatch.setenv("LMTUI_NODE_KEY", "node-key")
    monkeypatch.setenv("LMTUI_TEST_KEY", "sekrit")
    engine = await _engine_for(url, api_keys_env=["LMTUI_TEST_KEY"], max_body_bytes=4096)
    async with engine:
        assert engine.router_url is not None and engine.front is not None
        await engine.poller.poll_once("n1")
        async with httpx.AsyncClient(base_url=engine.router_url) as h:
            r = await h.post(
                "/v1/messages",
                content=b'{"model": "m1", "max_tokens": 2, "messages": []}',
                headers={
                    **JSON_HEADERS,
                    "x-api-key": "sekrit",
                    "anthropic-version": "2023-06-01",
                    "anthropic-beta": "tools-2024-04-04",
                },
            )
            assert r.status_code == 200, r.text
            # The fast front served it, not aiohttp.
            assert (engine.front.served, engine.front.handed_on) == (1, 0)
            got = seen[-1]["headers"]
            assert got["anthropic-version"] == "2023-06-01"
            assert got["anthropic-beta"] == "tools-2024-04-04"
            assert got["Authorization"] == "Bearer node-key"  # the node's key, not the client's
            assert got.get("x-api-key") == "node-key"
            # The front's own refusal (a body over max_body_bytes) is Anthropic-shaped there.
            r = await h.post(
                "/v1/messages",
                content=b"x" * 5000,
                headers={**JSON_HEADERS, "x-api-key": "sekrit"},
            )
            assert r.status_code == 413
            assert r.json()["type"] == "error"
            assert r.json()["error"]["type"] == "request_too_large"  # Anthropic's own type
            # And OpenAI-shaped on OpenAI's paths.
            r = await h.post("/v1/chat/completions", content=b"x" * 5000, headers={**JSON_HEADERS})
            assert r.status_code == 413 and "type" in r.json()["error"]
            # A wrong x-api-key on the fast path: Anthropic's 401.
            r = await h.post(
                "/v1/messages",
                content=b'{"model": "m1", "max_tokens": 2, "messages": []}',
                headers={**JSON_HEADERS, "x-api-key": "wrong"},
            )
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert engine.front.handed_on == 0
