import dataclasses
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from granite_bench.gate.compare import CompareSettings, run_compare
from granite_bench.results.dashboard import build_dashboard, dashboard_data, expected_marks
from granite_bench.results.metadata import RunMetadata
from granite_bench.results.store import ResultStore

META = RunMetadata(run_id="", utc_time="", git_sha="", git_dirty=False, package_versions="{}",
                   machine_fingerprint="f00d", machine="x86_64 test 2 cores", suite="", device="cpu",
                   dtype="float32", config_hash="0" * 16, config_json="{}", seed=0)
STEP_AT = 8  # commit index where the synthetic decode step gets slower


def meta(n: int, suite: str, dtype: str = "float32") -> RunMetadata:
    return dataclasses.replace(META, run_id=f"202501{n // 24 + 1:02d}T{n % 24:02d}0000Z-{n:08x}",
                               utc_time=f"2025-01-{n // 24 + 1:02d}T{n % 24:02d}:00:00.000Z",
                               git_sha=f"{n:04x}" + "c" * 36, suite=suite, dtype=dtype)


def perf_row(point: int, value: float) -> dict:
    return {"point_key": f"p{point}", "model": "tiny-gqa", "dtype": "float32", "device": "cpu", "tp": 1,
            "compiled": False, "batch_size": 1, "bucket": 32 * (point + 1), "impl": "granite",
            "tpot_p50_ms": value, "ttft_p50_ms": 10 * value, "tpot_ratio_hf_eager": 0.4 + 0.1 * point,
            "ttft_ratio_hf_eager": 0.5, "decode_frac_matvec": 0.3, "decode_frac_read": 0.15,
            "prefill_frac_matmul": 0.2}


def parity_rows(model: str, passed: bool) -> list[dict]:
    return [{"model": model, "tp_degree": 1, "compiled": False, "prompt": i, "passed": passed or i > 0,
             "run_passed": passed, "worst_max_abs_err": 1e-5 * (i + 1), "worst_err_top5": 1e-6,
             "greedy_match_rate": 1.0} for i in range(3)]


def fill_store(root: Path) -> ResultStore:
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 0
    for commit in range(16):  # perf history: a 25% slower decode step from commit STEP_AT on
        for point in range(2):
            level = 2.0 * (1.25 if commit >= STEP_AT else 1.0)
            store.write("perf_summary", [perf_row(point, level * (1 + 0.01 * rng.standard_normal()))],
                        meta(n, "perf/default"))
            n += 1
    store.write("parity_summary", parity_rows("tiny-gqa", True), meta(n, "parity/default")); n += 1
    store.write("parity_summary", parity_rows("tiny-gqa", False), meta(n, "parity/default", "bfloat16")); n += 1
    store.write("parity_summary", parity_rows("canary</script><b>x", True), meta(n, "parity/default")); n += 1
    store.write("eval_summary", [{"task": t, "model": "canary", "metric": m, "impl_value": a, "impl_stderr": 0.01,
                                  "ref_value": a, "argmax_agreement": 1.0}
                                 for t, m, a in (("canary_recall", "acc", 0.95), ("canary_copy", "exact_match", 0.9),
                                                 ("a_task_whose_name_is_longer_than_the_old_label_column", "acc",
                                                  0.5),
                                                 ("canary_text", "word_perplexity", 3.2))],
                meta(n, "eval/canary")); n += 1
    run_compare(CompareSettings(baseline=meta(n - 4, "").run_id, candidate=meta(n - 3, "").run_id,
                                results_dir=root))
    n = fill_gate_power(store, n)
    return store


