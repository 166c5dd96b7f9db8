"""Before/after runs of one pyturn change: the relay harness alternately from two checkouts (ABBA order).

    python -m benchmarks.ab --before /path/to/other/checkout unpaced paced-send --rounds 5 -- --pin

Each checkout runs its own `benchmarks.relay` with its own interpreter (`<checkout>/.venv/bin/python` when it has
one), so each server runs that checkout's code. Every round is one `--rounds 1 --servers pyturn` invocation of
each; the figures of each round are read back from its results.json and summarised as median [min-max] with the
after/before ratio of medians. Arguments after `--` go to benchmarks.relay unchanged (`--pin`, `--duration 5`...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = ("server_cpu_us_per_packet", "relayed_pps", "loss_pct", "rtt_avg_ms", "rtt_p50_ms")
HERE = Path(__file__).resolve().parent.parent


def interpreter(checkout: Path) -> str:
    candidate = checkout / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def one_round(checkout: Path, scenario: str, extra: list[str], out: Path) -> dict[str, float]:
    command = [interpreter(checkout), "-m", "benchmarks.relay", scenario, "--servers", "pyturn", "--rounds", "1",
               "--quiet", "--no-plot", "--out", str(out), *extra]
    subprocess.run(command, cwd=checkout, check=True, stdout=subprocess.DEVNULL, timeout=600)
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    figures: dict[str, float] = {}
    for run in runs:
        if run.get("ok"):
            figures.update({k: v for k, v in run["figures"].items() if k in FIGURES and v is not None})
    return figures


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    else:
        extra = []
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+")
    parser.add_argument("--before", required=True, help="the other checkout (its .venv is used when present)")
    parser.add_argument("--after", default=str(HERE), help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args(argv)
    sides = {"before": Path(arguments.before).resolve(), "after": Path(arguments.after).resolve()}
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="pyturn-ab-") as temporary:
        for scenario in arguments.scenarios:
            values: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
            for round_index in range(arguments.rounds):
                order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
                for side in order:
                    out = Path(temporary) / f"{scenario}-{side}-{round_index}"
                    for name, value in one_round(sides[side], scenario, extra, out).items():
                        values[side].setdefault(name, []).append(value)
            print(f"\n== {scenario}: {arguments.rounds} rounds, ABBA; load average now "
                  f"{os.getloadavg()[0]:.2f}")
            for name in FIGURES:
                before, after = values["before"].get(name), values["after"].get(name)
                if not before or not after:
                    continue
                b, a = statistics.median(before), statistics.median(after)
                ratio = f"{a / b:.3f}" if b else "-"
                print(f"{name:26} before {b:10.4g} [{min(before):.4g}-{max(before):.4g}]  "
                      f"after {a:10.4g} [{min(after):.4g}-{max(after):.4g}]  after/before {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
