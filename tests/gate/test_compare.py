import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from granite_bench.gate import ab
from granite_bench.results import stats
from granite_bench.gate.compare import CompareSettings, run_compare
from granite_bench.gate.verdict import BETTER, CHANGED, MISSING, NEW, REGRESSION, SAME, compare_deterministic, judge_value
from granite_bench.results.metadata import RunMetadata
from granite_bench.results.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "results" / "fixtures"

META = RunMetadata(run_id="20250101T000000Z-00000001", utc_time="2025-01-01T00:00:00.000Z", git_sha="a" * 40,
                   git_dirty=False, package_versions="{}", machine_fingerprint="f00d", machine="test machine",
                   suite="parity/default", device="cpu", dtype="float32", config_hash="0" * 16, config_json="{}",
                   seed=0)


def meta(n: int, **changes) -> RunMetadata:
    return dataclasses.replace(META, run_id=f"2025010{n}T000000Z-0000000{n}",
                               utc_time=f"2025-01-0{n}T00:00:00.000Z", **changes)


def parity_rows(passed=(True, True, True), max_abs=(1e-5, 2e-5, 3e-5), greedy=(1.0, 1.0, 1.0)) -> list[dict]:
    return [{"model": "tiny-gqa", "tp_degree": 1, "compiled": False, "prompt": i, "passed": p,
             "worst_max_abs_err": e, "worst_err_all_position": 3, "greedy_match_rate": g, "n_failed": 0}
            for i, (p, e, g) in enumerate(zip(passed, max_abs, greedy))]


def eval_rows(acc=(0.9, 0.8), agreement=(1.0, 1.0), perplexity=12.5) -> list[dict]:
    """eval_summary rows as the accuracy package writes them: one per task, its main metric named in 'metric'."""
    rows = [{"model": "canary", "task": f"task{i}", "metric": "acc", "impl_value": a, "impl_stderr": 0.01,
             "ref_value": 0.9, "difference": a - 0.9, "argmax_agreement": g, "passed": True}
            for i, (a, g) in enumerate(zip(acc, agreement))]
    rows.append({"model": "canary", "task": "text", "metric": "word_perplexity", "impl_value": perplexity,
                 "impl_stderr": 0.5, "ref_value": 12.5, "difference": perplexity - 12.5, "argmax_agreement": 1.0,
                 "passed": True})
    return rows


def frames(parity=None, evals=None) -> dict:
    out = {}
    if parity is not None:
        out["parity_summary"] = pd.DataFrame(parity).assign(suite="parity/default", dtype="float32", device="cpu")
    if evals is not None:
        out["eval_summary"] = pd.DataFrame(evals).assign(suite="eval/canary", dtype="float32", device="cpu")
    return out


def verdict_of(rows, metric):
    [row] = [r for r in rows if r.metric == metric]
    return row


# ----- the exact (deterministic) gate ------------------------------------------------------------------------------

def test_accuracy_and_rates_gate_exactly_while_errors_gate_on_growth():
    assert judge_value(0.90, 0.89, "higher", 2.0) == REGRESSION
    assert judge_value(0.90, 0.90, "higher", 2.0) == SAME
    assert judge_value(True, False, "higher", 2.0) == REGRESSION
    assert judge_value(1e-4, 1.5e-4, "lower", 2.0) == CHANGED
    assert judge_value(1e-4, 2.5e-4, "lower", 2.0) == REGRESSION
    assert judge_value(1e-4, 0.5e-4, "lower", 2.0) == BETTER
    # Near zero, fp32 jitter below the absolute floor never fails however large the factor.
    assert judge_value(1e-9, 5e-9, "lower", 2.0) == CHANGED


def test_identical_results_pass_with_every_metric_the_same():
    rows = compare_deterministic(frames(parity_rows(), eval_rows()), frames(parity_rows(), eval_rows()))
    assert rows and {r.verdict for r in rows} == {SAME}
    assert {r.metric for r in rows} >= {"passed", "worst_max_abs_err", "greedy_match_rate", "impl_accuracy",
                                        "impl_perplexity", "argmax_agreement"}
    # positions, stderr, signed differences and the reference's own values are not results to gate
    assert not {r.metric for r in rows} & {"worst_err_all_position", "impl_stderr", "n_failed", "difference",
                                           "ref_value"}


