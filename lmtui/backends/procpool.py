"""The pure parts of the process pool: the ``sh`` scripts it runs on a host, and parsers
for what they print. Nothing here does I/O; :mod:`lmtui.backends.pool_process` runs them.

The scripts are POSIX ``sh`` and run alike on Linux and macOS (``ps -ww -p … -o command=``,
``kill``, ``tail``, ``stat`` with either flag set). A server is started detached: ``nohup``
(and ``setsid`` where it exists) with stdout and stderr going to a log file on its host,
never a pipe to lmtui, since a pipe would kill the server with SIGPIPE once lmtui dies. Each
start writes a pid file (JSON) beside the log, and the process carries ``LMTUI_POOL_NODE`` /
``LMTUI_POOL_MARKER`` in its environment, so a restarted lmtui finds it again. A pid is
trusted only while ``ps`` shows it running the same ``-m PATH --port N --host`` command
line: a reused pid is a stranger, never adopted or killed.

Every string read from a host (log lines, ps output, file names) is bounded before use.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

#: Lines of a server's log kept for errors and the control API, and their longest length.
TAIL_LINES = 20
MAX_LINE = 300
#: Longest model name or path accepted from a directory listing or pid file.
MAX_NAME = 200
MAX_PATH = 1000


def sh_path(path: str) -> str:
    """``path`` quoted for ``sh``, with a leading ``~/`` left to the host's ``$HOME``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def safe_name(name: str) -> str:
    """A node name made safe for a file name (pid and log files are named after it)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "node"


def choose_port(first: int, last: int, taken: Iterable[int]) -> int | None:
    """The lowest port of ``first..last`` not in ``taken``; None when all are."""
    used = set(taken)
    return next((p for p in range(first, last + 1) if p not in used), None)


def identity(path: str, port: int) -> str:
    """The part of a server's command line that says it is *that* server: ``ps`` shows it
    for as long as the process lives, and a stranger reusing the pid will not show it."""
    return f"-m {path} --port {port} --host "


def server_command(
    binary: str, path: str, port: int, host: str, alias: str, args: Iterable[str]
) -> list[str]:
    """argv of one server; ``--alias`` makes ``/v1/models`` name the model as lmtui does."""
    return [binary, "-m", path, "--port", str(port), "--host", host, "--alias", alias, *args]


class PidFile(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """What lmtui writes beside each server it starts, to find it again after a crash."""

    pid: int
    node: str
    model: str
    path: str
    port: int
    started: float
    marker: str


@dataclass(frozen=True, slots=True)
class StartSpec:
    """Everything one start needs; the files live in ``state_dir`` on the server's host."""

    node: str
    model: str
    path: str
    port: int
    host: str
    binary: str
    args: tuple[str, ...]
    state_dir: str
    marker: str
    started: float

    @property
    def stem(self) -> str:
        return f"{safe_name(self.node)}-{self.port}"


def pid_file_path(state_dir: str, stem: str) -> str:
    return f"{sh_path(state_dir)}/{shlex.quote(stem + '.json')}"


def log_file_path(state_dir: str, stem: str) -> str:
    return f"{sh_path(state_dir)}/{shlex.quote(stem + '.log')}"


def start_script(spec: StartSpec, *, with_key: bool) -> str:
    """Start one server detached, write its pid file, print its pid.

    With ``with_key`` the API key is read from stdin into ``LLAMA_API_KEY`` (never on a
    command line, where ``ps`` would show it). ``setsid`` execs in place (the background
    job is not a group leader) and ``nohup`` execs too, so ``$!`` is the server's own pid.
    """
    argv = server_command(
        sh_path(spec.binary),
        shlex.quote(spec.path),
        spec.port,
        shlex.quote(spec.host),
        shlex.quote(spec.model),
        (shlex.quote(a) for a in spec.args),
    )
    cmd = " ".join(argv)
    meta = msgspec.json.encode(
        {
            "node": spec.node,
            "model": spec.model,
            "path": spec.path,
            "port": spec.port,
            "started": spec.started,
            "marker": spec.marker,
        }
    ).decode()
    pid_file = pid_file_path(spec.state_dir, spec.stem)
    log_file = log_file_path(spec.state_dir, spec.stem)
    # llama-server reads --api-key from LLAMA_API_KEY (its --help, build 0.3.36's vendored
    # llama.cpp); LLAMA_ARG_API_KEY is set too, the LLAMA_ARG_* name other flags use.
    key = (
        "IFS= read -r LLAMA_API_KEY || true\nLLAMA_ARG_API_KEY=$LLAMA_API_KEY\n"
        "export LLAMA_API_KEY LLAMA_ARG_API_KEY\n"
        if with_key
        else ""
    )
    head, tail = shlex.quote('{"pid":'), shlex.quote("," + meta[1:])
    return (
        "umask 077\n"
        f"mkdir -p {sh_path(spec.state_dir)} || exit 1\n"
        # A start re-sent after a dropped SSH connection must not start a second server.
        f"if [ -e {pid_file} ]; then echo 'a server on this port is already managed' >&2; "
        "exit 17; fi\n"
        f"{key}"
        f"LMTUI_POOL_NODE={shlex.quote(spec.node)}\n"
        f"LMTUI_POOL_MARKER={shlex.quote(spec.marker)}\n"
        "export LMTUI_POOL_NODE LMTUI_POOL_MARKER\n"
        "if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi\n"
        f"$s nohup {cmd} >{log_file} 2>&1 </dev/null &\n"
        "pid=$!\n"
        f"printf '%s%s%s\\n' {head} \"$pid\" {tail}"
        f" >{pid_file}.tmp && mv -f {pid_file}.tmp {pid_file}\n"
        'echo "$pid"\n'
    )


