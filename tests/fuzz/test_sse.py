"""The SSE pass-through, fuzzed end to end: a node on loopback answers a streamed request
with chunks hypothesis chooses (any bytes, SSE-shaped or not, any chunk sizes, chunk
extensions and trailers), and the client must get exactly those bytes back through the
router, on the fast front and on aiohttp's path, when the stream ends as a whole one does
(its last line ended, ``data: [DONE]`` sent); otherwise — cut mid-line, ended without
``[DONE]``, or broken off — it gets every whole line that came, then the router's
explicit error event and ``[DONE]``, never half a line glued to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from _fuzzing import EVIL_MODEL, EvilUpstream, LiveThread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtui.config import RouterConfig

PATHS = ["/v1/chat/completions", "/v1/chat/completions?via=aiohttp"]
BODY = msgspec.json.encode({"model": EVIL_MODEL, "stream": True, "messages": []})


@pytest.fixture(scope="module")
def evil() -> Iterator[tuple[LiveThread, EvilUpstream]]:
    node = EvilUpstream()
    with LiveThread(specs=[], evil=node, router=RouterConfig(queue_timeout=10)) as server:
        yield server, node


_event = st.builds(
    lambda payload, name: (b"event: %s\n" % name if name else b"") + b"data: " + payload + b"\n\n",
    st.one_of(
        st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3).map(
            msgspec.json.encode
        ),
        st.just(b"[DONE]"),
        st.binary(max_size=20).filter(lambda b: b"\n" not in b),
    ),
    st.sampled_from([b"", b"message", b"ping"]),
)
#: What a node streams: SSE events, or any bytes at all (the router must not care).
_stream = st.lists(_event, min_size=1, max_size=8).map(b"".join) | st.binary(
    min_size=1, max_size=600
)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream, cut into chunks at places hypothesis picks: (the whole, the chunks)."""
    data = draw(_stream)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return data, [p for p in pieces if p]


def _encode(pieces: list[bytes], *, ext: bool, trailer: bool, end: bool, ctype: bytes) -> bytes:
    out = [b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % ctype]
    for p in pieces:
        out.append(b"%x%s\r\n%s\r\n" % (len(p), b";x=1" if ext else b"", p))
    if end:
        out.append(b"0\r\n" + (b"X-Trailer: t\r\n" if trailer else b"") + b"\r\n")
    return b"".join(out)


def _serve_in_pieces(node: EvilUpstream, wire: bytes, splits: int) -> None:
    """The node writes ``wire`` in ``splits`` writes with a pause between, so the router
    reads it in several pieces too (TCP would otherwise often deliver it all at once)."""

    async def write(w: asyncio.StreamWriter) -> None:
        step = max(1, len(wire) // splits)
        for i in range(0, len(wire), step):
            w.write(wire[i : i + step])
            await w.drain()
            await asyncio.sleep(0.002)

    node.on_post = write


SSE = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@SSE
@given(
    chunked(),
    st.sampled_from(PATHS),
    st.booleans(),
    st.booleans(),
    st.integers(1, 5),
    st.sampled_from([b"text/event-stream", b"text/event-stream; charset=utf-8"]),
)
def test_a_stream_reaches_the_client_byte_for_byte(
    evil: tuple[LiveThread, EvilUpstream],
    stream: tuple[bytes, list[bytes]],
    path: str,
    ext: bool,
    trailer: bool,
    splits: int,
    ctype: bytes,
) -> None:
    server, node = evil
    data, pieces = stream
    _serve_in_pieces(node, _encode(pieces, ext=ext, trailer=trailer, end=True, ctype=ctype), splits)
    r = httpx.post(f"{server.url}{path}", content=BODY, headers=_JSON, timeout=20)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    if data.endswith(b"\n") and b"data: [DONE]" in data:
        assert r.content == data
    else:
        _assert_cut(r.content, data)
        server.run(_answered_again(server))


@SSE
@given(chunked(), st.sampled_from(PATHS), st.integers(1, 5))
def test_a_stream_broken_off_ends_with_an_error_event_after_every_byte_that_came(
    evil: tuple[LiveThread, EvilUpstream],
    stream: tuple[bytes, list[bytes]],
    path: str,
    splits: int,
) -> None:
    server, node = evil
    data, pieces = stream
    wire = _encode(pieces, ext=False, trailer=False, end=False, ctype=b"text/event-stream")
    _serve_in_pieces(node, wire, splits)  # then the node closes: no last chunk
    r = httpx.post(f"{server.url}{path}", content=BODY, headers=_JSON, timeout=20)
    assert r.status_code == 200, r.text
    _assert_cut(r.content, data)
    # A broken stream is a failed request: three in a row open the node's circuit (and the
    # next request would be a 503). Each example stands alone, so close it again.
    server.run(_answered_again(server))


def _assert_cut(content: bytes, data: bytes) -> None:
    """Every whole line of ``data``, then the router's error event and ``[DONE]``."""
    whole = data[: data.rfind(b"\n") + 1]
    assert content.startswith(whole)
    tail = content[len(whole) :]
    assert tail.endswith(b"data: [DONE]\n\n"), tail
    event = tail.lstrip(b"\n").split(b"\n\n")[0]
    error = msgspec.json.decode(event.removeprefix(b"data: "))["error"]
    assert error["code"] == "stream_interrupted"


async def _answered_again(server: LiveThread) -> None:
    server.engine.dispatcher.report(("evil", EVIL_MODEL), True)


_JSON = {"Content-Type": "application/json"}
