"""Median and spread of a benchmark figure over rounds, and pyturn/coturn ratios (pure functions, no I/O).

A figure measured in n rounds is reported as its median with the spread: min-max and the interquartile range
(IQR = Q3 - Q1, quartiles by linear interpolation between the order statistics, `statistics.quantiles(...,
method="inclusive")`, the same as numpy's default). With one round the spread is zero and says nothing; with
fewer than 5 rounds the IQR is a rough figure (benchmarks/README.md, "Method").
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Number = int | float


def _numbers(values: Sequence[Any]) -> list[float]:
    """The numeric values (None and non-numbers dropped; bools are not figures)."""
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def spread(values: Sequence[Any], digits: int = 4) -> dict[str, float | int] | None:
    """{n, median, min, max, q1, q3, iqr} of the numeric values, or None when there is none."""
    numbers = sorted(_numbers(values))
    if not numbers:
        return None
    if len(numbers) == 1:
        q1 = q3 = numbers[0]
    else:
        q1, _, q3 = statistics.quantiles(numbers, n=4, method="inclusive")
    return {
        "n": len(numbers),
        "median": round(statistics.median(numbers), digits),
        "min": round(numbers[0], digits),
        "max": round(numbers[-1], digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "iqr": round(q3 - q1, digits),
    }


def ratio(numerator: Any, denominator: Any, digits: int = 4) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if not _numbers([numerator]) or not _numbers([denominator]) or float(denominator) == 0.0:
        return None
    return round(float(numerator) / float(denominator), digits)


def pair_ratios(pyturn_by_round: Mapping[int, Any], coturn_by_round: Mapping[int, Any]) -> list[float]:
    """pyturn / coturn of one figure in each round where both servers measured it (a round pair)."""
    ratios = []
    for round_index in sorted(set(pyturn_by_round) & set(coturn_by_round)):
        value = ratio(pyturn_by_round[round_index], coturn_by_round[round_index])
        if value is not None:
            ratios.append(value)
    return ratios


def compare(pyturn_by_round: Mapping[int, Any], coturn_by_round: Mapping[int, Any]) -> dict[str, Any] | None:
    """Both ways of stating pyturn / coturn for one figure.

    * `per_round`: the ratio in every round pair (the two servers ran back to back), with its median and spread;
      drifts of the machine's load mostly cancel inside a pair;
    * `of_medians`: median(pyturn) / median(coturn) over all rounds, pairs or not.
    """
    pyturn = spread(list(pyturn_by_round.values()))
    coturn = spread(list(coturn_by_round.values()))
    if pyturn is None or coturn is None:
        return None
    per_round = pair_ratios(pyturn_by_round, coturn_by_round)
    return {
        "per_round": spread(per_round),
        "per_round_values": per_round,
        "of_medians": ratio(pyturn["median"], coturn["median"]),
    }
