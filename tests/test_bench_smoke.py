"""Smoke run of the loopback benchmark harness: pyturn only, 2 clients, about 1 s of traffic (CI, < 30 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.requires(sys.platform.startswith("linux"), "reads /proc")


def test_bench_smoke_produces_results_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.relay", "smoke", "--servers", "pyturn", "--clients", "2",
         "--duration", "1", "--quiet", "--no-plot", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    document = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {"meta", "scenarios", "runs", "summary"} <= set(document)
    assert {"commit", "python", "cpus", "command"} <= set(document["meta"])
    (run,) = document["runs"]
    assert run["ok"], run.get("error")
    assert run["server"] == "pyturn" and run["clients"] == 2
    figures = run["figures"]
    expected = {"relayed_packets", "relayed_pps", "mbps", "loss_pct", "rtt_p50_ms", "rtt_p99_ms",
                "server_cpu_s", "server_cpu_us_per_packet", "server_rss_peak_kib"}
    assert expected <= set(figures)
    assert figures["relayed_packets"] > 0
    assert figures["server_rss_peak_kib"] > 0
    assert document["summary"][0]["pyturn"]["relayed_packets"] > 0
