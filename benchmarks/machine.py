"""What a result was measured on: date, commit, interpreter, uvloop, CPU model and count, load (results.json meta)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import coturn

REPO = Path(__file__).resolve().parent.parent


def _git(*arguments: str) -> str | None:
    try:
        completed = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe(argv: list[str]) -> dict[str, Any]:
    """The meta block of results.json (the servers run under this same interpreter)."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    commit = _git("rev-parse", "HEAD")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m benchmarks.relay", *argv]),
        "commit": commit,
        "commit_short": commit[:7] if commit else None,
        "worktree_modified": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "uvloop": package_version("uvloop"),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "coturn": coturn.version(),
        "loadavg_at_start": load,
    }
