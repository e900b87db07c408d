"""The routed APIs beyond chat through lmtui in front of a real ``llama-server``.

One single-model server (``-m gemma3-270m --alias gemma -np 2``, no ``--reranking``), the
real ``openai`` and ``anthropic`` SDKs as callers. What must hold: Responses (streamed and
not) and Anthropic Messages (create, stream, count_tokens) are served with the server's
own answers passed through; rerank, which the server answers 501 without ``--reranking``,
is a clear 501 from lmtui and is not sent to the node again; a ``previous_response_id``,
which llama.cpp refuses, gets the server's own 400; the passthrough reaches ``/props``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from llama import LlamaBuild, LlamaServer

from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, RouterConfig
from lmtui.core.model import InstanceState, NodeKind
from lmtui.engine.engine import Engine

MSG = [{"role": "user", "content": "Say hi."}]
TIMEOUT_S = 120.0


@pytest.fixture
async def engine(
    tmp_path: Path, llama_build: LlamaBuild, llama_servers: list[LlamaServer]
) -> AsyncIterator[Engine]:
    args = ["-m", str(llama_build.model), "--alias", "gemma", "-np", "2", "-c", "2048"]
    server = LlamaServer(llama_build, args, tmp_path / "n1.log").start()
    llama_servers.append(server)
    cfg = Config(
        nodes=[NodeConfig(name="n1", kind=NodeKind.LLAMACPP, url=server.url, memory_gb=8)],
        poll=PollConfig(interval=0.5, timeout=2.0),
        router=RouterConfig(queue_timeout=TIMEOUT_S),
        pool=PoolConfig(reserved_gb=0),
    )
    async with Engine(cfg, listen="127.0.0.1:0") as eng:
        async with asyncio.timeout(30):
            while not any(
                i.state is InstanceState.LOADED for i in eng.store.snapshot.instances.values()
            ):
                await asyncio.sleep(0.05)
        yield eng


def model_of(engine: Engine) -> str:
    return next(iter(engine.store.snapshot.instances.values())).model


async def test_responses_through_lmtui(engine: Engine) -> None:
    c = openai.AsyncOpenAI(
        base_url=f"{engine.router_url}/v1", api_key="x", max_retries=0, timeout=TIMEOUT_S
    )
    model = model_of(engine)
    r = await c.responses.create(model=model, input="Say hi.", max_output_tokens=8)
    assert r.id.startswith("resp_") and r.status == "completed"
    assert r.usage is not None and 0 < r.usage.output_tokens <= 8
    stream = await c.responses.create(
        model=model, input="Say hi.", max_output_tokens=8, stream=True
    )
    evs = [ev async for ev in stream]
    assert evs[0].type == "response.created" and evs[-1].type == "response.completed"
    assert any(ev.type == "response.output_text.delta" for ev in evs)
    # llama.cpp keeps no response state: its own 400 comes back, not lmtui's.
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        await c.responses.create(
            model=model, input="More.", previous_response_id=r.id, max_output_tokens=4
        )
    recs = [e for e in engine.store.events if "does not serve" in e.message]
    assert not recs, [e.message for e in recs]


async def test_anthropic_messages_through_lmtui(engine: Engine) -> None:
    c = anthropic.AsyncAnthropic(
        base_url=engine.router_url or "", api_key="x", max_retries=0, timeout=TIMEOUT_S
    )
    model = model_of(engine)
    m = await c.messages.create(model=model, max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    assert m.type == "message" and m.content and m.content[0].type == "text"
    assert 0 < m.usage.output_tokens <= 8
    async with c.messages.stream(model=model, max_tokens=8, messages=MSG) as s:  # type: ignore[arg-type]
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert final.stop_reason in ("max_tokens", "end_turn")
    assert final.content[0].type == "text" and final.content[0].text == text
    n = await c.messages.count_tokens(model=model, messages=MSG)  # type: ignore[arg-type]
    assert n.input_tokens > 0
    with pytest.raises(anthropic.BadRequestError) as e:
        await c.messages.create(
            model=model,
            max_tokens=4,
            messages=[{"role": "user", "content": 5}],  # type: ignore[list-item]
        )
    assert e.value.body["type"] == "error"  # type: ignore[index]


async def test_rerank_without_reranking_is_a_clear_501(engine: Engine) -> None:
    body = {"model": model_of(engine), "query": "a", "documents": ["a", "b"]}
    async with httpx.AsyncClient(base_url=engine.router_url or "", timeout=TIMEOUT_S) as h:
        for _ in range(2):
            r = await h.post("/v1/rerank", json=body)
            assert r.status_code == 501, r.text
            assert "--reranking" in r.json()["error"]["message"]
        assert engine.router.capabilities.absent_on("rerank") == ["n1"]  # type: ignore[union-attr]
        # The passthrough reaches the server's own API.
        r = await h.get("/lmtui/v1/nodes/n1/props")
        assert r.status_code == 200 and r.json()["total_slots"] == 2
