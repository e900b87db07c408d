"""``lmtui --web``: the dashboard in a browser, through textual-serve.

textual-serve serves a page with xterm.js and, for every browser session (each websocket
to ``/ws``), runs a command in a subprocess whose Textual app talks to the page through
its web driver. Here that command is always ``lmtui --connect URL``: every tab is a
dashboard *attached* to one engine, never an engine of its own. With an embedded engine
(``lmtui --web [--demo|--config FILE]``) the parent process runs it once (the router, the
polls, the pool, as ``--serve`` does) and the sessions connect to its control API on
loopback; with ``lmtui --web --connect URL`` they connect to that engine.

Who may open it follows the router's rules (``guard.py``, SECURITY.md):

- It binds loopback unless told otherwise (``[web] listen``, 127.0.0.1:8020; the router
  keeps 4000). A bind beyond loopback is refused at start unless an admin token is set
  (``[router] admin_token_env``, or ``$LMTUI_ADMIN_TOKEN`` with ``--connect``): the page is
  the whole controller, so whoever may use it must hold the control API's token.
- With a token, every request needs it, loopback included: HTTP Basic (any user name, the
  token as password: the browser asks) or ``Authorization: Bearer``. A request that passed
  gets a cookie (HttpOnly, SameSite=Strict) that stands for the token (an HMAC of it, so
  it is not the token and dies when the token changes), so the websocket is authenticated
  whether or not the browser resends Basic credentials on it. Failures are counted, logged
  and limited like the router's.
- The browser rules apply: a request carrying an ``Origin`` must come from this page's own
  origin (a page elsewhere cannot open the websocket and type into the dashboard: websockets
  are not bound by CORS), and without a token the ``Host`` must be an IP address,
  ``localhost`` or in ``[router] allowed_hosts`` (DNS rebinding).
- At most ``[web] max_sessions`` sessions run at once; past it, 503.

The token reaches each session in its environment (``LMTUI_ADMIN_TOKEN``), never on its
command line. Sessions run in their own process group, so Ctrl-C in the terminal reaches
only the parent, which tells each session to quit, waits ``SESSION_STOP_S``, then kills
what is left: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import shlex
import ssl
import sys
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from lmtui.engine.guard import AuthFailures, BrowserGuard
from lmtui.engine.ratelimit import RateLimits

log = logging.getLogger("lmtui.web")

#: The default bind: loopback, a port of its own (the router's default is 4000).
DEFAULT_LISTEN = "127.0.0.1:8020"
#: The environment variable a session reads its admin token from (``--connect``'s).
TOKEN_ENV = "LMTUI_ADMIN_TOKEN"
#: Set in a session's environment to lmtui's pid: the session exits once its parent is
#: gone, even after a SIGKILL that lmtui could not pass on (``cli._exit_with_parent``).
WEB_PARENT_ENV = "LMTUI_WEB_PARENT"
#: Seconds a session has to quit when asked before it is terminated, then killed.
SESSION_STOP_S = 5.0
#: The cookie a browser that presented the token gets.
COOKIE = "lmtui_web"
#: A ``Host`` that may be written into the page (the websocket's URL): a name, an IPv4 or
#: a bracketed IPv6 address, and a port. jinja2 does not escape textual-serve's template.
_HOST_RE = re.compile(
    r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$"
)


class WebError(Exception):
    """A ``--web`` set-up the user must change (exit status 2, one line)."""


@dataclass(frozen=True)
class WebPlan:
    """What ``lmtui --web`` serves, where, and to whom."""

    host: str
    port: int
    #: The command each browser session runs (``lmtui --connect URL ...``).
    command: tuple[str, ...]
    #: The admin token: sessions get it in their environment, browsers must present it.
    token: str | None = None
    max_sessions: int = 4
    #: TLS for the web server: ``--web-cert``/``--web-key``, else the router's certificate
    #: when it has one (an embedded engine's); None: plain HTTP.
    tls: ssl.SSLContext | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    #: Failed authentications an address may make at once, then per second.
    auth_failure_burst: int = 20
    auth_failure_rate: float = 0.2

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else "::1" if self.host == "::" else self.host
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{self.port}/"


def parse_web_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--web`` or ``[web] listen``; WebError saying what is wrong.
    Port 0 is allowed (the OS picks one; the address is printed)."""
    from lmtui.config import parse_listen

    try:
        host, port = parse_listen(listen, any_port=True)
    except ValueError as e:
        raise WebError(f"--web {e}") from None
    return host.strip("[]"), port


