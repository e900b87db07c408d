"""Command line: parse arguments, find the config, choose the mode.

    lmtui [--config FILE] [--demo] [--serve] [--listen HOST:PORT] [--connect URL [--ca FILE]]
          [--web [HOST:PORT] [--web-cert FILE --web-key FILE]] [--read-only] [--debug]
    lmtui sim --config FILE [--time-scale X]
    lmtui replay TRACE.csv [--cluster FILE | --nodes GB,…] [--policy P …] [--strategy S]
                 [--service busy|instant] [--rate-scale X] [--seed N] [--json]
    lmtui export-log [--db PATH] [--since WHEN] > log.csv
    lmtui probe [NODE ...] [--config FILE] [--requests N] [--json]

Errors a user can meet (a broken config, a port in use) print one clear line (a broken
config one per problem in it) and exit 2; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtui import __version__
from lmtui.config import Config, ConfigError, key_strings, load_config, parse_listen
from lmtui.config.paths import find_config, overrides_path, state_dir, themes_dir
from lmtui.core.events import Event, EventKind, Level
from lmtui.engine.client import HttpEngineClient, InProcessClient
from lmtui.engine.commands import CommandError
from lmtui.engine.engine import Engine, EngineError
from lmtui.engine.reqlog import default_path as default_log_path
from lmtui.web import TOKEN_ENV, WEB_PARENT_ENV, WebError, WebPlan, bind_problem

if TYPE_CHECKING:
    import ssl

    from lmtui.demo import Demo

log = logging.getLogger("lmtui")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmtui",
        description="Terminal dashboard and controller for a cluster of local LLM servers. "
        "With no config found it runs the built-in demo cluster.",
        epilog="Config is found by --config, then $LMTUI_CONFIG, then "
        "~/.config/lmtui/config.toml (see config.example.toml). "
        "Subcommands: 'lmtui sim --config FILE' runs simulated nodes on loopback; "
        "'lmtui replay TRACE.csv' replays a request trace through the scheduler and "
        "eviction in virtual time (see 'lmtui replay --help'); 'lmtui export-log' writes "
        "the request log as a CSV trace for it; 'lmtui probe' measures how many requests "
        "each node really runs at once and the slots setting that implies.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="run the built-in simulated demo cluster, ignoring any config",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="run headless: the OpenAI-compatible router and the pool manager, "
        "logging every event to stdout",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="router address (default: [router] listen, 127.0.0.1:4000); "
        "'off' runs the dashboard without the router",
    )
    p.add_argument(
        "--connect",
        metavar="URL",
        help="attach the dashboard to a running 'lmtui --serve' at URL "
        "(admin token from $LMTUI_ADMIN_TOKEN)",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="with --connect https://...: the CA certificate (PEM) the engine's certificate "
        "is checked against, e.g. a self-signed one (default: the system's store)",
    )
    p.add_argument(
        "--web",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="serve the dashboard to browsers (textual-serve) at HOST:PORT (default: [web] "
        "listen, 127.0.0.1:8020): one engine here (or the one of --connect), each browser "
        "tab a dashboard attached to it; beyond loopback the admin token is required, "
        "and without TLS (--web-cert/--web-key, or the router's) it crosses the network "
        "in clear: lmtui warns",
    )
    p.add_argument(
        "--web-cert",
        metavar="FILE",
        help="with --web: serve the page over HTTPS with this certificate (PEM, its chain "
        "after it), with --web-key; with an embedded engine it replaces the router's "
        "[router] tls_cert for the page",
    )
    p.add_argument(
        "--web-key",
        metavar="FILE",
        help="with --web-cert: the certificate's private key (PEM, not encrypted)",
    )
    p.add_argument(
        "--read-only", action="store_true", help="show the cluster; hide and refuse every command"
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="verbose logs (to the log file in the state dir) and full tracebacks",
    )
    p.add_argument("--version", action="version", version=f"lmtui {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:
        from lmtui.sim.cli import main as sim_main

        return sim_main(argv[1:])
    if argv[:1] == ["replay"]:
        from lmtui.replay.cli import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["probe"]:
        from lmtui.probe import main as probe_main

        return probe_main(argv[1:])
    if argv[:1] == ["export-log"]:
        from lmtui.engine.reqlog import RequestRecord
        from lmtui.replay.cli import export_main

        return export_main(argv[1:], default_db=default_log_path(), columns=RequestRecord._fields)
    p = parser()
    args = p.parse_args(argv)
    if args.connect and (args.serve or args.demo or args.config):
        p.error("--connect attaches to a running engine; it takes no --serve, --demo or --config")
    if args.ca and not args.connect:
        p.error("--ca checks the certificate of a --connect https:// URL; give --connect too")
    if args.web is not None and args.serve:
        p.error("--web runs the engine headless already, and serves its dashboard; drop --serve")
    if args.web is not None and args.listen == "off":
        p.error("--web needs the router: its browser sessions attach to its control API")
    if (args.web_cert is None) != (args.web_key is None):
        p.error("--web-cert and --web-key go together: give both to serve the page over HTTPS")
    if args.web_cert is not None and args.web is None:
        p.error("--web-cert and --web-key serve the --web page over HTTPS; give --web too")
    try:
        if args.web is not None:
            _setup_logging(args.debug, to_file=False)
            return _run_web(args)
        if args.connect:
            _setup_logging(args.debug, to_file=True)
            return asyncio.run(run_attached(args.connect, read_only=args.read_only, ca=args.ca))
        config, source = resolve_config(args)
        if args.serve:
            _setup_logging(args.debug, to_file=False)
            return _run(serve(config, source, args.listen))
        _setup_logging(args.debug, to_file=True)
        return asyncio.run(run_tui(config, source, args.listen, read_only=args.read_only))
    except (ConfigError, EngineError, CommandError, WebError) as e:
        if args.debug:
            raise
        # A broken config lists every problem in it, one per line.
        for line in str(e).splitlines():
            print(f"lmtui: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # e.g. a port in use for the demo cluster
        if args.debug:
            raise
        print(f"lmtui: {e}", file=sys.stderr)
        return 2


def resolve_config(args: argparse.Namespace) -> tuple[Config | None, str]:
    """The config to run, or None for the demo cluster, and a label for where it came from."""
    if args.demo:
        return None, "demo"
    path = find_config(args.config)
    if path is None:
        return None, "demo"
    return load_config(path), str(path)


@asynccontextmanager
async def cluster_config(config: Config | None) -> AsyncIterator[tuple[Config, Demo | None]]:
    """The config to run; with none, the demo cluster for the duration of the block."""
    if config is not None:
        yield config, None
        return
    from lmtui.demo import demo_cluster

    async with demo_cluster() as demo:
        yield demo.config, demo


def _listen(config: Config, cli_listen: str | None) -> str | None:
    if cli_listen == "off":
        return None
    return cli_listen or config.router.listen


def _engine(config: Config, source: str, listen: str | None) -> Engine:
    # The demo cluster keeps its pins and its requests to itself: the user's overrides file
    # and request log are for their own cluster.
    real = source != "demo"
    return Engine(
        config,
        source=source,
        listen=listen,
        overrides_path=overrides_path() if real else None,
        request_log=default_log_path() if real and config.router.request_log else None,
    )


async def run_tui(
    config: Config | None, source: str, listen: str | None, *, read_only: bool
) -> int:
    from lmtui.tui.app import build_app

    async with cluster_config(config) as (cfg, demo):
        engine = _engine(cfg, source, _listen(cfg, listen))
        # The dashboard is still useful when the router's port is taken (say, by a
        # running 'lmtui --serve'): the engine says so in the event log instead of exiting.
        engine.listen_required = False
        async with engine:
            if demo is not None:
                demo.route_traffic_via(engine.router_url)
            client = InProcessClient(engine, read_only=read_only)
            keymap = key_strings(cfg.keymap)
            await build_app(
                client,
                theme_dirs=_theme_dirs(),
                keymap=keymap,
                prefs_path=state_dir() / "tui.toml",
                screenshot_dir=state_dir(),
            ).run_async()
            if demo is not None:
                await demo.traffic.stop()
    return 0


async def run_attached(url: str, *, read_only: bool, ca: str | None = None) -> int:
    from lmtui.tui.app import build_app

    client = HttpEngineClient(
        url, token=os.environ.get("LMTUI_ADMIN_TOKEN"), read_only=read_only, ca_file=ca
    )
    watch: asyncio.Task[None] | None = None
    try:
        await client.connect()
        app = build_app(
            client,
            theme_dirs=_theme_dirs(),
            prefs_path=state_dir() / "tui.toml",
            screenshot_dir=state_dir(),
        )
        parent = os.environ.get(WEB_PARENT_ENV, "")
        if parent.isdigit():
            watch = asyncio.create_task(_exit_with_parent(app, int(parent)))
        await app.run_async()
    finally:
        if watch is not None:
            watch.cancel()
        await client.aclose()
    return 0


async def _exit_with_parent(app: Any, parent: int) -> None:
    """A browser session of ``lmtui --web`` ends when that lmtui is gone, even killed with
    SIGKILL (which it cannot pass on): its parent then is no longer ``parent``."""
    # No event tells a process that its parent died (PR_SET_PDEATHSIG is Linux-only): poll.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    app.exit()


def _theme_dirs() -> tuple[Path, ...]:
    """lmtui's own themes, then the user's folder (a missing one is skipped)."""
    from lmtui.tui.themes import SHIPPED_THEMES_DIR

    return (SHIPPED_THEMES_DIR, themes_dir())


async def serve(config: Config | None, source: str, listen: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal() -> None:
        # The first signal drains (running requests may take up to 10 s to finish); a
        # second one, from someone who will not wait, cuts the drain short.
        if not stop.is_set():
            stop.set()
            return
        log.warning("second signal: stopping now, without waiting for running requests")
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _serve(config, source, listen, stop)
    except asyncio.CancelledError:
        # Servers of a pool node left running are adopted by the next lmtui.
        log.info("stopped (forced)")
        return 130
    finally:
        # The engine has stopped (its request log flushed). What is left is the event
        # loop's own teardown, after which the loop drops its handlers and a signal would
        # kill the process with no word: a signal now ends it at once, as one during the
        # drain does.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, _exit_forced)


def _exit_forced(signum: int, frame: object) -> None:
    """A signal after the engine stopped, while the process winds down: exit now (130)."""
    log.info("stopped (forced)")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


async def _serve(
    config: Config | None, source: str, listen: str | None, stop: asyncio.Event
) -> int:
    async with cluster_config(config) as (cfg, demo):
        engine = _engine(cfg, source, _listen(cfg, listen) or cfg.router.listen)
        engine.store.subscribe(_log_events)
        async with engine:
            if demo is not None:
                demo.route_traffic_via(engine.router_url)
            log.info(
                "lmtui %s: %d nodes from %s; router on %s/v1 (control API under "
                "/lmtui/v1, metrics at /metrics)",
                __version__,
                len(cfg.nodes),
                source,
                engine.router_url,
            )
            await stop.wait()
            log.info("stopping: queued requests get 503, running ones may finish")
            if demo is not None:
                await demo.traffic.stop()
    log.info("stopped")
    return 0


def _run_web(args: argparse.Namespace) -> int:
    """``lmtui --web``: check the bind and the token before anything starts, then serve."""
    from lmtui.config import WebConfig
    from lmtui.web import parse_web_listen, web_tls

    # The page's own certificate, checked before anything starts.
    page_tls = web_tls(args.web_cert, args.web_key)
    if args.connect:
        web_cfg, token = WebConfig(), os.environ.get(TOKEN_ENV) or None
        host, port = parse_web_listen(args.web or web_cfg.listen)
        problem = bind_problem(host, token, f"${TOKEN_ENV}")
        if problem:
            raise WebError(problem)
        return asyncio.run(_web_attached(args, host, port, web_cfg.max_sessions, token, page_tls))
    config, source = resolve_config(args)
    return asyncio.run(web_embedded(config, source, args, page_tls))


async def _web_attached(
    args: argparse.Namespace,
    host: str,
    port: int,
    max_sessions: int,
    token: str | None,
    page_tls: ssl.SSLContext | None,
) -> int:
    from lmtui.web import WebPlan, session_command

    plan = WebPlan(
        host=host,
        port=port,
        command=session_command(
            args.connect, read_only=args.read_only, ca=args.ca, debug=args.debug
        ),
        token=token,
        max_sessions=max_sessions,
        tls=page_tls,
    )
    _warn_clear_text(plan, "--web-cert/--web-key")
    async with _until_signal() as stop:
        await _serve_web(plan, stop, f"the engine at {args.connect}")
    return 0


async def web_embedded(
    config: Config | None,
    source: str,
    args: argparse.Namespace,
    page_tls: ssl.SSLContext | None = None,
) -> int:
    """One engine in this process (the demo cluster's, with ``--demo``), its dashboard in
    every browser tab: each session is ``lmtui --connect`` to this engine's router. The page
    is served with ``page_tls`` (``--web-cert``/``--web-key``), else the router's TLS."""
    from lmtui.engine.engine import env_secret, is_loopback, router_tls
    from lmtui.web import WebPlan, local_url, parse_web_listen, session_command

    # Checked before the cluster starts (the demo's config has the defaults' rules).
    pre = config if config is not None else Config()
    rc = pre.router
    token = env_secret(rc.admin_token_env, "[router] admin_token_env")
    host, port = parse_web_listen(args.web or pre.web.listen)
    problem = bind_problem(host, token, "[router] admin_token_env")
    if problem:
        raise WebError(problem)
    listen = _listen(pre, args.listen) or rc.listen
    try:
        router_host = parse_listen(listen, any_port=True)[0].strip("[]")
    except ValueError as e:
        raise WebError(f"--listen {e}") from None
    if token is None and not is_loopback(router_host):
        raise WebError(
            f"--web needs the control API, which is off on {router_host} without an admin "
            "token: set [router] admin_token_env"
        )
    async with _until_signal() as stop, cluster_config(config) as (cfg, demo):
        tls = router_tls(cfg)
        engine = _engine(cfg, source, listen)
        engine.store.subscribe(_log_events)
        async with engine:
            if demo is not None:
                demo.route_traffic_via(engine.router_url)
            assert engine.router_url is not None
            plan = WebPlan(
                host=host,
                port=port,
                command=session_command(
                    local_url(engine.router_url),
                    read_only=args.read_only,
                    # The router's own certificate: its sessions reach it on loopback.
                    ca=rc.tls_cert if tls is not None else None,
                    debug=args.debug,
                ),
                token=token,
                max_sessions=cfg.web.max_sessions,
                # The page's own pair, else the router's (the sessions reach the router
                # with its own either way).
                tls=page_tls or tls,
                allowed_hosts=tuple(rc.allowed_hosts),
                allowed_origins=tuple(rc.allowed_origins),
                auth_failure_burst=rc.auth_failure_burst,
                auth_failure_rate=rc.auth_failure_rate,
            )
            _warn_clear_text(plan, "--web-cert/--web-key (or [router] tls_cert/tls_key)")
            await _serve_web(plan, stop, f"{len(cfg.nodes)} nodes from {source}")
            if demo is not None:
                await demo.traffic.stop()
    return 0


def _warn_clear_text(plan: WebPlan, how: str) -> None:
    """Beyond loopback without TLS, one line at start: the token crosses the network in
    clear (not refused: a tunnel or a TLS proxy in front is legitimate)."""
    from lmtui.web import clear_text_warning

    warning = clear_text_warning(plan, how)
    if warning is not None:
        log.warning("%s", warning)


async def _serve_web(plan: WebPlan, stop: asyncio.Event, what: str) -> None:
    from lmtui.web import WebServer

    async with WebServer(plan) as server:
        log.info(
            "lmtui %s: the dashboard of %s in a browser at %s (at most %d sessions%s); "
            "Ctrl-C stops",
            __version__,
            what,
            server.url,
            plan.max_sessions,
            ", admin token required" if plan.token else "",
        )
        await stop.wait()
        log.info("stopping: %d browser session(s) asked to quit", len(server.sessions))
    log.info("stopped")


@asynccontextmanager
async def _until_signal() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _log_events(_snap: object, events: list[Event]) -> None:
    # Routing decisions are per request: counted in /metrics, not logged one by one.
    for e in events:
        if e.kind is not EventKind.ROUTE:
            log.log(_LEVELS[e.level], "%s", e.message)


_LEVELS = {Level.INFO: logging.INFO, Level.WARNING: logging.WARNING, Level.ERROR: logging.ERROR}


def _setup_logging(debug: bool, *, to_file: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if to_file:
        # The terminal belongs to the UI; logs go to a file beside the overrides.
        path = state_dir() / "lmtui.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=path, level=level if debug else logging.WARNING, format=fmt)
    else:
        logging.basicConfig(stream=sys.stdout, level=level, format=fmt)
    for noisy in ("httpx", "httpcore", "asyncssh", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run the headless engine on uvloop where it is installed (Linux, macOS): the router's
    per-request cost is mostly event-loop and socket work, which uvloop does in C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
