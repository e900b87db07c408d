"""``lmtui sim --config FILE``: run simulated nodes on loopback until Ctrl-C.

The file is TOML: ``[[nodes]]`` tables with :class:`~lmtui.sim.spec.SimNodeSpec` fields and
``[[nodes.models]]`` tables with :class:`~lmtui.sim.spec.SimModel` fields (see
``sim.example.toml`` beside this module). Unknown keys and wrong types are errors that name
the file and the key; they exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any, TextIO

from lmtui.core.model import NodeKind
from lmtui.sim.cluster import SimCluster
from lmtui.sim.spec import SimModel, SimNodeSpec
from lmtui.sim.traffic import TrafficGenerator

_TOP_KEYS = {"nodes", "time_scale", "seed"}


class SimConfigError(Exception):
    """The sim config file cannot be used; the message names the file and the key."""


def _kinds() -> str:
    return ", ".join(k.value for k in NodeKind)


def _check_type(value: Any, annotation: str, where: str) -> Any:
    """Check one scalar against a dataclass field annotation (as a string)."""
    ann = annotation.replace(" | None", "")
    ok: bool
    if ann == "bool":
        ok = isinstance(value, bool)
    elif ann == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif ann == "str":
        ok = isinstance(value, str)
    elif ann == "NodeKind":
        if value not in {k.value for k in NodeKind}:
            raise SimConfigError(f"{where}: unknown kind {value!r} (one of: {_kinds()})")
        return NodeKind(value)
    elif ann == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - a new field type needs a branch here
        raise AssertionError(f"unhandled field type {annotation}")
    if not ok:
        raise SimConfigError(f"{where}: expected {ann}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[Any], table: Any, where: str, nested: dict[str, Any]) -> Any:
    if not isinstance(table, dict):
        raise SimConfigError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise SimConfigError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(fields))})"
            )
        if key in nested:
            kwargs[key] = nested[key](value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, str(fields[key].type), f"{where}.{key}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SimConfigError(f"{where}: missing key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise SimConfigError(f"{where}: {e}") from e


def _models(value: Any, where: str) -> list[SimModel]:
    if not isinstance(value, list):
        raise SimConfigError(f"{where}: expected [[{where.split(': ')[-1]}]] tables")
    return [_build(SimModel, t, f"{where}[{i}]", {}) for i, t in enumerate(value)]


def parse_config(data: dict[str, Any], source: str) -> tuple[list[SimNodeSpec], dict[str, Any]]:
    """Turn a parsed TOML document into node specs and top-level options."""
    for key in data:
        if key not in _TOP_KEYS:
            raise SimConfigError(
                f"{source}: unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})"
            )
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise SimConfigError(f"{source}: no [[nodes]] tables")
    specs = [
        _build(SimNodeSpec, t, f"{source}: nodes[{i}]", {"models": _models})
        for i, t in enumerate(nodes)
    ]
    names = [s.name for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise SimConfigError(f"{source}: node name {n!r} used twice")
    options: dict[str, Any] = {}
    if "time_scale" in data:
        options["time_scale"] = _check_type(data["time_scale"], "float", f"{source}: time_scale")
    if "seed" in data:
        options["seed"] = _check_type(data["seed"], "int", f"{source}: seed")
    return specs, options


def load_config(path: Path) -> tuple[list[SimNodeSpec], dict[str, Any]]:
    """Read and validate a sim config file. Raises :class:`SimConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SimConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SimConfigError(f"{path}: invalid TOML: {e}") from e
    return parse_config(data, str(path))


def node_block(spec: SimNodeSpec, url: str) -> str:
    """A ready-to-paste lmtui ``[[nodes]]`` block for one running simulated node."""
    kind = NodeKind.LLAMACPP if spec.kind is NodeKind.LLAMACPP_POOL else spec.kind
    lines = [
        "[[nodes]]",
        f'name = "{spec.name}"',
        f'kind = "{kind.value}"',
        f'url = "{url}"',
        f"memory_gb = {spec.memory_gb:.1f}",
    ]
    if spec.kind is NodeKind.OLLAMA:
        # Ollama does not expose OLLAMA_NUM_PARALLEL over HTTP: tell lmtui.
        lines.append(f"slots = {spec.parallel}")
    if spec.api_key:
        env = "LMTUI_KEY_" + "".join(c if c.isalnum() else "_" for c in spec.name).upper()
        lines.append(f'api_key_env = "{env}"  # export {env}={spec.api_key}')
    return "\n".join(lines)


async def serve(
    specs: list[SimNodeSpec], *, time_scale: float, seed: int, traffic: float, out: TextIO
) -> int:
    """Run the nodes until SIGINT/SIGTERM; print their lmtui config blocks first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    cluster = SimCluster(specs, time_scale=time_scale, seed=seed)
    try:
        await cluster.start()
    except OSError as e:
        print(f"lmtui sim: cannot listen: {e}", file=sys.stderr)
        return 1
    gen = TrafficGenerator(cluster, traffic, seed) if traffic > 0 else None
    try:
        print(
            f"# {len(cluster.nodes)} simulated nodes on 127.0.0.1 "
            f"(time scale {time_scale:g}). Paste into your lmtui config:\n",
            file=out,
        )
        for node in cluster.nodes:
            print(node_block(node.spec, node.url) + "\n", file=out)
        print("# Ctrl-C to stop.", file=out, flush=True)
        if gen is not None:
            await gen.start()
        await stop.wait()
    finally:
        if gen is not None:
            await gen.stop()
        await cluster.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``lmtui sim``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lmtui sim", description="Run simulated LLM servers on 127.0.0.1."
    )
    parser.add_argument("--config", required=True, type=Path, help="TOML file of [[nodes]]")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="multiply simulated durations (0.1 = ten times faster)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument(
        "--traffic",
        type=float,
        default=0.0,
        metavar="RATE",
        help="also send RATE chat requests per second to the nodes",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        specs, options = load_config(args.config)
    except SimConfigError as e:
        print(f"lmtui sim: {e}", file=sys.stderr)
        return 2
    time_scale = args.time_scale if args.time_scale is not None else options.get("time_scale", 1.0)
    if time_scale <= 0:
        print("lmtui sim: --time-scale must be > 0", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else options.get("seed", 0)
    try:
        return asyncio.run(
            serve(specs, time_scale=time_scale, seed=seed, traffic=args.traffic, out=sys.stdout)
        )
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
