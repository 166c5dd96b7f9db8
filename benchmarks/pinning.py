"""Core pinning for the benchmark: the server on some CPUs, the load generator on others (`taskset -c`).

Without pinning the scheduler moves the server, the load generator and coturn's threads across all cores, so a
throughput figure mixes server efficiency with scheduling (benchmarks/README.md, "Method"). With `--pin` the
server gets `server_cpus` (default CPU 1) and every load process (loadgen clients and echo peers,
turnutils_uclient, turnutils_peer, and the harness itself) gets `load_cpus` (default CPU 0).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

TASKSET = "taskset"


def parse_cpu_list(text: str) -> set[int]:
    """CPUs of a taskset/cpuset list such as '1', '0,2' or '2-3'."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"empty CPU list {text!r}")
    return cpus


@dataclass(frozen=True)
class Pinning:
    server_cpus: str | None = None
    load_cpus: str | None = None

    @property
    def enabled(self) -> bool:
        return self.server_cpus is not None

    def server_prefix(self) -> list[str]:
        return [TASKSET, "-c", self.server_cpus] if self.server_cpus is not None else []

    def load_prefix(self) -> list[str]:
        return [TASKSET, "-c", self.load_cpus] if self.load_cpus is not None else []

    def pin_this_process(self) -> None:
        """The harness polls pipes and parses output: it belongs with the load, off the server's core."""
        if self.load_cpus is not None:
            os.sched_setaffinity(0, parse_cpu_list(self.load_cpus))

    def describe(self) -> dict[str, str | bool | None]:
        return {"enabled": self.enabled, "server_cpus": self.server_cpus, "load_cpus": self.load_cpus,
                "tool": TASKSET if self.enabled else None}


def make_pinning(enabled: bool, server_cpus: str = "1", load_cpus: str = "0") -> Pinning:
    """A checked Pinning (or none): taskset installed, both CPU sets available to us and disjoint."""
    if not enabled:
        return Pinning()
    if shutil.which(TASKSET) is None:
        raise SystemExit("--pin needs taskset (util-linux)")
    try:
        server, load = parse_cpu_list(server_cpus), parse_cpu_list(load_cpus)
    except ValueError as error:
        raise SystemExit(f"--pin: {error}") from None
    available = os.sched_getaffinity(0)
    missing = (server | load) - available
    if missing:
        raise SystemExit(f"--pin: CPUs {sorted(missing)} are not available (this process may use {sorted(available)})")
    if server & load:
        raise SystemExit(f"--pin: the server CPUs {sorted(server)} and load CPUs {sorted(load)} overlap")
    return Pinning(server_cpus, load_cpus)