def test_a_prompt_that_stops_passing_is_a_regression_naming_the_prompt():
    rows = compare_deterministic(frames(parity_rows()), frames(parity_rows(passed=(True, False, True))))
    passed = verdict_of(rows, "passed")
    assert passed.verdict == REGRESSION
    assert "prompt=1" in passed.detail
    assert passed.baseline is True and passed.candidate is False


def test_lower_greedy_match_and_lower_canary_accuracy_fail():
    rows = compare_deterministic(frames(parity_rows(), eval_rows()),
                                 frames(parity_rows(greedy=(1.0, 0.9375, 1.0)), eval_rows(acc=(0.9, 0.79))))
    assert verdict_of(rows, "greedy_match_rate").verdict == REGRESSION
    acc = {r.group.split()[-1]: r.verdict for r in rows if r.metric == "impl_accuracy"}  # one row per task
    assert acc == {"task0": SAME, "task1": REGRESSION, "text": SAME}
    assert {r.verdict for r in rows if r.metric == "argmax_agreement"} == {SAME}


def test_perplexity_gates_in_the_lower_is_better_direction():
    better = compare_deterministic(frames(evals=eval_rows()), frames(evals=eval_rows(perplexity=11.0)))
    worse = compare_deterministic(frames(evals=eval_rows()), frames(evals=eval_rows(perplexity=40.0)))
    assert {r.verdict for r in better if r.metric == "impl_perplexity"} >= {BETTER}
    assert {r.verdict for r in worse if r.metric == "impl_perplexity"} >= {REGRESSION}


def test_a_changed_eval_task_version_is_a_new_task_not_a_regression_of_the_old_one():
    worse = eval_rows(acc=(0.5, 0.4), perplexity=40.0)
    for base, cand in ((eval_rows(), [dict(r, task_version="2.0") for r in worse]),          # unrecorded -> 2.0
                       ([dict(r, task_version="1.0") for r in eval_rows()], [dict(r, task_version="2.0") for r in worse])):
        rows = compare_deterministic(frames(evals=base), frames(evals=cand))
        assert rows and not any(r.verdict == REGRESSION for r in rows)
        verdicts = {r.verdict for r in rows if r.metric == "impl_accuracy"}
        assert verdicts and verdicts <= {NEW, MISSING}
    same_version = compare_deterministic(frames(evals=[dict(r, task_version="2.0") for r in eval_rows()]),
                                         frames(evals=[dict(r, task_version="2.0") for r in worse]))
    assert {r.verdict for r in same_version if r.metric == "impl_accuracy"} >= {REGRESSION}


def test_a_result_only_the_baseline_has_is_reported_missing_not_failed():
    base = frames(parity_rows())
    cand = frames([r for r in parity_rows() if r["prompt"] != 2])
    rows = compare_deterministic(base, cand)
    assert verdict_of(rows, "passed").verdict == MISSING
    assert not any(r.verdict == REGRESSION for r in rows)


# ----- the statistical (timing) gate -------------------------------------------------------------------------------

def test_holm_adjustment_matches_the_step_down_by_hand():
    assert stats.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def noisy(median, n, seed, spread=0.03):
    return list(median * (1 + spread * np.random.default_rng(seed).standard_normal(n)))


def test_clear_slowdown_above_the_floor_is_a_regression():
    tests = stats.gate_timings({"decode_step_ms": (noisy(2.0, 8, 0), noisy(2.6, 8, 1)),
                                "prefill_ms": (noisy(9.0, 8, 2), noisy(9.0, 8, 3))})
    decode, prefill = tests
    assert decode.verdict == stats.REGRESSION
    assert decode.ratio == pytest.approx(1.3, abs=0.05)
    assert decode.ci_low > 1 and decode.p_adjusted < 0.05
    assert prefill.verdict == stats.PASS


