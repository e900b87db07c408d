"""Host memory: pure parsers of what Linux and macOS print, the remote scripts, and psutil.

The parsers take the text a command printed and return a :class:`HostMemory`; they do no I/O,
so they are tested against real captured output. Anything they cannot use raises
:class:`BackendBadResponse` naming the command and the offending text.

Remote reads run ONE shell script per poll (see :data:`LINUX_MEMORY_SCRIPT` and
:data:`MACOS_MEMORY_SCRIPT`): every command's output is preceded by a marker line, so one
``exec`` round trip over the persistent SSH connection yields everything, and
:func:`parse_linux_memory_output` / :func:`parse_macos_memory_output` split it again.
"""

from __future__ import annotations

import re

import psutil

from lmtui.backends.base import BackendBadResponse
from lmtui.core.model import HostMemory

KIB = 1024
MIB = 1024 * 1024

#: Marker line printed before each command's output in the remote scripts.
_MARKER = re.compile(r"^@@lmtui:([a-z_]+)@@$", re.MULTILINE)

# Linux: /proc/meminfo is always there; nvidia-smi often is not (no GPU, or no driver), and
# a wedged driver can make it hang, so it is guarded by `command -v` and by coreutils
# `timeout` (its own failure is swallowed: GPU figures are optional, host memory is not).
LINUX_MEMORY_SCRIPT = """\
echo @@lmtui:meminfo@@
cat /proc/meminfo || exit 1
echo @@lmtui:nvidia_smi@@
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 5 nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits \
    2>/dev/null || true
fi
"""

# macOS: memory_pressure is optional (absent in some minimal images); the other two are not.
MACOS_MEMORY_SCRIPT = """\
echo @@lmtui:memsize@@
sysctl -n hw.memsize || exit 1
echo @@lmtui:vm_stat@@
vm_stat || exit 1
echo @@lmtui:memory_pressure@@
memory_pressure -Q 2>/dev/null || true
"""


def _bad(what: str, text: str) -> BackendBadResponse:
    """A BackendBadResponse that quotes the start of the unusable text."""
    return BackendBadResponse(f"{what}: {text.strip()[:120]!r}")


