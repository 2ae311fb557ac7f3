"""Statistics, in one place: summaries of a latency distribution (perf's columns) and the timing gate's tests
(one-sided Mann-Whitney, bootstrap CI of the median ratio, Holm correction).

A timing metric regresses only when the candidate is significantly slower (one-sided Mann-Whitney on the per-trial
medians, Holm-adjusted across the metrics gated together) AND its median is slower than the baseline's by more than
a practical floor. Everything here works on plain sequences of floats (seconds or milliseconds, lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def scipy_stats():
    """scipy.stats, imported on first use: a command that refuses its input before judging anything never pays
    for it (~2.4 s of import under load)."""
    from scipy import stats
    return stats

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
    return float(scipy_stats().mannwhitneyu(candidate, baseline, alternative="greater").pvalue)


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

    result = scipy_stats().bootstrap((base, cand), ratio_of_medians, n_resamples=n_resamples, vectorized=True,
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


def compare_timing(metric: str, baseline, candidate, seed: int = 0, with_ci: bool = True) -> TimingTest:
    """Point estimates, CI (unless with_ci is False: the verdict does not use it) and one-sided p-values of one
    metric (no verdict yet: see gate_timings)."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    low, high = bootstrap_ratio_ci(base, cand, seed=seed) if with_ci else (float("nan"), float("nan"))
    return TimingTest(metric=metric, n_baseline=len(base), n_candidate=len(cand),
                      baseline_median=float(np.median(base)), candidate_median=float(np.median(cand)),
                      ratio=median_ratio(base, cand), ci_low=low, ci_high=high,
                      p_slower=mann_whitney_slower(base, cand),
                      p_faster=float(scipy_stats().mannwhitneyu(cand, base, alternative="less").pvalue))


def gate_timings(samples: dict[str, tuple[list[float], list[float]]], floor: float = DEFAULT_FLOOR,
                 alpha: float = DEFAULT_ALPHA, seed: int = 0, with_ci: bool = True) -> list[TimingTest]:
    """Test every metric {name: (baseline per-trial values, candidate per-trial values)} and give verdicts.

    regression: Holm-adjusted one-sided p < alpha and ratio > 1 + floor. faster: the mirror image (shown only).
    with_ci=False skips the bootstrap CI (replays of the verdict alone, thousands of times).
    """
    tests = [compare_timing(name, base, cand, seed=seed, with_ci=with_ci) for name, (base, cand) in samples.items()]
    return holm_verdicts(tests, floor, alpha)


def holm_verdicts(tests: list[TimingTest], floor: float, alpha: float) -> list[TimingTest]:
    """Verdicts of tests across metrics, Holm-adjusted: regression when the adjusted one-sided p < alpha and the
    ratio > 1 + floor; faster the mirror image (shown only); else pass."""
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


# -- the paired, sequential gate (the default of `granite-bench compare`) --------------------------------------------
CLOCKS = ("cpu", "wall", "both")


@dataclass(frozen=True)
class SequentialPlan:
    """A group-sequential design: the gate looks after `looks` rounds (one A and one B process each) and spends
    `alpha` over them with the power family alpha * t**rho (t = rounds / last look). A look flags a regression when
    its Holm-adjusted p is below that look's share, so by the union bound the false-alarm rate over all looks stays
    under alpha, whenever the gate stops. It stops early as `pass` when every gated metric's upper confidence bound
    is under 1 + floor (a non-binding futility stop: it can only lower the false-alarm rate)."""
    looks: tuple[int, ...] = (12, 24, 48)
    alpha: float = 0.01
    rho: float = 2.0

    def __post_init__(self):
        if not self.looks or list(self.looks) != sorted(set(self.looks)) or self.looks[0] < MIN_TRIALS:
            raise ValueError(f"looks must be increasing round counts, the first at least {MIN_TRIALS}")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be between 0 and 1")

    @property
    def max_rounds(self) -> int:
        return self.looks[-1]

    def alpha_at(self, look: int) -> float:
        """The share of alpha spent at look index `look` (0-based)."""
        spent = [self.alpha * (n / self.max_rounds) ** self.rho for n in self.looks]
        return spent[look] - (spent[look - 1] if look else 0.0)

    def look_index(self, rounds: int) -> int | None:
        return self.looks.index(rounds) if rounds in self.looks else None


