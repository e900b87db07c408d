"""Command line: parse arguments, find the config, choose the mode.

    lmtui [--config FILE] [--demo] [--serve] [--read-only] [--debug]
    lmtui sim --config FILE [--time-scale X]

Errors a user can meet (a broken config, a port in use) print one clear line and exit 2;
a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from lmtui import __version__
from lmtui.config import Config, ConfigError, load_config
from lmtui.paths import find_config, state_dir

log = logging.getLogger("lmtui")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmtui",
        description="Terminal dashboard and controller for a cluster of local LLM servers. "
        "With no config found it runs the built-in demo cluster.",
        epilog="Config is found by --config, then $LMTUI_CONFIG, then "
        "~/.config/lmtui/config.toml (see config.example.toml). "
        "Subcommand: 'lmtui sim --config FILE' runs simulated nodes on loopback.",
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
        help="run headless: poll the cluster and log its events to stdout",
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
    args = parser().parse_args(argv)
    try:
        config, source = resolve_config(args)
        if args.serve:
            _setup_logging(args.debug, to_file=False)
            return asyncio.run(serve(config, source))
        _setup_logging(args.debug, to_file=True)
        return asyncio.run(run_tui(config, source, read_only=args.read_only))
    except ConfigError as e:
        if args.debug:
            raise
        print(f"lmtui: {e}", file=sys.stderr)
        return e.exit_code
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
async def cluster_config(config: Config | None) -> AsyncIterator[Config]:
    if config is not None:
        yield config
        return
    from lmtui.demo import demo_cluster

    async with demo_cluster() as demo:
        yield demo


async def run_tui(config: Config | None, source: str, *, read_only: bool) -> int:
    from lmtui.engine.client import InProcessClient
    from lmtui.engine.engine import Engine
    from lmtui.tui.app import build_app

    async with cluster_config(config) as cfg:
        engine = Engine(cfg, source=source)
        async with engine:
            app = build_app(InProcessClient(engine, read_only=read_only))
            await app.run_async()
    return 0


async def serve(config: Config | None, source: str) -> int:
    from lmtui.engine.engine import Engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with cluster_config(config) as cfg:
        engine = Engine(cfg, source=source)
        engine.store.subscribe(lambda _s, events: [log.info("%s", e.message) for e in events])
        log.info("lmtui %s serving %d nodes from %s", __version__, len(cfg.nodes), source)
        async with engine:
            await stop.wait()
    log.info("stopped")
    return 0


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
