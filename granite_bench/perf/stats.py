"""Summary statistics of a latency distribution (pure Python: no torch, no numpy needed)."""

from __future__ import annotations

import math

STAT_NAMES = ("n", "min", "p50", "p90", "p99", "mean", "std")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(values, scale: float = 1.0) -> dict:
    """n/min/p50/p90/p99/mean/std of `values` multiplied by `scale` (e.g. 1e-6 for ns -> ms).

    std is the sample standard deviation (n - 1); NaN for fewer than two values. Empty input gives n = 0 and NaNs.
    """
    data = sorted(float(v) * scale for v in values)
    n = len(data)
    if n == 0:
        return {"n": 0, **{name: math.nan for name in STAT_NAMES[1:]}}
    mean = sum(data) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "min": data[0], "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99), "mean": mean, "std": std}


def prefixed(prefix: str, stats: dict, unit: str = "") -> dict:
    """{'ttft_p50_ms': ...} style columns; the count keeps no unit."""
    suffix = f"_{unit}" if unit else ""
    return {f"{prefix}_{name}" + ("" if name == "n" else suffix): value for name, value in stats.items()}