def paired_log_ratios(baseline, candidate) -> np.ndarray:
    """log(candidate / baseline) per round: round i's A and B trials ran next to each other."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    n = min(len(base), len(cand))
    return np.log(cand[:n]) - np.log(base[:n])


def median_ci(values, confidence: float) -> tuple[float, float]:
    """Distribution-free CI of a median from order statistics (the sign test's binomial)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    k = int(scipy_stats().binom.ppf((1 - confidence) / 2, n, 0.5))   # ranks k .. n-1-k cover the median
    k = max(0, min(k, (n - 1) // 2))
    return float(x[k]), float(x[n - 1 - k])


def paired_timing(metric: str, baseline, candidate, confidence: float = 0.90) -> TimingTest:
    """One metric by its per-round ratios: ratio = exp(median log ratio), order-statistic CI of it, one-sided
    Wilcoxon signed-rank p-values on the log ratios (no verdict yet: see judge_paired)."""
    logs = paired_log_ratios(baseline, candidate)
    low, high = median_ci(logs, confidence)
    if len(logs) and np.any(logs != 0):
        # exact null distribution for untied, non-zero ratios (timings always are); the normal approximation with
        # tie correction otherwise (scipy's automatic choice would run a slow permutation test)
        exact = len(logs) <= 50 and np.all(logs != 0) and len(np.unique(np.abs(logs))) == len(logs)
        method = "exact" if exact else "asymptotic"
        p_slower = float(scipy_stats().wilcoxon(logs, alternative="greater", method=method).pvalue)
        p_faster = float(scipy_stats().wilcoxon(logs, alternative="less", method=method).pvalue)
    else:
        p_slower = p_faster = 1.0
    return TimingTest(metric=metric, n_baseline=len(logs), n_candidate=len(logs),
                      baseline_median=float(np.median(baseline)), candidate_median=float(np.median(candidate)),
                      ratio=float(np.exp(np.median(logs))) if len(logs) else float("nan"),
                      ci_low=float(np.exp(low)), ci_high=float(np.exp(high)), p_slower=p_slower, p_faster=p_faster)


def judge_paired(samples: dict[str, tuple[list[float], list[float]]], floor: float, alpha: float,
                 confidence: float = 0.90) -> list[TimingTest]:
    """Paired tests of every metric with verdicts at level alpha (Holm across the metrics):
    regression when the adjusted p < alpha and the ratio > 1 + floor; faster the mirror image."""
    tests = [paired_timing(name, base, cand, confidence) for name, (base, cand) in samples.items()]
    return holm_verdicts(tests, floor, alpha)


CONTINUE = "continue"


def sequential_look(samples: dict[str, tuple[list[float], list[float]]], plan: SequentialPlan, look: int,
                    floor: float, confidence: float = 0.90) -> tuple[str, list[TimingTest]]:
    """The decision at look index `look`: 'regression' (some metric flagged at this look's alpha share), 'pass'
    (every upper bound under 1 + floor, or the last look) or 'continue'."""
    tests = judge_paired(samples, floor, plan.alpha_at(look), confidence)
    if any(t.verdict == REGRESSION for t in tests):
        return REGRESSION, tests
    if look == len(plan.looks) - 1 or all(t.ci_high < 1 + floor for t in tests):
        return PASS, tests
    return CONTINUE, tests


def sequential_replay(samples: dict[str, tuple[list[float], list[float]]], plan: SequentialPlan, floor: float,
                      confidence: float = 0.90) -> tuple[str, int, list[TimingTest]]:
    """The sequential gate run over recorded rounds (at least plan.max_rounds of them): (decision, rounds used,
    tests at the deciding look). What the live gate does, for scripted data and the A/A resampling."""
    for look, rounds in enumerate(plan.looks):
        prefix = {m: (list(b)[:rounds], list(c)[:rounds]) for m, (b, c) in samples.items()}
        decision, tests = sequential_look(prefix, plan, look, floor, confidence)
        if decision != CONTINUE:
            return decision, rounds, tests
    raise AssertionError("the last look always decides")


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
