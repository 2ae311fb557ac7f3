"""The dashboard's load-sweep panel: latency against throughput per stored sweep, and saying so when there is none."""

from __future__ import annotations

import math

import pandas as pd

from granite_bench.results import ResultStore, collect_run_metadata
from granite_bench.results.dashboard import build_dashboard
from granite_bench.results.load_panel import load_sweep_panel


def sweep_rows(mode: str = "concurrency", levels=(1, 4, 16), endpoint: str = "http://127.0.0.1:8000") -> list[dict]:
    rows = []
    for i, level in enumerate(levels):
        rows.append({"endpoint": endpoint, "api": "completions", "served_model": "m <b>", "mode": mode,
                     "concurrency": level if mode == "concurrency" else None,
                     "rate": float(level) if mode == "rate" else None, "requests_ok": 16, "requests_failed": 0,
                     "output_throughput": 100.0 * (i + 1), "ttft_ms_p50": 50.0 * (i + 1),
                     "ttft_ms_p99": 60.0 * (i + 1), "itl_ms_p50": 20.0, "e2e_ms_p50": 300.0 * (i + 1),
                     "e2e_ms_p99": 400.0 * (i + 1)})
    return rows


def test_each_level_is_drawn_for_e2e_and_ttft_and_the_latest_sweep_is_tabled():
    frame = pd.DataFrame(sweep_rows()).assign(run_id="r1", utc_time="2026-01-01T00:00:00Z")
    panel = load_sweep_panel(frame)
    assert panel.count('class="load-point"') == 6 and 'data-marks="3"' in panel
    assert 'data-metric="e2e_ms_p50"' in panel and 'data-metric="ttft_ms_p50"' in panel
    assert 'id="load-latest" data-rows="3"' in panel
    assert "m &lt;b&gt;" in panel and "m <b>" not in panel         # names are escaped


def test_rate_sweeps_show_inf_and_an_empty_store_says_so():
    frame = pd.DataFrame(sweep_rows("rate", (1, 2, math.inf))).assign(run_id="r2", utc_time="t")
    panel = load_sweep_panel(frame)
    assert "inf/s" in panel and 'data-marks="3"' in panel
    assert 'id="load-none"' in load_sweep_panel(pd.DataFrame())


def test_the_dashboard_page_carries_the_stored_sweeps(tmp_path):
    store = ResultStore(tmp_path / "store")
    for run in range(2):
        meta = collect_run_metadata(suite="load", device="endpoint", dtype="served", config={"run": run}, seed=0)
        store.write_run(meta, {"load_points": sweep_rows(endpoint=f"http://127.0.0.1:{8000 + run}")})
    page = build_dashboard(store, tmp_path / "dashboard").read_text()
    assert 'id="load-section"' in page and page.count('class="load-point"') == 12
