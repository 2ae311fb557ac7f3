import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from granite_bench.gate import ab, calibrate
from granite_bench.gate.calibrate import DECODE, NULL, PREFILL, Arm
from granite_bench.results import stats

REPO = Path(__file__).resolve().parents[2]

CALLS = """
import json, torch
import granite_bench.runtime.runner as runner_module
from granite_bench.runtime.select import build_runner
runner = build_runner("tiny-gqa", num_layers=1, buckets=[8])
logits = runner.context_encode([[5, 6, 7]])
for step in range(3):
    logits = runner.token_generate(logits[:, -1].argmax(-1) if logits.dim() == 3 else logits.argmax(-1),
                                   torch.tensor([3 + step]))
print(json.dumps({"file": runner_module.__file__, "calls": runner_module.CALIBRATION_CALLS,
                  "busy": runner_module.CALIBRATION_BUSY}))
"""


def test_busy_work_is_injected_into_the_copied_trees_decode_step_and_prefill(tmp_path):
    tree = calibrate.slowed_tree(REPO, tmp_path / "slow", decode_iterations=1234, prefill_iterations=56)
    done = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True, cwd=str(tree),
                          env=ab.tree_env(tree), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(tree))
    assert found["busy"] == {"token_generate": 1234, "context_encode": 56}
    assert found["calls"] == {"token_generate": 3, "context_encode": 1}
    # the source tree is untouched
    assert calibrate.INJECTION_MARK not in (REPO / calibrate.RUNNER_FILE).read_text()


def test_busy_iterations_are_the_level_times_the_measured_step_over_one_iteration():
    costs = {"decode_step_s": 2e-3, "prefill_s": 4e-3, "busy_iteration_s": 2e-8}
    assert calibrate.iterations_for(Arm(DECODE, 0.10), costs) == (10_000, 0)
    assert calibrate.iterations_for(Arm(NULL, 0.0), costs) == (0, 0)
    assert calibrate.iterations_for(Arm(PREFILL, 0.20), costs) == (0, 40_000)


def test_schedule_spreads_every_arm_evenly_until_each_count_is_done():
    null, five = Arm(NULL, 0.0), Arm(DECODE, 0.05)
    plan = calibrate.schedule({null: 3, five: 1})
    assert [(arm.name, i) for arm, i in plan] == [("null-0", 0), ("null-0", 1), ("decode-5", 0), ("null-0", 2)]
    plan = calibrate.schedule({null: 30, five: 10})
    assert [arm for arm, _ in plan[:8]].count(null) == 6   # 3 nulls per 5% comparison from the start


def wilson_formula(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 30), (9, 10), (5, 10), (10, 10)])
def test_wilson_interval_matches_the_closed_form(k, n):
    low, high = calibrate.wilson_interval(k, n)
    expected = wilson_formula(k, n)
    assert low == pytest.approx(max(0.0, expected[0]), abs=1e-9)
    assert high == pytest.approx(min(1.0, expected[1]), abs=1e-9)


def test_power_table_counts_detections_per_level_and_false_alarms_at_zero():
    rows = []
    for i in range(4):
        rows.append({"gate": "g", "kind": NULL, "level": 0.0, "detected": i == 0, "other_flagged": False,
                     "gate_seconds": 60.0, "load1": 2.0, "trials_json": recorded(["A", "B"], [1.0], [1.0])})
    for i in range(5):
        rows.append({"gate": "g", "kind": DECODE, "level": 0.1, "detected": i < 4, "other_flagged": i == 0,
                     "gate_seconds": 120.0 + i, "load1": 3.0,
                     "trials_json": json.dumps({"order": ["A", "B", "B", "A"],
                                                "A": {"decode_step_ms": [2.0, 2.0], "decode_step_cpu_ms": [1.0, 1.0]},
                                                "B": {"decode_step_ms": [2.2, 2.4], "decode_step_cpu_ms": [1.1, 1.1]}})})
    table = calibrate.power_table(pd.DataFrame(rows)).set_index("kind")
    assert table.loc[NULL, "comparisons"] == 4 and table.loc[NULL, "detected"] == 1
    assert table.loc[NULL, "rate"] == 0.25
    assert table.loc[DECODE, "detected"] == 4 and table.loc[DECODE, "other_flagged"] == 1
    assert table.loc[DECODE, "median_gate_minutes"] == pytest.approx(122 / 60)
    assert table.loc[DECODE, "median_cpu_ratio"] == pytest.approx(1.1)
    assert table.loc[DECODE, "median_wall_ratio"] == pytest.approx(np.sqrt(1.1 * 1.2))
    assert math.isnan(table.loc[NULL, "median_cpu_ratio"])   # not recorded for that metric
    low, high = calibrate.wilson_interval(4, 5)
    assert (table.loc[DECODE, "ci_low"], table.loc[DECODE, "ci_high"]) == (low, high)


