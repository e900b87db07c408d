"""The servers the router benchmarks talk to: the fast upstream, nginx, and lmtui under test.

The fast upstream answers at once with canned payloads, so that what a benchmark measures is
the proxy in front of it. It is nginx itself when nginx is installed (config
``bench/nginx/upstream.conf.in``), else the minimal aiohttp app below, run in its own process::

    python bench/_upstream.py --port 8001      # prints "listening on http://127.0.0.1:8001"

Either one answers exactly the same:

- ``POST /v1/chat/completions``: a chat completion (JSON), or when the body asks for
  ``"stream": true`` a ``text/event-stream`` body of a few ``data: {...}`` chunks and
  ``data: [DONE]``;
- what an lmtui ``kind = "openai"`` node is polled for: ``GET /health`` (200),
  ``GET /v1/models`` (one model, ``bench-model``), ``GET /metrics`` (vLLM gauges at 0).

Processes are started with :func:`spawn`, optionally pinned to a CPU with ``taskset`` (set
before ``exec``, so every thread and child inherits it), and always stopped by their own pid.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NGINX_DIR = BENCH_DIR / "nginx"

MODEL = "bench-model"
_CREATED = 1_700_000_000

CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    },
    separators=(",", ":"),
)


def _chunk(delta: dict[str, str], finish: str | None = None, **extra: object) -> str:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


CHAT_SSE = (
    _chunk({"role": "assistant", "content": ""})
    + _chunk({"content": "Hello"})
    + _chunk({"content": " from the bench"})
    + _chunk({"content": " upstream."})
    + _chunk(
        {},
        "stop",
        usage={"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    )
    + "data: [DONE]\n\n"
)


def _event(name: str, data: dict[str, object]) -> str:
    return f"event: {name}\ndata: " + json.dumps(data, separators=(",", ":")) + "\n\n"


# The Responses API and Anthropic Messages, shaped as a real llama-server answers them
# (tests/fixtures/llama-server/apis/), cut to the same four pieces of text as CHAT_SSE.
_RESP_HEAD = {"id": "resp_bench", "object": "response", "status": "in_progress"}
_RESP_ITEM = {
    "type": "message",
    "status": "completed",
    "id": "msg_bench",
    "content": [
        {"type": "output_text", "annotations": [], "text": "Hello from the bench upstream."}
    ],
    "role": "assistant",
}
_RESP_USAGE = {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18}
RESPONSES_JSON = json.dumps(
    {
        "created_at": _CREATED,
        "id": "resp_bench",
        "model": MODEL,
        "object": "response",
        "output": [_RESP_ITEM],
        "status": "completed",
        "usage": _RESP_USAGE,
    },
    separators=(",", ":"),
)
RESPONSES_SSE = (
    _event("response.created", {"type": "response.created", "response": _RESP_HEAD})
    + "".join(
        _event(
            "response.output_text.delta",
            {"type": "response.output_text.delta", "item_id": "msg_bench", "delta": d},
        )
        for d in ("Hello", " from the bench", " upstream.")
    )
    + _event(
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                **_RESP_HEAD,
                "status": "completed",
                "model": MODEL,
                "output": [_RESP_ITEM],
                "usage": _RESP_USAGE,
            },
        },
    )
)
MESSAGES_JSON = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello from the bench upstream."}],
        "model": MODEL,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    },
    separators=(",", ":"),
)
MESSAGES_SSE = (
    _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": MODEL,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 0},
            },
        },
    )
    + _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    + "".join(
        _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}},
        )
        for d in ("Hello", " from the bench", " upstream.")
    )
    + _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    + _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 6},
        },
    )
    + _event("message_stop", {"type": "message_stop"})
)

#: The routed APIs a benchmark can measure: path, canned JSON answer, canned SSE answer.
APIS: dict[str, tuple[str, str, str]] = {
    "chat": ("/v1/chat/completions", CHAT_JSON, CHAT_SSE),
    "responses": ("/v1/responses", RESPONSES_JSON, RESPONSES_SSE),
    "messages": ("/v1/messages", MESSAGES_JSON, MESSAGES_SSE),
}

MODELS_JSON = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]},
    separators=(",", ":"),
)

METRICS_TEXT = (
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running 0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting 0\n"
)

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def request_body(stream: bool, api: str = "chat") -> bytes:
    """The request every benchmark client sends (streaming or not), for ``api``."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if api == "responses":
        body = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 16}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def stream_requested(body: bytes) -> bool:
    """Whether a request body asks for a stream (the nginx config's map uses the same regex)."""
    return _STREAM_RE.search(body) is not None