def bind_problem(host: str, token: str | None, token_source: str) -> str | None:
    """Why ``host`` may not be bound (None: it may). Beyond loopback the page needs a token,
    as the control API does (``token_source`` says where the user sets one)."""
    from lmtui.engine.engine import is_loopback

    if token or is_loopback(host):
        return None
    return (
        f"refusing to serve the web dashboard on {host}: beyond loopback every browser must "
        f"present the admin token, and none is set ({token_source}). Set one, or serve on "
        "127.0.0.1 and reach it through an SSH tunnel."
    )


def web_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The page's TLS context from ``--web-cert`` / ``--web-key`` (None when neither is
    given), with the router's modern defaults (``config/tls.py``). A file that is missing,
    unreadable, not PEM, not a certificate or key, or a key of another certificate is a
    WebError naming the flag and the file."""
    from lmtui.config.tls import TlsFileError, server_context

    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise WebError("--web-cert and --web-key go together: give both to serve HTTPS")
    flags = {"tls_cert": "--web-cert", "tls_key": "--web-key"}
    try:
        return server_context(os.path.expanduser(cert), os.path.expanduser(key))
    except TlsFileError as e:
        raise WebError(f"{flags[e.key]}: {e}") from None


def clear_text_warning(plan: WebPlan, how: str) -> str | None:
    """The warning for a page served beyond loopback over plain HTTP (None: no warning):
    the admin token the browser presents crosses the network in clear. Not refused: an SSH
    tunnel or a TLS proxy in front is legitimate. ``how`` says how to give it TLS."""
    from lmtui.engine.engine import is_loopback

    if plan.tls is not None or is_loopback(plan.host):
        return None
    return (
        f"the web dashboard on {plan.host} is plain HTTP: the admin token "
        f"crosses the network in clear unless a TLS proxy or an SSH tunnel is in front; "
        f"{how} serves it over HTTPS"
    )


def session_command(
    url: str, *, read_only: bool = False, ca: str | None = None, debug: bool = False
) -> tuple[str, ...]:
    """The command a browser session runs: a dashboard attached to the engine at ``url``,
    with this interpreter (the one lmtui runs on, whatever is on PATH)."""
    cmd = [sys.executable, "-m", "lmtui", "--connect", url]
    if ca is not None:
        cmd += ["--ca", ca]
    if read_only:
        cmd.append("--read-only")
    if debug:
        cmd.append("--debug")
    return tuple(cmd)


def local_url(router_url: str) -> str:
    """The router's URL as a session on this machine reaches it: an unspecified bind
    (``0.0.0.0``, ``::``) is reached on loopback."""
    scheme, _, rest = router_url.partition("://")
    for wildcard, loop in (("0.0.0.0:", "127.0.0.1:"), ("[::]:", "[::1]:")):
        if rest.startswith(wildcard):
            rest = loop + rest[len(wildcard) :]
    return f"{scheme}://{rest}"


def session_cookie(token: str) -> str:
    """The cookie value standing for ``token``: not the token, and void once it changes."""
    return hmac.new(token.encode(), b"lmtui --web session", hashlib.sha256).hexdigest()


# --- the server -------------------------------------------------------------------------


def _textual_serve() -> Any:
    """textual-serve's modules, imported when ``--web`` runs (not for every lmtui)."""
    from textual_serve import app_service, server

    return server, app_service


