"""Small statistics the benchmarks share."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value at quantile Q (0..1) of VALUES, nearest rank (no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