def parse_meminfo(text: str) -> HostMemory:
    """Parse Linux ``/proc/meminfo`` (values in kB) into a ``source="ssh-linux"`` HostMemory.

    ``MemAvailable`` is the kernel's own estimate of memory a new workload can get without
    swapping (page cache and reclaimable slab included), which is exactly the question
    "does this model fit". Kernels before 3.14 lack it; there we fall back to
    MemFree + Buffers + Cached, the classic approximation, which slightly overstates.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if parts and parts[0].isascii() and parts[0].isdigit():  # "²".isdigit() too
            fields[name.strip()] = int(parts[0]) * KIB
    total = fields.get("MemTotal")
    if not total:
        raise _bad("/proc/meminfo has no MemTotal", text)
    available = fields.get("MemAvailable")
    if available is None:
        if "MemFree" not in fields:
            raise _bad("/proc/meminfo has neither MemAvailable nor MemFree", text)
        available = fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return HostMemory(total_bytes=total, available_bytes=min(available, total), source="ssh-linux")


_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
_VM_STAT_LINE = re.compile(r'^"?([^":]+?)"?:\s+(\d+)\.?\s*$')


def parse_vm_stat(vm_stat: str, memsize: int, pressure: str | None = None) -> HostMemory:
    """Parse macOS ``vm_stat`` plus ``sysctl -n hw.memsize`` into a ``source="ssh-macos"``.

    ``pressure`` is the raw output of ``memory_pressure -Q`` (optional).

    available = (free + inactive + speculative) * page size. Why these three: free pages
    are unused; speculative pages are read-ahead the kernel has not handed to anyone yet
    and drops first; inactive pages have not been touched recently and are the pager's
    first victims, so a model load takes them without pushing anyone's active working set
    into the compressor. Wired and compressor-occupied pages cannot be reclaimed, active
    pages are in use. (This is also what psutil reports as ``available`` on macOS.)
    """
    if memsize <= 0:
        raise BackendBadResponse(f"sysctl hw.memsize: not a memory size: {memsize}")
    m = _PAGE_SIZE.search(vm_stat)
    if m is None:
        raise _bad("vm_stat: no page size in the header", vm_stat)
    page_size = int(m.group(1))
    pages: dict[str, int] = {}
    for line in vm_stat.splitlines():
        lm = _VM_STAT_LINE.match(line.strip())
        if lm:
            pages[lm.group(1).strip()] = int(lm.group(2))
    needed = ("Pages free", "Pages inactive", "Pages speculative")
    missing = [k for k in needed if k not in pages]
    if missing:
        raise _bad(f"vm_stat: missing {', '.join(missing)}", vm_stat)
    available = sum(pages[k] for k in needed) * page_size
    return HostMemory(
        total_bytes=memsize,
        available_bytes=min(available, memsize),
        source="ssh-macos",
        pressure_free_pct=parse_memory_pressure(pressure) if pressure else None,
    )


_PRESSURE = re.compile(r"System-wide memory free percentage:\s*(\d+(?:\.\d+)?)\s*%")


def parse_memory_pressure(text: str) -> float | None:
    """The free percentage from ``memory_pressure -Q``; None when the line is absent.

    Absence is not an error: the tool is optional and only refines the picture.
    """
    m = _PRESSURE.search(text)
    if m is None:
        return None
    pct = float(m.group(1))
    return pct if 0.0 <= pct <= 100.0 else None


def parse_nvidia_smi(text: str) -> tuple[int, int] | None:
    """Parse ``nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits``.

    One line per GPU, ``used, total`` in MiB. Returns (used_bytes, total_bytes) summed over
    the GPUs that report both; a field such as ``[N/A]`` or ``[Not Supported]`` (unified
    memory parts like GH200 do this) drops that GPU, since half a pair would skew the sum.
    None when no GPU reports both (including empty output: no nvidia-smi). A line that is
    neither numbers nor a bracketed placeholder (e.g. "NVIDIA-SMI has failed because it
    couldn't communicate with the NVIDIA driver") raises BackendBadResponse.
    """
    used_total = 0
    size_total = 0
    seen = False
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 2:
            raise _bad("nvidia-smi: expected 'used, total'", line)
        if any(c.startswith("[") and c.endswith("]") for c in cells):
            continue
        try:
            used, total = (int(float(c)) for c in cells)
        except (ValueError, OverflowError):  # "abc", "nan"; "inf"
            raise _bad("nvidia-smi: not a number", line) from None
        used_total += used * MIB
        size_total += total * MIB
        seen = True
    return (used_total, size_total) if seen else None


def _sections(text: str, required: tuple[str, ...]) -> dict[str, str]:
    """Split a script's output at its marker lines; every ``required`` section must exist."""
    found: dict[str, str] = {}
    marks = list(_MARKER.finditer(text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        found[m.group(1)] = text[m.end() : end].strip("\n")
    missing = [name for name in required if not found.get(name, "").strip()]
    if missing:
        raise _bad(f"memory script: no output for {', '.join(missing)}", text)
    return found


def _with_gpu(mem: HostMemory, nvidia_smi: str) -> HostMemory:
    """Add nvidia-smi figures to ``mem``; an unusable nvidia-smi answer leaves them unset.

    GPU figures are a refinement: a broken driver must not hide the host's memory.
    """
    try:
        gpu = parse_nvidia_smi(nvidia_smi)
    except BackendBadResponse:
        gpu = None
    if gpu is None:
        return mem
    used, total = gpu
    return HostMemory(
        total_bytes=mem.total_bytes,
        available_bytes=mem.available_bytes,
        source=mem.source,
        pressure_free_pct=mem.pressure_free_pct,
        gpu_total_bytes=total,
        gpu_used_bytes=used,
    )


def parse_linux_memory_output(text: str) -> HostMemory:
    """Parse the output of :data:`LINUX_MEMORY_SCRIPT`."""
    parts = _sections(text, ("meminfo",))
    return _with_gpu(parse_meminfo(parts["meminfo"]), parts.get("nvidia_smi", ""))


def parse_macos_memory_output(text: str) -> HostMemory:
    """Parse the output of :data:`MACOS_MEMORY_SCRIPT`."""
    parts = _sections(text, ("memsize", "vm_stat"))
    raw = parts["memsize"].strip()
    if not raw.isdigit():
        raise _bad("sysctl -n hw.memsize: not a number", raw)
    return parse_vm_stat(parts["vm_stat"], int(raw), parts.get("memory_pressure") or None)


def local_host_memory() -> HostMemory:
    """Memory of the machine lmtui runs on, from psutil (``source="psutil"``).

    psutil's ``available`` is MemAvailable on Linux (as the SSH reader) and free + inactive
    on macOS (the SSH reader adds the few speculative pages), so local and remote nodes
    compare fairly.
    """
    vm = psutil.virtual_memory()
    return HostMemory(
        total_bytes=int(vm.total),
        available_bytes=min(int(vm.available), int(vm.total)),
        source="psutil",
    )
