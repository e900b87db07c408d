"""A persistent SSH connection to one host (asyncssh), for host memory and CLI control.

One :class:`SshHost` per host holds one connection and runs every command over it, so a
poll costs one ``exec`` round trip, not a TCP + key exchange + auth handshake. When the
connection drops it is re-made on the next call; when connecting fails, further attempts
wait with a backoff that doubles from 1 s up to 30 s, and calls in between fail at once with
the last error instead of stalling the poll loop.

Host keys are checked against a known_hosts file like OpenSSH's ``StrictHostKeyChecking``:

- a key in known_hosts for this host is trusted;
- an unknown host is refused with :class:`HostKeyRejected`, unless ``accept_new_host_key``
  is set: then its key is accepted and appended to the file (OpenSSH's ``accept-new``);
- a host that IS in known_hosts but offers a different key is always refused: that is a
  reinstalled host or a man in the middle, and only the user can tell which.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from pathlib import Path
from typing import Any

import asyncssh

from lmtui.backends.base import BackendBadResponse, BackendError, BackendUnreachable
from lmtui.backends.hostmem import (
    LINUX_MEMORY_SCRIPT,
    MACOS_MEMORY_SCRIPT,
    parse_linux_memory_output,
    parse_macos_memory_output,
)
from lmtui.config import SshConfig
from lmtui.core.model import HostMemory

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: First wait after a failed connect; doubled per further failure up to BACKOFF_MAX.
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


class HostKeyRejected(BackendError):
    """The host offered a key that known_hosts does not vouch for; nothing was sent to it."""

    def __init__(
        self,
        message: str,
        *,
        fingerprint: str | None = None,
        known_hosts: Path | None = None,
        changed: bool = False,
    ):
        super().__init__(message)
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts
        #: True when the host is known with a different key (never auto-accepted).
        self.changed = changed


class SshAuthFailed(BackendUnreachable):
    """The host refused our login, or our key could not be used."""


def _known_hosts_pattern(host: str, port: int) -> str:
    """The host field OpenSSH writes: bare for port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


