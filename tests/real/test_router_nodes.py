"""Two real router-mode ``llama-server`` nodes behind lmtui: a freeze, a resume, a kill.

Each node is ``llama-server --models-dir D --models-max 1 -np 2`` with two model names
(``alpha``, ``beta``: the same small gemma3-270m file under two names), as in the issue that
found these failures. The bot's side is the real ``openai`` client. What must hold:

- a node frozen with SIGSTOP (it accepts connections and answers nothing) while requests
  run there: every request ends well before the client's own timeout, and those that had
  received nothing are served by the other node;
- once it resumes with requests still running on its resident model (the router does not
  cancel its model process's work when the client, lmtui, gives up: it notices only when it
  answers), a request for the other model (which needs a load at the instance limit) never
  gets a 500: it waits until a resident model is idle, then evicts it and loads;
- a node killed with SIGKILL mid-stream: the stream ends with an error event, and later
  requests succeed on the survivor.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import openai
from llama import LlamaBuild, LlamaServer, models_dir

from lmtui.config import Config, NodeConfig, PollConfig, PoolConfig, RouterConfig
from lmtui.core.model import Health, InstanceState, NodeKind
from lmtui.engine.engine import Engine

MSG = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
#: The client's own timeout: every request must end well before it. Generous: these
#: machines have 2 shared cores, and four model processes compete for them here.
CLIENT_TIMEOUT_S = 180.0


def router_server(tmp: Path, build: LlamaBuild, name: str) -> LlamaServer:
    d = models_dir(tmp / name, build, ["alpha", "beta"])
    args = ["--models-dir", str(d), "--models-max", "1", "-np", "2", "-c", "4096"]
    return LlamaServer(build, args, tmp / f"{name}.log").start()


def story(engine: Engine, t0: float) -> str:
    """The engine's events since ``t0``, for an assertion's message."""
    return "\n".join(f"{e.at - t0:6.1f} {e.message}" for e in engine.store.events)


async def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_freeze_resume_and_kill_of_router_nodes(
    tmp_path: Path, llama_build: LlamaBuild, llama_servers: list[LlamaServer]
) -> None:
    n1 = router_server(tmp_path, llama_build, "n1")
    n2 = router_server(tmp_path, llama_build, "n2")
    llama_servers += [n1, n2]
    # alpha resident on both, loaded by the servers themselves before lmtui starts.
    async with httpx.AsyncClient(timeout=10) as h:
        for s in (n1, n2):
            await h.post(s.url + "/models/load", json={"model": "alpha"})
    cfg = Config(
        nodes=[
            NodeConfig(name="n1", kind=NodeKind.LLAMACPP, url=n1.url, memory_gb=16),
            NodeConfig(name="n2", kind=NodeKind.LLAMACPP, url=n2.url, memory_gb=16),
        ],
        poll=PollConfig(interval=0.5, timeout=1.0, down_after=2),
        router=RouterConfig(queue_timeout=150.0),
        pool=PoolConfig(reserved_gb=0, min_residency=0),
    )
    async with Engine(cfg, listen="127.0.0.1:0") as engine:
        snap = lambda: engine.store.snapshot  # noqa: E731
        t0w = time.time()
        await wait_for(
            lambda: (
                sum(
                    1
                    for i in snap().instances.values()
                    if i.model == "alpha" and i.state is InstanceState.LOADED
                )
                == 2
            ),
            60,
            "alpha loaded on both nodes",
        )
        c = openai.AsyncOpenAI(
            base_url=f"{engine.router_url}/v1",
            api_key="x",
            max_retries=0,
            timeout=CLIENT_TIMEOUT_S,
        )

        # --- 1. freeze n1 while requests run on it -----------------------------------
        def ask(model: str, tokens: int) -> asyncio.Task[object]:
            return asyncio.create_task(
                c.chat.completions.create(model=model, messages=MSG, max_tokens=tokens)
            )

        t0 = time.monotonic()
        tasks = [ask("alpha", 48) for _ in range(4)]
        await wait_for(
            lambda: any(i.node == "n1" and i.in_flight > 0 for i in snap().instances.values()),
            30,
            "a request running on n1",
        )
        n1.signal(signal.SIGSTOP)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        took = time.monotonic() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        assert took < CLIENT_TIMEOUT_S / 2, (took, story(engine, t0w))
        assert snap().nodes["n1"].health is Health.DOWN
        assert any("went down" in e.message for e in engine.store.events)

        # --- 2. resume n1 with its abandoned requests still running; ask for beta -----
        n1.signal(signal.SIGCONT)
        await wait_for(lambda: snap().nodes["n1"].health is Health.HEALTHY, 30, "n1 back")
        busy = [ask("alpha", 96) for _ in range(2)]
        beta = [ask("beta", 16) for _ in range(2)]
        results = await asyncio.gather(*busy, *beta, return_exceptions=True)
        statuses = [getattr(r, "status_code", None) for r in results if isinstance(r, Exception)]
        assert 500 not in statuses, (results, story(engine, t0w))
        assert not [r for r in results if isinstance(r, BaseException)], (
            results,
            story(engine, t0w),
        )

        # --- 3. kill a node mid-stream ------------------------------------------------
        victim: str | None = None
        body = b""
        async with (
            httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as h,
            h.stream(
                "POST",
                f"{engine.router_url}/v1/chat/completions",
                json={"model": "alpha", "messages": MSG, "stream": True, "max_tokens": 3000},
            ) as r,
        ):
            async for piece in r.aiter_bytes():
                body += piece
                if victim is None and b"data: {" in body:
                    running = [
                        i.node
                        for i in snap().instances.values()
                        if i.model == "alpha" and i.in_flight > 0
                    ]
                    assert running
                    victim = running[0]
                    (n1 if victim == "n1" else n2).signal(signal.SIGKILL)
        assert victim is not None
        assert b"stream_interrupted" in body, body[-500:]
        assert body.rstrip().endswith(b"data: [DONE]")
        survivor = "n2" if victim == "n1" else "n1"
        for _ in range(3):
            r2 = await c.chat.completions.create(model="alpha", messages=MSG, max_tokens=8)
            assert r2.choices[0].message.content is not None
        assert any(i.node == survivor and i.model == "alpha" for i in snap().instances.values())
