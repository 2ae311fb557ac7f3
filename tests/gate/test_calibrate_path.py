"""gate-power --path compare: busy work planted in the decode forward of a scratch clone, compared HEAD vs worktree;
and the lockstep rounds the A/B timing runs in (ab_probe.lockstep_round)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from granite_bench.gate import ab, ab_probe, calibrate, calibrate_path
from granite_bench.gate.calibrate import CalibrationError, CalibrationSettings
from granite_bench.results import stats

REPO = Path(__file__).resolve().parents[2]

DECODER = '''"""A stand-in decoder."""


class Decoder:
    def token_generation(self, input_ids, positions, kv_len, capture=None):
        """One step."""
        logits = input_ids + 1
        return logits

    def lone(self):
        """Only a docstring."""

    def bare(self, x):
        return x * 2
'''


def planted_module(tmp_path: Path, function: str, iterations: int) -> tuple[str, dict]:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "decoder.py").write_text(DECODER)
    path = calibrate_path.plant_busy_work(tmp_path, iterations, Path("pkg/decoder.py"), function)
    text = path.read_text()
    namespace: dict = {}
    exec(compile(text, str(path), "exec"), namespace)
    return text, namespace


def loops_in(text: str, function: str) -> list[ast.For]:
    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == function)
    return [n for n in node.body if isinstance(n, ast.For)]


def test_planted_work_is_a_loop_at_the_top_of_the_decode_forward_after_its_docstring(tmp_path):
    text, namespace = planted_module(tmp_path, "token_generation", 123)
    loops = loops_in(text, "token_generation")
    assert len(loops) == 1 and ast.unparse(loops[0].iter) == "range(123)"
    assert ast.get_docstring(next(n for n in ast.walk(ast.parse(text)) if getattr(n, "name", "") ==
                                  "token_generation")) == "One step."
    assert namespace["Decoder"]().token_generation(1, None, 0) == 2      # the function still does its work
    assert not loops_in(text, "bare") and calibrate_path.PLANT_MARK in text


@pytest.mark.parametrize("function", ["lone", "bare"])
def test_work_is_planted_in_a_function_with_only_a_docstring_or_none(tmp_path, function):
    text, namespace = planted_module(tmp_path, function, 7)
    assert len(loops_in(text, function)) == 1
    assert namespace["Decoder"]().bare(3) == 6


def test_planting_refuses_a_missing_file_or_function(tmp_path):
    with pytest.raises(CalibrationError, match="missing"):
        calibrate_path.plant_busy_work(tmp_path, 5)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "decoder.py").write_text(DECODER)
    with pytest.raises(CalibrationError, match="defines no nothing_here"):
        calibrate_path.plant_busy_work(tmp_path, 5, Path("pkg/decoder.py"), "nothing_here")


def test_the_models_own_decode_forward_takes_the_planted_work(tmp_path):
    target = tmp_path / calibrate_path.PLANT_FILE
    target.parent.mkdir(parents=True)
    shutil.copy(REPO / calibrate_path.PLANT_FILE, target)
    text = calibrate_path.plant_busy_work(tmp_path, 4000).read_text()
    assert [ast.unparse(loop.iter) for loop in loops_in(text, calibrate_path.PLANT_FUNCTION)] == ["range(4000)"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    target = root / calibrate_path.PLANT_FILE
    target.parent.mkdir(parents=True)
    target.write_text(DECODER)
    git(root.parent, "init", "-q", str(root))
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    return root


def test_a_scratch_clone_is_dirty_after_planting_and_its_head_again_after_reverting(repo, tmp_path):
    checkout = calibrate_path.scratch_checkout(repo, tmp_path / "work" / "checkout")
    assert git(checkout, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    calibrate_path.plant_busy_work(checkout, 10)
    with ab.code_tree(checkout, ab.WORKTREE) as tree:
        assert tree.dirty and tree.path == checkout
    calibrate_path.revert(checkout)
    assert git(checkout, "status", "--porcelain") == ""
    assert (checkout / calibrate_path.PLANT_FILE).read_text() == DECODER


def fake_comparison(flagged: bool):
    """What run_compare returns, with a decode row flagged or not and recorded rounds."""
    from granite_bench.gate.compare import Comparison
    from granite_bench.gate.sides import Side
    from granite_bench.gate.verdict import Row
    rows = [Row(kind="timing", table="ab", group="g", metric=m, baseline=1.0, candidate=1.1,
                verdict=stats.REGRESSION if flagged and m == "decode_step_cpu_ms" else stats.PASS, ratio=1.1)
            for m in ab.CPU_METRICS]
    timings = ab.ABResult(trials=6, reps=4, order=ab.trial_order(6),
                          per_trial={m: ([1.0] * 6, [1.1] * 6) for m in ab.TIMED_METRICS})
    return Comparison(Side("HEAD"), Side("worktree"), rows, [], {}, timings)


def test_each_comparison_runs_compare_head_against_the_worktree_inside_the_clone(repo, tmp_path, monkeypatch):
    from granite_bench.gate import compare
    seen = []

    def run_compare(settings, console=None, progress=None):
        here = Path.cwd()
        seen.append({"cwd": here, "baseline": settings.baseline, "candidate": settings.candidate,
                     "deterministic": settings.deterministic, "trials": settings.trials,
                     "planted": calibrate_path.PLANT_MARK in (here / calibrate_path.PLANT_FILE).read_text()})
        return fake_comparison(flagged=seen[-1]["planted"])
    monkeypatch.setattr(compare, "run_compare", run_compare)
    monkeypatch.setattr(calibrate_path, "measure_costs", lambda *a, **k: {
        "decode_step_s": 2e-3, "prefill_s": 4e-3, "busy_iteration_s": 2e-8})
    settings = CalibrationSettings(gate="t", null_comparisons=2, per_level=1, levels=(0.0, 0.1),
                                   results_dir=tmp_path / "store", work_dir=tmp_path / "work",
                                   compare={"trials": 24})
    frame = calibrate_path.run_path_campaign(settings, repo=repo)
    checkout = tmp_path / "work" / "checkout"
    assert [s["cwd"] for s in seen] == [checkout] * 3
    assert {(s["baseline"], s["candidate"], s["deterministic"], s["trials"]) for s in seen} == \
        {("HEAD", "worktree", False, 24)}
    assert sorted(s["planted"] for s in seen) == [False, False, True]   # level 0 is the unchanged checkout
    assert git(checkout, "status", "--porcelain", "--untracked-files=no") == ""
    assert list(frame["path"]) == ["compare"] * 3 and set(frame["decode_iterations"]) == {0, 10_000}
    assert frame.loc[frame["kind"] == "decode", "detected"].all() and not frame.loc[frame["kind"] == "null",
                                                                                    "detected"].any()
    table = calibrate.power_table(calibrate.read_campaigns(tmp_path / "store", "t")).set_index("kind")
    assert table.loc["decode", ["path", "comparisons", "detected"]].tolist() == ["compare", 1, 1]
    assert table.loc["null", ["comparisons", "detected"]].tolist() == [2, 0]
    # too few null rounds for an A/A resampling: the power table and its markdown still come out, exit 0
    from typer.testing import CliRunner

    from granite_bench.cli import app
    summary = CliRunner().invoke(app, ["gate-power", "--summary-only", "--gate", "t", "--results-dir",
                                       str(tmp_path / "store"), "--markdown", str(tmp_path / "power.md")])
    assert summary.exit_code == 0, summary.output
    assert "A/A resampling skipped" in summary.output and "cannot fill" in summary.output
    assert (tmp_path / "power.md").read_text().startswith("| gate |")


def test_power_table_keeps_the_two_paths_apart_and_reads_rows_from_before_the_path_column():
    row = {"gate": "g", "kind": "decode", "level": 0.1, "detected": True, "other_flagged": False,
           "gate_seconds": 60.0, "load1": 1.5, "trials_json": json.dumps({"A": {}, "B": {}})}
    frame = pd.DataFrame([row, row | {"path": "compare", "detected": False, "load1": 1.9}])
    table = calibrate.power_table(frame).set_index("path")
    assert table.loc["copies", "detected"] == 1 and table.loc["compare", "detected"] == 0
    assert table.loc["compare", "max_load1"] == pytest.approx(1.9)
    markdown = calibrate_path.markdown_table(table.reset_index()[["path", "level", "detected"]])
    assert markdown.splitlines() == ["| path | level | detected |", "|---|---|---|", "| compare | 0.100 | 0 |",
                                     "| copies | 0.100 | 1 |"]


def test_gate_power_refuses_an_unknown_path_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "granite_bench.cli", "gate-power", "--path", "elsewhere",
                           "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 2 and "--path takes 'copies' or 'compare'" in done.stderr + done.stdout
    assert not (tmp_path / "r").exists()


# -- lockstep rounds ------------------------------------------------------------------------------------------------
def test_calls_rotate_over_the_sides_from_the_first_one():
    assert [ab_probe.call_order(2, call, 0) for call in range(3)] == [[0, 1], [1, 0], [0, 1]]
    assert [ab_probe.call_order(2, call, 1) for call in range(2)] == [[1, 0], [0, 1]]
    assert ab_probe.call_order(3, 1, 0) == [1, 2, 0]


def test_a_lockstep_round_forks_one_process_per_tree_and_alternates_every_call(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"

    def side_child(args, tree, seed, commands, replies):   # stands in for the tree's runner, in the forked child
        import os
        replies.write(json.dumps({"ready": True, "granite_bench": tree, "pid": os.getpid()}) + "\n")
        replies.flush()
        for line in commands:
            if line.strip() == "quit":
                break
            with open(log, "a") as out:
                out.write(f"{tree} {line.strip()}\n")
            replies.write(json.dumps({"cpu": 0.001 * (2 if tree == "b" else 1), "wall": 0.5}) + "\n")
            replies.flush()
    monkeypatch.setattr(ab_probe, "side_child", side_child)
    sides = ab_probe.lockstep_round(None, ["a", "b"], reps=3, seed=0, first=1)
    calls = log.read_text().split("\n")[:-1]
    prefills = ab_probe.PREFILL_REPEATS
    assert calls[:4] == ["b prefill", "a prefill", "a prefill", "b prefill"]
    assert calls[2 * prefills:] == ["b step", "a step", "a step", "b step", "b step", "a step"]
    assert [len(s["decode_cpu_s"]) for s in sides] == [3, 3] and sides[1]["decode_cpu_s"] == [0.002] * 3
    assert [len(s["prefill_s"]) for s in sides] == [prefills, prefills]
    assert sides[0]["pid"] != sides[1]["pid"] and [s["granite_bench"] for s in sides] == ["a", "b"]


def test_a_side_that_fails_is_named_by_its_index(tmp_path, monkeypatch):
    def side_child(args, tree, seed, commands, replies):
        if tree == "broken":
            raise ImportError("planted")
        replies.write(json.dumps({"ready": True, "granite_bench": tree, "pid": 0}) + "\n")
        replies.flush()
        for line in commands:
            if line.strip() == "quit":
                break
    monkeypatch.setattr(ab_probe, "side_child", side_child)
    with pytest.raises(ab_probe.SideFailed, match="planted") as caught:
        ab_probe.lockstep_round(None, ["fine", "broken"], reps=2, seed=0)
    assert caught.value.index == 1


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_every_process_of_a_round_is_pinned_to_one_cpu_and_the_servers_mask_comes_back(tmp_path, monkeypatch):
    import os
    log = tmp_path / "masks.log"

    def side_child(args, tree, seed, commands, replies):
        with open(log, "a") as out:
            out.write(json.dumps(sorted(os.sched_getaffinity(0))) + "\n")
        replies.write(json.dumps({"ready": True, "granite_bench": tree, "pid": os.getpid()}) + "\n")
        replies.flush()
        for line in commands:
            if line.strip() == "quit":
                break
            replies.write(json.dumps({"cpu": 0.001, "wall": 0.001}) + "\n")
            replies.flush()
    monkeypatch.setattr(ab_probe, "side_child", side_child)
    before = os.sched_getaffinity(0)
    sides = ab_probe.lockstep_round(None, ["a", "b"], reps=1, seed=0)
    masks = [json.loads(line) for line in log.read_text().splitlines()]
    assert masks == [[sides[0]["cpu"]]] * 2 and sides[0]["cpu"] in before
    assert os.sched_getaffinity(0) == before


def test_a_round_times_each_prefill_alone_then_the_decode_steps_in_blocks_of_a_turn():
    prefills = [("prefill", 1)] * ab_probe.PREFILL_REPEATS
    assert ab_probe.turns(5, 1) == prefills + [("step", 1)] * 5
    assert ab_probe.turns(10, 4) == prefills + [("step", 4), ("step", 4), ("step", 2)]