class _HostKeyPolicy:
    """Decides on a key known_hosts does not list, and remembers why for the error message."""

    def __init__(self, known: asyncssh.SSHKnownHosts, *, accept_new: bool):
        self.known = known
        self.accept_new = accept_new
        self.offered: asyncssh.SSHKey | None = None
        self.changed = False
        self.accepted_new = False

    def check(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # asyncssh calls this only for a key that no known_hosts entry trusts. If the host
        # has ANY entry (plain key or CA), the key changed: refuse, whatever the config says.
        self.offered = key
        host_keys, ca_keys, *_ = self.known.match(host, addr, None if port == 22 else port)
        if host_keys or ca_keys:
            self.changed = True
            return False
        # asyncssh still verifies that the server holds the private key before trusting it;
        # the key is written to known_hosts only after the connection is established.
        self.accepted_new = self.accept_new
        return self.accept_new


class _Client(asyncssh.SSHClient):
    def __init__(self, policy: _HostKeyPolicy):
        self._policy = policy

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._policy.check(host, addr, port, key)


def _load_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """Parse ``path``; a missing file is an empty list (every host unknown)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    return asyncssh.import_known_hosts(text)


def _append_known_host(path: Path, host: str, port: int, key: asyncssh.SSHKey) -> None:
    """Append ``key`` for ``host:port`` to ``path`` in OpenSSH's format, creating the file."""
    alg, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as f:
        f.seek(0, 2)
        # Never glue our line onto a last line that lacks its newline.
        lead = ""
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            lead = "" if f.read(1) == "\n" else "\n"
        f.write(f"{lead}{_known_hosts_pattern(host, port)} {alg} {blob}\n")


class _Dropped(Exception):
    """The connection died under a command (internal: triggers one reconnect)."""


class SshHost:
    """One host reached over SSH: a reused connection, backoff, and host memory reads."""

    def __init__(self, cfg: SshConfig, *, default_host: str, node_name: str):
        """``default_host`` (the host of the node's URL) is used when ``cfg.host`` is unset.

        Raises ValueError when neither names a host: a configuration error to report at
        start-up, not a node to poll.
        """
        self.cfg = cfg
        self.host = cfg.host or default_host
        if not self.host:
            raise ValueError(f"node {node_name}: no SSH host: set ssh.host or a URL with a host")
        self.port = cfg.port
        self.node_name = node_name
        self.known_hosts = Path(cfg.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.key_file = Path(cfg.key_file).expanduser() if cfg.key_file else None
        #: Connections established so far (a reconnect adds one); for the UI and tests.
        self.connections_made = 0
        self._conn: asyncssh.SSHClientConnection | None = None
        self._os: str | None = None  # detected once per connection
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: BackendError | None = None

    @property
    def target(self) -> str:
        """``user@host:port`` as shown in messages."""
        user = f"{self.cfg.user}@" if self.cfg.user else ""
        return f"{user}{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def run(
        self, command: str, *, input: str | None = None, timeout: float | None = None
    ) -> str:
        """Run ``command`` on the host and return its stdout; ``input`` is its stdin (for a
        secret that must not appear on any command line). ``timeout`` bounds this command
        (default: the host's ``timeout``; ``lms load`` of a large model takes minutes).

        Reuses the open connection; if that turns out to be dead (the host rebooted, sshd
        restarted), reconnects once at once and retries. A non-zero exit is
        BackendBadResponse; no connection, a timeout or a lost connection is
        BackendUnreachable; an untrusted host key is HostKeyRejected.
        """
        # At most two attempts: a reused connection may have died since its last use, and
        # that alone deserves an immediate reconnect; a fresh one failing is a real failure.
        for attempt in range(2):
            conn, fresh = await self._connection()
            try:
                return await self._exec(conn, command, input, timeout)
            except _Dropped as e:
                self._drop(conn)
                if fresh or attempt == 1:
                    raise BackendUnreachable(f"{self.node_name}: {self.target}: {e}") from e
                log.info(
                    "%s: SSH connection to %s was lost; reconnecting", self.node_name, self.target
                )
        raise AssertionError("not reached: the second attempt returns or raises")

    async def read_memory(self) -> HostMemory:
        """Read host memory in one round trip (plus ``uname -s`` once per connection)."""
        os_name = await self._remote_os()
        if os_name == "linux":
            return parse_linux_memory_output(await self.run(_sh(LINUX_MEMORY_SCRIPT)))
        return parse_macos_memory_output(await self.run(_sh(MACOS_MEMORY_SCRIPT)))

    async def close(self) -> None:
        """Close the connection (if any); a later call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    await conn.wait_closed()
            except TimeoutError:
                log.debug("%s: SSH close timed out", self.node_name)

    # --- internals ----------------------------------------------------------------------

    async def _remote_os(self) -> str:
        if self.cfg.os != "auto":
            return self.cfg.os
        conn_before = self._conn
        if self._os is not None and conn_before is not None and not conn_before.is_closed():
            return self._os
        kernel = (await self.run("uname -s")).strip()
        os_name = {"Linux": "linux", "Darwin": "macos"}.get(kernel)
        if os_name is None:
            raise BackendBadResponse(
                f"{self.node_name}: {self.target}: unsupported OS {kernel!r} (uname -s); "
                "lmtui reads host memory on Linux and macOS"
            )
        self._os = os_name
        return os_name

    async def _exec(
        self,
        conn: asyncssh.SSHClientConnection,
        command: str,
        input: str | None = None,
        timeout: float | None = None,
    ) -> str:
        flat = " ".join(command.split())  # scripts are multi-line; messages are not
        short = flat if len(flat) <= 60 else flat[:57] + "..."
        try:
            # asyncssh's own timeout closes the channel; the outer one is a safety net.
            limit = timeout or self.cfg.timeout
            async with asyncio.timeout(limit + 1.0):
                result = await conn.run(command, input=input, check=False, timeout=limit)
        except TimeoutError:
            # A command that hangs is as likely a dead network path as a slow command, and
            # a dead TCP connection would hang every later command too: start afresh.
            self._drop(conn)
            raise BackendUnreachable(
                f"{self.node_name}: {self.target}: `{short}` gave no answer within "
                f"{timeout or self.cfg.timeout:g} s"
            ) from None
        except (asyncssh.Error, OSError) as e:
            raise _Dropped(f"{type(e).__name__}: {e}") from e
        if result.exit_status != 0:
            err = str(result.stderr or "").strip()[:200]
            status = result.exit_status if result.exit_status is not None else result.exit_signal
            raise BackendBadResponse(
                f"{self.node_name}: {self.target}: `{short}` failed ({status}): {err}"
            )
        return str(result.stdout or "")

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            self._conn = None
            self._os = None
        conn.abort()

    async def _connection(self) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The open connection, or a new one; ``True`` when new. Honours the backoff."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn, False
            now = time.monotonic()
            if self._last_error is not None and now < self._retry_at:
                # During the backoff, fail at once with the last reason (a fresh traceback
                # each time, so re-raising does not grow one forever).
                raise self._last_error.with_traceback(None)
            try:
                conn = await self._connect()
            except BackendError as e:
                self._failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                self._last_error = e
                log.warning("%s (next SSH attempt in %.0f s)", e, delay)
                raise
            self._failures = 0
            self._last_error = None
            self._conn = conn
            self._os = None
            self.connections_made += 1
            return conn, True

    async def _connect(self) -> asyncssh.SSHClientConnection:
        where = f"{self.node_name}: {self.target}"
        try:
            known = await asyncio.to_thread(_load_known_hosts, self.known_hosts)
        except (OSError, ValueError) as e:
            raise BackendUnreachable(f"{where}: cannot read {self.known_hosts}: {e}") from e
        policy = _HostKeyPolicy(known, accept_new=self.cfg.accept_new_host_key)
        options: dict[str, Any] = {
            "known_hosts": known,
            "connect_timeout": self.cfg.timeout,
            # Detect a silently dead peer (host powered off, network gone) within ~3 intervals.
            "keepalive_interval": max(5.0, self.cfg.timeout),
            "keepalive_count_max": 3,
        }
        if self.cfg.user:
            options["username"] = self.cfg.user
        if self.key_file is not None:
            # Only the configured key: agent keys tried first could exhaust MaxAuthTries.
            options["client_keys"] = [str(self.key_file)]
            options["agent_path"] = None
        try:
            async with asyncio.timeout(self.cfg.timeout):
                conn = await asyncssh.connect(
                    self.host, self.port, client_factory=lambda: _Client(policy), **options
                )
        except asyncssh.HostKeyNotVerifiable as e:
            raise self._rejected(policy, e) from None
        except asyncssh.PermissionDenied as e:
            raise SshAuthFailed(
                f"{where}: login refused ({e.reason}); check user and key_file, and that "
                "the key is in the host's authorized_keys"
            ) from None
        except TimeoutError:
            raise BackendUnreachable(
                f"{where}: no SSH answer within {self.cfg.timeout:g} s"
            ) from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as e:
            raise SshAuthFailed(f"{where}: cannot use key_file {self.key_file}: {e}") from e
        except (asyncssh.Error, OSError) as e:
            raise BackendUnreachable(f"{where}: {type(e).__name__}: {e}") from e
        if policy.accepted_new and policy.offered is not None:
            try:
                await asyncio.to_thread(
                    _append_known_host, self.known_hosts, self.host, self.port, policy.offered
                )
                log.warning(
                    "%s: accepted new host key %s for %s and added it to %s",
                    self.node_name,
                    policy.offered.get_fingerprint(),
                    self.target,
                    self.known_hosts,
                )
            except OSError as e:
                log.warning(
                    "%s: could not add the host key to %s: %s", self.node_name, self.known_hosts, e
                )
        return conn

    def _rejected(self, policy: _HostKeyPolicy, err: Exception) -> HostKeyRejected:
        """A HostKeyRejected that says which host, which key, which file, and what to do."""
        kh = self.known_hosts
        pattern = _known_hosts_pattern(self.host, self.port)
        keyscan = f"ssh-keyscan -p {self.port} {self.host} >> {kh}"
        key = policy.offered
        if key is None:  # a revoked key, or a certificate asyncssh refused by itself
            return HostKeyRejected(
                f"{self.node_name}: host key of {self.target} was refused ({err}); "
                f"check its entries in {kh}",
                known_hosts=kh,
            )
        fp = key.get_fingerprint()
        offered = f"{key.get_algorithm()} key {fp}"
        if policy.changed:
            return HostKeyRejected(
                f"{self.node_name}: HOST KEY CHANGED for {self.target}: it offered {offered}, "
                f"which does not match its entry in {kh}. This is a reinstalled host or "
                "someone intercepting the connection; lmtui never accepts a changed key, "
                "even with accept_new_host_key. If you know the change is legitimate, remove "
                f"the stale line (ssh-keygen -R '{pattern}' -f {kh}), verify the new "
                f"fingerprint and add it ({keyscan}).",
                fingerprint=fp,
                known_hosts=kh,
                changed=True,
            )
        return HostKeyRejected(
            f"{self.node_name}: unknown host key for {self.target}: it offered {offered}, "
            f"and {kh} has no entry for {pattern}. Verify the fingerprint, then add it "
            f"({keyscan}, or log in once with ssh), or set accept_new_host_key = true in "
            "this node's [ssh] section to trust a NEW host's key on first use.",
            fingerprint=fp,
            known_hosts=kh,
        )


def _sh(script: str) -> str:
    # The login shell may be fish or csh; run the POSIX script through sh explicitly.
    return "sh -c " + shlex.quote(script)
