"""Statistics, in one place: summaries of a latency distribution (perf's columns) and the timing gate's tests
(one-sided Mann-Whitney, bootstrap CI of the median ratio, Holm correction).

A timing metric regresses only when the candidate is significantly slower (one-sided Mann-Whitney on the per-trial
medians, Holm-adjusted across the metrics gated together) AND its median is slower than the baseline's by more than
a practical floor. Everything here works on plain sequences of floats (seconds or milliseconds, lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 0.05
DEFAULT_FLOOR = 0.10          # a slowdown under 10% never fails, however significant
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
MIN_TRIALS = 6                # per side; below this the gate cannot reach significance after correction

# Verdicts of one timing metric.
PASS = "pass"
REGRESSION = "regression"
FASTER = "faster"
REPORTED = "reported"         # tail percentiles and non-interleaved timings: shown, never gated


@dataclass
class TimingTest:
    metric: str
    n_baseline: int
    n_candidate: int
    baseline_median: float
    candidate_median: float
    ratio: float              # candidate median / baseline median (> 1: slower)
    ci_low: float             # bootstrap CI of the ratio of medians
    ci_high: float
    p_slower: float           # one-sided Mann-Whitney: candidate stochastically larger (slower)
    p_faster: float
    p_adjusted: float = float("nan")   # p_slower after Holm across the gated metrics
    verdict: str = PASS


def median_ratio(baseline, candidate) -> float:
    base = float(np.median(baseline))
    return float(np.median(candidate)) / base if base > 0 else float("nan")


def mann_whitney_slower(baseline, candidate) -> float:
    """p-value of H1 'candidate values tend to be larger than baseline values' (exact for small samples)."""
    return float(stats.mannwhitneyu(candidate, baseline, alternative="greater").pvalue)


def bootstrap_ratio_ci(baseline, candidate, confidence: float = DEFAULT_CONFIDENCE,
                       n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of median(candidate) / median(baseline), resampling each side on its own."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if len(base) < 2 or len(cand) < 2 or np.median(base) <= 0:
        return float("nan"), float("nan")
    if np.ptp(base) == 0 and np.ptp(cand) == 0:
        ratio = median_ratio(base, cand)
        return ratio, ratio

    def ratio_of_medians(b, c, axis=-1):
        return np.median(c, axis=axis) / np.median(b, axis=axis)

    result = stats.bootstrap((base, cand), ratio_of_medians, n_resamples=n_resamples, vectorized=True,
                             paired=False, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm_adjust(pvalues) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted_sorted = np.maximum.accumulate(scaled)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted.tolist()


def compare_timing(metric: str, baseline, candidate, seed: int = 0) -> TimingTest:
    """Point estimates, CI and one-sided p-values of one metric (no verdict yet: see gate_timings)."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    low, high = bootstrap_ratio_ci(base, cand, seed=seed)
    return TimingTest(metric=metric, n_baseline=len(base), n_candidate=len(cand),
                      baseline_median=float(np.median(base)), candidate_median=float(np.median(cand)),
                      ratio=median_ratio(base, cand), ci_low=low, ci_high=high,
                      p_slower=mann_whitney_slower(base, cand),
                      p_faster=float(stats.mannwhitneyu(cand, base, alternative="less").pvalue))


def gate_timings(samples: dict[str, tuple[list[float], list[float]]], floor: float = DEFAULT_FLOOR,
                 alpha: float = DEFAULT_ALPHA, seed: int = 0) -> list[TimingTest]:
    """Test every metric {name: (baseline per-trial values, candidate per-trial values)} and give verdicts.

    regression: Holm-adjusted one-sided p < alpha and ratio > 1 + floor. faster: the mirror image (shown only).
    """
    tests = [compare_timing(name, base, cand, seed=seed) for name, (base, cand) in samples.items()]
    slower = holm_adjust([t.p_slower for t in tests])
    faster = holm_adjust([t.p_faster for t in tests])
    for test, p_slow, p_fast in zip(tests, slower, faster):
        test.p_adjusted = p_slow
        if p_slow < alpha and test.ratio > 1 + floor:
            test.verdict = REGRESSION
        elif p_fast < alpha and test.ratio < 1 / (1 + floor):
            test.verdict = FASTER
        else:
            test.verdict = PASS
    return tests


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]; NaN for no values."""
    values = np.asarray(values, dtype=float)
    return float(np.percentile(values, q)) if len(values) else float("nan")


# -- summaries of a latency distribution ----------------------------------------------------------------------
STAT_NAMES = ("n", "min", "p50", "p90", "p99", "mean", "std")


def summarize(values, scale: float = 1.0) -> dict:
    """n/min/p50/p90/p99/mean/std of `values` multiplied by `scale` (e.g. 1e-6 for ns -> ms).

    std is the sample standard deviation (n - 1); NaN for fewer than two values. Empty input gives n = 0 and NaNs.
    """
    data = np.asarray([float(v) for v in values], dtype=float) * scale
    n = len(data)
    if n == 0:
        return {"n": 0, **{name: float("nan") for name in STAT_NAMES[1:]}}
    return {"n": n, "min": float(data.min()), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99), "mean": float(data.mean()),
            "std": float(data.std(ddof=1)) if n > 1 else float("nan")}


def prefixed(prefix: str, stats: dict, unit: str = "") -> dict:
    """{'ttft_p50_ms': ...} style columns; the count keeps no unit."""
    suffix = f"_{unit}" if unit else ""
    return {f"{prefix}_{name}" + ("" if name == "n" else suffix): value for name, value in stats.items()}