def test_significant_slowdown_below_the_floor_passes():
    [test] = stats.gate_timings({"decode_step_ms": (noisy(2.0, 12, 0, 0.005), noisy(2.1, 12, 1, 0.005))})
    assert test.p_adjusted < 0.05 and test.ratio < 1.10
    assert test.verdict == stats.PASS


def test_large_but_noisy_difference_is_not_significant():
    base = [1.0, 3.0, 1.1, 2.9, 1.2, 3.1]
    cand = [1.3, 3.3, 1.4, 3.2, 1.3, 3.4]
    [test] = stats.gate_timings({"decode_step_ms": (base, cand)})
    assert test.ratio > 1.10 and test.p_slower > 0.05
    assert test.verdict == stats.PASS


def test_holm_correction_can_turn_a_lone_significant_metric_into_a_pass():
    # 6 vs 6 fully separated: exact one-sided p = 1/924; over 60 metrics Holm multiplies the smallest by 60.
    base, cand = [1.0, 1.01, 1.02, 1.03, 1.04, 1.05], [1.3, 1.31, 1.32, 1.33, 1.34, 1.35]
    alone = stats.gate_timings({"m": (base, cand)})[0]
    samples = {"m": (base, cand), **{f"other{i}": (noisy(1.0, 6, i), noisy(1.0, 6, 100 + i)) for i in range(59)}}
    crowded = stats.gate_timings(samples)[0]
    assert alone.verdict == stats.REGRESSION
    assert crowded.p_adjusted == pytest.approx(min(1.0, 60 * alone.p_slower))
    assert crowded.verdict == stats.PASS


def test_bootstrap_interval_covers_the_ratio_of_medians():
    base, cand = noisy(4.0, 10, 5), noisy(5.0, 10, 6)
    low, high = stats.bootstrap_ratio_ci(base, cand)
    assert low < np.median(cand) / np.median(base) < high


def test_trials_alternate_sides_and_flip_order_each_pair():
    assert ab.trial_order(3) == ["A", "B", "B", "A", "A", "B"]
    assert ab.trial_order(2, ("x", "y", "z")) == ["x", "y", "z", "y", "z", "x"]


# ----- stored runs end to end ---------------------------------------------------------------------------------------

def write_parity_run(store: ResultStore, n: int, **changes):
    rows = parity_rows(**changes)
    run_passed = all(r["passed"] for r in rows)
    store.write("parity_summary", [{**r, "run_passed": run_passed} for r in rows], meta(n))


def test_stored_runs_compare_by_id_prefix_and_the_comparison_is_stored(tmp_path):
    store = ResultStore(tmp_path)
    write_parity_run(store, 1)
    write_parity_run(store, 2, passed=(True, False, True))
    result = run_compare(CompareSettings(baseline="20250101", candidate="20250102", results_dir=tmp_path))
    assert result.regressed
    assert result.baseline.run_ids == [meta(1).run_id] and result.candidate.run_ids == [meta(2).run_id]
    assert any("not measured side by side" in note for note in result.notes)
    stored = store.read("comparisons")
    assert set(stored["verdict"]) >= {REGRESSION}
    assert stored["regressed"].all() and (stored["baseline_runs"] == meta(1).run_id).all()


def test_unknown_side_is_refused_with_a_hint(tmp_path):
    from granite_bench.gate.verdict import CompareError
    with pytest.raises(CompareError, match="names no stored run"):
        run_compare(CompareSettings(baseline="no-such-run-or-ref", candidate="neither", results_dir=tmp_path,
                                    store=False))


def test_cli_compare_exits_1_on_a_regression_and_0_without(tmp_path):
    from typer.testing import CliRunner
    from granite_bench.cli import app
    store = ResultStore(tmp_path)
    write_parity_run(store, 1)
    write_parity_run(store, 2)
    write_parity_run(store, 3, max_abs=(1e-5, 2e-5, 9e-5))
    runner = CliRunner()
    same = runner.invoke(app, ["compare", "--baseline", meta(1).run_id, "--candidate", meta(2).run_id,
                               "--results-dir", str(tmp_path)])
    worse = runner.invoke(app, ["compare", "--baseline", meta(1).run_id, "--candidate", meta(3).run_id,
                                "--results-dir", str(tmp_path)])
    assert same.exit_code == 0, same.output
    assert worse.exit_code == 1, worse.output
    assert "worst_max_abs_err" in worse.output and "regression" in worse.output


