#!/usr/bin/env python3
"""A stand-in for ``llama-server -m FILE --port N --host H --alias NAME``, for fast tests.

It answers ``/health`` (503 "Loading model" for ``--fake-delay`` seconds, then 200),
``/v1/models``, ``/props``, ``/v1/chat/completions``, and 501 for ``/slots`` and
``/metrics`` (as without ``--slots``/``--metrics``). ``--fake-exit`` prints an error and
exits 1 (a failed start); ``--fake-ignore-term`` ignores SIGTERM (a stuck server).
Unknown arguments are accepted, as extra llama-server flags would be. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def arg(name: str, default: str | None = None) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


MODEL = arg("-m") or ""
PORT = int(arg("--port") or "8080")
HOST = arg("--host") or "127.0.0.1"
ALIAS = arg("--alias") or os.path.basename(MODEL)
READY_AT = time.monotonic() + float(arg("--fake-delay") or "0")
KEY = os.environ.get("LLAMA_API_KEY")  # the name llama-server reads for --api-key


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        print("request:", fmt % args, flush=True)

    def send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def gate(self) -> bool:
        if time.monotonic() < READY_AT:
            self.send(
                503,
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            )
            return False
        if KEY and self.path != "/health" and self.headers.get("Authorization") != f"Bearer {KEY}":
            self.send(401, {"error": {"code": 401, "message": "Invalid API Key"}})
            return False
        return True

    def do_GET(self) -> None:
        if not self.gate():
            return
        path = self.path.split("?")[0]
        if path == "/health":
            self.send(200, {"status": "ok"})
        elif path == "/v1/models":
            size = os.path.getsize(MODEL) if os.path.exists(MODEL) else None
            self.send(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": ALIAS,
                            "object": "model",
                            "meta": {"size": size, "n_ctx_train": 2048},
                        }
                    ],
                },
            )
        elif path == "/props":
            self.send(
                200,
                {
                    "total_slots": 2,
                    "model_path": MODEL,
                    "default_generation_settings": {"n_ctx": 4096},
                },
            )
        elif path in ("/slots", "/metrics"):
            self.send(501, {"error": {"code": 501, "message": "not enabled"}})
        else:
            self.send(404, {"error": {"code": 404, "message": "File Not Found"}})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        if not self.gate():
            return
        self.send(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ALIAS),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"hello from {PORT}"},
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            },
        )


def main() -> None:
    if "--fake-exit" in sys.argv:
        print(f"error: fake failure loading {MODEL}", flush=True)
        sys.exit(1)
    if "--fake-ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        server = ThreadingHTTPServer((HOST, PORT), Handler)
    except OSError as e:
        print(f"couldn't bind HTTP server socket, hostname: {HOST}, port: {PORT}: {e}", flush=True)
        sys.exit(1)
    print(f"main: server is listening on http://{HOST}:{PORT} (model {ALIAS})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
