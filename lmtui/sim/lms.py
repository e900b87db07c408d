"""A stand-in for LM Studio's ``lms`` CLI, driving a *simulated* LM Studio server.

LM Studio cannot run here, so neither can its ``lms``. This program answers the commands
lmtui runs over SSH — ``ps --json``, ``load KEY [--ttl S] [--parallel N] [-c CTX]
[--identifier ID] [-y]``, ``unload ID | --all`` — with the output shapes and exit
statuses LM Studio documents for the real one (the ``lms ps --json`` fields, exit status 0
on success), by calling the simulated server's ``/__sim/lms/...`` routes
(lmtui/sim/kinds/lmstudio.py). Point a node's ``[nodes.ssh] lms`` at a one-line wrapper::

    #!/bin/sh
    exec /path/to/python -m lmtui.sim.lms --server http://127.0.0.1:PORT "$@"

Standard library only: it runs as a fresh process for every command.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def _call(server: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        server.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", str(e))
        except ValueError:
            message = str(e)
        raise SystemExit(f"Error: {message}") from None
    except OSError as e:
        raise SystemExit(f"Error: cannot reach LM Studio at {server}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lms", description="stand-in lms for a simulated LM Studio")
    p.add_argument("--server", required=True, help="the simulated server's URL")
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("ps")
    ps.add_argument("--json", action="store_true")
    load = sub.add_parser("load")
    load.add_argument("model")
    load.add_argument("--ttl", type=int)
    load.add_argument("--parallel", type=int)
    load.add_argument("-c", "--context-length", type=int)
    load.add_argument("--identifier")
    load.add_argument("-y", "--yes", action="store_true")
    unload = sub.add_parser("unload")
    unload.add_argument("identifier", nargs="?")
    unload.add_argument("--all", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "ps":
        rows = _call(args.server, "GET", "/__sim/lms/ps")
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print("No models are currently loaded")
        else:
            for r in rows:
                print(f"{r['identifier']}  {r['modelKey']}  {r['status']}")
        return 0
    if args.cmd == "load":
        body = {
            "model": args.model,
            "ttl": args.ttl,
            "parallel": args.parallel,
            "context_length": args.context_length,
            "identifier": args.identifier,
        }
        got = _call(args.server, "POST", "/__sim/lms/load", body)
        print(f"Model loaded successfully: {got['identifier']}")
        return 0
    if not args.all and not args.identifier:
        print("Error: give an identifier or --all", file=sys.stderr)
        return 1
    body = {"all": True} if args.all else {"identifier": args.identifier}
    _call(args.server, "POST", "/__sim/lms/unload", body)
    print("Model unloaded.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
