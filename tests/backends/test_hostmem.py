"""Host memory parsers against real command output, the remote scripts, and psutil."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from lmtui.backends.base import BackendBadResponse
from lmtui.backends.hostmem import (
    LINUX_MEMORY_SCRIPT,
    MACOS_MEMORY_SCRIPT,
    local_host_memory,
    parse_linux_memory_output,
    parse_macos_memory_output,
    parse_meminfo,
    parse_memory_pressure,
    parse_nvidia_smi,
    parse_vm_stat,
)

MIB = 1024 * 1024
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/meminfo")

# /proc/meminfo of a Debian 12 box (kernel 6.x), captured verbatim.
MEMINFO = """\
MemTotal:       24684092 kB
MemFree:        24330052 kB
MemAvailable:   24329876 kB
Buffers:           14732 kB
Cached:           161732 kB
SwapCached:            0 kB
Active:            79592 kB
Inactive:         120992 kB
Active(anon):       1552 kB
Inactive(anon):    31368 kB
Active(file):      78040 kB
Inactive(file):    89624 kB
Unevictable:       16764 kB
Mlocked:           15868 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               536 kB
Writeback:             0 kB
AnonPages:         40940 kB
Mapped:            20040 kB
Shmem:              8856 kB
KReclaimable:      71804 kB
Slab:              94412 kB
SReclaimable:      71804 kB
SUnreclaim:        22608 kB
KernelStack:        1580 kB
PageTables:         1968 kB
CommitLimit:    12342044 kB
Committed_AS:      96812 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       14348 kB
VmallocChunk:          0 kB
Percpu:              688 kB
HugePages_Total:       0
HugePages_Free:        0
HugePages_Rsvd:        0
HugePages_Surp:        0
Hugepagesize:       2048 kB
Hugetlb:               0 kB
DirectMap4k:       28672 kB
DirectMap2M:     2068480 kB
DirectMap1G:    25165824 kB
"""

# A 16 GB Apple Silicon Mac (macOS 14) under load: `vm_stat`.
VM_STAT_M1 = """\
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               13898.
Pages active:                            376452.
Pages inactive:                          370911.
Pages speculative:                         5394.
Pages throttled:                              0.
Pages wired down:                        152390.
Pages purgeable:                          23745.
"Translation faults":                 846233109.
Pages copy-on-write:                   21466519.
Pages zero filled:                    430036611.
Pages reactivated:                      9731620.
Pages purged:                           2904011.
File-backed pages:                       291093.
Anonymous pages:                         461664.
Pages stored in compressor:              605391.
Pages occupied by compressor:            123455.
Decompressions:                         7937215.
Compressions:                          13298307.
Pageins:                               13180547.
Pageouts:                                 93818.
Swapins:                                      0.
Swapouts:                                     0.
"""
MEMSIZE_16G = 17179869184

# An Intel Mac has 4 KiB pages; everything else is the same.
VM_STAT_INTEL = """\
Mach Virtual Memory Statistics: (page size of 4096 bytes)
Pages free:                              201563.
Pages active:                           1052310.
Pages inactive:                          980045.
Pages speculative:                        27301.
Pages throttled:                              0.
Pages wired down:                        523887.
Pages purgeable:                          61420.
"Translation faults":                 212345678.
Pages copy-on-write:                    5123456.
Pages zero filled:                    101234567.
Pages reactivated:                       345678.
Pages purged:                            234567.
File-backed pages:                       812345.
Anonymous pages:                        1247311.
Pages stored in compressor:              432100.
Pages occupied by compressor:            150021.
Decompressions:                          123456.
Compressions:                            234567.
Pageins:                                3456789.
Pageouts:                                 12345.
Swapins:                                   2048.
Swapouts:                                  4096.
"""

MEMORY_PRESSURE = """\
The system has 17179869184 (1048576 pages with a page size of 16384).

