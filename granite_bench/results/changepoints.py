"""Change points in a benchmark's history: E-Divisive means (Matteson & James, 2014) with a permutation test.

The method apache-otava (formerly Hunter) uses. Written here on numpy because otava's wheel pins numpy/scipy versions
this project does not use. For a split of a segment into X = z[s:tau] and Y = z[tau:kappa] (n and m points):

    E(X, Y) = 2/(n m) sum |x - y|^a  -  2/(n(n-1)) sum_{i<k} |x_i - x_k|^a  -  2/(m(m-1)) sum_{j<k} |y_j - y_k|^a
    Q(tau, kappa) = n m / (n + m) * E(X, Y)

The best (tau, kappa) over all current segments is a candidate; it is accepted when a permutation test (points
shuffled within each current segment, the best Q recomputed) gives p <= alpha, and the search repeats with the
segment split at tau. Reported on the dashboard; never a merge gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 0.01        # per accepted split; splits are tested one after another, so keep it strict
DEFAULT_PERMUTATIONS = 199
DEFAULT_MIN_SIZE = 2       # points on each side of a split (noise of one run is not a regime)


@dataclass
class ChangePoint:
    index: int             # first point of the new regime
    p_value: float
    q: float
    mean_before: float     # means of the segments the split separated
    mean_after: float

    @property
    def relative_change(self) -> float:
        return (self.mean_after - self.mean_before) / self.mean_before if self.mean_before else float("nan")


def _prefix_sums(series: np.ndarray, power: float) -> np.ndarray:
    """P[a, b] = sum of |z_i - z_j|^power over i < a, j < b (one row and column of zeros in front)."""
    distances = np.abs(series[:, None] - series[None, :]) ** power
    prefix = np.zeros((len(series) + 1, len(series) + 1))
    prefix[1:, 1:] = distances.cumsum(0).cumsum(1)
    return prefix


def _block(prefix, r0, r1, c0, c1):
    return prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]


def _pair_mean(within_sum, size):
    """Mean over unordered pairs given the full (symmetric, both-orders) block sum; 0 with fewer than 2 points."""
    pairs = size * (size - 1)
    return np.divide(within_sum, pairs, out=np.zeros_like(within_sum, dtype=float), where=pairs > 0)


def best_split(prefix: np.ndarray, start: int, end: int, min_size: int) -> tuple[float, int] | None:
    """(Q, tau) maximising Q over start + min_size <= tau <= kappa - min_size, kappa <= end; None if too short."""
    taus = np.arange(start + min_size, end - min_size + 1)
    if len(taus) == 0:
        return None
    tau, kappa = np.meshgrid(taus, np.arange(start + 2 * min_size, end + 1), indexing="ij")
    valid = kappa - tau >= min_size
    tau, kappa = tau[valid], kappa[valid]
    n = (tau - start).astype(float)
    m = (kappa - tau).astype(float)
    between = _block(prefix, start, tau, tau, kappa)
    within_x = _block(prefix, start, tau, start, tau)
    within_y = _block(prefix, tau, kappa, tau, kappa)
    energy = 2 * between / (n * m) - _pair_mean(within_x, n) - _pair_mean(within_y, m)
    q = n * m / (n + m) * energy
    best = int(np.argmax(q))
    return float(q[best]), int(tau[best])


def _best_over_segments(prefix, bounds: list[int], min_size: int) -> tuple[float, int] | None:
    found = [best_split(prefix, a, b, min_size) for a, b in zip(bounds[:-1], bounds[1:])]
    found = [f for f in found if f is not None]
    return max(found) if found else None


def e_divisive(values, alpha: float = DEFAULT_ALPHA, permutations: int = DEFAULT_PERMUTATIONS,
               min_size: int = DEFAULT_MIN_SIZE, power: float = 1.0, seed: int = 0) -> list[ChangePoint]:
    """Significant change points of a 1-D series, in index order. Deterministic for a given seed."""
    series = np.asarray(values, dtype=float)
    if not 0 < power < 2:
        raise ValueError(f"power must be in (0, 2), got {power}")
    if series.ndim != 1 or len(series) < 2 * min_size or not np.isfinite(series).all():
        return []
    rng = np.random.default_rng(seed)
    prefix = _prefix_sums(series, power)
    bounds = [0, len(series)]
    found: list[tuple[int, float, float]] = []
    while True:
        candidate = _best_over_segments(prefix, bounds, min_size)
        if candidate is None or candidate[0] <= 0:
            break
        q, tau = candidate
        exceed = 0
        for _ in range(permutations):
            shuffled = series.copy()
            for a, b in zip(bounds[:-1], bounds[1:]):
                rng.shuffle(shuffled[a:b])
            permuted = _best_over_segments(_prefix_sums(shuffled, power), bounds, min_size)
            exceed += permuted is not None and permuted[0] >= q
        p_value = (exceed + 1) / (permutations + 1)
        if p_value > alpha:
            break
        found.append((tau, p_value, q))
        bounds = sorted(bounds + [tau])
    return [_describe(series, bounds, tau, p, q) for tau, p, q in sorted(found)]


def _describe(series, bounds, tau, p_value, q) -> ChangePoint:
    at = bounds.index(tau)
    before = series[bounds[at - 1]:tau]
    after = series[tau:bounds[at + 1]]
    return ChangePoint(index=tau, p_value=p_value, q=q, mean_before=float(before.mean()),
                       mean_after=float(after.mean()))