class WebAuth:
    """The browser rules and the token, for every request to the web server."""

    def __init__(self, plan: WebPlan) -> None:
        self.token = plan.token
        self.cookie = session_cookie(plan.token) if plan.token else None
        self.secure = plan.tls is not None
        self.guard = BrowserGuard(
            allowed_hosts=plan.allowed_hosts,
            allowed_origins=plan.allowed_origins,
            scheme=plan.scheme,
        )
        self.failures = AuthFailures()
        self.limits = RateLimits(
            auth_failure_rate=plan.auth_failure_rate, auth_failure_burst=plan.auth_failure_burst
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        h = request.headers
        if request.method not in ("GET", "HEAD"):
            return _text(405, "the web dashboard answers GET only")
        refusal = self.guard.check(
            request.method, h.get("Host"), h.get("Origin"), None, keyed=self.token is not None
        )
        if refusal is not None:
            return _text(refusal[0], refusal[1])
        if not _HOST_RE.match(h.get("Host", "")):
            return _text(400, "the Host header is not HOST[:PORT]")
        presented = False
        if self.token is not None:
            address = request.remote
            limited = self.limits.check_failures(address)
            if limited is not None:
                resp = _text(429, limited.message)
                resp.headers["Retry-After"] = limited.retry_after
                return resp
            verdict = self._judge(request)
            if verdict is None:
                self.failures.record(address, "web")
                self.limits.auth_failed(address)
                resp = _text(401, "this lmtui needs its admin token: give it as the password")
                resp.headers["WWW-Authenticate"] = 'Basic realm="lmtui", charset="UTF-8"'
                return resp
            presented = verdict
        resp = await handler(request)
        if presented and self.cookie is not None and not resp.prepared:
            resp.set_cookie(
                COOKIE, self.cookie, httponly=True, samesite="Strict", secure=self.secure, path="/"
            )
        return resp

    def _judge(self, request: web.Request) -> bool | None:
        """None: refused; False: the cookie was right; True: the token was presented (the
        answer sets the cookie)."""
        assert self.token is not None and self.cookie is not None
        given = request.cookies.get(COOKIE)
        if given is not None and hmac.compare_digest(given.encode(), self.cookie.encode()):
            return False
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        secret = ""
        if scheme.lower() == "bearer":
            secret = value.strip()
        elif scheme.lower() == "basic":
            import base64
            import binascii

            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            secret = decoded.partition(":")[2]
        if secret and hmac.compare_digest(secret.encode(), self.token.encode()):
            return True
        return None


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


class WebServer:
    """textual-serve's server, run inside lmtui's event loop: the browser rules and the
    token in front, a bound on sessions, and every session's process stopped at the end.

    ``async with WebServer(plan) as server:`` serves until the block ends.
    """

    def __init__(self, plan: WebPlan) -> None:
        server_mod, service_mod = _textual_serve()
        self.plan = plan
        self.auth = WebAuth(plan)
        self.sessions: dict[Any, web.WebSocketResponse] = {}
        self._serve = server_mod.Server(
            shlex.join(plan.command),
            host=plan.host,
            port=plan.port,
            title="lmtui",
            public_url=plan.url.rstrip("/"),
        )
        self._service_cls = _session_class(service_mod.AppService, plan)
        self._runner: web.AppRunner | None = None
        self.url = plan.url

    def app(self) -> web.Application:
        import aiohttp_jinja2
        import jinja2

        ts = self._serve
        app = web.Application(middlewares=[self.auth.middleware])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(ts.templates_path))
        app.add_routes(
            [
                web.get("/", self.index, name="index"),
                web.get("/ws", self.websocket, name="websocket"),
                web.get("/download/{key}", ts.handle_download, name="download"),
                web.static("/static", ts.statics_path, name="static"),
            ]
        )
        return app

    async def __aenter__(self) -> WebServer:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.plan.host, self.plan.port, ssl_context=self.plan.tls)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise WebError(
                f"cannot serve the web dashboard on {self.plan.host}:{self.plan.port}: "
                f"{e.strerror or e}"
            ) from None
        if self.plan.port == 0:
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                port = sockets[0].getsockname()[1]
                self.plan = _with_port(self.plan, port)
                self.url = self.plan.url
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_sessions()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop_sessions(self) -> None:
        """Every session asked to quit, at once; each one killed after ``SESSION_STOP_S``."""
        services = list(self.sessions)
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)
        for ws in list(self.sessions.values()):
            if ws.prepared:
                await ws.close(code=1001, message=b"lmtui is stopping")

    async def index(self, request: web.Request) -> web.StreamResponse:
        import aiohttp_jinja2

        if len(self.sessions) >= self.plan.max_sessions:
            return self._full()
        # The page's URLs from the Host it was asked for (checked by the middleware), so a
        # tablet that reached 0.0.0.0:8020 as "studio.lan:8020" opens its websocket there.
        base = f"{self.plan.scheme}://{request.headers['Host']}"
        ws = "wss" if self.plan.scheme == "https" else "ws"
        context = {
            "font_size": _font_size(request.query.get("fontsize", "16")),
            "app_websocket_url": f"{ws}://{request.headers['Host']}/ws",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": "lmtui"},
        }
        return aiohttp_jinja2.render_template("app_index.html", request, context)

    def _full(self) -> web.Response:
        resp = _text(
            503,
            f"all {self.plan.max_sessions} browser sessions are in use ([web] max_sessions); "
            "close one, or try again later",
        )
        resp.headers["Retry-After"] = "10"
        return resp

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self.sessions) >= self.plan.max_sessions:
            return self._full()
        width = _dimension(request.query.get("width", "80"), 80)
        height = _dimension(request.query.get("height", "24"), 24)
        ws = web.WebSocketResponse(heartbeat=15, max_msg_size=64 * 1024)
        ended = asyncio.Event()

        async def session_ended() -> None:
            ended.set()

        # The session says it ended (the app's "exit"); this handler alone then closes the
        # websocket, never a second task reading it at the same time.
        service = self._service_cls(
            self._serve.command,
            write_bytes=ws.send_bytes,
            write_str=ws.send_str,
            close=session_ended,
            download_manager=self._serve.download_manager,
        )
        # Counted before the first await, so handshakes at once cannot pass the bound.
        self.sessions[service] = ws
        relay: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            log.info("browser session from %s (%d open)", request.remote, len(self.sessions))
            await service.start(width, height)
            relay = asyncio.create_task(_relay(ws, service))
            waits = {relay, service._task, asyncio.ensure_future(ended.wait())}
            # Until the browser goes, the app exits or its process ends (q, or it could not
            # attach: the page then says "Session ended").
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in pending - {service._task}:
                t.cancel()
            if relay.done() and not relay.cancelled() and relay.exception() is not None:
                log.warning("browser session ended with an error: %s", relay.exception())
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a session's failure is logged, never the server's end
            log.warning("browser session ended with an error: %s", e)
        finally:
            if relay is not None:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
            await service.stop()
            self.sessions.pop(service, None)
            if ws.prepared:
                await ws.close()
            log.info("browser session from %s ended (%d open)", request.remote, len(self.sessions))
        return ws


