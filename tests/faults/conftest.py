"""Fixtures of the fault suite (the helpers they share are in ``_faults.py``).

The slow tiers reuse the real servers of the other tiers: OpenSSH's sshd from
``tests/e2e/sshd.py`` and llama-server from ``tests/real/llama.py``. Without them the cases
skip on a developer machine and fail under ``CI=true``, as in those tiers.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults import require

# _faults put tests/e2e and tests/real on sys.path.
from llama import LlamaBuild, LlamaServer, find_build
from sshd import SSHD, Sshd, keygen


@pytest.fixture(scope="session")
def llama_build() -> LlamaBuild:
    build = find_build()
    require(
        build is not None,
        "no cached llama-server: run scripts/llama-server.sh once (about 5 minutes) to run "
        "the real-server fault cases",
    )
    assert build is not None
    return build


@pytest.fixture
def llama_servers(llama_build: LlamaBuild) -> Iterator[list[LlamaServer]]:
    """A list to append started servers to; every one is stopped at teardown."""
    servers: list[LlamaServer] = []
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH sshd on a free loopback port, stopped (with its sessions) at the end."""
    require(
        SSHD.exists() and shutil.which("ssh-keygen") is not None,
        f"{SSHD} or ssh-keygen not found: apt-get install -y openssh-server",
    )
    key = keygen(tmp_path_factory.mktemp("ssh-client") / "id_ed25519")
    server = Sshd(tmp_path_factory.mktemp("sshd"), key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def known_hosts(tmp_path: Path, sshd: Sshd) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path