System-wide memory free percentage: 62%
"""


def test_meminfo_capture() -> None:
    mem = parse_meminfo(MEMINFO)
    assert mem.total_bytes == 24684092 * 1024
    assert mem.available_bytes == 24329876 * 1024
    assert mem.source == "ssh-linux"
    assert mem.gpu_total_bytes is None


@on_linux
def test_meminfo_of_this_machine_matches_psutil() -> None:
    mem = parse_meminfo(Path("/proc/meminfo").read_text())
    assert mem.total_bytes == psutil.virtual_memory().total
    assert 0 < mem.available_bytes <= mem.total_bytes


def test_meminfo_before_memavailable_falls_back() -> None:
    # Kernels before 3.14 have no MemAvailable: free + buffers + cached.
    old = "MemTotal: 4000 kB\nMemFree: 1000 kB\nBuffers: 200 kB\nCached: 300 kB\n"
    assert parse_meminfo(old).available_bytes == 1500 * 1024


@pytest.mark.parametrize("text", ["", "hello world", "MemFree: 10 kB\n", "MemTotal: 0 kB\n"])
def test_meminfo_garbage(text: str) -> None:
    with pytest.raises(BackendBadResponse):
        parse_meminfo(text)


def test_vm_stat_apple_silicon() -> None:
    mem = parse_vm_stat(VM_STAT_M1, MEMSIZE_16G, MEMORY_PRESSURE)
    assert mem.source == "ssh-macos"
    assert mem.total_bytes == MEMSIZE_16G
    # free + inactive + speculative, in 16 KiB pages: 6.0 GiB of a loaded 16 GB Mac.
    assert mem.available_bytes == (13898 + 370911 + 5394) * 16384
    assert mem.pressure_free_pct == 62.0


def test_vm_stat_intel_page_size_and_no_pressure() -> None:
    mem = parse_vm_stat(VM_STAT_INTEL, MEMSIZE_16G)
    assert mem.available_bytes == (201563 + 980045 + 27301) * 4096
    assert mem.pressure_free_pct is None


def test_vm_stat_available_never_exceeds_total() -> None:
    assert parse_vm_stat(VM_STAT_M1, 1024).available_bytes == 1024


@pytest.mark.parametrize(
    ("vm_stat", "memsize"),
    [
        (VM_STAT_M1, 0),  # sysctl gave nothing usable
        (VM_STAT_M1.split("\n", 1)[1], MEMSIZE_16G),  # no header, so no page size
        (VM_STAT_M1.replace("Pages speculative:", "Pages spec:"), MEMSIZE_16G),
        ("zsh: command not found: vm_stat", MEMSIZE_16G),
    ],
)
def test_vm_stat_garbage(vm_stat: str, memsize: int) -> None:
    with pytest.raises(BackendBadResponse):
        parse_vm_stat(vm_stat, memsize)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MEMORY_PRESSURE, 62.0),
        ("System-wide memory free percentage: 7%\n", 7.0),
        ("", None),
        ("memory_pressure: command not found", None),
    ],
)
def test_memory_pressure(text: str, expected: float | None) -> None:
    assert parse_memory_pressure(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024, 24576\n", (1024 * MIB, 24576 * MIB)),  # one RTX 4090
        ("1024, 24576\n3, 24576\n", (1027 * MIB, 49152 * MIB)),  # two GPUs are summed
        ("[N/A], 97871\n512, 81559\n", (512 * MIB, 81559 * MIB)),  # a GH200 says [N/A]
        ("[Not Supported], [Not Supported]\n", None),
        ("", None),  # no nvidia-smi on this host
    ],
)
def test_nvidia_smi(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_nvidia_smi(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "1024; 24576",
        "lots, of",
    ],
)
def test_nvidia_smi_garbage(text: str) -> None:
    with pytest.raises(BackendBadResponse):
        parse_nvidia_smi(text)


def test_linux_script_output_with_gpus() -> None:
    out = f"@@lmtui:meminfo@@\n{MEMINFO}@@lmtui:nvidia_smi@@\n1024, 24576\n[N/A], 81559\n"
    mem = parse_linux_memory_output(out)
    assert mem.total_bytes == 24684092 * 1024
    assert (mem.gpu_used_bytes, mem.gpu_total_bytes) == (1024 * MIB, 24576 * MIB)


def test_linux_script_output_with_broken_driver_keeps_host_memory() -> None:
    out = (
        f"@@lmtui:meminfo@@\n{MEMINFO}@@lmtui:nvidia_smi@@\n"
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    )
    mem = parse_linux_memory_output(out)
    assert mem.available_bytes == 24329876 * 1024
    assert mem.gpu_total_bytes is None


def test_macos_script_output() -> None:
    out = (
        f"@@lmtui:memsize@@\n{MEMSIZE_16G}\n@@lmtui:vm_stat@@\n{VM_STAT_M1}"
        f"@@lmtui:memory_pressure@@\n{MEMORY_PRESSURE}"
    )
    mem = parse_macos_memory_output(out)
    assert mem.total_bytes == MEMSIZE_16G
    assert mem.pressure_free_pct == 62.0


@pytest.mark.parametrize(
    "out",
    [
        "",
        "bash: sh: command not found",
        f"@@lmtui:memsize@@\n@@lmtui:vm_stat@@\n{VM_STAT_M1}",  # sysctl printed nothing
        f"@@lmtui:memsize@@\nsysctl: unknown oid\n@@lmtui:vm_stat@@\n{VM_STAT_M1}",
    ],
)
def test_macos_script_output_garbage(out: str) -> None:
    with pytest.raises(BackendBadResponse):
        parse_macos_memory_output(out)


def test_linux_script_output_without_meminfo() -> None:
    with pytest.raises(BackendBadResponse):
        parse_linux_memory_output("@@lmtui:meminfo@@\n@@lmtui:nvidia_smi@@\n")


@on_linux
def test_linux_script_runs_here_under_sh() -> None:
    out = subprocess.run(
        ["sh", "-c", LINUX_MEMORY_SCRIPT], capture_output=True, text=True, check=True, timeout=20
    ).stdout
    mem = parse_linux_memory_output(out)
    assert mem.total_bytes == psutil.virtual_memory().total


def test_macos_script_is_posix_sh() -> None:
    # It cannot run here, but `sh -n` catches syntax errors before a Mac user does.
    subprocess.run(["sh", "-n", "-c", MACOS_MEMORY_SCRIPT], check=True, timeout=20)


def test_local_host_memory() -> None:
    mem = local_host_memory()
    assert mem.source == "psutil"
    assert mem.total_bytes == psutil.virtual_memory().total
    assert 0 < mem.available_bytes <= mem.total_bytes
