"""The dashboard's bisect and ceiling_suspect panels: they show the stored data, and say so when there is none."""

import dataclasses

import pytest
import pandas as pd

from granite_bench.gate.bisect import BisectResult, BisectSettings, Step, steps_frame
from granite_bench.results.dashboard import (bisect_steps_panel, build_dashboard, ceiling_suspect_panel,
                                             dashboard_data)
from granite_bench.results.metadata import RunMetadata
from granite_bench.results.store import ResultStore

META = RunMetadata(run_id="", utc_time="", git_sha="", git_dirty=False, package_versions="{}",
                   machine_fingerprint="f00d", machine="x86_64 test 2 cores", suite="", device="cpu",
                   dtype="float32", config_hash="0" * 16, config_json="{}", seed=0)
GOOD, PLANTED, BAD = "a" * 40, "b" * 40, "c" * 40


def meta(n: int, suite: str) -> RunMetadata:
    return dataclasses.replace(META, run_id=f"20250101T{n:02d}0000Z-{n:08x}", utc_time=f"2025-01-01T{n:02d}:00:00.000Z",
                               git_sha=f"{n:04x}" + "c" * 36, suite=suite)


def bisect_frame(subject="slow <script>decode</script> step", confirmed=True):
    steps = [Step("good-end", GOOD, "base", "good", "parity PASS", 3.0, exit_code=0),
             Step("bad-end", BAD, "later", "bad", "decode_step_ms x1.31 [1.22, 1.40]", 40.0, ratio=1.31,
                  ci_low=1.22, ci_high=1.40),
             Step("probe", PLANTED, subject, "bad", "decode_step_ms x1.29 [1.20, 1.38]", 41.0, ratio=1.29,
                  ci_low=1.20, ci_high=1.38),
             Step("probe", "d" * 40, "does not import", "skip", "import failed", 1.0)]
    result = BisectResult(GOOD, BAD, [PLANTED, "d" * 40, BAD], steps, PLANTED, [PLANTED], subject, confirmed)
    return steps_frame(BisectSettings(good=GOOD, bad=BAD, repo="."), result)


def perf_row(point: int, suspect: bool) -> dict:
    return {"point_key": f"p{point}", "model": "granite-3.1-2b", "dtype": "float32", "device": "cpu", "tp": 1,
            "compiled": False, "batch_size": 1, "bucket": 128, "impl": "granite", "tpot_p50_ms": 100.0,
            "decode_frac_matvec": 1.46 if suspect else 0.9, "decode_frac_read": 0.8, "prefill_frac_matmul": 0.5,
            "ceiling_suspect": suspect, "ceiling_suspect_of": "decode_frac_matvec" if suspect else "",
            "ceiling_read_gbs_best": 13.5, "ceiling_matvec_gbs_best": 9.4, "ceiling_matmul_gflops_best": 200.0,
            "load_avg_1m_start": 3.5, "load_avg_1m_end": 4.0, "cpu_kind": "AVX512 +avx512_bf16 +amx_bf16"}


def test_the_bisect_panel_gives_the_answer_and_every_probed_commit():
    panel = bisect_steps_panel(bisect_frame().assign(run_id="r1", utc_time="2025-01-01T00:00:00.000Z"))
    assert f"<b>{PLANTED}</b> is the first bad commit" in panel
    assert "confirmed against its parent: yes" in panel
    assert 'data-rows="4"' in panel and panel.count("<tr class=\"bisect-") == 4
    assert "1.29" in panel and "1.2 - 1.38" in panel and "import failed" in panel
    assert "<script>" not in panel and "&lt;script&gt;" in panel          # a commit subject is escaped


def test_the_bisect_panel_names_the_commits_left_open_when_skips_hide_the_answer():
    frame = bisect_frame().assign(run_id="r1", utc_time="t", first_bad_sha="", candidates=f"{PLANTED},{BAD}")
    panel = bisect_steps_panel(frame)
    assert "no single first bad commit" in panel and f"{PLANTED},{BAD}" in panel