# --- the aiohttp upstream (used when nginx is not installed) -----------------------------


def run_aiohttp_upstream(port: int) -> None:
    """Serve the canned answers on 127.0.0.1:``port`` until killed (blocking)."""
    from aiohttp import web

    def answer(json_text: str, sse_text: str) -> Any:
        as_json, as_sse = json_text.encode(), sse_text.encode()

        async def handle(request: web.Request) -> web.Response:
            if stream_requested(await request.read()):
                return web.Response(body=as_sse, content_type="text/event-stream")
            return web.Response(body=as_json, content_type="application/json")

        return handle

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(_: web.Request) -> web.Response:
        return web.Response(text=MODELS_JSON, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS_TEXT, content_type="text/plain")

    app = web.Application()
    for path, json_text, sse_text in APIS.values():
        app.router.add_post(path, answer(json_text, sse_text))
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- processes -----------------------------------------------------------------------------


class StartError(RuntimeError):
    """A server did not come up; the message carries its stderr."""


#: Every CPU this process may use, read at import, before a benchmark pins itself.
ALL_CPUS = sorted(
    os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
)


class Proc:
    """A server process the benchmark started; stderr goes to a file for error reports."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        terminal: int | None = None,
    ) -> None:
        """``terminal``: a pseudo-terminal's slave fd for stdin and stdout (``PtyProc``);
        without one, stdin is /dev/null and stdout goes to the stderr file."""
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        if shutil.which("taskset"):
            # Unpinned means every CPU, said explicitly: the benchmark script may have pinned
            # itself (its Python client) to one CPU, and a child would inherit that.
            where = str(cpu) if cpu is not None else ",".join(map(str, ALL_CPUS))
            argv = ["taskset", "-c", where, *argv]
        self._stderr = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if terminal is None else terminal,
            stdout=self._stderr if terminal is None else terminal,
            stderr=self._stderr,
            cwd=REPO,
            env=env,
            start_new_session=terminal is not None,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the process wrote."""
        self._stderr.flush()
        text = self.stderr_path.read_text(errors="replace")
        return text[-limit:].strip()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate this process (by its pid only), kill it if it lingers."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._stderr.close()


class PtyProc(Proc):
    """A process on a pseudo-terminal of ``cols`` x ``rows``: the dashboard, which draws
    only on a terminal. What it draws is read and dropped (a terminal that is never read
    would stop it at its first full buffer); stderr goes to the file, as for ``Proc``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        size: tuple[int, int] = (160, 48),
    ) -> None:
        master, slave = pty.openpty()
        cols, rows = size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._master = master
        env = {**(env or os.environ), "TERM": "xterm-256color"}
        try:
            super().__init__(name, argv, workdir, cpu=cpu, env=env, terminal=slave)
        finally:
            os.close(slave)
        self._drain = threading.Thread(target=self._read, name=f"{name}-pty", daemon=True)
        self._drain.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the process is gone (EIO) or the fd was closed
                return
            if not chunk:
                return

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._drain.join(timeout)
        with contextlib.suppress(OSError):
            os.close(self._master)


def free_port() -> int:
    """A loopback port free right now (nginx cannot listen on port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(proc: Proc, url: str, *, timeout: float, expect: bytes = b"") -> bytes:
    """Poll ``url`` (GET) until it answers 200 and contains ``expect``; StartError otherwise.

    The error says what was last seen and includes the process's stderr, so a router that
    fails to start explains itself.
    """
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(
                f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.stderr_tail()}"
            )
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code == 200 and expect in r.content:
                return r.content
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise StartError(
        f"{proc.name} did not answer {url} within {timeout:.0f} s (last: {last})\n"
        f"{proc.stderr_tail()}"
    )


