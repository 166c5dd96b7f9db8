"""The loopback benchmark harness: the statistics behind its tables, and tiny real runs (CI, < 30 s together).

The real runs are smoke runs (2 clients, 1 s, 2 rounds): they prove the harness works end to end (alternating
rounds, pinning, results.json, table.md); their figures mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from requirements import require

from benchmarks.stats import compare, pair_ratios, spread
from benchmarks.summary import summarise
from benchmarks.table import render

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.requires(sys.platform.startswith("linux"), "reads /proc")


def _require(tool: str) -> None:
    require(shutil.which(tool) is not None, f"{tool} is not installed (the benchmark smoke runs need it)")


def _bench(tmp_path: Path, *arguments: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.relay", *arguments, "--quiet", "--no-plot", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    document: dict[str, Any] = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    return document


# ------------------------------------------------------------------------------------------------ statistics
def test_spread_of_five_rounds() -> None:
    assert spread([5, 1, 4, 2, 3]) == {"n": 5, "median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0,
                                       "iqr": 2.0}


def test_spread_interpolates_quartiles_and_ignores_missing_values() -> None:
    result = spread([10.0, None, 20.0, "n/a", 40.0, 30.0, True])
    assert result is not None
    assert (result["n"], result["median"], result["min"], result["max"]) == (4, 25.0, 10.0, 40.0)
    assert (result["q1"], result["q3"], result["iqr"]) == (17.5, 32.5, 15.0)


def test_spread_of_one_value_and_of_none() -> None:
    assert spread([7]) == {"n": 1, "median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0, "iqr": 0.0}
    assert spread([None, None]) is None


def test_ratios_per_round_pair_and_of_medians() -> None:
    pyturn = {0: 6.0, 1: 9.0, 2: 12.0}
    coturn = {0: 5.0, 1: 10.0, 3: 8.0}  # round 2 of coturn failed, round 3 of pyturn did
    assert pair_ratios(pyturn, coturn) == [1.2, 0.9]
    result = compare(pyturn, coturn)
    assert result is not None
    assert result["per_round_values"] == [1.2, 0.9]
    assert result["per_round"]["median"] == 1.05
    assert (result["per_round"]["min"], result["per_round"]["max"]) == (0.9, 1.2)
    assert result["of_medians"] == 1.125  # median 9 / median 8


def test_ratio_skips_a_zero_denominator() -> None:
    assert pair_ratios({0: 0.0, 1: 2.0}, {0: 0.0, 1: 1.0}) == [2.0]


def _run(server: str, round_index: int, cpu: float, pps: float, ok: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {"scenario": "s", "driver": "loadgen", "clients": 10, "server": server,
                              "round": round_index, "ok": ok}
    if ok:
        record["figures"] = {"server_rss_peak_kib": 1000, "relayed_pps": pps, "loss_pct": 0.0,
                             "server_cpu_us_per_packet": cpu}
    return record


def test_summary_leads_with_cpu_per_packet_then_throughput_then_loss() -> None:
    runs = [_run("pyturn", 0, 6.0, 100.0), _run("coturn", 0, 5.0, 110.0), _run("coturn", 1, 5.5, 100.0),
            _run("pyturn", 1, 6.6, 90.0), _run("pyturn", 2, 0.0, 0.0, ok=False), _run("coturn", 2, 4.0, 120.0)]
    (entry,) = summarise(runs)
    pyturn = entry["servers"]["pyturn"]
    assert (pyturn["rounds_ok"], pyturn["rounds_failed"]) == (2, 1)
    assert list(pyturn["figures"])[:3] == ["server_cpu_us_per_packet", "relayed_pps", "loss_pct"]
    assert pyturn["figures"]["server_cpu_us_per_packet"]["median"] == 6.3
    assert entry["servers"]["coturn"]["figures"]["server_cpu_us_per_packet"]["median"] == 5.0
    assert entry["round_pairs"] == 2
    cpu = entry["ratio_pyturn_over_coturn"]["server_cpu_us_per_packet"]
    assert cpu["per_round_values"] == [1.2, 1.2]
    assert cpu["of_medians"] == 1.26  # 6.3 / 5.0: the failed pyturn round leaves coturn's round 2 unpaired

    markdown = render({"meta": {"standard_method": {"followed": False, "gaps": ["s: 3 round(s), fewer than 5"]}},
                       "summary": [entry], "runs": runs})
    assert "**Not a headline run**" in markdown and "fewer than 5" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Figure | pyturn median [min-max] IQR | coturn median [min-max] IQR |")
    assert rows[1].startswith("| server CPU µs per relayed packet | 6.3 [6-6.6] IQR 0.3 | 5 [4-5.5] IQR 0.75 | "
                              "1.2 [1.2-1.2] | 1.26 |")
    assert rows[2].startswith("| relayed packets/s |") and rows[3].startswith("| loss % |")
    assert "Failed runs: s pyturn round 3" in markdown
    followed = render({"meta": {"standard_method": {"followed": True, "gaps": []}}, "summary": [entry], "runs": []})
    assert "Not a headline run" not in followed


# ------------------------------------------------------------------------------------------------ real runs
def test_bench_smoke_alternates_rounds_and_writes_results_json(tmp_path: Path) -> None:
    """2 rounds against pyturn and coturn (pinned when 2 CPUs are usable): ABBA order, spreads, ratios, table."""
    _require("turnserver")
    pin = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    document = _bench(tmp_path, "smoke", "--servers", "pyturn,coturn", "--clients", "2", "--duration", "1",
                      "--rounds", "2", *(["--pin"] if pin else []))
    assert document["format"] == 2
    meta = document["meta"]
    assert {"date", "commit", "python", "uvloop", "cpu_model", "cpus", "command", "pinning", "logging",
            "coturn_relay_threads", "standard_method"} <= set(meta)
    assert meta["standard_method"]["followed"] is False  # 2 rounds are not a headline run
    assert meta["logging"]["mode"] == "default"
    runs = document["runs"]
    assert [(r["server"], r["round"]) for r in runs] == [("pyturn", 0), ("coturn", 0), ("coturn", 1), ("pyturn", 1)]
    for run in runs:
        assert run["ok"], run.get("error")
        assert run["figures"]["relayed_packets"] > 0
        assert run["figures"]["server_rss_peak_kib"] > 0
        if pin:
            assert run["detail"]["server_cpus_allowed"] == "1"
        if run["server"] == "coturn":
            assert "--relay-threads 1" in run["detail"]["server_command"]
    (entry,) = document["summary"]
    assert entry["round_pairs"] == 2
    cpu = entry["servers"]["pyturn"]["figures"]["server_cpu_us_per_packet"]
    assert cpu["n"] == 2 and cpu["min"] <= cpu["median"] <= cpu["max"] and cpu["iqr"] >= 0
    ratio = entry["ratio_pyturn_over_coturn"]["server_cpu_us_per_packet"]
    assert len(ratio["per_round_values"]) == 2 and ratio["of_medians"] > 0
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert "| server CPU µs per relayed packet |" in table and "**Not a headline run**" in table
    assert (tmp_path / "results.json").stat().st_size < 100_000  # small enough to commit


def test_bench_smoke_uclient_driver_reports_loss_and_rtt(tmp_path: Path) -> None:
    _require("turnutils_uclient")
    _require("turnutils_peer")
    document = _bench(tmp_path, "smoke-uclient", "--servers", "pyturn")
    (run,) = document["runs"]
    assert run["ok"], run.get("error")
    assert run["driver"] == "turnutils_uclient"
    figures = run["figures"]
    assert figures["relayed_packets"] > 0
    assert figures["loss_pct"] is not None and figures["rtt_avg_ms"] is not None
    assert "turnutils_uclient -m 2 -n 100 -l 170" in run["detail"]["command"]
