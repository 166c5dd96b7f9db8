"""The summary of a benchmark run: every figure's median and spread per server, and the pyturn/coturn ratios.

Input: the run records of results.json (one per server, round and client count). Output: one entry per
(scenario, driver, client count), figures in report order: server CPU per relayed packet (or per allocation)
first, then throughput, then loss, then latency and the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from benchmarks.stats import compare, spread

SERVERS = ("pyturn", "coturn")
FIGURE_ORDER = (
    "server_cpu_us_per_packet", "relayed_pps", "loss_pct",
    "server_cpu_us_per_allocation", "setup_rate_per_s", "allocations_failed",
    "rtt_p50_ms", "rtt_p99_ms", "rtt_avg_ms", "rtt_max_ms", "setup_p50_ms", "setup_p99_ms",
    "mbps", "server_cpu_util", "loadgen_cpu_util", "server_cpu_s", "relayed_packets", "allocations_ok",
    "server_rss_bytes_per_allocation", "server_rss_held_kib", "server_rss_before_kib", "server_rss_peak_kib",
)
RATIO_NOTE = ("Ratio column pyturn/coturn: median of the per-round ratios (each round runs both servers back to "
              "back) [min-max of those ratios]; 'of medians' = median(pyturn) / median(coturn)")


def ordered(names: Iterable[str]) -> list[str]:
    """Figure names in report order; unknown names last, in their first-seen order."""
    seen = list(dict.fromkeys(names))
    rank = {name: index for index, name in enumerate(FIGURE_ORDER)}
    return sorted(seen, key=lambda name: (rank.get(name, len(rank)), seen.index(name)))


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and spread of each figure per (scenario, driver, clients, server), and pyturn/coturn ratios."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["driver"], int(run["clients"])), []).append(run)
    summary = []
    for (scenario, driver, clients), group in groups.items():
        entry: dict[str, Any] = {"scenario": scenario, "driver": driver, "clients": clients, "servers": {}}
        by_round: dict[str, dict[str, dict[int, Any]]] = {}
        for server in SERVERS:
            mine = [run for run in group if run["server"] == server]
            if not mine:
                continue
            ok = [run for run in mine if run.get("ok")]
            names = ordered(name for run in ok for name in run.get("figures", {}))
            by_round[server] = {name: {int(run["round"]): run["figures"].get(name) for run in ok} for name in names}
            entry["servers"][server] = {
                "rounds_ok": len(ok),
                "rounds_failed": len(mine) - len(ok),
                "figures": {name: spread(list(by_round[server][name].values())) for name in names},
            }
        if set(SERVERS) <= set(by_round):
            rounds = set.intersection(*({int(r["round"]) for r in group if r["server"] == s and r.get("ok")}
                                        for s in SERVERS))
            entry["round_pairs"] = len(rounds)
            names = ordered([*by_round["pyturn"], *by_round["coturn"]])
            entry["ratio_pyturn_over_coturn"] = {
                name: compare(by_round["pyturn"].get(name, {}), by_round["coturn"].get(name, {})) for name in names
            }
        summary.append(entry)
    return summary


def fmt(value: Any) -> str:
    """A figure for a table: 4 significant digits, whole numbers from 1000 on, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def fmt_spread(stats: dict[str, Any] | None) -> str:
    """'median [min-max] IQR x' (just the median when there is one value)."""
    if not stats:
        return "-"
    if stats["n"] == 1:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} [{fmt(stats['min'])}-{fmt(stats['max'])}] IQR {fmt(stats['iqr'])}"


def fmt_ratio(comparison: dict[str, Any] | None) -> tuple[str, str]:
    """(per-round ratio 'median [min-max]', ratio of medians)."""
    if not comparison:
        return "-", "-"
    per_round = comparison.get("per_round")
    text = "-"
    if per_round:
        text = fmt(per_round["median"])
        if per_round["n"] > 1:
            text += f" [{fmt(per_round['min'])}-{fmt(per_round['max'])}]"
    return text, fmt(comparison.get("of_medians"))


def print_summary(summary: Sequence[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    """Plain-text tables, one per entry (benchmarks.table writes the Markdown ones)."""
    if any("ratio_pyturn_over_coturn" in entry for entry in summary):
        out.write(f"\n{RATIO_NOTE}\n")
    for entry in summary:
        servers = [s for s in SERVERS if s in entry["servers"]]
        rounds = ", ".join(f"{s} {entry['servers'][s]['rounds_ok']} ok"
                           + (f" / {entry['servers'][s]['rounds_failed']} failed"
                              if entry["servers"][s]["rounds_failed"] else "") for s in servers)
        out.write(f"\n== {entry['scenario']} ({entry['driver']}, {entry['clients']} clients; rounds: {rounds})\n")
        names = ordered(name for s in servers for name in entry["servers"][s]["figures"])
        ratios = entry.get("ratio_pyturn_over_coturn")
        header = f"{'figure':30}" + "".join(f"  {s + ' median [min-max] IQR':>40}" for s in servers)
        if ratios is not None:
            header += f"  {'pyturn/coturn':>22}  {'of medians':>10}"
        out.write(header + "\n")
        for name in names:
            row = f"{name:30}" + "".join(
                f"  {fmt_spread(entry['servers'][s]['figures'].get(name)):>40}" for s in servers)
            if ratios is not None:
                per_round, of_medians = fmt_ratio(ratios.get(name))
                row += f"  {per_round:>22}  {of_medians:>10}"
            out.write(row + "\n")
    out.flush()
