"""HTTPS on the router's port (``[router] tls_cert`` / ``tls_key``), end to end.

A CA and a certificate for 127.0.0.1 are made in the test (``trustme``); the real ``openai``
client, httpx and raw TLS sockets verify against that CA. Both servers behind the port are
covered: the fast front (its asyncio protocol runs inside asyncio's SSL layer) and aiohttp,
including a connection the fast front hands on mid-way (``transport.set_protocol`` on an
SSL transport), on asyncio's loop and on uvloop's. Plus the config errors for missing,
unreadable and mismatched files, the TLS 1.2 floor, and ``lmtui --connect https://...``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _routing import MSG, routed

from lmtui.config import ConfigError, RouterConfig, load_config
from lmtui.config.tls import server_context
from lmtui.core.model import NodeKind
from lmtui.engine.client import HttpEngineClient
from lmtui.engine.commands import CommandError
from lmtui.engine.engine import Engine
from lmtui.sim import SimModel, SimNodeSpec

BODY = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'


def lms() -> SimNodeSpec:
    return SimNodeSpec(
        name="a",
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("m1", 4.0)],
        loaded=["m1"],
        parallel=4,
        version="0.4.2",
    )


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = root / "cert.pem"
        self.key = root / "key.pem"
        self.ca_file = root / "ca.pem"
        cert.private_key_pem.write_to_path(str(self.key))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert), append=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        os.chmod(self.key, 0o600)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def tls_engine(pki: Pki) -> AsyncIterator[Engine]:
    async with _tls_engine(pki) as engine:
        yield engine


def _port(engine: Engine) -> int:
    assert engine.router_url is not None
    return int(engine.router_url.rsplit(":", 1)[1])


@asynccontextmanager
async def _tls_engine(pki: Pki) -> AsyncIterator[Engine]:
    router = RouterConfig(tls_cert=str(pki.cert), tls_key=str(pki.key))
    async with routed([lms()], router=router) as (_c, engine):
        yield engine


def _on_uvloop(scenario: Callable[[Pki], Awaitable[None]], pki: Pki) -> None:
    """``lmtui --serve`` runs on uvloop, whose SSL transport is its own (``set_protocol``
    included); the dashboard's engine runs on asyncio's. Both are proven."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(scenario(pki))


async def test_the_openai_client_over_https_streaming_and_not(pki: Pki) -> None:
    await _openai_scenario(pki)


def test_the_openai_client_over_https_on_uvloop(pki: Pki) -> None:
    _on_uvloop(_openai_scenario, pki)


async def _openai_scenario(pki: Pki) -> None:
    async with _tls_engine(pki) as tls_engine:
        await _openai_calls(pki, tls_engine)


async def _openai_calls(pki: Pki, tls_engine: Engine) -> None:
    assert tls_engine.router_url is not None and tls_engine.router_url.startswith("https://")
    assert tls_engine.front is not None
    # The openai client's own HTTP client, told to trust the test's CA.
    http = openai.DefaultAsyncHttpxClient(verify=pki.client_context())
    c = openai.AsyncOpenAI(
        base_url=tls_engine.router_url + "/v1", api_key="x", max_retries=0, http_client=http
    )
    async with http:
        served = tls_engine.front.served
        r = await c.chat.completions.create(model="m1", messages=MSG, max_tokens=8)
        assert r.choices[0].message.content
        stream = await c.chat.completions.create(
            model="m1",
            messages=MSG,
            max_tokens=8,
            stream=True,
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text
        # Both went through the fast front, inside asyncio's TLS layer.
        assert tls_engine.front.served == served + 2
        # GET /v1/models is aiohttp's: handed on over TLS.
        models = await c.models.list()
        assert [m.id for m in models.data] == ["m1"]
        assert tls_engine.front.handed_on >= 1


async def test_the_aiohttp_path_over_https_streaming_and_not(pki: Pki, tls_engine: Engine) -> None:
    url = f"{tls_engine.router_url}/v1/chat/completions?via=aiohttp"
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(verify=pki.client_context()) as h:
        r = await h.post(url, content=BODY, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        body = BODY.replace(b'"max_tokens": 4', b'"max_tokens": 4, "stream": true')
        async with h.stream("POST", url, content=body, headers=headers) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in s.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and len(lines) > 2
        # The browser rules know the scheme: the router's own https origin is its own.
        port = _port(tls_engine)
        own = {**headers, "Origin": f"https://127.0.0.1:{port}"}
        plain = {**headers, "Origin": f"http://127.0.0.1:{port}"}
        assert (await h.post(url, content=BODY, headers=own)).status_code == 200
        assert (await h.post(url, content=BODY, headers=plain)).status_code == 403


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_a_connection_handed_on_to_aiohttp_mid_way_keeps_working_over_tls(
    pki: Pki,
) -> None:
    """One TLS connection: a POST the fast front serves, then a GET it cannot (so it hands
    the SSL transport to aiohttp with ``set_protocol``), then POSTs aiohttp serves on it."""
    await _hand_on_scenario(pki)


def test_a_connection_handed_on_over_tls_on_uvloop(pki: Pki) -> None:
    _on_uvloop(_hand_on_scenario, pki)


async def _hand_on_scenario(pki: Pki) -> None:
    async with _tls_engine(pki) as tls_engine:
        await _hand_on(pki, tls_engine)


async def _hand_on(pki: Pki, tls_engine: Engine) -> None:
    assert tls_engine.front is not None
    handed_on = tls_engine.front.handed_on
    post = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )
    get = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with asyncio.timeout(20):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", _port(tls_engine), ssl=pki.client_context(), server_hostname="127.0.0.1"
        )
        try:
            writer.write(post)
            status, _h, body = await _read_response(reader)
            assert status == 200 and json.loads(body)["choices"]
            assert tls_engine.front.handed_on == handed_on
            writer.write(get)
            status, _h, body = await _read_response(reader)
            assert status == 200 and json.loads(body)["data"][0]["id"] == "m1"
            assert tls_engine.front.handed_on == handed_on + 1
            for _ in range(2):  # aiohttp owns the connection now; keep-alive holds
                writer.write(post)
                status, _h, body = await _read_response(reader)
                assert status == 200 and json.loads(body)["choices"]
            # Pipelined: two requests in one write, answered in order.
            writer.write(get + post)
            assert (await _read_response(reader))[0] == 200
            assert (await _read_response(reader))[0] == 200
        finally:
            writer.close()


