"""A real OpenSSH ``sshd`` on a free 127.0.0.1 port, for end-to-end SSH tests.

Everything lives in one temporary directory: its own ``sshd_config`` (listening on loopback
only, public-key auth only), a generated ed25519 host key, a generated client key in
``authorized_keys``, the pid file and the log. ``sshd -D -e`` keeps it in the foreground
with its log on stderr, which goes to a file the tests read (e.g. to count logins).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

import psutil

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
#: sshd re-execs itself for privilege separation and insists on this directory existing.
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    """Generate an unencrypted ed25519 key pair at ``path`` (+ ``.pub``); return ``path``."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "lmtui-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path


def fingerprint(pub: Path) -> str:
    """``SHA256:...`` fingerprint of a public key file, as ``ssh-keygen -l`` prints it."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


class Sshd:
    """One sshd process and its files; :meth:`restart` keeps the port, optionally rotating
    the host key (to simulate a reinstalled host)."""

    def __init__(self, workdir: Path, client_key: Path):
        self.workdir = workdir
        self.client_key = client_key
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        keygen(self.host_key)
        (workdir / "authorized_keys").write_text(
            client_key.with_name(client_key.name + ".pub").read_text()
        )
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "LogLevel INFO",
                    "",
                ]
            )
        )

    @property
    def host_pub(self) -> Path:
        return self.host_key.with_name(self.host_key.name + ".pub")

    def client_public_key(self) -> tuple[str, str]:
        """(algorithm, base64 blob) of the client key: a valid key that is NOT the host's."""
        alg, blob = self.client_key.with_name(self.client_key.name + ".pub").read_text().split()[:2]
        return alg, blob

    def known_hosts_line(self) -> str:
        """The known_hosts line for the CURRENT host key, as OpenSSH writes it."""
        alg, blob = self.host_pub.read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {alg} {blob}\n"

    def host_fingerprint(self) -> str:
        return fingerprint(self.host_pub)

    def logins(self) -> int:
        """Successful logins so far (one per SSH connection)."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("Accepted publickey for")

    def start(self) -> None:
        """Start sshd and wait until it accepts TCP connections (or fail with its log)."""
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        log = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"sshd did not listen within {START_TIMEOUT_S} s:\n{self.log.read_text()}"
        )

    def stop(self) -> None:
        """Stop sshd AND the per-connection sshd processes it forked.

        Stopping only the listener would leave established sessions running (that is how an
        admin restarts sshd over ssh), so clients would never notice; a rebooted host drops
        them, and that is what the reconnect tests need.
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            sessions = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            sessions = []
        for child in sessions:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(sessions, timeout=10)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, new_host_key: bool = False) -> None:
        """Stop, optionally generate a new host key, start again on the same port."""
        self.stop()
        if new_host_key:
            keygen(self.host_key)
        self.start()

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