def fill_gate_power(store: ResultStore, n: int) -> int:
    """A small gate calibration: 4 null comparisons (one false alarm), 3 at 10%, 2 prefill-only, an A/A row."""
    trials = '{"order": ["A", "B"], "A": {"decode_step_cpu_ms": [1.0]}, "B": {"decode_step_cpu_ms": [1.1]}}'
    arms = [("null", 0.0, [True, False, False, False]), ("decode", 0.1, [True, True, False]),
            ("prefill", 0.2, [True, True])]
    for kind, level, detected in arms:
        for i, hit in enumerate(detected):
            store.write("gate_power", [{"gate": "default", "kind": kind, "level": level, "index": i, "detected": hit,
                                        "other_flagged": False, "gate_seconds": 60.0, "load1": 2.0,
                                        "trials_json": trials}], meta(n, "gate-power")); n += 1
    store.write("gate_power", [{"gate": "default", "kind": "aa_resampled", "level": 0.0, "index": -1,
                                "aa_false_alarms": 3, "aa_resamples": 2000, "aa_rate": 0.0015, "aa_ci_high": 0.004}],
                meta(n, "gate-power")); n += 1
    return n


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    return fill_store(tmp_path_factory.mktemp("store"))


# ----- the data behind the page ------------------------------------------------------------------------------------

def test_every_section_gets_data_from_a_full_store(full_store):
    data = dashboard_data(full_store)
    counts = expected_marks(data)
    assert counts["parity-matrix"] == 3  # (tiny-gqa, fp32), (tiny-gqa, bf16), (canary, fp32)
    assert counts["accuracy"] == 3 * 3  # three scored tasks x (impl, ref, agreement); perplexity is not a fraction
    assert counts["perf-ratios"] == 2 * 2 and counts["perf-roofline"] == 2 * 3
    assert counts["comparison"] == len(data["comparison"]["rows"]) > 0
    assert counts["gate-power"] == 3  # null, 10% and prefill-only points of the one calibrated gate
    # fp32 and bf16 results are different configurations: reported on one side only, never a regression
    assert data["comparison"]["regressed"] is False
    assert {r["verdict"] for r in data["comparison"]["rows"]} <= {"missing", "new"}
    trends = data["perf_trends"]
    assert len(trends) == 4 and all(len(t["points"]) == 16 for t in trends)
    tpot = [t for t in trends if t["metric"] == "tpot_p50_ms"]
    assert all([cp["index"] for cp in t["change_points"]] == [STEP_AT] for t in tpot)


def test_verdict_matrix_keeps_each_models_latest_verdict_and_worst_error(full_store):
    cells = {(c["model"], c["column"]): c for c in dashboard_data(full_store)["parity"]["cells"]}
    assert cells[("tiny-gqa", "float32 · tp1 · cpu")]["passed"] is True
    assert cells[("tiny-gqa", "bfloat16 · tp1 · cpu")]["passed"] is False
    assert cells[("tiny-gqa", "float32 · tp1 · cpu")]["errors"]["worst_max_abs_err"] == pytest.approx(3e-5)


def test_gate_power_points_carry_detection_rates_with_wilson_intervals_and_the_aa_rate(full_store):
    (gate,) = dashboard_data(full_store)["gate_power"]["gates"]
    points = {p["kind"]: p for p in gate["points"]}
    assert (points["null"]["detected"], points["null"]["comparisons"]) == (1, 4)
    assert points["decode"]["rate"] == pytest.approx(2 / 3)
    assert points["decode"]["ci_low"] < 2 / 3 < points["decode"]["ci_high"]
    assert gate["aa"]["aa_false_alarms"] == 3 and gate["aa"]["aa_resamples"] == 2000


