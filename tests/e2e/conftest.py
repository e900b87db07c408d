"""Fixtures for end-to-end tests against real servers.

SSH: a real OpenSSH sshd (Debian package ``openssh-server``) on a free loopback port, see
``sshd.py``. Without ``/usr/sbin/sshd`` the SSH tests are skipped on a developer machine,
but FAIL when ``CI=true``, so CI cannot silently stop testing SSH.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SSHD, Sshd, keygen


def _require_sshd() -> None:
    """Skip (fail under CI) when OpenSSH's server or ssh-keygen is missing."""
    missing = [str(SSHD)] if not SSHD.exists() else []
    if shutil.which("ssh-keygen") is None:
        missing.append("ssh-keygen")
    if not missing:
        return
    reason = (
        f"{' and '.join(missing)} not found: install OpenSSH "
        "(apt-get install -y openssh-server) to run the SSH end-to-end tests"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}. CI=true, so this is an error rather than a skip.")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A passphrase-less ed25519 client key that every test sshd authorizes."""
    _require_sshd()
    return keygen(tmp_path_factory.mktemp("ssh-client") / "id_ed25519")


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory, ssh_client_key: Path) -> Iterator[Sshd]:
    """One sshd per test module, stopped (with its sessions) at teardown."""
    server = Sshd(tmp_path_factory.mktemp("sshd"), ssh_client_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd(sshd_server: Sshd) -> Sshd:
    """The module's sshd, running (a test that stopped it mid-way gets it back)."""
    sshd_server.ensure_running()
    return sshd_server