async def test_plain_http_and_old_tls_are_not_served(pki: Pki, tls_engine: Engine) -> None:
    port = _port(tls_engine)
    async with asyncio.timeout(20):
        # Plain HTTP to the TLS port: never answered as HTTP.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = await reader.read(100)
        writer.close()
        assert not data.startswith(b"HTTP/")
        # A client that offers at most TLS 1.1 gets no handshake.
        old = pki.client_context()
        with warnings.catch_warnings():  # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=old, server_hostname="127.0.0.1"
            )
            w.close()
    ctx = server_context(str(pki.cert), str(pki.key))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION


async def test_connect_over_https_checks_the_certificate(pki: Pki, tls_engine: Engine) -> None:
    """``lmtui --connect https://... --ca FILE``: the dashboard's client verifies the
    engine's certificate against the given CA, and refuses one it cannot verify."""
    url = tls_engine.router_url
    assert url is not None
    c = HttpEngineClient(url, ca_file=str(pki.ca_file))
    try:
        await c.connect()
        assert "a" in c.snapshot().nodes
    finally:
        await c.aclose()
    c = HttpEngineClient(url)  # the system's store does not know the test CA
    try:
        with pytest.raises(CommandError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await c.connect()
    finally:
        await c.aclose()


# -- config errors ---------------------------------------------------------------------


def _write_config(path: Path, router: str) -> Path:
    path.write_text(
        '[[nodes]]\nname = "a"\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n\n'
        f"[router]\n{router}"
    )
    return path


@pytest.fixture
def other_key(tmp_path: Path) -> Iterator[Path]:
    other = trustme.CA().issue_cert("127.0.0.1")
    p = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(p))
    yield p


def test_tls_files_are_checked_when_the_config_loads(
    pki: Pki, tmp_path: Path, other_key: Path
) -> None:
    cfg = tmp_path / "config.toml"
    # Relative paths are from the config's directory.
    ok = load_config(_write_config(cfg, 'tls_cert = "cert.pem"\ntls_key = "key.pem"\n'))
    assert ok.router.tls_cert == str(pki.cert) and ok.router.tls_key == str(pki.key)

    def problems(router: str) -> list[tuple[int, str, str]]:
        with pytest.raises(ConfigError) as e:
            load_config(_write_config(cfg, router))
        return [(p.line, p.key, p.message) for p in e.value.problems]

    missing = problems(f'tls_cert = "{tmp_path}/nope.pem"\ntls_key = "key.pem"\n')
    assert [(line, key) for line, key, _ in missing] == [(7, "router.tls_cert")]
    assert "nope.pem: file not found" in missing[0][2]

    mismatched = problems(f'tls_cert = "cert.pem"\ntls_key = "{other_key}"\n')
    assert [(line, key) for line, key, _ in mismatched] == [(8, "router.tls_key")]
    assert "does not belong to the certificate" in mismatched[0][2]

    alone = problems('tls_cert = "cert.pem"\n')
    assert [(line, key) for line, key, _ in alone] == [(7, "router.tls_cert")]
    assert "needs tls_key" in alone[0][2]

    (tmp_path / "junk.pem").write_text("not a certificate\n")
    junk = problems('tls_cert = "junk.pem"\ntls_key = "key.pem"\n')
    assert [(line, key) for line, key, _ in junk] == [(7, "router.tls_cert")]
    assert "not a PEM file" in junk[0][2]

    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.pem"
        locked.write_bytes(pki.key.read_bytes())
        locked.chmod(0)
        unreadable = problems(f'tls_cert = "cert.pem"\ntls_key = "{locked}"\n')
        assert [(line, key) for line, key, _ in unreadable] == [(8, "router.tls_key")]
        assert "cannot read" in unreadable[0][2]