def test_corrupt_file_is_named_on_the_page_and_the_rest_still_drawn(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_summary", parity_rows("tiny-gqa", True), meta(1, "parity/default"))
    bad = tmp_path / "parity_summary" / "schema_version=1" / "20990101T000000Z-deadbeef.parquet"
    bad.write_bytes(b"PAR1 truncated")
    data = dashboard_data(store)
    assert len(data["parity"]["cells"]) == 1
    assert any(bad.name in message for message in data["skipped"])
    page = build_dashboard(store, tmp_path / "out").read_text()
    assert bad.name in page


def test_page_embeds_data_that_cannot_close_its_script_element(full_store, tmp_path):
    page = build_dashboard(full_store, tmp_path / "out").read_text()
    assert page.startswith("<!DOCTYPE html>")  # standards mode: nothing may come before the doctype
    payload = page.split('<script id="dashboard-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "canary<\\/script>" in payload
    assert (tmp_path / "out" / "assets" / "dashboard.js").exists()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


# ----- the page in a real browser ----------------------------------------------------------------------------------

def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class ChartCollector(HTMLParser):
    """Attributes of the body and of every element with data-chart, from a DOM dump."""

    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.charts: dict[str, dict] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if "data-chart" in attrs:
            self.charts[attrs["id"]] = attrs


def load_in_chromium(page: Path, profile: Path) -> tuple[ChartCollector, list[str]]:
    """The DOM after the page's scripts ran, and the console lines chromium logged."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/ci_smoke.sh installs it in CI)")
    done = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-extensions", "--disable-sync", "--no-first-run", "--mute-audio",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    collector = ChartCollector()
    collector.feed(done.stdout)
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
    return collector, console


@pytest.mark.slow
def test_dashboard_draws_every_chart_in_headless_chromium_without_console_errors(full_store, tmp_path):
    page = build_dashboard(full_store, tmp_path / "site")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert dom.body.get("data-status") == "ok", dom.body
    assert len(dom.charts) == 6 + 4  # matrix, ratios, roofline, accuracy, comparison, gate power + 4 trend charts
    for chart_id, attrs in dom.charts.items():
        assert int(attrs["data-expected"]) > 0, chart_id
        assert attrs.get("data-drawn") == attrs["data-expected"], (chart_id, attrs)
    bars = [a for a in dom.charts.values() if a["data-chart"] == "bars"]
    assert len(bars) == 3 and all(a.get("data-clipped") == "0" for a in bars), bars  # no label cut at either edge
    tpot_trends = [a for a in dom.charts.values() if a["data-chart"] == "trend" and a.get("data-changepoints") == "1"]
    assert len(tpot_trends) >= 2  # both tpot series show the change point at STEP_AT


@pytest.mark.slow
def test_empty_store_gives_a_page_that_says_no_data(tmp_path):
    page = build_dashboard(ResultStore(tmp_path / "empty"), tmp_path / "site")
    dom, console = load_in_chromium(page, tmp_path / "profile")
    assert console == []
    assert dom.body.get("data-status") == "ok"
    assert all(a["data-expected"] == "0" and a.get("data-drawn") == "0" for a in dom.charts.values())


def test_a_bf16_cell_shows_the_top50_error_it_is_judged_on_and_not_absent_metrics():
    from granite_bench.results.dashboard import parity_matrix
    rows = [{"model": "tiny-gqa", "dtype": "bfloat16", "device": "cpu", "tp_degree": 1, "run_id": "r2",
             "utc_time": "2025-01-02", "git_sha": "b" * 40, "run_passed": True, "worst_max_abs_err": 0.59,
             "worst_err_top50": 0.033, "rtol_top50": 0.04, "worst_err_top5": None, "worst_err_all": None,
             "worst_kl_ref_impl": 0.012, "greedy_match_rate": 0.0, "divergence_acceptable": True},
            {"model": "tiny-gqa", "dtype": "float32", "device": "cpu", "tp_degree": 1, "run_id": "r1",
             "utc_time": "2025-01-01", "git_sha": "a" * 40, "run_passed": True, "worst_max_abs_err": 2e-5,
             "worst_err_top50": None, "rtol_top50": None, "worst_err_top5": 8e-7, "worst_err_all": 8e-7,
             "worst_kl_ref_impl": 3e-7, "greedy_match_rate": 1.0, "divergence_acceptable": True}]
    import pandas as pd
    cells = {c["column"]: c for c in parity_matrix(pd.DataFrame(rows))["cells"]}
    bf16, fp32 = cells["bfloat16 · tp1 · cpu"], cells["float32 · tp1 · cpu"]
    assert list(bf16["errors"]) == ["worst_max_abs_err", "worst_err_top50", "worst_kl_ref_impl"]
    assert bf16["judged"] == {"worst_err_top50": 0.04} and bf16["divergence_accepted"] is True
    assert set(fp32["errors"]) == {"worst_max_abs_err", "worst_err_top5", "worst_err_all", "worst_kl_ref_impl"}
