"""Metric directions are declared per table next to its schema version; the store refuses a numeric column
without one, and compare gates exactly the declared gated metrics."""

from pathlib import Path

import pandas as pd
import pytest

from granite_bench.gate.verdict import REGRESSION, compare_table, compared_metrics
from granite_bench.results.metadata import (METRIC_DIRECTIONS, SCHEMA_VERSION, declared_direction, gated_direction,
                                            require_directions, undeclared_columns)
from granite_bench.results.store import ResultStore

COMMITTED = Path(__file__).resolve().parents[2] / "results"


def test_every_table_with_a_schema_version_declares_its_directions():
    assert set(METRIC_DIRECTIONS) == set(SCHEMA_VERSION)


@pytest.mark.parametrize("table", sorted(set(SCHEMA_VERSION) - {"runs"}))
def test_every_numeric_column_of_the_committed_results_has_a_declared_direction(table):
    store = ResultStore(COMMITTED)
    if table not in store.tables():
        pytest.skip(f"no committed {table} results")
    frame = store.read(table)
    assert undeclared_columns(table, {c: frame[c].dtype.kind for c in frame.columns}) == []


def test_rows_with_an_undeclared_numeric_column_are_refused_before_they_are_stored():
    with pytest.raises(ValueError, match="no direction declared for speedup_factor"):
        require_directions("perf_summary", [{"tp": 1, "speedup_factor": 1.5}])
    rows = [{"tp": 1, "tpot_p50_ms": 1.5, "note": "strings need none"}]
    assert require_directions("perf_summary", rows) is rows


def test_patterns_declare_families_and_exact_names_win():
    assert declared_direction("perf_summary", "tpot_p99_ms") == ("lower", False)
    assert declared_direction("perf_summary", "tpot_ratio_hf_static") == ("lower", False)
    assert declared_direction("parity_summary", "worst_err_all_position") == (None, False)
    assert declared_direction("parity_summary", "worst_err_all") == ("lower", True)
    assert declared_direction("parity_summary", "worst_err_top50") == ("lower", True)
    assert declared_direction("parity_summary", "worst_err_top50_position") == (None, False)
    assert declared_direction("parity_summary", "no_such_column") is None


def test_compare_judges_only_gated_columns_in_their_declared_direction():
    base = pd.DataFrame([{"model": "m", "prompt": 0, "greedy_match_rate": 1.0, "n_failed": 0,
                          "compile_seconds_total": 1.0, "worst_kl_ref_impl": 1e-3}])
    worse = base.assign(greedy_match_rate=0.5, n_failed=3, compile_seconds_total=9.0, worst_kl_ref_impl=1e-2)
    assert compared_metrics("parity_summary", base, ["model", "prompt"]) == {
        "greedy_match_rate": "higher", "worst_kl_ref_impl": "lower"}
    rows = compare_table("parity_summary", base, worse, error_growth=2.0)
    assert {r.metric: r.verdict for r in rows} == {"greedy_match_rate": REGRESSION, "worst_kl_ref_impl": REGRESSION}
    assert gated_direction("parity_summary", "n_failed") is None
