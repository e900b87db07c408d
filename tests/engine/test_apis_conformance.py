"""The simulator answers the new paths in the shapes a real llama-server does.

Each case sends the simulated llama-server what produced a capture in
``tests/fixtures/llama-server/apis/`` and compares: errors byte for byte, answers by their
shape (the same keys in the same order, recursively; values differ: text, ids, counts),
streams by their sequence of events. ``timings`` is llama.cpp's own addition to a stream's
last event, which the simulator adds only to chat completions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmtui.core.model import NodeKind
from lmtui.sim import SimCluster, SimModel, SimNodeSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama-server" / "apis"
SAY_HI = [{"role": "user", "content": "Say hi."}]


def shape(doc: Any) -> Any:
    """The structure of a JSON document: keys in order, a list by its first item."""
    if isinstance(doc, dict):
        return [(k, shape(v)) for k, v in doc.items() if k != "timings"]
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    if isinstance(doc, bool) or doc is None:
        return type(doc).__name__
    if isinstance(doc, int | float):
        return "number"
    return type(doc).__name__


def events(text: str) -> list[tuple[str, Any]]:
    """An SSE stream as (event name, shape of its data), runs of one delta event kept once."""
    out: list[tuple[str, Any]] = []
    name = ""
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            item = (name, shape(json.loads(line[6:])))
            if not out or out[-1] != item:
                out.append(item)
    return out


@pytest.fixture
async def llama() -> AsyncIterator[httpx.AsyncClient]:
    spec = SimNodeSpec(
        name="real-like",
        kind=NodeKind.LLAMACPP,
        models=[SimModel("gemma", 0.3)],
        loaded=["gemma"],
        parallel=2,
    )
    async with (
        SimCluster([spec], time_scale=0.01) as cluster,
        httpx.AsyncClient(base_url=cluster.url("real-like"), timeout=10) as h,
    ):
        for _ in range(200):  # single mode answers 503 until its model is loaded
            if (await h.post("/v1/messages/count_tokens", json={})).status_code != 503:
                break
            await asyncio.sleep(0.01)
        yield h


async def test_messages_and_responses_have_the_real_shapes(llama: httpx.AsyncClient) -> None:
    for path, body, fixture in [
        ("/v1/messages", {"model": "gemma", "max_tokens": 12, "messages": SAY_HI}, "messages"),
        ("/v1/responses", {"model": "gemma", "input": "Say hi.", "max_output_tokens": 12}, None),
    ]:
        r = await llama.post(path, json=body)
        assert r.status_code == 200, r.text
        name = fixture or "responses"
        real = json.loads((FIXTURES / f"{name}.json").read_text())
        assert shape(r.json()) == shape(real), path


async def test_the_streams_have_the_real_events(llama: httpx.AsyncClient) -> None:
    for path, body, fixture in [
        (
            "/v1/messages",
            {"model": "gemma", "max_tokens": 8, "stream": True, "messages": SAY_HI},
            "messages-stream.txt",
        ),
        (
            "/v1/responses",
            {"model": "gemma", "input": "Say hi.", "max_output_tokens": 8, "stream": True},
            "responses-stream.txt",
        ),
    ]:
        r = await llama.post(path, json=body)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert events(r.text) == events((FIXTURES / fixture).read_text()), path


@pytest.mark.parametrize(
    ("path", "body", "status", "fixture"),
    [
        (
            "/v1/rerank",
            {"model": "gemma", "query": "a", "documents": ["a"]},
            501,
            "rerank-not-enabled",
        ),
        (
            "/v1/responses",
            {"model": "gemma", "input": "More.", "previous_response_id": "resp_x"},
            400,
            "responses-previous-id-unsupported",
        ),
        (
            "/v1/messages",
            {"model": "gemma", "max_tokens": 4, "messages": [{"role": "user", "content": 5}]},
            400,
            "messages-error-bad-content",
        ),
        ("/v1/unknown", {}, 404, "unknown-path-404"),
    ],
)
async def test_errors_are_the_real_bytes(
    llama: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, fixture: str
) -> None:
    r = await llama.post(path, json=body)
    assert r.status_code == status
    assert r.json() == json.loads((FIXTURES / f"{fixture}.json").read_text())


async def test_count_tokens_has_the_real_shape(llama: httpx.AsyncClient) -> None:
    r = await llama.post(
        "/v1/messages/count_tokens", json={"model": "gemma", "max_tokens": 4, "messages": SAY_HI}
    )
    assert r.status_code == 200
    real = json.loads((FIXTURES / "messages-count-tokens.json").read_text())
    assert shape(r.json()) == shape(real)
