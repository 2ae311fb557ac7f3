import math

import numpy as np
import pytest

from granite_bench.results.stats import percentile, prefixed, summarize


def test_summary_matches_numpy_percentiles_and_sample_std():
    values = np.random.default_rng(0).exponential(5.0, size=101)
    stats = summarize(values)
    assert stats["n"] == 101
    assert stats["min"] == pytest.approx(values.min())
    for q in (50, 90, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(values, q))
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["std"] == pytest.approx(values.std(ddof=1))


def test_scale_converts_units():
    assert summarize([1_000_000, 3_000_000], scale=1e-6)["p50"] == pytest.approx(2.0)


def test_empty_and_single_values_give_nan_where_undefined():
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])
    single = summarize([4.0])
    assert single["p99"] == 4.0 and math.isnan(single["std"])


def test_percentile_interpolates_between_ranks():
    assert percentile([0.0, 10.0], 25) == pytest.approx(2.5)


def test_prefixed_names_columns_with_unit_except_count():
    cols = prefixed("tpot", summarize([1.0, 2.0]), "ms")
    assert set(cols) == {"tpot_n", "tpot_min_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "tpot_mean_ms",
                         "tpot_std_ms"}
