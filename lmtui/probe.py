"""``lmtui probe [NODE ...]``: does a node really run requests in parallel, and how many?

The multi-port notes of this project found an LM Studio server (before 0.4) that ran
strictly one request at a time with two models loaded, and two servers on one Mac that
did run side by side. Whether a node serves N requests at once is what its ``slots``
setting must say, and neither the server's settings nor its docs tell it reliably (the
MLX engine still serializes; ``OLLAMA_NUM_PARALLEL`` is invisible over HTTP). So measure:

- per model loaded on a node: one request alone, then N at once; speedup = Σ durations
  (each request's duration alone: the work) / wall time of the N. ~1: serial; ~k: k run
  at once, so ``slots = k`` (when k reaches N, there may be more: try a larger
  ``--requests``). The durations the N see at once are no measure of the work: on a
  serial server they include the wait for the others (1, 2, 3, 4 units: a false ×2.5).
- per host with several nodes (ports): one request to each node at once; the same speedup
  says whether the host runs its servers side by side.

Safe on a live cluster: only models already loaded are asked (a request for a model that
is not loaded would make LM Studio or Ollama load it), with a small ``max_tokens``, at most
16 requests at once, one node at a time, each request bounded by ``--timeout``. Requests go
through the router's own upstream client (``lmtui.http.pool_for``) with each node's own key,
as the router would send them; nothing passes through, or changes, a running lmtui.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from lmtui.backends import backend_for
from lmtui.backends.base import BackendError
from lmtui.config import Config, ConfigError, NodeConfig, load_config
from lmtui.config.paths import find_config
from lmtui.core.model import NodeObservation
from lmtui.http import UpstreamError, pool_for

#: A speedup below this is "serial": one request at a time, give or take the noise.
SERIAL_BELOW = 1.3
MAX_REQUESTS = 16


@dataclass
class Trial:
    """N requests at once to one model (or one request to each of several nodes)."""

    target: str  # "node/model", or "host" for a cross-port trial
    requests: int
    alone_s: float | None
    wall_s: float
    #: Σ of the answered requests' durations alone (the work done during ``wall_s``).
    sum_s: float
    errors: list[str] = field(default_factory=list)
    #: The node's slots as configured or polled, to compare with what was measured.
    slots_said: int | None = None

    @property
    def speedup(self) -> float:
        return self.sum_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def parallel(self) -> int:
        """How many ran at once, as the measurement says (1: serial)."""
        s = self.speedup
        return 1 if s < SERIAL_BELOW else max(2, min(self.requests, round(s)))

    def verdict(self) -> str:
        if self.errors and len(self.errors) >= self.requests:
            return "failed"
        k = self.parallel
        if k == 1:
            return "serial"
        return f"parallel ×{k}" + ("+" if k >= self.requests else "")

    def advice(self) -> str:
        k = self.parallel
        if self.errors:
            return f"{len(self.errors)} of {self.requests} failed: {self.errors[0]}"
        more = f" or more: try --requests {self.requests * 2}" if k >= self.requests else ""
        said = f" (configured/polled: {self.slots_said})" if self.slots_said else ""
        return f"slots = {k}{more}{said}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(speedup=round(self.speedup, 2), verdict=self.verdict(), slots=self.parallel)
        return d


def _body(model: str, embedding: bool, max_tokens: int) -> tuple[str, bytes]:
    if embedding:
        return "/v1/embeddings", msgspec.json.encode({"model": model, "input": "lmtui probe"})
    prompt = "Count from one to twenty in words, separated by commas."
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": False,
    }
    return "/v1/chat/completions", msgspec.json.encode(payload)


class Prober:
    def __init__(self, config: Config, *, requests: int, max_tokens: int, timeout: float):
        self.config = config
        self.requests = max(1, min(requests, MAX_REQUESTS))
        self.max_tokens = max_tokens
        self.timeout = timeout

    async def one(self, node: NodeConfig, key: str | None, model: str, embedding: bool) -> float:
        """One request, as the router sends it; its duration, or an exception."""
        path, body = _body(model, embedding, self.max_tokens)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        pool = self._pools[node.name]
        t0 = time.perf_counter()
        async with asyncio.timeout(self.timeout):
            resp = await pool.request("POST", path, body, headers)
            try:
                data = await resp.read(4 * 1024 * 1024)
            finally:
                resp.release()
        if resp.status >= 400:
            raise UpstreamError(
                f"HTTP {resp.status}: {data[:120].decode('utf-8', 'replace')}",
                before_response=False,
            )
        return time.perf_counter() - t0

    async def batch(
        self, calls: list[tuple[NodeConfig, str | None, str, bool]], alone: list[float]
    ) -> tuple[float, float, list[str]]:
        """Run ``calls`` at once: wall time, Σ of the answered ones' ``alone`` durations
        (the work done), errors."""
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self.one(*c) for c in calls), return_exceptions=True)
        wall = time.perf_counter() - t0
        errors = [_why(r) for r in results if isinstance(r, BaseException)]
        work = sum(a for a, r in zip(alone, results, strict=True) if isinstance(r, float))
        return wall, work, errors

    async def run(self, names: list[str]) -> tuple[list[Trial], list[str]]:
        nodes = [n for n in self.config.nodes if not names or n.name in names]
        unknown = sorted(set(names) - {n.name for n in self.config.nodes})
        notes = [f"{n}: no such node in the config" for n in unknown]
        self._pools = {
            n.name: pool_for(n.url, max_connections=MAX_REQUESTS, read_timeout=self.timeout)
            for n in nodes
        }
        trials: list[Trial] = []
        firsts: dict[str, tuple[NodeConfig, str | None, str, bool, float]] = {}
        try:
            for node in nodes:
                backend = backend_for(node, timeout=min(self.timeout, 10.0))
                try:
                    obs = await backend.poll(time.time())
                except BackendError as e:
                    notes.append(f"{node.name}: not probed, its poll failed ({_why(e)})")
                    continue
                finally:
                    await backend.aclose()
                    await backend.pool.close()
                loaded = _loaded(obs)
                if not loaded:
                    notes.append(
                        f"{node.name}: no model loaded, nothing to probe (probe never loads)"
                    )
                    continue
                for model, embedding, slots in loaded:
                    call = (node, backend.api_key, model, embedding)
                    try:
                        await self.one(*call)  # warm: the first may build a prompt cache
                        alone = await self.one(*call)
                    except (UpstreamError, TimeoutError, OSError) as e:
                        notes.append(f"{node.name}/{model}: a single request failed ({_why(e)})")
                        continue
                    n = self.requests
                    wall, total, errors = await self.batch([call] * n, [alone] * n)
                    said = slots or node.slots
                    trials.append(
                        Trial(
                            f"{node.name}/{model}", self.requests, alone, wall, total, errors, said
                        )
                    )
                    firsts.setdefault(node.name, (*call, alone))
            # Ports of one host: one request to each of its nodes at once.
            by_host: dict[str, list[str]] = defaultdict(list)
            for node in nodes:
                if node.name in firsts:
                    by_host[_host_of(node)].append(node.name)
            for host, members in sorted(by_host.items()):
                if len(members) < 2:
                    continue
                calls = [(f[0], f[1], f[2], f[3]) for f in (firsts[m] for m in members)]
                wall, total, errors = await self.batch(calls, [firsts[m][4] for m in members])
                target = f"{host} ({', '.join(members)})"
                trials.append(Trial(target, len(calls), None, wall, total, errors))
        finally:
            for pool in self._pools.values():
                await pool.close()
        return trials, notes


def _loaded(obs: NodeObservation) -> list[tuple[str, bool, int | None]]:
    kinds = {a.key: a.kind for a in obs.available or ()}
    out = []
    for inst in obs.instances or ():
        if inst.state.value != "loaded":
            continue
        out.append((inst.model, kinds.get(inst.model) == "embedding", inst.slots_total))
    return sorted(set(out))


def _host_of(node: NodeConfig) -> str:
    if node.ssh is not None and node.ssh.host:
        return node.ssh.host
    return urlsplit(node.url).hostname or node.url


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _host_advice(t: Trial) -> str:
    if t.parallel > 1:
        return "ports run side by side"
    if t.speedup < 0.8:  # measured: two llama-servers on 2 cores, each spinning its threads
        return "ports slow each other down: worse than one at a time (CPU or memory bound)"
    return "ports take turns: one server at a time"


def format_table(trials: list[Trial], notes: list[str]) -> str:
    rows = [("target", "N", "alone", "wall", "Σ alone", "speedup", "verdict", "implies")]
    for t in trials:
        rows.append(
            (
                t.target,
                str(t.requests),
                f"{t.alone_s:.2f}s" if t.alone_s is not None else "-",
                f"{t.wall_s:.2f}s",
                f"{t.sum_s:.2f}s",
                f"{t.speedup:.2f}×",
                t.verdict(),
                t.advice() if "/" in t.target else _host_advice(t),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lmtui probe",
        description="Measure how many requests each node really runs at once, per loaded "
        "model and per port of a host, and the slots setting that implies. Asks only "
        "models already loaded, with small requests; safe on a live cluster.",
    )
    p.add_argument("nodes", nargs="*", metavar="NODE", help="nodes to probe (default: all)")
    p.add_argument("--config", type=Path, metavar="FILE", help="config file (TOML)")
    p.add_argument(
        "--requests",
        type=int,
        default=4,
        help=f"requests at once per model (4; at most {MAX_REQUESTS})",
    )
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (32)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        p.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    try:
        path = find_config(args.config)
        if path is None:
            print("lmtui probe: no config found (--config FILE)", file=sys.stderr)
            return 2
        config = load_config(path)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"lmtui probe: {line}", file=sys.stderr)
        return 2
    prober = Prober(
        config, requests=args.requests, max_tokens=args.max_tokens, timeout=args.timeout
    )
    trials, notes = asyncio.run(prober.run(args.nodes))
    if args.json:
        print(json.dumps({"trials": [t.as_dict() for t in trials], "notes": notes}, indent=2))
    else:
        print(format_table(trials, notes))
    return 0 if trials else 1
