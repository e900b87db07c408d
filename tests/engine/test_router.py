"""The router driven by the real ``openai`` client against simulated nodes over loopback."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from _routing import MSG, client, eventually, routed

from lmtui.config import ModelConfig, PoolConfig, RouterConfig
from lmtui.core.events import EventKind
from lmtui.core.model import NodeKind
from lmtui.sim import SimModel, SimNodeSpec


def lms(
    name: str,
    loaded: list[str],
    *,
    parallel: int = 1,
    memory_gb: float = 64,
    models: list[SimModel] | None = None,
    version: str = "0.4.2",
) -> SimNodeSpec:
    return SimNodeSpec(
        name=name,
        kind=NodeKind.LMSTUDIO,
        memory_gb=memory_gb,
        models=models or [SimModel("m1", 5.0), SimModel("m2", 5.0)],
        loaded=loaded,
        parallel=parallel,
        version=version,
    )


def max_overlap(records) -> int:  # type: ignore[no-untyped-def]
    """Most requests the server was running at once (from its own start/finish times)."""
    edges = sorted(
        [(r.started, 1) for r in records if r.started is not None]
        + [(r.finished, -1) for r in records if r.finished is not None],
        key=lambda e: (e[0], e[1]),
    )
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


async def test_non_streaming_and_streaming_chat_are_routed() -> None:
    async with routed([lms("a", ["m1"], parallel=2)]) as (cluster, engine):
        c = client(engine)
        r = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=8)
        assert r.choices[0].message.content
        assert r.usage is not None and r.usage.completion_tokens > 0
        chunks = [
            ch
            async for ch in await c.chat.completions.create(
                model="m1", messages=MSG, stream=True, max_tokens=8
            )
        ]
        assert len(chunks) >= 2
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text
        assert len(cluster.node("a").records) == 2


async def test_sse_headers_pass_through_unbuffered() -> None:
    async with routed([lms("a", ["m1"])]) as (_cluster, engine):
        async with (
            httpx.AsyncClient() as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m1", "messages": MSG, "stream": True},
            ) as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-accel-buffering"] == "no"
            body = b"".join([b async for b in r.aiter_bytes()])
        assert body.rstrip().endswith(b"data: [DONE]")


async def test_a_serial_node_never_gets_two_requests_at_once_and_all_are_served() -> None:
    async with routed([lms("a", ["m1"], parallel=1)]) as (cluster, engine):
        c = client(engine)
        rs = await asyncio.gather(
            *(c.chat.completions.create(model="m1", messages=MSG, max_tokens=16) for _ in range(5))
        )
        assert len(rs) == 5
        recs = cluster.node("a").records
        assert len(recs) == 5
        assert max_overlap(recs) == 1


async def test_requests_spread_over_idle_replicas() -> None:
    specs = [lms(n, ["m1"], parallel=1) for n in ("a", "b", "c")]
    async with routed(specs) as (cluster, engine):
        c = client(engine)
        # One at a time: every request finds all three idle, and the least recently used
        # takes it, so idle replicas take turns instead of one node taking everything.
        for _ in range(6):
            await c.chat.completions.create(model="m1", messages=MSG, max_tokens=8)
        counts = [len(cluster.node(n).records) for n in ("a", "b", "c")]
        assert counts == [2, 2, 2]


async def test_load_on_demand_happens_once_for_concurrent_requests() -> None:
    async with routed([lms("a", [], parallel=4)]) as (cluster, engine):
        c = client(engine)
        rs = await asyncio.gather(
            *(c.chat.completions.create(model="m2", messages=MSG, max_tokens=4) for _ in range(4))
        )
        assert len(rs) == 4
        assert cluster.node("a").loaded_models() == ["m2"]
        loads = [
            e
            for e in engine.store.events
            if e.kind is EventKind.LOAD and e.message.startswith("loading m2")
        ]
        assert len(loads) == 1
        # One story per load: "loading", then "loaded in N s"; the polls that saw it come
        # up add no "m2 loading on a" / "loading → loaded" lines of their own.
        about_m2 = [e.message for e in engine.store.events if e.model == "m2"]
        assert [m for m in about_m2 if "loaded on a in" in m], about_m2
        assert not [
            e
            for e in engine.store.events
            if e.model == "m2" and e.kind in (EventKind.INSTANCE_UP, EventKind.INSTANCE_STATE)
        ], about_m2


async def test_streaming_client_hears_about_a_slow_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lmtui.engine.dispatch.PROGRESS_EVERY_S", 0.05)
    big = [SimModel("big", 40.0)]
    # 40 GB at the simulated disk speed takes seconds; time_scale 0.05 makes it ~0.7 s.
    async with routed([lms("a", [], models=big, memory_gb=64)], time_scale=0.05) as (_c, engine):
        async with (
            httpx.AsyncClient(timeout=20) as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "big", "messages": MSG, "stream": True, "max_tokens": 4},
            ) as r,
        ):
            body = b"".join([b async for b in r.aiter_bytes()])
        assert r.status_code == 200
        assert b": loading model big on node a" in body
        assert b'"choices"' in body and body.rstrip().endswith(b"data: [DONE]")


async def test_eviction_makes_room_for_a_load() -> None:
    models = [SimModel("m1", 30.0), SimModel("m2", 30.0)]
    async with routed(
        [lms("a", ["m1"], models=models, memory_gb=48)],
        pool=PoolConfig(min_residency=0, reserved_gb=0),
    ) as (cluster, engine):
        c = client(engine)
        await c.chat.completions.create(model="m2", messages=MSG, max_tokens=4)
        assert cluster.node("a").loaded_models() == ["m2"]
        assert any(e.kind is EventKind.EVICT and "m1" in e.message for e in engine.store.events)


async def test_pinned_model_is_not_evicted_and_the_request_fails_clearly() -> None:
    models = [SimModel("m1", 30.0), SimModel("m2", 40.0)]
    async with routed(
        [lms("a", ["m1"], models=models, memory_gb=64)],
        models=[ModelConfig(name="m1", pinned=True)],
        pool=PoolConfig(min_residency=0, reserved_gb=0),
    ) as (cluster, engine):
        c = client(engine)
        with pytest.raises(openai.APIStatusError) as ei:
            await c.chat.completions.create(model="m2", messages=MSG, max_tokens=4)
        assert ei.value.status_code == 503
        assert cluster.node("a").loaded_models() == ["m1"]


async def test_queue_full_is_429_with_retry_after() -> None:
    async with routed(
        [lms("a", ["m1"], parallel=1)], time_scale=0.2, router=RouterConfig(queue_depth=1)
    ) as (_cluster, engine):
        c = client(engine)
        slow = [
            asyncio.create_task(c.chat.completions.create(model="m1", messages=MSG, max_tokens=64))
            for _ in range(2)
        ]
        await eventually(lambda: engine.store.snapshot.queue_depth.get("m1") == 1)
        async with httpx.AsyncClient() as h:
            r = await h.post(
                f"{engine.router_url}/v1/chat/completions", json={"model": "m1", "messages": MSG}
            )
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        for t in slow:
            t.cancel()
        await asyncio.gather(*slow, return_exceptions=True)


async def test_deadline_passed_is_504() -> None:
    async with routed(
        [lms("a", ["m1"], parallel=1)], time_scale=0.5, router=RouterConfig(queue_timeout=0.3)
    ) as (_cluster, engine):
        c = client(engine)
        first = asyncio.create_task(
            c.chat.completions.create(model="m1", messages=MSG, max_tokens=200)
        )
        await eventually(lambda: any(i.in_flight for i in engine.store.snapshot.instances.values()))
        with pytest.raises(openai.APIStatusError) as ei:
            await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        assert ei.value.status_code == 504
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)


async def test_a_client_that_disconnects_leaves_the_queue() -> None:
    async with routed([lms("a", ["m1"], parallel=1)], time_scale=0.3) as (_cluster, engine):
        c = client(engine)
        first = asyncio.create_task(
            c.chat.completions.create(model="m1", messages=MSG, max_tokens=200)
        )
        await eventually(lambda: any(i.in_flight for i in engine.store.snapshot.instances.values()))
        waiting = asyncio.create_task(
            c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        )
        await eventually(lambda: engine.store.snapshot.queue_depth.get("m1") == 1)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await eventually(lambda: engine.store.snapshot.queue_depth.get("m1", 0) == 0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)


async def test_failover_when_a_node_goes_down_with_requests_queued() -> None:
    specs = [lms("a", ["m1"], parallel=1), lms("b", ["m1"], parallel=1)]
    async with routed(specs, time_scale=0.05) as (cluster, engine):
        c = client(engine)
        tasks = [
            asyncio.create_task(c.chat.completions.create(model="m1", messages=MSG, max_tokens=32))
            for _ in range(6)
        ]
        await eventually(lambda: engine.store.snapshot.queue_depth.get("m1", 0) >= 1)
        await cluster.node("a").set_down(True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        # The request running on "a" when it died may fail (its stream was cut after the
        # first byte); every queued one must be served by "b".
        assert len(errors) <= 1, errors
        assert len(cluster.node("b").records) >= 5


async def test_retry_before_first_byte_on_upstream_5xx() -> None:
    specs = [lms("a", ["m1"], parallel=4), lms("b", ["m1"], parallel=4)]
    async with routed(specs) as (cluster, engine):
        # Every POST fails, polls stay fine (error_rate fails the polls too, and a slow
        # machine could then mark "a" down before any request reached it).
        cluster.node("a").faults.post_errors = True
        c = client(engine)
        for _ in range(4):
            r = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
            assert r.choices[0].message.content
        assert len(cluster.node("b").records) == 4
        assert any("failed before the first byte" in e.message for e in engine.store.events)


async def test_a_stream_dropped_mid_way_ends_with_an_error_event() -> None:
    async with routed([lms("a", ["m1"], parallel=2)]) as (cluster, engine):
        cluster.node("a").faults.drop_mid_stream = True
        async with (
            httpx.AsyncClient() as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m1", "messages": MSG, "stream": True, "max_tokens": 64},
            ) as r,
        ):
            body = b"".join([b async for b in r.aiter_bytes()])
        assert b'"error"' in body
        assert body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
        (b'{"model": "m1", "stream": "yes"}', 400, "invalid_request"),
        (b'{"model": "no-such-model", "messages": []}', 404, "model_not_found"),
    ],
)
async def test_bad_requests_get_openai_style_errors(body: bytes, status: int, code: str) -> None:
    async with routed([lms("a", ["m1"])]) as (_cluster, engine):
        async with httpx.AsyncClient() as h:
            r = await h.post(
                f"{engine.router_url}/v1/chat/completions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        assert r.status_code == status
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and "type" in err


async def test_oversized_body_is_413() -> None:
    async with routed([lms("a", ["m1"])], router=RouterConfig(max_body_bytes=1024)) as (
        _cluster,
        engine,
    ):
        async with httpx.AsyncClient() as h:
            r = await h.post(
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m1", "messages": [{"role": "user", "content": "x" * 5000}]},
            )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"


async def test_api_keys_are_required_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMTUI_TEST_KEY", "sk-good")
    async with routed([lms("a", ["m1"])], router=RouterConfig(api_keys_env=["LMTUI_TEST_KEY"])) as (
        _c,
        engine,
    ):
        with pytest.raises(openai.AuthenticationError):
            await client(engine, api_key="sk-bad").chat.completions.create(model="m1", messages=MSG)
        r = await client(engine, api_key="sk-good").chat.completions.create(
            model="m1", messages=MSG, max_tokens=4
        )
        assert r.choices
        models = await client(engine, api_key="sk-good").models.list()
        assert any(m.id == "m1" for m in models.data)


async def test_models_lists_the_union_with_where_each_is_loaded() -> None:
    specs = [lms("a", ["m1"]), lms("b", ["m2"])]
    async with routed(specs, models=[ModelConfig(name="m1", aliases=["chat"])]) as (_c, engine):
        async with httpx.AsyncClient() as h:
            data = (await h.get(f"{engine.router_url}/v1/models")).json()["data"]
        by_id = {m["id"]: m for m in data}
        assert by_id["m1"]["loaded_on"] == ["a"] and by_id["m2"]["loaded_on"] == ["b"]
        assert by_id["m1"]["aliases"] == ["chat"]
        assert set(by_id["m2"]["available_on"]) == {"a", "b"}


async def test_a_node_that_cannot_load_is_not_available_on_and_never_gets_a_load() -> None:
    """An LM Studio 0.3 node lists m2 as downloaded, but lmtui cannot load it there: it is
    not in ``available_on``, a request for m2 loads it on the 0.4 node, and the node's
    snapshot says why."""
    specs = [lms("old", ["m1"], version="0.3.9"), lms("new", [])]
    async with routed(specs) as (cluster, engine):
        async with httpx.AsyncClient() as h:
            data = (await h.get(f"{engine.router_url}/v1/models")).json()["data"]
            by_id = {m["id"]: m for m in data}
            assert by_id["m1"]["loaded_on"] == ["old"]
            assert by_id["m2"]["available_on"] == ["new"]
            r = await h.post(
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "m2", "messages": MSG, "max_tokens": 2},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        assert cluster.node("new").loaded_models() == ["m2"]
        assert "m2" not in cluster.node("old").loaded_models()
        node = engine.store.snapshot.nodes["old"]
        assert node.no_load is not None and "before 0.4" in node.no_load
        assert engine.store.snapshot.nodes["new"].no_load is None


async def test_an_alias_is_rewritten_to_the_backend_name() -> None:
    async with routed([lms("a", ["m1"])], models=[ModelConfig(name="m1", aliases=["chat"])]) as (
        cluster,
        engine,
    ):
        r = await client(engine).chat.completions.create(model="chat", messages=MSG, max_tokens=4)
        assert r.choices
        assert [j.model for j in cluster.node("a").records] == ["m1"]


def test_no_keys_means_loopback_only() -> None:
    from lmtui.engine.engine import EngineError, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert EngineError.exit_code == 2


@pytest.mark.parametrize(
    "listen,why",
    [("::1:4000", "brackets"), ("127.0.0.1:http", "not a number"), ("4000", "HOST:PORT")],
)
def test_listen_from_the_command_line_gets_the_configs_checks(listen: str, why: str) -> None:
    from lmtui.engine.engine import EngineError, parse_listen

    with pytest.raises(EngineError, match=why):
        parse_listen(listen)
    assert parse_listen("[::1]:0") == ("::1", 0)  # port 0: the OS picks one


async def test_refuses_a_public_bind_without_api_keys() -> None:
    from lmtui.config import Config
    from lmtui.engine.engine import Engine, EngineError

    engine = Engine(Config(), listen="0.0.0.0:0")
    with pytest.raises(EngineError, match="loopback"):
        await engine.start()
    await engine.stop()


async def test_an_old_lm_studio_serializes_across_its_models() -> None:
    # LM Studio 0.3: no REST v1, and one request at a time across the whole server.
    old = lms("old", ["m1", "m2"], version="0.3.9")
    async with routed([old], time_scale=0.1) as (cluster, engine):
        c = client(engine)
        rs = await asyncio.gather(
            *(
                c.chat.completions.create(model=m, messages=MSG, max_tokens=16)
                for m in ("m1", "m2", "m1", "m2")
            )
        )
        assert len(rs) == 4
        recs = cluster.node("old").records
        assert len(recs) == 4 and max_overlap(recs) == 1
        # The surplus waited in lmtui's queue, not inside the server: no request arrived
        # there while another was running.
        for r in recs:
            assert not any(o is not r and o.started <= r.arrived < o.finished for o in recs)


async def test_completions_and_embeddings_are_routed_too() -> None:
    models = [SimModel("m1", 5.0), SimModel("embed", 0.3, kind="embedding")]
    async with routed([lms("a", ["m1", "embed"], models=models)]) as (cluster, engine):
        c = client(engine)
        r = await c.completions.create(model="m1", prompt="Once upon a time", max_tokens=8)
        assert r.choices[0].text
        e = await c.embeddings.create(model="embed", input=["hello", "world"])
        assert len(e.data) == 2 and len(e.data[0].embedding) > 0
        assert {j.model for j in cluster.node("a").records} >= {"m1"}


async def test_the_request_log_records_each_request(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    async with routed([lms("a", ["m1"])], request_log=tmp_path / "req.sqlite3") as (_c, engine):
        await client(engine).chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        with pytest.raises(openai.NotFoundError):
            await client(engine).chat.completions.create(model="nope", messages=MSG)
        assert engine.request_log is not None
        await engine.request_log.flush()
        rows = (
            sqlite3.connect(tmp_path / "req.sqlite3")
            .execute(
                "SELECT model, node, outcome, status, tokens_in, tokens_out FROM requests "
                "ORDER BY at"
            )
            .fetchall()
        )
    assert rows[0][:4] == ("m1", "a", "ok", 200)
    assert rows[0][4] and rows[0][5]  # usage from the answer
    assert rows[1][:4] == ("nope", None, "not_found", 404)


async def streamed_usage(c: openai.AsyncOpenAI, *, max_tokens: int):  # type: ignore[no-untyped-def]
    """Stream a chat answer asking for usage; return the usage the last chunk carried."""
    stream = await c.chat.completions.create(
        model="m1",
        messages=MSG,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    return usage


async def test_a_streams_usage_reaches_the_request_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    async with routed(
        [lms("a", ["m1"])], request_log=tmp_path / "req.sqlite3", time_scale=0.002
    ) as (_c, engine):
        c = client(engine)
        usage = await streamed_usage(c, max_tokens=40)
        plain = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=5, stream=True)
        async for _ in plain:
            pass
        assert usage is not None and engine.request_log is not None
        await engine.request_log.flush()
        rows = (
            sqlite3.connect(tmp_path / "req.sqlite3")
            .execute("SELECT stream, tokens_in, tokens_out FROM requests ORDER BY at")
            .fetchall()
        )
    # What the server reported, as the client saw it; none when the client asked for none.
    assert rows == [(1, usage.prompt_tokens, usage.completion_tokens), (1, None, None)]


async def test_tokens_per_second_counts_proxied_tokens_where_the_node_reports_none() -> None:
    # LM Studio has no generation counter; lmtui counts the usage of what it proxied.
    async with routed([lms("a", ["m1"], parallel=4)]) as (_cluster, engine):
        await engine.poller.stop()  # poll by hand only: a background poll would move t0
        await engine.poller.poll_once("a")
        await engine.poller.poll_once("a")
        assert engine.store.snapshot.nodes["a"].tokens_per_second == 0.0  # nothing routed yet
        c = client(engine)
        rs = await asyncio.gather(
            *(c.chat.completions.create(model="m1", messages=MSG, max_tokens=32) for _ in range(4))
        )
        generated = sum(r.usage.completion_tokens for r in rs if r.usage)
        assert generated > 0
        t0 = engine.store.snapshot.nodes["a"].last_ok_at
        await engine.poller.poll_once("a")
        node = engine.store.snapshot.nodes["a"]
        assert node.tokens_per_second is not None and node.tokens_per_second > 0
        assert t0 is not None and node.last_ok_at is not None
        assert node.tokens_per_second <= generated / (node.last_ok_at - t0) + 1e-6


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            b'data: {"choices":[],"usage":null}\n\ndata: {"choices":[],"usage":'
            b'{"prompt_tokens":7,"completion_tokens":3}}\n\ndata: [DONE]\n\n',
            (7, 3),
        ),
        # CRLF line ends, and the last chunk without its line end.
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n', (1, 2)),
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}', (1, 2)),
        (b'data: {"choices":[{"delta":{}}],"usage":null}\n\ndata: [DONE]\n\n', (None, None)),
        (b"data: [DONE]\n\n", (None, None)),
        # The tail was cut inside the usage line: nothing to trust.
        (b'ompt_tokens":1},"usage":{"prompt_tokens":5}}\n\ndata: [DONE]\n\n', (None, None)),
        (b'data: {"usage": not json}\n\n', (None, None)),
    ],
)
def test_stream_usage_is_read_from_the_last_usage_line(
    tail: bytes, expected: tuple[int | None, int | None]
) -> None:
    from lmtui.engine.router import Outcome, _stream_usage_into

    out = Outcome(model="m")
    _stream_usage_into(out, tail)
    assert (out.tokens_in, out.tokens_out) == expected


async def test_a_stream_without_usage_still_counts_towards_tokens_per_second() -> None:
    """A bot that streams without ``include_usage`` must not make LM Studio's tokens/s read 0:
    its data events are counted instead, about one token each."""
    async with routed([lms("a", ["m1"])], time_scale=0.002) as (_c, engine):
        c = client(engine)
        reported = await streamed_usage(c, max_tokens=24)
        assert reported is not None and reported.completion_tokens > 5
        before = engine.store._routed_tokens["a"]
        assert before == reported.completion_tokens
        without = await c.chat.completions.create(
            model="m1", messages=MSG, max_tokens=24, stream=True
        )
        async for _ in without:
            pass
        counted = engine.store._routed_tokens["a"] - before
        assert abs(counted - reported.completion_tokens) <= 1