def ps_script(pids: Iterable[int]) -> str:
    """``pid command`` of each live pid (none alive prints nothing and is no failure)."""
    listed = ",".join(str(int(p)) for p in pids)
    if not listed:
        return ":"
    return f"ps -ww -p {listed} -o pid= -o command= 2>/dev/null || true"


def parse_ps(output: str) -> dict[int, str]:
    """``{pid: command line}`` from :func:`ps_script` output (each line bounded)."""
    found: dict[int, str] = {}
    for line in output.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit():
            found[int(pid)] = command.strip()[: MAX_PATH + 200]
    return found


def signal_script(pid: int, ident: str, sig: str) -> str:
    """Send ``signal`` to ``pid`` only if it still runs the server ``ident`` names."""
    return (
        f"c=$(ps -ww -p {int(pid)} -o command= 2>/dev/null) || exit 0\n"
        f'case "$c" in *{shlex.quote(ident)}*) kill -{sig} {int(pid)} 2>/dev/null ;; esac\n'
        "exit 0\n"
    )


def find_script(ident: str) -> str:
    """Pids of every process whose command line holds ``ident`` (for a start whose pid was
    never learnt: the script's answer was lost)."""
    return (
        f"ps -ww -e -o pid= -o command= 2>/dev/null | grep -F -e {shlex.quote(ident)} "
        "| grep -v -F -e 'grep -F' || true"
    )


def tail_script(log_file: str) -> str:
    return f"tail -n {TAIL_LINES} {log_file} 2>/dev/null | cut -c 1-{MAX_LINE} || true"


def bounded_lines(text: str) -> tuple[str, ...]:
    """The last :data:`TAIL_LINES` lines of ``text``, each at most :data:`MAX_LINE` chars."""
    lines = [ln.rstrip()[:MAX_LINE] for ln in text.splitlines()]
    return tuple(ln for ln in lines if ln)[-TAIL_LINES:]


def pid_files_script(state_dir: str, node: str) -> str:
    """Each of the node's pid files: its name on one line, its JSON on the next."""
    pattern = f"{sh_path(state_dir)}/{shlex.quote(safe_name(node))}-*.json"
    return (
        f'for f in {pattern}; do [ -f "$f" ] || continue\n'
        "printf '%s\\n' \"$f\"; head -c 4096 \"$f\" | tr -d '\\n'; printf '\\n'\ndone\n:\n"
    )


def parse_pid_files(output: str) -> list[tuple[str, PidFile | None]]:
    """(file, pid file or None when unreadable) pairs from :func:`pid_files_script`."""
    lines = output.splitlines()
    result: list[tuple[str, PidFile | None]] = []
    for name, body in zip(lines[::2], lines[1::2], strict=False):
        result.append((name[:MAX_PATH], parse_pid_file(body)))
    return result


def parse_pid_file(body: str) -> PidFile | None:
    """A pid file's JSON, validated (None when malformed or implausible)."""
    try:
        pf = msgspec.json.decode(body.encode(), type=PidFile)
    except msgspec.DecodeError:
        return None
    if not (
        1 < pf.pid < 2**31
        and 1 <= pf.port <= 65535
        and 0 < len(pf.model) <= MAX_NAME
        and 0 < len(pf.path) <= MAX_PATH
        and len(pf.node) <= MAX_NAME
        and len(pf.marker) <= 64
    ):
        return None
    return pf


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """A model a pool node can start: its file on the host and the file's size."""

    name: str
    path: str
    size_bytes: int | None


def catalogue_script(models_dir: str | None, models: Mapping[str, str]) -> str:
    """List ``*.gguf`` of the directory (``D size path``) and the table (``T name size path``);
    sizes from ``stat`` following symlinks (GNU ``-c %s`` or BSD ``-f %z``)."""
    parts = [
        'if stat -L -c %s / >/dev/null 2>&1; then sz() { stat -L -c %s "$1"; }; '
        'else sz() { stat -L -f %z "$1"; }; fi'
    ]
    if models_dir:
        parts.append(
            f"for f in {sh_path(models_dir.rstrip('/') or '/')}/*.gguf; do "
            '[ -f "$f" ] && printf \'D\\t%s\\t%s\\n\' "$(sz "$f")" "$f"; done'
        )
    for name, path in models.items():
        parts.append(
            f'f={sh_path(path)}; if [ -f "$f" ]; then '
            f'printf \'T\\t%s\\t%s\\t%s\\n\' {shlex.quote(name)} "$(sz "$f")" "$f"; '
            f"else printf 'T\\t%s\\t-\\t%s\\n' {shlex.quote(name)} \"$f\"; fi"
        )
    return "\n".join(parts) + "\n:\n"


def parse_catalogue(output: str) -> tuple[dict[str, CatalogueEntry], list[str]]:
    """The models (table entries win over same-named files) and the table's missing files."""
    found: dict[str, CatalogueEntry] = {}
    table: dict[str, CatalogueEntry] = {}
    missing: list[str] = []
    for line in output.splitlines():
        fields = line.split("\t")
        if fields[0] == "D" and len(fields) == 3:
            path = fields[2]
            base = path.rsplit("/", 1)[-1].removesuffix(".gguf")
            if base and len(base) <= MAX_NAME and len(path) <= MAX_PATH:
                found[base] = CatalogueEntry(base, path, _size(fields[1]))
        elif fields[0] == "T" and len(fields) == 4:
            name, size, path = fields[1], fields[2], fields[3][:MAX_PATH]
            if size == "-":
                missing.append(f"{name}: {path}")
            else:
                table[name] = CatalogueEntry(name, path, _size(size))
    found.update(table)
    return found, missing


def _size(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None