def recorded(order, a, b):
    return json.dumps({"order": order, "A": {"m": a}, "B": {"m": b}})


def test_recorded_rounds_pair_each_sides_ith_trial_and_note_which_ran_first():
    rounds = calibrate.recorded_rounds(recorded(["A", "B", "B", "A"], [1.0, 4.0], [2.0, 3.0]))
    assert rounds == [{"A": {"m": 1.0}, "B": {"m": 2.0}, "a_first": True},
                      {"A": {"m": 4.0}, "B": {"m": 3.0}, "a_first": False}]


def test_pseudo_comparisons_draw_distinct_recorded_rounds_and_swap_sides_at_random():
    a_values = [1.0 + i / 100 for i in range(10)]
    b_values = [2.0 + i / 100 for i in range(10)]
    rounds = calibrate.recorded_rounds(recorded(["A", "B", "B", "A"] * 5, a_values, b_values))
    samples, order = calibrate.pseudo_comparison(rounds, 8, np.random.default_rng(0))
    base, cand = samples["m"]
    assert order == ab.trial_order(8)
    pairs = [tuple(sorted(p)) for p in zip(base, cand)]
    assert len(set(pairs)) == 8                                        # without replacement
    assert all(pair in set(zip(a_values, b_values)) for pair in pairs)  # each round's own two trials
    assert 0 < sum(b > a for a, b in zip(base, cand)) < 8               # sides swapped at random
    with pytest.raises(calibrate.CalibrationError, match="cannot fill"):
        calibrate.pseudo_comparison(rounds, 11, np.random.default_rng(0))


def test_aa_false_alarms_counts_what_the_decision_flags_over_the_resamples():
    trials = [recorded(["A", "B", "B", "A"] * 4, [1.0, 1.1, 1.2, 1.3] * 2, [1.05, 1.0, 1.25, 1.2] * 2)]
    assert calibrate.aa_false_alarms(trials, lambda s, o: True, n_rounds=6, n_resamples=50) == (50, 50)
    flagged, n = calibrate.aa_false_alarms(trials, lambda s, o: np.median(s["m"][1]) > np.median(s["m"][0]),
                                           n_rounds=6, n_resamples=400)
    assert n == 400 and 0 < flagged < 400
    with pytest.raises(calibrate.CalibrationError):
        calibrate.aa_false_alarms([], lambda s, o: True, n_rounds=6)


def test_the_sequential_gate_replayed_on_pure_noise_rounds_flags_under_alpha():
    rng = np.random.default_rng(7)
    a, b = np.exp(rng.normal(0, 0.05, (2, 200)))
    trials = [json.dumps({"order": ["A", "B"] * 200, "A": {"decode_step_cpu_ms": a.tolist()},
                          "B": {"decode_step_cpu_ms": b.tolist()}})]

    def decide(samples, order):
        return stats.sequential_replay(samples, PLAN, floor=0.0)[0] == stats.REGRESSION
    flagged, n = calibrate.aa_false_alarms(trials, decide, n_rounds=48, n_resamples=200)
    assert flagged <= 8   # alpha 0.01 over 200: expected 2 at most; 8 is past the binomial 99.9% bound


def test_alpha_spending_adds_up_to_alpha_and_grows_with_the_looks():
    plan = stats.SequentialPlan(looks=(12, 24, 48), alpha=0.01)
    shares = [plan.alpha_at(i) for i in range(3)]
    assert sum(shares) == pytest.approx(0.01)
    assert shares[0] == pytest.approx(0.01 / 16) and shares[0] < shares[1] < shares[2]
    with pytest.raises(ValueError):
        stats.SequentialPlan(looks=(24, 12))


def noisy(n, ratio, sd, seed):
    rng = np.random.default_rng(seed)
    base = 2.0 * np.exp(rng.normal(0, sd, n))
    cand = 2.0 * ratio * np.exp(rng.normal(0, sd, n))
    return base.tolist(), cand.tolist()