def test_the_bisect_panel_lists_earlier_runs_in_one_line_each():
    older = bisect_frame().assign(run_id="r0", utc_time="2025-01-01T00:00:00.000Z")
    newer = bisect_frame(confirmed=False).assign(run_id="r1", utc_time="2025-01-02T00:00:00.000Z")
    import pandas as pd
    panel = bisect_steps_panel(pd.concat([older, newer]))
    assert "run r1" in panel and "confirmed against its parent: no" in panel
    assert "earlier bisect runs" in panel and f"<li>r0 · decode_step_ms · {PLANTED}</li>" in panel


def test_the_bisect_panel_says_so_when_no_bisect_was_stored():
    import pandas as pd
    assert "no bisect runs in this store yet" in bisect_steps_panel(pd.DataFrame())


def test_the_suspect_panel_lists_each_flagged_row_with_its_fraction_and_ceilings():
    import pandas as pd
    frame = pd.DataFrame([perf_row(0, True), perf_row(1, False), perf_row(2, True)]).assign(
        run_id=["r0", "r1", "r2"], utc_time=["t0", "t1", "t2"], git_sha="e" * 40)
    panel = ceiling_suspect_panel(frame)
    assert "2 of 3 perf rows flagged" in panel and 'data-rows="2"' in panel
    assert "decode_frac_matvec 146%" in panel and "13.5 · 9.4 · 200" in panel and "3.5-4" in panel
    assert "AVX512 +avx512_bf16 +amx_bf16" in panel
    assert panel.index("<td>r2</td>") < panel.index("<td>r0</td>")          # newest first


def test_the_suspect_panel_says_none_is_flagged_or_that_there_are_no_perf_rows():
    import pandas as pd
    clean = pd.DataFrame([perf_row(0, False)]).assign(run_id="r0", utc_time="t0", git_sha="e" * 40)
    assert "no perf row is flagged ceiling_suspect (1 rows checked)" in ceiling_suspect_panel(clean)
    assert "no perf rows with roofline ceilings" in ceiling_suspect_panel(pd.DataFrame())


@pytest.fixture
def store_with_panels(tmp_path):
    store = ResultStore(tmp_path / "store")
    store.write("perf_summary", [perf_row(0, True), perf_row(1, False)], meta(1, "perf/memory-bound"))
    store.write("bisect_steps", bisect_frame(), meta(2, "bisect"))
    return store


def test_the_page_shows_both_panels_with_the_stored_data(store_with_panels, tmp_path):
    data = dashboard_data(store_with_panels)
    assert "is the first bad commit" in data["bisect_html"]
    assert "1 of 2 perf rows flagged" in data["ceiling_suspect_html"]
    page = build_dashboard(store_with_panels, tmp_path / "site").read_text()
    assert 'id="bisect-steps"' in page and 'id="ceiling-suspects"' in page
    assert "is the first bad commit" not in page.split('id="dashboard-data"', 1)[1]   # HTML, not script data


def test_the_page_of_an_empty_store_says_both_panels_have_no_data(tmp_path):
    page = build_dashboard(ResultStore(tmp_path / "empty"), tmp_path / "site").read_text()
    assert 'id="bisect-none"' in page and 'id="suspect-none"' in page


def test_rows_stored_before_the_flag_are_judged_from_their_fractions_not_called_absent():
    """Older perf rows have roofline fractions but no ceiling_suspect column: the panel must not say 'no rows'
    beside a roofline chart drawn from them."""
    old = pd.DataFrame([perf_row(1, False), {**perf_row(2, False), "decode_frac_read": 1.3}]).drop(
        columns=["ceiling_suspect", "ceiling_suspect_of"]).assign(run_id=["r1", "r2"], utc_time=["t1", "t2"],
                                                                  git_sha="c" * 40)
    panel = ceiling_suspect_panel(old)
    assert "no perf rows with roofline ceilings" not in panel
    assert "1 of 2 perf rows flagged" in panel and "decode_frac_read 130%" in panel
    clean = ceiling_suspect_panel(old.iloc[:1])
    assert "no perf row is flagged ceiling_suspect (1 rows checked)" in clean
