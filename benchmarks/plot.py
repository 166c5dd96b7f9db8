"""relay.png: relayed packets/s and server CPU per relayed packet against the number of clients, per server.

matplotlib is optional (the `bench` extra): without it plot_results returns a message and draws nothing.

    python -m benchmarks.plot results.json [relay.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SERVER_COLOURS = {"pyturn": "tab:blue", "coturn": "tab:orange"}


def _series(document: dict[str, Any]) -> dict[tuple[str, str, str], list[tuple[int, float, float | None]]]:
    """(scenario, driver, server) -> sorted [(clients, relayed pps, cpu µs per packet)] from the summary."""
    series: dict[tuple[str, str, str], list[tuple[int, float, float | None]]] = {}
    for entry in document.get("summary", []):
        for server in ("pyturn", "coturn"):
            figures = entry.get("servers", {}).get(server, {}).get("figures", {})
            pps, cpu = figures.get("relayed_pps"), figures.get("server_cpu_us_per_packet")
            if not pps:
                continue
            key = (entry["scenario"], entry["driver"], server)
            series.setdefault(key, []).append(
                (int(entry["clients"]), float(pps["median"]), float(cpu["median"]) if cpu else None))
    return {key: sorted(points) for key, points in series.items()}


def plot_results(document: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot drawn"
    series = _series(document)
    if not series:
        return "no relay figures to plot"
    figure, (throughput, cpu) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = "osD^v<>p*h"
    scenarios = sorted({key[0] for key in series})
    for (scenario, driver, server), points in sorted(series.items()):
        marker = markers[scenarios.index(scenario) % len(markers)]
        style = "-" if driver == "loadgen" else "--"
        label = f"{server} {scenario}" + ("" if driver == "loadgen" else " (uclient)")
        xs = [p[0] for p in points]
        colour = SERVER_COLOURS.get(server)
        throughput.plot(xs, [p[1] / 1000.0 for p in points], style, marker=marker, color=colour, label=label)
        cpu_points = [(p[0], p[2]) for p in points if p[2] is not None]
        if cpu_points:
            cpu.plot([p[0] for p in cpu_points], [p[1] for p in cpu_points], style, marker=marker, color=colour,
                     label=label)
    meta = document.get("meta", {})
    for axis, title, unit in ((throughput, "relayed datagrams", "k packets/s"),
                              (cpu, "server CPU per relayed datagram", "µs (user+system)")):
        axis.set_xscale("log")
        axis.set_xlabel("clients (allocations)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.set_ylim(bottom=0)
    cpu.legend(fontsize=7, loc="best")
    pinned = (meta.get("pinning") or {}).get("enabled")
    placement = "server and load pinned to separate cores" if pinned else "shared by load generator and server"
    commit = meta.get("commit_short") or meta.get("commit")
    figure.suptitle(f"loopback, {meta.get('cpus')} CPUs {placement}; medians; commit {commit}, {meta.get('python')}",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot: {path}"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        sys.stderr.write("usage: python -m benchmarks.plot results.json [relay.png]\n")
        return 64
    source = Path(arguments[0])
    target = Path(arguments[1]) if len(arguments) > 1 else source.with_name("relay.png")
    print(plot_results(json.loads(source.read_text(encoding="utf-8")), target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
