import itertools

import numpy as np
import pytest

from granite_bench.results.changepoints import _prefix_sums, best_split, e_divisive


def direct_q(series, start, tau, kappa, power=1.0):
    """Q(tau, kappa) of Matteson & James written out with explicit pair loops."""
    x, y = series[start:tau], series[tau:kappa]
    n, m = len(x), len(y)
    between = sum(abs(a - b) ** power for a in x for b in y)
    within_x = sum(abs(a - b) ** power for a, b in itertools.combinations(x, 2))
    within_y = sum(abs(a - b) ** power for a, b in itertools.combinations(y, 2))
    energy = 2 * between / (n * m)
    energy -= 2 * within_x / (n * (n - 1)) if n > 1 else 0
    energy -= 2 * within_y / (m * (m - 1)) if m > 1 else 0
    return n * m / (n + m) * energy


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_best_split_maximises_the_energy_statistic_over_every_split(power):
    rng = np.random.default_rng(3)
    series = np.r_[rng.normal(0, 1, 7), rng.normal(2, 1, 6)]
    start, end, min_size = 1, len(series), 2
    q, tau = best_split(_prefix_sums(series, power), start, end, min_size)
    candidates = [(direct_q(series, start, t, k, power), t)
                  for t in range(start + min_size, end - min_size + 1)
                  for k in range(t + min_size, end + 1)]
    best_q, best_tau = max(candidates)
    assert q == pytest.approx(best_q, rel=1e-9)
    assert tau == best_tau


def test_step_in_the_mean_is_found_where_it_starts():
    rng = np.random.default_rng(0)
    series = np.r_[rng.normal(10.0, 0.2, 25), rng.normal(11.5, 0.2, 15)]
    found = e_divisive(series, seed=1)
    assert [cp.index for cp in found] == [25]
    assert found[0].p_value <= 0.05
    assert found[0].relative_change == pytest.approx(0.15, abs=0.03)


def test_two_shifts_are_reported_in_order():
    rng = np.random.default_rng(2)
    series = np.r_[rng.normal(5, 0.1, 20), rng.normal(6, 0.1, 20), rng.normal(5.5, 0.1, 20)]
    assert [cp.index for cp in e_divisive(series, seed=0)] == [20, 40]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stationary_noise_has_no_change_point(seed):
    series = np.random.default_rng(100 + seed).normal(20.0, 1.0, 40)
    assert e_divisive(series, seed=seed) == []


def test_same_seed_gives_the_same_answer():
    rng = np.random.default_rng(5)
    series = np.r_[rng.normal(1, 0.3, 12), rng.normal(1.4, 0.3, 12)]
    first = e_divisive(series, seed=7)
    assert first == e_divisive(series, seed=7)


def test_series_too_short_or_not_finite_gives_nothing():
    assert e_divisive([1.0, 2.0, 3.0]) == []
    assert e_divisive([1.0, 1.0, 5.0, float("nan"), 5.0, 5.0]) == []


def test_power_outside_the_open_interval_is_refused():
    with pytest.raises(ValueError, match="power"):
        e_divisive(np.arange(10.0), power=2.0)