def _with_port(plan: WebPlan, port: int) -> WebPlan:
    return replace(plan, port=port)


def _dimension(value: str, default: int) -> int:
    """A terminal size the page asks for, bounded (the browser's choice)."""
    try:
        n = int(value)
    except ValueError:
        return default
    return max(10, min(n, 1000))


def _font_size(value: str) -> int:
    try:
        return max(6, min(int(value), 64))
    except ValueError:
        return 16


async def _relay(ws: web.WebSocketResponse, service: Any) -> None:
    """The browser's keys and resizes to the session: textual-serve's envelope, checked
    (a malformed message is dropped, never an exception)."""
    from aiohttp import WSMsgType

    async for message in ws:
        if message.type != WSMsgType.TEXT:
            continue
        try:
            envelope = message.json()
        except ValueError:
            continue
        if not isinstance(envelope, list) or not envelope:
            continue
        kind, data = envelope[0], envelope[1] if len(envelope) > 1 else None
        if kind == "stdin" and isinstance(data, str):
            await service.send_bytes(data.encode("utf-8"))
        elif kind == "resize" and isinstance(data, dict):
            w, h = data.get("width"), data.get("height")
            if isinstance(w, int) and isinstance(h, int):
                await service.set_terminal_size(_dimension(str(w), 80), _dimension(str(h), 24))
        elif kind == "ping":
            await ws.send_json(["pong", data])
        elif kind == "blur":
            await service.blur()
        elif kind == "focus":
            await service.focus()


def _session_class(base: type, plan: WebPlan) -> type:
    """textual-serve's ``AppService`` for lmtui's sessions: the command run without a shell
    in a process group of its own, the token in its environment, and a bounded stop."""

    class Session(base):
        _task: asyncio.Task[None] | None
        _process: Any

        def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
            env: dict[str, str] = super()._build_environment(width, height)
            env.pop(TOKEN_ENV, None)
            if plan.token:
                env[TOKEN_ENV] = plan.token
            env[WEB_PARENT_ENV] = str(os.getpid())
            return env

        async def _open_app_process(self, width: int = 80, height: int = 24) -> Any:
            env = self._build_environment(width=width, height=height)
            self._process = process = await asyncio.create_subprocess_exec(
                *plan.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                # Ctrl-C in lmtui's terminal goes to its process group: the sessions are
                # stopped by the parent, in order, not interrupted mid-draw.
                start_new_session=True,
            )
            self._stdin = process.stdin
            return process

        async def stop(self) -> None:
            process = self._process
            if process is None:
                return
            if process.returncode is None and self._task is not None:
                # textual-serve's own stop: a "quit" to the app, then its end.
                with contextlib.suppress(TimeoutError, OSError, RuntimeError):
                    await asyncio.wait_for(super().stop(), SESSION_STOP_S)
            if process.returncode is None:
                for send, wait in ((process.terminate, 2.0), (process.kill, 5.0)):
                    try:
                        send()
                        await asyncio.wait_for(process.wait(), wait)
                        break
                    except ProcessLookupError:
                        break
                    except TimeoutError:
                        continue
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    return Session


__all__ = [
    "DEFAULT_LISTEN",
    "TOKEN_ENV",
    "WEB_PARENT_ENV",
    "WebError",
    "WebPlan",
    "WebServer",
    "bind_problem",
    "clear_text_warning",
    "local_url",
    "parse_web_listen",
    "session_command",
    "session_cookie",
    "web_tls",
]
