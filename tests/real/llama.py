"""A real llama.cpp ``llama-server`` for the ``real`` tier: find the cached build, start one.

``scripts/llama-server.sh`` builds the binary from the llama-cpp-python sdist and assembles
the gemma3-270m model, cached per machine; :func:`find_build` asks it (``--check``, which
never builds) where they are. :class:`LlamaServer` runs one process on a free loopback port,
single-model (``-m``) or as a router (``--models-dir``), and stops it with its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "llama-server.sh"
#: A load of the 270M model takes well under a second here; a cold machine may need more.
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LlamaBuild:
    binary: Path
    model: Path


def find_build() -> LlamaBuild | None:
    """The cached binary and model, or None when ``scripts/llama-server.sh`` has not run."""
    binary, model = os.environ.get("LMTUI_LLAMA_SERVER"), os.environ.get("LMTUI_LLAMA_MODEL")
    if binary and model:
        return LlamaBuild(Path(binary), Path(model))
    r = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    b, m = r.stdout.strip().splitlines()[-1].split(" ", 1)
    return LlamaBuild(Path(b), Path(m))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def models_dir(base: Path, build: LlamaBuild, names: list[str]) -> Path:
    """A router ``--models-dir`` holding the one real model under several names (symlinks)."""
    d = base / "models"
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = d / f"{name}.gguf"
        if not link.exists():
            link.symlink_to(build.model)
    return d


class LlamaServer:
    """One ``llama-server`` process on 127.0.0.1 (its own process group, so its router
    children are stopped with it)."""

    def __init__(self, build: LlamaBuild, args: list[str], log: Path) -> None:
        self.build = build
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> LlamaServer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.build.binary),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"llama-server not healthy within {timeout}s: {self.tail()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the router and its model processes)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