def test_previous_schema_file_is_read_next_to_current_rows(tmp_path):
    """A parity_summary file written by schema version 1 (kept under fixtures/) still compares against current rows."""
    old = FIXTURES / "parity_summary.schema_version=1.parquet"
    old_frame = pd.read_parquet(old)
    old_run = old_frame["run_id"].iloc[0]
    folder = tmp_path / "parity_summary" / "schema_version=1"
    folder.mkdir(parents=True)
    shutil.copyfile(old, folder / f"{old_run}.parquet")
    store = ResultStore(tmp_path)
    current = old_frame.drop(columns=[c for c in old_frame.columns if c in dataclasses.asdict(META)
                                      or c == "schema_version"])
    current["new_column_in_a_later_schema"] = "a note"
    new_meta = dataclasses.replace(META, run_id="29990101T000000Z-00000009", utc_time="2999-01-01T00:00:00.000Z",
                                   suite=old_frame["suite"].iloc[0])
    store.write("parity_summary", current, new_meta)
    both = store.read("parity_summary")
    assert set(both["run_id"]) == {old_run, new_meta.run_id}
    result = run_compare(CompareSettings(baseline=old_run, candidate=new_meta.run_id, results_dir=tmp_path,
                                         store=False))
    assert not result.regressed
    assert {r.metric for r in result.rows} >= {"passed", "worst_max_abs_err", "greedy_match_rate"}


# ----- code trees -------------------------------------------------------------------------------------------------