PLAN = stats.SequentialPlan(looks=(12, 24, 48), alpha=0.01)


def test_sequential_gate_stops_at_the_first_look_on_a_clear_slowdown():
    decision, rounds, tests = stats.sequential_replay({"m": noisy(48, 1.2, 0.01, 1)}, PLAN, floor=0.03)
    assert (decision, rounds) == (stats.REGRESSION, 12)
    assert tests[0].ratio == pytest.approx(1.2, rel=0.02)


def test_sequential_gate_stops_early_as_pass_when_every_upper_bound_is_under_the_floor():
    decision, rounds, _ = stats.sequential_replay({"m": noisy(48, 1.0, 0.002, 2)}, PLAN, floor=0.03)
    assert (decision, rounds) == (stats.PASS, 12)


def test_sequential_gate_samples_on_when_the_first_look_is_unclear():
    # a 6% slowdown in 4% noise: not significant at the first look's tiny alpha share, clear by the end
    decision, rounds, _ = stats.sequential_replay({"m": noisy(48, 1.06, 0.04, 3)}, PLAN, floor=0.03)
    assert rounds > 12 and decision == stats.REGRESSION


def test_sequential_gate_false_alarm_rate_stays_under_alpha_on_simulated_null_data():
    alarms = sum(stats.sequential_replay({"m": noisy(48, 1.0, 0.05, seed)}, PLAN, floor=0.0)[0] == stats.REGRESSION
                 for seed in range(300))
    # alpha 0.01 over all looks, floor 0: at most a few of 300 (binomial 99.9% bound for p = 0.01 is 9)
    assert alarms <= 9


def test_sequential_gate_needs_the_ratio_past_the_floor_even_when_significant():
    decision, _, tests = stats.sequential_replay({"m": noisy(48, 1.02, 0.002, 4)}, PLAN, floor=0.03)
    assert decision == stats.PASS and tests[0].p_adjusted < PLAN.alpha_at(0)


class ScriptedServer:
    """Stands in for ab.ProbeServer: answers trials with scripted per-step seconds (the tree labelled 'slow' 30%
    slower), counting them."""

    def __init__(self, probe_args, log_dir):
        self.trials = 0

    def receive(self, tree=None):
        return {"ready": True, "torch": "scripted", "threads": 1}

    def trial(self, tree, reps, seed):
        self.trials += 1
        step = 1e-3 * (1.3 if tree.label == "slow" else 1.0)
        return {"decode_s": [step] * reps, "prefill_s": [2 * step] * 3, "decode_cpu_s": [step] * reps,
                "prefill_cpu_s": [2 * step] * 3, "granite_bench": str(tree.path)}

    def round(self, trees, reps, seed, first=0):  # a lockstep round: every tree once
        return [self.trial(tree, reps, seed) for tree in trees]

    def close(self):
        pass


def test_interleaved_trials_end_at_the_round_where_the_stop_rule_says_so(monkeypatch):
    monkeypatch.setattr(ab, "ProbeServer", ScriptedServer)
    base = ab.CodeTree("base", Path("."), "unknown", False)
    slow = ab.CodeTree("slow", Path("."), "unknown", False)
    seen = []

    def stop(per_trial, rounds):
        seen.append(rounds)
        return rounds == 5
    result = ab.run_interleaved(base, slow, trials=48, reps=4, stop=stop)
    assert seen == [1, 2, 3, 4, 5]
    assert result.trials == 5 and len(result.order) == 10
    assert result.per_trial["decode_step_cpu_ms"][1] == pytest.approx([1.3] * 5)


def test_the_default_compare_gate_is_the_sequential_cpu_time_one(monkeypatch, tmp_path):
    from granite_bench.gate.compare import CompareSettings, judge_timings, sequential_plan, sequential_stop
    monkeypatch.setattr(ab, "ProbeServer", ScriptedServer)
    settings = CompareSettings(baseline="")
    assert (settings.design, settings.clock, sequential_plan(settings).looks) == ("sequential", "cpu", (12, 24, 48))
    base = ab.CodeTree("base", Path("."), "unknown", False)
    slow = ab.CodeTree("slow", Path("."), "unknown", False)
    result = ab.run_interleaved(base, slow, trials=48, reps=4, stop=sequential_stop(settings,
                                                                                    sequential_plan(settings)))
    assert result.trials == 12   # a constant 30% slowdown is clear at the first look
    rows = {r.metric: r for r in judge_timings(settings, result, "setup")}
    assert rows["decode_step_cpu_ms"].verdict == stats.REGRESSION
    assert rows["decode_step_ms"].verdict == stats.REPORTED


