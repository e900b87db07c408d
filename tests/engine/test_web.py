"""`lmtui --web`: its arguments, the bind rule, and the web server's rules (the browser
guard, the admin token, the session bound, sessions stopped) over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import trustme

from lmtui import web
from lmtui.cli import main
from lmtui.web import (
    WebError,
    WebPlan,
    WebServer,
    bind_problem,
    clear_text_warning,
    local_url,
    parse_web_listen,
    session_command,
    session_cookie,
    web_tls,
)

TOKEN = "s3cret-admin-token-0123456789"


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LMTUI_ADMIN_TOKEN", raising=False)
    for xdg in ("STATE", "DATA", "CONFIG"):  # never the developer's own files
        monkeypatch.setenv(f"XDG_{xdg}_HOME", str(tmp_path / xdg.lower()))


# --- arguments and the bind rule ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--web", "--serve"], "drop --serve"),
        (["--web", "--demo", "--listen", "off"], "needs the router"),
    ],
)
def test_contradictory_web_flags_are_a_usage_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Beyond loopback without a token: refused before anything starts.
        (["--web", "0.0.0.0:8020", "--demo"], "refusing to serve the web dashboard on 0.0.0.0"),
        (["--web", "[::]:8020", "--demo"], "refusing to serve the web dashboard on ::"),
        (
            ["--web", "192.168.1.5:8020", "--connect", "http://127.0.0.1:4000"],
            "none is set ($LMTUI_ADMIN_TOKEN)",
        ),
        (["--web", "8020", "--demo"], "is not HOST:PORT"),
        (["--web", "127.0.0.1:99999", "--demo"], "out of range"),
        # The sessions need the control API, which is off beyond loopback without a token.
        (["--web", "--demo", "--listen", "0.0.0.0:4000"], "--web needs the control API"),
    ],
)
def test_a_bad_web_bind_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("lmtui: ") and "Traceback" not in err


def test_a_token_env_that_is_not_set_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[router]\nadmin_token_env = "LMTUI_TEST_WEB_TOKEN"\n')
    assert main(["--web", "0.0.0.0:8020", "--config", str(cfg)]) == 2
    assert "LMTUI_TEST_WEB_TOKEN, which is not set" in capsys.readouterr().err


def test_a_bad_web_listen_in_the_config_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[web]\nlisten = "nowhere"\nmax_sessions = 0\n')
    assert main(["--web", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "config.toml:2: web.listen: 'nowhere' is not HOST:PORT" in err
    assert "config.toml:3: web.max_sessions: must be >= 1" in err


@pytest.mark.parametrize(
    ("host", "token", "ok"),
    [
        ("127.0.0.1", None, True),
        ("::1", None, True),
        ("localhost", None, True),
        ("0.0.0.0", None, False),
        ("10.0.0.2", None, False),
        ("studio.lan", None, False),
        ("0.0.0.0", TOKEN, True),
    ],
)
def test_beyond_loopback_needs_a_token(host: str, token: str | None, ok: bool) -> None:
    assert (bind_problem(host, token, "[router] admin_token_env") is None) is ok


def test_parse_web_listen_and_local_url() -> None:
    assert parse_web_listen("127.0.0.1:8020") == ("127.0.0.1", 8020)
    assert parse_web_listen("[::1]:0") == ("::1", 0)
    assert local_url("http://0.0.0.0:4000") == "http://127.0.0.1:4000"
    assert local_url("https://[::]:4000") == "https://[::1]:4000"
    assert local_url("http://127.0.0.1:4000") == "http://127.0.0.1:4000"


def test_a_session_attaches_and_never_carries_the_token_on_its_command_line() -> None:
    cmd = session_command("https://127.0.0.1:4000", read_only=True, ca="/etc/ca.pem")
    assert cmd[:3] == (sys.executable, "-m", "lmtui")
    assert cmd[3:5] == ("--connect", "https://127.0.0.1:4000")
    assert "--read-only" in cmd and cmd[cmd.index("--ca") + 1] == "/etc/ca.pem"
    assert "--demo" not in cmd and "--config" not in cmd
    assert session_cookie(TOKEN) != TOKEN and TOKEN not in session_cookie(TOKEN)
    assert session_cookie(TOKEN) != session_cookie(TOKEN + "x")


# --- the server ----------------------------------------------------------------------------

#: A stand-in session: records the token it was given, then waits to be stopped (a real
#: dashboard is the browser test's, tests/e2e/test_web_browser.py).
SESSION = (
    "import os, sys, time, pathlib; "
    "pathlib.Path(sys.argv[1]).write_text(os.environ.get('LMTUI_ADMIN_TOKEN', '-')); "
    "time.sleep(120)"
)


def plan(tmp_path: Path, **kw: object) -> WebPlan:
    fields: dict = {
        "host": "127.0.0.1",
        "port": 0,
        "command": (sys.executable, "-c", SESSION, str(tmp_path / "token")),
    }
    fields.update(kw)
    return WebPlan(**fields)


def basic(password: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_without_a_token_the_browser_rules_apply(tmp_path: Path) -> None:
    async with WebServer(plan(tmp_path)) as server, aiohttp.ClientSession() as http:
        async with http.get(server.url) as r:
            assert r.status == 200
            page = await r.text()
        port = server.plan.port
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
        # DNS rebinding: a name the page was not served for.
        async with http.get(server.url, headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 403
        # Another site's page opening the websocket (websockets are not bound by CORS).
        async with http.get(f"{server.url}ws", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.post(server.url, json={}) as r:
            assert r.status == 405


async def test_with_a_token_every_request_needs_it(tmp_path: Path) -> None:
    async with (
        WebServer(plan(tmp_path, token=TOKEN)) as server,
        aiohttp.ClientSession() as http,
    ):
        url = server.url
        async with http.get(url) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
        for wrong in (basic("nope"), {"Authorization": "Bearer nope"}, {"Authorization": "x"}):
            async with http.get(url, headers=wrong) as r:
                assert r.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        async with http.get(url, headers=basic(TOKEN)) as r:
            assert r.status == 200
            cookie = r.cookies["lmtui_web"]
            assert cookie.value == session_cookie(TOKEN) and TOKEN not in cookie.value
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        # The cookie alone is enough (the websocket's handshake carries it).
        async with aiohttp.ClientSession() as other:
            headers = {"Cookie": f"lmtui_web={cookie.value}"}
            async with other.get(f"{url}static/css/xterm.css", headers=headers) as r:
                assert r.status == 200
            async with other.get(url, headers={"Cookie": "lmtui_web=forged"}) as r:
                assert r.status == 401
        # A Host that would be written into the page must be a host name.
        async with http.get(url, headers={**basic(TOKEN), "Host": 'a"><script>'}) as r:
            assert r.status == 400


async def test_failed_tokens_are_limited_per_address(tmp_path: Path) -> None:
    p = plan(tmp_path, token=TOKEN, auth_failure_burst=3, auth_failure_rate=0.01)
    async with WebServer(p) as server, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(5):
            async with http.get(server.url, headers=basic("guess")) as r:
                statuses.append(r.status)
        assert statuses == [401, 401, 401, 429, 429]
        # Past the limit even the right token is not looked at.
        async with http.get(server.url, headers=basic(TOKEN)) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_sessions_are_bounded_get_the_token_and_are_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "SESSION_STOP_S", 0.5)
    monkeypatch.setenv("LMTUI_ADMIN_TOKEN", "an-older-token-from-the-shell")
    p = plan(tmp_path, token=TOKEN, max_sessions=1)
    async with WebServer(p) as server, aiohttp.ClientSession(headers=basic(TOKEN)) as http:
        ws = await http.ws_connect(f"{server.url}ws?width=100&height=30")
        (session,) = server.sessions
        async with asyncio.timeout(20):
            while not (tmp_path / "token").exists() or session._process is None:
                await asyncio.sleep(0.05)
            while not (tmp_path / "token").read_text():
                await asyncio.sleep(0.05)
        assert (tmp_path / "token").read_text() == TOKEN
        process = session._process
        assert process.returncode is None
        # A second tab past max_sessions: the page and the websocket say so.
        async with http.get(server.url) as r:
            assert r.status == 503 and "max_sessions" in await r.text()
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(f"{server.url}ws")
        assert e.value.status == 503
        # Malformed messages from the page are dropped, the session lives on.
        for junk in ("not json", "[]", '["resize", {"width": "x"}]', '{"a": 1}', '["stdin", 5]'):
            await ws.send_str(junk)
        await ws.send_str('["ping", "p1"]')
        async with asyncio.timeout(10):
            reply = await ws.receive_json()
        assert reply == ["pong", "p1"]
    # Leaving the block stopped the session's process (it ignored "quit": terminated).
    assert process.returncode is not None
    assert server.sessions == {}
    assert ws.closed or (await ws.receive()).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSING,
    )


async def test_a_session_that_ends_closes_its_page_and_frees_its_place(tmp_path: Path) -> None:
    p = plan(tmp_path, command=(sys.executable, "-c", "pass"), max_sessions=1)
    async with WebServer(p) as server, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}ws")
        async with asyncio.timeout(20):
            msg = await ws.receive()
            while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                msg = await ws.receive()
            while server.sessions:
                await asyncio.sleep(0.05)
        async with http.get(server.url) as r:
            assert r.status == 200


# --- what each mode serves -----------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[WebPlan, list[str]]]:
    """The plans `lmtui --web` would serve, each with the engine's router URL at the time
    (the web server itself is not started: the browser test does that)."""
    import lmtui.cli

    plans: list[tuple[WebPlan, list[str]]] = []

    async def capture(plan: WebPlan, stop: asyncio.Event, what: str) -> None:
        plans.append((plan, [what]))

    monkeypatch.setattr(lmtui.cli, "_serve_web", capture)
    return plans


def test_an_embedded_engine_starts_once_and_its_sessions_attach_to_it(
    served: list[tuple[WebPlan, list[str]]],
) -> None:
    assert main(["--web", "127.0.0.1:0", "--demo", "--listen", "127.0.0.1:0", "--read-only"]) == 0
    ((plan, what),) = served
    assert what == ["4 nodes from demo"]
    assert (plan.host, plan.port, plan.token, plan.max_sessions) == ("127.0.0.1", 0, None, 4)
    cmd = plan.command
    assert cmd[3] == "--connect" and cmd[4].startswith("http://127.0.0.1:")
    assert not cmd[4].endswith(":0") and "--read-only" in cmd


def test_the_config_gives_the_token_the_bind_and_the_bound(
    tmp_path: Path,
    served: list[tuple[WebPlan, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMTUI_TEST_WEB_TOKEN", TOKEN)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[router]\nadmin_token_env = "LMTUI_TEST_WEB_TOKEN"\nallowed_hosts = ["studio.lan"]\n'
        '[web]\nlisten = "0.0.0.0:8020"\nmax_sessions = 2\n'
    )
    assert main(["--config", str(cfg), "--web", "--listen", "127.0.0.1:0"]) == 0
    ((plan, _),) = served
    assert (plan.host, plan.port, plan.token, plan.max_sessions) == ("0.0.0.0", 8020, TOKEN, 2)
    assert plan.allowed_hosts == ("studio.lan",) and "--read-only" not in plan.command
    assert TOKEN not in " ".join(plan.command)


def test_with_connect_the_sessions_attach_to_that_engine(
    served: list[tuple[WebPlan, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMTUI_ADMIN_TOKEN", TOKEN)
    url = "https://engine.lan:4000"
    assert main(["--web", "0.0.0.0:8020", "--connect", url, "--ca", "ca.pem"]) == 0
    ((plan, what),) = served
    assert what == [f"the engine at {url}"]
    assert plan.token == TOKEN and plan.command[3:7] == ("--connect", url, "--ca", "ca.pem")


async def test_handshakes_at_once_cannot_pass_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "SESSION_STOP_S", 0.5)
    async with WebServer(plan(tmp_path, max_sessions=2)) as server, aiohttp.ClientSession() as http:
        tries = await asyncio.gather(
            *(http.ws_connect(f"{server.url}ws") for _ in range(6)), return_exceptions=True
        )
        opened = [t for t in tries if isinstance(t, aiohttp.ClientWebSocketResponse)]
        refused = [t for t in tries if isinstance(t, aiohttp.WSServerHandshakeError)]
        assert (len(opened), len(refused)) == (2, 4)
        assert {e.status for e in refused} == {503}
        assert len(server.sessions) == 2


# --- TLS for the page: --web-cert / --web-key ----------------------------------------------


class PagePki:
    """A throwaway CA (``trustme``) and a certificate for 127.0.0.1 it signed, as files."""

    def __init__(self, root: Path, name: str = "web") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert, self.key = root / f"{name}-cert.pem", root / f"{name}-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert), append=True)
        leaf.private_key_pem.write_to_path(str(self.key))

    def client(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    @property
    def flags(self) -> list[str]:
        return ["--web-cert", str(self.cert), "--web-key", str(self.key)]


async def test_with_web_cert_and_key_the_page_is_https(tmp_path: Path) -> None:
    pki = PagePki(tmp_path)
    tls = web_tls(str(pki.cert), str(pki.key))
    async with WebServer(plan(tmp_path, tls=tls)) as server, aiohttp.ClientSession() as http:
        assert server.url.startswith("https://127.0.0.1:")
        async with http.get(server.url, ssl=pki.client()) as r:
            assert r.status == 200
            page = await r.text()
        assert f'data-session-websocket-url="wss://127.0.0.1:{server.plan.port}/ws"' in page
        # The certificate is checked: a client that does not trust its CA is refused.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(server.url, ssl=ssl.create_default_context()):
                pass
        # And no plain HTTP on the same port.
        with pytest.raises(aiohttp.ClientError):
            async with http.get(server.url.replace("https://", "http://")) as r:
                await r.read()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--web", "--demo", "--web-cert", "c.pem"], "--web-cert and --web-key go together"),
        (["--web", "--demo", "--web-key", "k.pem"], "--web-cert and --web-key go together"),
        (["--demo", "--web-cert", "c.pem", "--web-key", "k.pem"], "give --web too"),
        (
            ["--connect", "http://127.0.0.1:4000", "--web-cert", "c.pem", "--web-key", "k.pem"],
            "give --web too",
        ),
    ],
)
def test_web_cert_and_key_go_together_and_with_web(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unusable_web_cert_or_key_is_one_line_naming_the_flag_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], served: list[tuple[WebPlan, list[str]]]
) -> None:
    pki, other = PagePki(tmp_path / "a"), PagePki(tmp_path / "b")
    missing = tmp_path / "missing.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        ((missing, pki.key), f"--web-cert: {missing}: file not found"),
        ((pki.cert, missing), f"--web-key: {missing}: file not found"),
        ((tmp_path, pki.key), f"--web-cert: {tmp_path}: is a directory"),
        ((junk, pki.key), f"--web-cert: {junk}: not a PEM file"),
        # The key file given as the certificate: PEM, but no certificate in it.
        ((pki.key, pki.key), f"--web-cert: {pki.key}: not usable for TLS"),
        (
            (pki.cert, other.key),
            f"--web-key: {other.key}: this key does not belong to the certificate in {pki.cert}",
        ),
    ]
    for (cert, key), message in cases:
        for mode in (["--demo"], ["--connect", "http://127.0.0.1:4000"]):
            argv = ["--web", "127.0.0.1:0", *mode, "--web-cert", str(cert), "--web-key", str(key)]
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith(f"lmtui: {message}") and err.count("\n") == 1, err
    assert served == []  # nothing started


def test_web_tls_alone_says_the_pair_goes_together() -> None:
    with pytest.raises(WebError, match="go together"):
        web_tls("c.pem", None)
    assert web_tls(None, None) is None


def test_with_connect_the_page_gets_the_web_pair(
    tmp_path: Path, served: list[tuple[WebPlan, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMTUI_ADMIN_TOKEN", TOKEN)
    pki = PagePki(tmp_path)
    url = "https://engine.lan:4000"
    assert main(["--web", "0.0.0.0:8020", "--connect", url, *pki.flags]) == 0
    ((p, _),) = served
    assert p.tls is not None and p.url == "https://127.0.0.1:8020/"
    # The page's pair is the page's: the sessions' --connect is as given, with no --ca.
    assert p.command[3:5] == ("--connect", url) and "--ca" not in p.command


def test_with_an_embedded_engine_the_web_pair_replaces_the_routers_for_the_page(
    tmp_path: Path, served: list[tuple[WebPlan, list[str]]]
) -> None:
    router, page = PagePki(tmp_path, "router"), PagePki(tmp_path, "page")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[router]\ntls_cert = "{router.cert}"\ntls_key = "{router.key}"\n')
    argv = ["--web", "127.0.0.1:0", "--config", str(cfg), "--listen", "127.0.0.1:0", *page.flags]
    assert main(argv) == 0
    ((p, _),) = served
    # The sessions still reach the router with its own certificate.
    assert p.command[4].startswith("https://127.0.0.1:")
    assert p.command[p.command.index("--ca") + 1] == str(router.cert)

    # The page is served with the web pair: a client trusting only its CA gets it, one
    # trusting only the router's CA is refused.
    async def fetch() -> None:
        served_plan = replace(p, command=plan(tmp_path).command)
        async with WebServer(served_plan) as server, aiohttp.ClientSession() as http:
            async with http.get(server.url, ssl=page.client()) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(server.url, ssl=router.client()):
                    pass

    asyncio.run(fetch())


def test_beyond_loopback_without_tls_a_warning_says_the_token_crosses_in_clear(
    tmp_path: Path,
    served: list[tuple[WebPlan, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LMTUI_ADMIN_TOKEN", TOKEN)
    connect = ["--connect", "http://127.0.0.1:4000"]

    def warnings() -> list[str]:
        found = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "in clear" in r.getMessage()
        ]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger="lmtui"):
        assert main(["--web", "0.0.0.0:8020", *connect]) == 0
        assert warnings() == [
            "the web dashboard on 0.0.0.0 is plain HTTP: the admin token crosses the "
            "network in clear unless a TLS proxy or an SSH tunnel is in front; "
            "--web-cert/--web-key serves it over HTTPS"
        ]
        # Served anyway (a tunnel or a TLS proxy in front is legitimate).
        assert len(served) == 1
        assert main(["--web", "0.0.0.0:8020", *connect, *PagePki(tmp_path).flags]) == 0
        assert warnings() == []
        assert main(["--web", "127.0.0.1:8020", *connect]) == 0
        assert warnings() == []
        assert len(served) == 3


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("studio.lan", False, True),
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", True, False),
    ],
)
def test_the_clear_text_warning_is_for_plain_http_beyond_loopback(
    host: str, tls: bool, warned: bool
) -> None:
    p = WebPlan(host, 8020, ("true",), tls=ssl.create_default_context() if tls else None)
    assert (clear_text_warning(p, "--web-cert/--web-key") is not None) is warned