def test_git_ref_becomes_a_temporary_worktree_that_is_removed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "granite_bench").mkdir(parents=True)
    (repo / "granite_bench" / "__init__.py").write_text("VERSION = 'first'\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "first"], check=True)
    (repo / "granite_bench" / "__init__.py").write_text("VERSION = 'second'\n")
    subprocess.run(git + ["commit", "-qam", "second"], check=True)
    with ab.code_tree(repo, "HEAD~1") as tree:
        assert (tree.path / "granite_bench" / "__init__.py").read_text() == "VERSION = 'first'\n"
        assert tree.sha == ab.resolve_commit(repo, "HEAD~1") and not tree.dirty
        made = tree.path
    assert not made.exists()
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(made) not in listed


FAKE_CLI = """
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import typer

PASSED = {passed}
app = typer.Typer()


@app.command()
def parity(results_dir: pathlib.Path = typer.Option(...)):
    \"\"\"Fake parity command of a test tree.\"\"\"
    folder = results_dir / "parity_summary" / "schema_version=1"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {{"run_id": ["20250101T000000Z-0000000f"] * 2, "utc_time": ["2025-01-01T00:00:00.000Z"] * 2,
            "model": ["tiny-gqa"] * 2, "prompt": [0, 1], "passed": [PASSED, True], "worst_max_abs_err": [1e-5, 2e-5]}}
    pq.write_table(pa.table(rows), folder / "20250101T000000Z-0000000f.parquet")
    raise typer.Exit(0 if PASSED else 1)


@app.command()
def dashboard():
    \"\"\"A second command, so typer keeps command names on the command line.\"\"\"


if __name__ == "__main__":
    app()
"""


def fake_tree(path: Path, passed: bool) -> Path:
    (path / "granite_bench").mkdir(parents=True)
    (path / "granite_bench" / "__init__.py").write_text("")
    (path / "granite_bench" / "cli.py").write_text(FAKE_CLI.format(passed=passed))
    return path


def test_a_code_tree_gets_its_deterministic_results_by_running_its_own_commands(tmp_path):
    good, bad = fake_tree(tmp_path / "good", True), fake_tree(tmp_path / "bad", False)
    settings = dict(results_dir=tmp_path / "store", timing=False, store=False)
    same = run_compare(CompareSettings(baseline=str(good), candidate=str(good), **settings))
    worse = run_compare(CompareSettings(baseline=str(good), candidate=str(bad), **settings))
    assert not same.regressed and {r.verdict for r in same.rows} == {SAME}
    assert worse.regressed and verdict_of(worse.rows, "passed").detail == "worse at prompt=0"
    assert worse.baseline.source.startswith("ran parity in ")
    assert any("no 'eval' command" in note for note in worse.notes)


def test_results_and_gate_packages_import_no_torch():
    code = ("import sys; import granite_bench.gate.compare, granite_bench.results.dashboard, "
            "granite_bench.results.listing, granite_bench.gate.ab_probe; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def copy_tree(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "granite_bench", target / "granite_bench", ignore=ignore)
    return target


SLOW_DECODE = '''

# --- deliberately slowed decode step (test_compare.py) ---
import time as _time

_original_token_generate = GraniteRunner.token_generate


def _slow_token_generate(self, *args, **kwargs):
    end = _time.perf_counter() + 0.004  # busy, not asleep: extra CPU work, as a slower kernel would be
    while _time.perf_counter() < end:
        pass
    return _original_token_generate(self, *args, **kwargs)


GraniteRunner.token_generate = _slow_token_generate
'''


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    base = copy_tree(root / "base")
    same = copy_tree(root / "same")
    slow = copy_tree(root / "slow")
    runner = slow / "granite_bench" / "runtime" / "runner.py"
    runner.write_text(runner.read_text() + SLOW_DECODE)
    return {name: ab.CodeTree(name, path, "unknown", True) for name, path in
            (("base", base), ("same", same), ("slow", slow))}  # insertion order = rotation order


PROBE = ["--model", "tiny-gqa", "--layers", "1", "--threads", "1"]


@pytest.mark.slow
def test_interleaved_timing_catches_a_slowed_decode_step_and_passes_an_unchanged_tree(trees):
    # One rotation over three trees (base, same, slow) gives both comparisons from the same trials. 32 decode steps
    # per trial (tens of ms) keep a single scheduling hiccup of a loaded machine from deciding a trial.
    timings, order = ab.time_trees(trees, trials=6, reps=32, probe_args=PROBE)
    assert order[:6] == ["base", "same", "slow", "same", "slow", "base"]
    assert timings["slow"].ready["granite_bench"].startswith(str(trees["slow"].path))
    slowed = {t.metric: t for t in stats.gate_timings(ab.ab_result(timings, "base", "slow", order, 32).per_trial)}
    unchanged = stats.gate_timings(ab.ab_result(timings, "base", "same", order, 32).per_trial)
    assert slowed["decode_step_ms"].verdict == stats.REGRESSION
    # Not asserted: prefill_ms of the slowed tree. Its path is untouched, yet a fresh-clone CI run once flagged it
    # (an unexplained interference or a false alarm on a loaded 2-core host); the unchanged tree below is the
    # false-alarm check the gate promises.
    assert all(len(t.per_trial["decode_step_ms"]) == 6 for t in timings.values())
    assert not any(t.verdict == stats.REGRESSION for t in unchanged)


@pytest.mark.slow
def test_every_trial_runs_in_a_fresh_process_of_its_own_tree_and_a_broken_tree_is_named(trees, tmp_path):
    server = ab.ProbeServer(PROBE, tmp_path)
    try:
        assert server.receive()["ready"]
        answers = [server.trial(trees[name], 2, seed) for seed, name in enumerate(("base", "slow", "base"))]
        assert len({a["pid"] for a in answers} | {server.proc.pid}) == 4
        assert [a["granite_bench"] for a in answers] == [str(trees[n].path / "granite_bench")
                                                         for n in ("base", "slow", "base")]
        assert all(len(a["decode_cpu_s"]) == 2 and len(a["prefill_s"]) == 8 for a in answers)
        broken = copy_tree(tmp_path / "broken")
        (broken / "granite_bench" / "__init__.py").write_text("raise ImportError('planted')\n")
        with pytest.raises(ab.TreeError, match="planted") as caught:
            server.trial(ab.CodeTree("broken", broken, "unknown", True), 2, 0)
        assert caught.value.tree.label == "broken"
        assert server.trial(trees["base"], 1, 0)["pid"] != answers[0]["pid"]   # the server serves on
    finally:
        server.close()


# -- nothing missing is a pass -------------------------------------------------------------------------------------
def write_parity_run_with_positions(store: ResultStore, n: int, profile: str = "float32", **changes):
    """A parity run as the parity command writes it: positions and summary, the profile in its config."""
    import json
    rows = parity_rows(**changes)
    run_meta = dataclasses.replace(meta(n), config_json=json.dumps({"profile": {"name": profile}}))
    store.write_run(run_meta, {"parity_positions": [{"model": "tiny-gqa", "prompt": 0, "position": 0}],
                               "parity_summary": [{**r, "run_passed": all(x["passed"] for x in rows)}
                                                  for r in rows]})
    return store.root / "parity_summary" / "schema_version=1" / f"{run_meta.run_id}.parquet"


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_candidate_whose_summary_table_cannot_be_read_cannot_be_judged(tmp_path, damage):
    from typer.testing import CliRunner
    from granite_bench.cli import app
    store = ResultStore(tmp_path)
    write_parity_run_with_positions(store, 1)
    path = write_parity_run_with_positions(store, 2, passed=(True, False, True))
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    done = CliRunner().invoke(app, ["compare", "--baseline", "20250101", "--candidate", "20250102",
                                    "--results-dir", str(tmp_path), "--no-save"])
    assert done.exit_code == 2, done.output
    assert f"cannot judge run {meta(2).run_id}" in done.output and path.name in done.output
    assert "no regression" not in done.output and len(done.output.strip().splitlines()) == 1


def test_a_commit_side_whose_stored_table_cannot_be_read_cannot_be_judged(tmp_path):
    from granite_bench.gate.sides import stored_commit_rows
    from granite_bench.gate.verdict import CompareError
    store = ResultStore(tmp_path)
    path = write_parity_run_with_positions(store, 1)
    assert stored_commit_rows(store, "a" * 40)[1] == [meta(1).run_id]
    path.unlink()
    with pytest.raises(CompareError, match="cannot judge run .* is missing"):
        stored_commit_rows(store, "a" * 40)


def test_a_run_compared_with_itself_or_across_tolerance_profiles_is_warned_about(tmp_path):
    store = ResultStore(tmp_path)
    write_parity_run_with_positions(store, 1)
    write_parity_run_with_positions(store, 2, profile="bfloat16-nxdi", passed=(True, False, True))
    itself = run_compare(CompareSettings(baseline="20250101", candidate="20250101", results_dir=tmp_path,
                                         store=False))
    assert any("same run" in w for w in itself.warnings) and not itself.regressed
    across = run_compare(CompareSettings(baseline="20250101", candidate="20250102", results_dir=tmp_path,
                                         store=False))
    assert any("different tolerance profiles (baseline: float32; candidate: bfloat16-nxdi)" in w
               for w in across.warnings)
    assert across.regressed and not any("same run" in w for w in across.warnings)


def test_runs_are_named_by_the_hash_part_of_their_id_and_an_ambiguous_prefix_names_the_candidates(tmp_path):
    from granite_bench.gate.sides import match_run_ids
    from granite_bench.gate.verdict import CompareError
    store = ResultStore(tmp_path)
    for n in (1, 2):
        store.write("parity_summary", parity_rows(),
                    dataclasses.replace(meta(n), run_id=f"2025010{n}T000000Z-6e3a0c4{n}"))
    assert match_run_ids(store, "6e3a0c42") == ["20250102T000000Z-6e3a0c42"]
    assert match_run_ids(store, "20250101T000000Z-6e3a0c41") == ["20250101T000000Z-6e3a0c41"]
    with pytest.raises(CompareError, match="'6e3a0c4' matches 2 stored runs \\(20250101T000000Z-6e3a0c41, "
                                           "20250102T000000Z-6e3a0c42\\)"):
        match_run_ids(store, "6e3a0c4")
    assert match_run_ids(store, "ffff") is None
