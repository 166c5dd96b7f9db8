"""CPU time and memory of a process tree, read from /proc (Linux only).

A server may fork worker processes, so every figure covers the process and all its descendants. CPU is
utime + stime (all threads) in seconds; memory is VmRSS (now) and VmHWM (peak resident set) in KiB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class TreeSample:
    cpu_seconds: float
    rss_kib: int
    peak_rss_kib: int
    processes: int


def _parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, utime + stime seconds) from one /proc/<pid>/stat line; comm may contain spaces."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    parent = int(fields[1])
    ticks = int(fields[11]) + int(fields[12])
    return parent, ticks / CLOCK_TICKS


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0.0 once the process is gone."""
    text = _read(f"/proc/{pid}/stat")
    return _parse_stat(text)[1] if text else 0.0


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in KiB; (0, 0) once the process is gone."""
    text = _read(f"/proc/{pid}/status")
    rss = peak = 0
    if text:
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return rss, peak


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        text = _read(f"/proc/{entry}/stat")
        if not text:
            continue
        try:
            parent, _ = _parse_stat(text)
        except (ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def sample_tree(pid: int) -> TreeSample:
    """CPU seconds and memory summed over pid and its descendants (peak RSS: the sum of each one's VmHWM)."""
    total_cpu = 0.0
    total_rss = total_peak = 0
    pids = descendants(pid)
    for member in pids:
        total_cpu += cpu_seconds(member)
        rss, peak = memory_kib(member)
        total_rss += rss
        total_peak += peak
    return TreeSample(total_cpu, total_rss, total_peak, len(pids))


def sample_many(pids: list[int]) -> float:
    """CPU seconds summed over several processes (the load generator's own processes)."""
    return sum(cpu_seconds(pid) for pid in pids)


def threads(pid: int) -> int:
    """Threads of one process (its /proc/<pid>/task entries); 0 once the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpus_allowed(pid: int) -> str | None:
    """The CPUs the process may run on (Cpus_allowed_list, e.g. '1' when pinned, '0-1' when not)."""
    text = _read(f"/proc/{pid}/status")
    for line in (text or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return None
