"""The pure parts of the process pool: ports, scripts, markers, pid files, the catalogue."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from lmtui.backends.base import BackendBadResponse
from lmtui.backends.procpool import (
    MAX_LINE,
    TAIL_LINES,
    StartSpec,
    bounded_lines,
    catalogue_script,
    choose_port,
    identity,
    parse_catalogue,
    parse_pid_file,
    parse_pid_files,
    parse_ps,
    pid_files_script,
    ps_script,
    safe_name,
    server_command,
    sh_path,
    start_script,
)
from lmtui.backends.procshell import LocalShell
from lmtui.config import parse_port_range


def sh(script: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["/bin/sh", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


@pytest.mark.parametrize(
    ("first", "last", "taken", "expected"),
    [
        (41000, 41002, [], 41000),
        (41000, 41002, [41000], 41001),
        (41000, 41002, [41001, 41000], 41002),
        (41000, 41002, [41000, 41001, 41002], None),
        (5, 5, [], 5),
    ],
)
def test_choose_port_takes_the_lowest_free_port(
    first: int, last: int, taken: list[int], expected: int | None
) -> None:
    assert choose_port(first, last, taken) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("41000-41099", (41000, 41099)), ("80-80", (80, 80))]
)
def test_port_ranges(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["41000", "a-b", "5-3", "0-10", "1-70000", "-5"])
def test_bad_port_ranges_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_port_range(text)


def test_paths_are_quoted_and_tilde_is_the_hosts_home() -> None:
    assert sh_path("/a b/c'd") == "'/a b/c'\"'\"'d'"
    assert sh_path("~/x y") == "\"$HOME\"/'x y'"
    assert sh(f"printf %s {sh_path('~/x y')}").endswith("/x y")
    assert safe_name("mac 1/../x") == "mac_1_.._x"


def test_the_command_names_model_and_port_where_ps_shows_them() -> None:
    argv = server_command("/bin/ls", "/m/a.gguf", 41001, "127.0.0.1", "a", ["-np", "2"])
    assert " ".join(argv).find(identity("/m/a.gguf", 41001)) > 0
    assert identity("/m/a.gguf", 4100) not in " ".join(argv)  # 4100 is not 41001


def _spec(tmp_path: Path, binary: str, **kw: object) -> StartSpec:
    base = dict(
        node="n 1",
        model="m",
        path=str(tmp_path / "m o.gguf"),
        port=41000,
        host="127.0.0.1",
        binary=binary,
        args=("--x", "a b"),
        state_dir=str(tmp_path / "state"),
        marker="abc",
        started=12.5,
    )
    base.update(kw)
    return StartSpec(**base)  # type: ignore[arg-type]


def test_start_script_detaches_writes_the_pid_file_and_keeps_the_key_off_argv(
    tmp_path: Path,
) -> None:
    # The "server" records its argv and environment, then exits.
    binary = tmp_path / "bin server"
    binary.write_text(
        '#!/bin/sh\necho "$@"\necho "key=$LLAMA_API_KEY,$LLAMA_ARG_API_KEY"\nenv | grep LMTUI_\n'
    )
    binary.chmod(0o755)
    spec = _spec(tmp_path, str(binary))
    script = start_script(spec, with_key=True)
    assert "s3cret" not in script
    pid = int(sh(script, stdin="s3cret\n").strip())
    pf_path = tmp_path / "state" / "n_1-41000.json"
    pf = parse_pid_file(pf_path.read_text())
    assert pf is not None
    assert (pf.pid, pf.model, pf.port, pf.marker, pf.node, pf.started) == (
        pid,
        "m",
        41000,
        "abc",
        "n 1",
        12.5,
    )
    log = tmp_path / "state" / "n_1-41000.log"
    for _ in range(100):
        if "LMTUI_POOL_MARKER" in log.read_text():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    text = log.read_text()
    assert f"-m {tmp_path / 'm o.gguf'} --port 41000 --host 127.0.0.1 --alias m --x a b" in text
    assert "key=s3cret,s3cret" in text
    assert "LMTUI_POOL_NODE=n 1" in text and "LMTUI_POOL_MARKER=abc" in text
    assert oct(pf_path.stat().st_mode)[-3:] == "600"
    listing = parse_pid_files(sh(pid_files_script(str(tmp_path / "state"), "n 1")))
    assert [(name.rsplit("/", 1)[-1], p) for name, p in listing] == [("n_1-41000.json", pf)]


def test_without_a_key_nothing_is_read_from_stdin(tmp_path: Path) -> None:
    assert "read -r" not in start_script(_spec(tmp_path, "/bin/true"), with_key=False)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "{",
        "[]",
        '{"pid": "1"}',
        '{"pid":0,"node":"n","model":"m","path":"/p","port":1,"started":1,"marker":"x"}',
        '{"pid":5,"node":"n","model":"m","path":"/p","port":70000,"started":1,"marker":"x"}',
        '{"pid":5,"node":"n","model":"","path":"/p","port":7,"started":1,"marker":"x"}',
        '{"pid":5,"node":"n","model":"' + "m" * 500 + '","path":"/p","port":7,"started":1,'
        '"marker":"x"}',
    ],
)
def test_implausible_pid_files_are_refused(body: str) -> None:
    assert parse_pid_file(body) is None


def test_pid_file_listing_keeps_unreadable_files_to_remove_them() -> None:
    good = msgspec.json.encode(
        {"pid": 5, "node": "n", "model": "m", "path": "/p", "port": 7, "started": 1, "marker": "x"}
    ).decode()
    files = parse_pid_files(f"/s/n-7.json\n{good}\n/s/n-8.json\ngarbage\n")
    assert [(f, p is not None) for f, p in files] == [("/s/n-7.json", True), ("/s/n-8.json", False)]


def test_ps_output_of_live_pids() -> None:
    out = sh(ps_script([1, 2**22 + 12345]))  # pid 1 lives; the other does not
    found = parse_ps(out)
    assert list(found) == [1]
    assert ps_script([]) == ":"
    assert parse_ps("  12 /bin/llama-server -m /a --port 5\n junk\n") == {
        12: "/bin/llama-server -m /a --port 5"
    }


def test_catalogue_lists_the_directory_and_the_table(tmp_path: Path) -> None:
    d = tmp_path / "models dir"
    d.mkdir()
    (d / "a.gguf").write_bytes(b"x" * 10)
    (d / "b.gguf").symlink_to(d / "a.gguf")  # sizes follow symlinks
    (d / "notes.txt").write_text("not a model")
    other = tmp_path / "c.gguf"
    other.write_bytes(b"y" * 3)
    out = sh(catalogue_script(str(d), {"see": str(other), "gone": str(tmp_path / "no.gguf")}))
    found, missing = parse_catalogue(out)
    assert {n: (e.path, e.size_bytes) for n, e in found.items()} == {
        "a": (str(d / "a.gguf"), 10),
        "b": (str(d / "b.gguf"), 10),
        "see": (str(other), 3),
    }
    assert missing == [f"gone: {tmp_path / 'no.gguf'}"]
    # An empty directory lists nothing and is no failure.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert parse_catalogue(sh(catalogue_script(str(empty), {}))) == ({}, [])


def test_log_lines_are_bounded() -> None:
    text = "\n".join(f"line {i} " + "x" * 1000 for i in range(100))
    lines = bounded_lines(text)
    assert len(lines) == TAIL_LINES and all(len(ln) <= MAX_LINE for ln in lines)
    assert lines[-1].startswith("line 99 ")


async def test_local_shell_runs_scripts_and_reports_failures() -> None:
    shell = LocalShell(timeout=2.0)
    assert await shell.run("read x; echo got $x", input="hi\n") == "got hi\n"
    with pytest.raises(BackendBadResponse, match="failed \\(3\\): oops"):
        await shell.run("echo oops >&2; exit 3")
    with pytest.raises(Exception, match="took over"):
        await asyncio.wait_for(LocalShell(timeout=0.2).run("sleep 5"), 5)


def test_a_start_is_never_sent_twice_for_one_port(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "/bin/true")
    sh(start_script(spec, with_key=False))
    r = subprocess.run(
        ["/bin/sh", "-c", start_script(spec, with_key=False)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert r.returncode == 17 and "already managed" in r.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_a_started_process_inherits_no_descriptor_of_lmtui_even_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def start() -> int:
        out = await LocalShell(timeout=5).run("sleep 5 >/dev/null 2>&1 </dev/null & echo $!")
        return int(out)

    pid = uvloop.run(start())
    try:
        # Until the child has exec'd sleep, the shell may hold descriptors of its own
        # while it sets up the redirections (dash parks them at fd 10 and up).
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{pid}/exe").resolve().name.startswith("sleep"):
            assert time.monotonic() < deadline, "the child never became sleep"
            time.sleep(0.01)
        # The kernel switches /proc/PID/exe before it closes the close-on-exec descriptors
        # (begin_new_exec), so for a moment a descriptor that is about to go still shows:
        # what is inherited for real is still there after the exec has finished.
        fds = sorted(int(f.name) for f in Path(f"/proc/{pid}/fd").iterdir())
        while fds != [0, 1, 2] and time.monotonic() < deadline:
            time.sleep(0.01)
            fds = sorted(int(f.name) for f in Path(f"/proc/{pid}/fd").iterdir())
        assert fds == [0, 1, 2]
    finally:
        subprocess.run(["kill", str(pid)], check=False)