def nginx_path() -> str | None:
    """The nginx binary, or None when it is not installed (Debian puts it in /usr/sbin)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_quote(text: str) -> str:
    """``text`` escaped for a single-quoted nginx string (``return 200 '...'``)."""
    if "$" in text:
        # nginx would expand it as a variable; the canned payloads never need one.
        raise ValueError("nginx return text cannot contain '$'")
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def render_nginx(template: str, prefix: Path, **params: object) -> Path:
    """Fill ``bench/nginx/<template>.conf.in`` and write it under ``prefix``."""
    text = (NGINX_DIR / f"{template}.conf.in").read_text()
    for key, value in {"prefix": prefix, **params}.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{(\w+)\}\}", text)
    if left:
        raise ValueError(f"{template}.conf.in: no value for {', '.join(sorted(set(left)))}")
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "empty"):
        (prefix / sub).mkdir(exist_ok=True)
    path = prefix / f"{template}.conf"
    path.write_text(text)
    return path


def start_nginx(
    template: str, workdir: Path, *, cpu: int | None, **params: object
) -> tuple[Proc, str]:
    """Start nginx from a template on a free port; return it and its base URL."""
    nginx = nginx_path()
    if nginx is None:
        raise StartError("nginx is not installed")
    last: StartError | None = None
    for _ in range(3):  # a free port can be taken between free_port() and nginx's bind
        port = free_port()
        conf = render_nginx(template, workdir, port=port, **params)
        proc = Proc(
            f"nginx-{template}",
            [nginx, "-p", str(workdir), "-c", str(conf), "-e", "stderr"],
            workdir,
            cpu=cpu,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(proc, f"{url}/v1/models", timeout=10, expect=MODEL.encode())
            return proc, url
        except StartError as e:
            proc.stop()
            last = e
    assert last is not None
    raise last


def start_upstream(
    workdir: Path, *, cpu: int | None, use_nginx: bool = True
) -> tuple[Proc, str, str]:
    """Start the fast upstream; return it, its URL and what it is ("nginx" or "aiohttp")."""
    if use_nginx and nginx_path() is not None:
        proc, url = start_nginx(
            "upstream",
            workdir,
            cpu=cpu,
            chat_json=nginx_quote(CHAT_JSON),
            chat_sse=nginx_quote(CHAT_SSE),
            responses_json=nginx_quote(RESPONSES_JSON),
            responses_sse=nginx_quote(RESPONSES_SSE),
            messages_json=nginx_quote(MESSAGES_JSON),
            messages_sse=nginx_quote(MESSAGES_SSE),
            models_json=nginx_quote(MODELS_JSON),
            metrics_text=nginx_quote(METRICS_TEXT),
        )
        return proc, url, "nginx"
    port = free_port()
    proc = Proc(
        "upstream-aiohttp",
        [sys.executable, str(Path(__file__)), "--port", str(port)],
        workdir,
        cpu=cpu,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/v1/models", timeout=15, expect=MODEL.encode())
    return proc, url, "aiohttp"


def start_nginx_proxy(workdir: Path, upstream_url: str, *, cpu: int | None) -> tuple[Proc, str]:
    """Start the nginx reverse proxy in front of ``upstream_url``."""
    upstream_port = upstream_url.rsplit(":", 1)[1]
    return start_nginx("proxy", workdir, cpu=cpu, upstream_port=upstream_port)


def start_lmtui(
    workdir: Path,
    config_toml: str,
    *,
    cpu: int | None,
    model: str,
    timeout: float = 30.0,
    name: str = "lmtui",
    dashboard: tuple[int, int] | None = None,
) -> tuple[Proc, str]:
    """Start ``python -m lmtui --serve`` with ``config_toml``; wait until it lists ``model``.
    With ``dashboard`` (columns, rows), ``python -m lmtui`` instead: the dashboard on a
    pseudo-terminal of that size, with the router in the same process (embedded mode).

    Its user directories point into ``workdir``, so the benchmark never reads or writes the
    developer's own config, overrides or request log.
    """
    config = workdir / f"{name}.toml"
    config.write_text(config_toml)
    env = dict(os.environ)
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        (workdir / sub).mkdir(exist_ok=True)
        env[var] = str(workdir / sub)
    env.pop("LMTUI_CONFIG", None)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "lmtui",
        *(() if dashboard else ("--serve",)),
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = (
        PtyProc(name, argv, workdir, cpu=cpu, env=env, size=dashboard)
        if dashboard
        else Proc(name, argv, workdir, cpu=cpu, env=env)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{url}/v1/models", timeout=timeout, expect=f'"{model}"'.encode())
    except StartError:
        proc.stop()
        raise
    return proc, url


def make_workdir(prefix: str) -> Path:
    """A fresh temporary directory for configs, nginx files and stderr logs."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def main(argv: list[str] | None = None) -> int:
    """Run the aiohttp upstream in the foreground (``python bench/_upstream.py --port N``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    run_aiohttp_upstream(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