def test_gate_power_refuses_bad_counts_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "granite_bench.cli", "gate-power", "--per-level", "-1",
                           "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--per-level" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_design_table_judges_every_design_on_the_same_recorded_rounds():
    # CPU time 10% slower and steady; wall time buried in load noise that moves A and B together within a round
    rng = np.random.default_rng(5)
    load = np.exp(rng.normal(0, 0.5, 12))
    data = {"order": ["A", "B", "B", "A"] * 6,
            "A": {"decode_step_ms": (3 * load).tolist(), "prefill_ms": (6 * load).tolist(),
                  "decode_step_cpu_ms": [1.0] * 12, "prefill_cpu_ms": [2.0] * 12},
            "B": {"decode_step_ms": (3.3 * load * np.exp(rng.normal(0, 0.01, 12))).tolist(),
                  "prefill_ms": (6 * load).tolist(), "decode_step_cpu_ms": [1.1] * 12, "prefill_cpu_ms": [2.0] * 12}}
    frame = pd.DataFrame([{"kind": DECODE, "level": 0.1, "trials_json": json.dumps(data)}])
    row = calibrate.design_table(frame, rounds=12).iloc[0]
    assert row["paired-cpu"] == "1/1" and row["pooled-cpu"] == "1/1"
    assert row["paired-wall"] == "1/1"      # pairing cancels the shared load swings ...
    assert row["pooled-wall"] == "0/1"      # ... that drown the pooled comparison
    assert calibrate.design_decision(json.dumps(data), "paired-cpu", rounds=13, floor=0.03, alpha=0.01) is None


def fake_comparison(flagged: set[str]):
    from types import SimpleNamespace

    from granite_bench.gate.verdict import Row
    rows = []
    for metric in ("decode_step_cpu_ms", "prefill_cpu_ms"):
        rows.append(Row(kind="timing", table="ab", group="g", metric=metric, baseline=1.0, candidate=1.1,
                        verdict=stats.REGRESSION if metric in flagged else stats.PASS, ratio=1.1, p_adjusted=0.001))
    for metric in ("decode_step_ms", "prefill_ms"):
        rows.append(Row(kind="timing", table="ab", group="g", metric=metric, baseline=1.0, candidate=1.2,
                        verdict=stats.REPORTED, ratio=1.2, p_adjusted=0.5))
    timings = ab.ABResult(trials=1, reps=4, order=["A", "B"],
                          per_trial={"decode_step_cpu_ms": ([1.0], [1.1])})
    return SimpleNamespace(rows=rows, notes=[], timings=timings)


def test_a_comparison_counts_as_detected_only_when_the_slowed_metric_is_flagged():
    settings = calibrate.CalibrationSettings(gate="g")
    decode, prefill, null = Arm(DECODE, 0.1), Arm(PREFILL, 0.2), Arm(NULL, 0.0)
    row = calibrate.comparison_row(decode, 0, fake_comparison({"decode_step_cpu_ms"}), 30.0, (10, 0), settings, "c")
    assert row["detected"] and not row["other_flagged"]
    assert row["decode_p_adjusted"] == 0.001 and row["decode_ratio"] == 1.2 and row["decode_cpu_ratio"] == 1.1
    row = calibrate.comparison_row(decode, 1, fake_comparison({"prefill_cpu_ms"}), 30.0, (10, 0), settings, "c")
    assert not row["detected"] and row["other_flagged"]
    row = calibrate.comparison_row(prefill, 0, fake_comparison({"prefill_cpu_ms"}), 30.0, (0, 10), settings, "c")
    assert row["detected"] and not row["other_flagged"]
    row = calibrate.comparison_row(null, 0, fake_comparison({"prefill_cpu_ms"}), 30.0, (0, 0), settings, "c")
    assert row["detected"]   # at level 0 any flag is a false alarm
    assert json.loads(row["trials_json"])["A"]["decode_step_cpu_ms"] == [1.0]
