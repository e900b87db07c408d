"""What the router's gate (``Router.admit``) costs per request, without any network.

    python bench/admission_cost.py [--requests 200000]

``admit`` runs for every ``/v1`` request on both servers: the browser rules, the
failed-authentication limit, the key, the per-key and per-address limits. Measured in four
configurations — no keys and no limits (the loopback default), one API key, one API key
with both request limits on (rates too high to refuse), and a failure already recorded
from another address (so the failure table is looked at) — in nanoseconds of CPU per
admitted request, best of five runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from lmtui.engine.ratelimit import RateLimits
from lmtui.engine.router import Router

KEY = "k" * 40


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


def router(keys: list[str], limits: RateLimits) -> Router:
    return Router(
        None,  # type: ignore[arg-type]  # admit never reaches the dispatcher
        {},
        {},
        api_keys=keys,
        queue_timeout_s=1.0,
        max_body_bytes=1,
        models=list,
        resolve=str,
        limits=limits,
    )


async def cost(r: Router, n: int) -> float:
    t, auth = _Transport(), f"Bearer {KEY}"
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            if not await r.admit(None, t, "127.0.0.1:4000", None, "application/json", auth):  # type: ignore[arg-type]
                raise SystemExit("refused: the benchmark is wrong")
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200_000)
    args = p.parse_args()
    huge = 1e12
    failed = RateLimits()
    failed.auth_failed("192.0.2.1")
    cases = {
        "no keys, no limits (default)": router([], RateLimits()),
        "one API key": router([KEY], RateLimits()),
        "one API key + key and address limits": router(
            [KEY],
            RateLimits(key_rate=huge, key_burst=10**9, address_rate=huge, address_burst=10**9),
        ),
        "one API key, a failure from elsewhere": router([KEY], failed),
    }
    for name, r in cases.items():
        print(f"{name:40s} {asyncio.run(cost(r, args.requests)):6.0f} ns/request")


if __name__ == "__main__":
    main()
