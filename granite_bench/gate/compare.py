"""`granite-bench compare`: a candidate against a baseline; deterministic results gate exactly, timings statistically.

A side is stored runs (run ids, or unique prefixes, comma-separated) or code: a git ref, HEAD, `worktree` (the files
as they are) or a folder holding granite_bench/.

- Deterministic results (parity_summary, eval_summary): for code, the store's runs of that commit when the tree is
  clean and the store has them, else the deterministic commands run in that tree into a scratch store. Rows are
  matched by their key columns; a worse verdict, a lower greedy match or accuracy, or an error metric grown past
  `error_growth` times the baseline fails.
- Timings: only when both sides are code, measured side by side (ab.py). The default gate (design 'sequential') is
  paired and sequential: each round is a fresh process per side timed in lockstep (every prefill and decode step run
  in A and B in turn), the test is a one-sided Wilcoxon signed-rank test of the per-round log ratios of the trial
  thread's CPU time (clock 'cpu'; wall time is reported beside it), decided at a few looks (12, 24, 48 rounds) with
  alpha spent over them (stats.SequentialPlan), stopping early when the answer is clear. Design 'pooled' is the earlier gate (Mann-Whitney on the pooled per-trial medians
  of wall time, stats.gate_timings). gate/calibrate.py measures what each detects (`granite-bench gate-power`).
  Timings of stored runs were not measured side by side and are not compared.

The comparison is stored in the `comparisons` table, one row per line of the printed table.

This module wires the pieces: sides.py resolves each side, verdict.py judges, ab.py times code trees against each
other, report.py stores and prints.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..results import stats
from ..results.store import ResultStore
from . import ab
from .report import render, store_comparison, to_json
from .sides import Side, deterministic_rows, resolve_side
from .verdict import (DEFAULT_ERROR_GROWTH, REGRESSION, CompareError, Row, compare_deterministic, judge_value,
                      timing_rows)

FAIL_SCOPES = ("all", "deterministic")
DESIGNS = ("sequential", "pooled")
SEQUENTIAL_FLOOR = 0.03        # slowdowns under 3% never fail (measured power: see gate/calibrate.py, README)
SEQUENTIAL_ALPHA = 0.01        # false-alarm bound over all looks
MAX_REPS = 200                 # decode steps per trial: positions stay inside the probe's 256-token cache

# The commands that give a tree's deterministic results; each gets --results-dir and runs only if the tree has it.
DETERMINISTIC_COMMANDS = ("parity", "eval")


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    rows: list[Row]
    notes: list[str]
    settings: dict
    timings: ab.ABResult | None = None     # the interleaved trials behind the timing rows (None: not timed)
    warnings: list[str] = field(default_factory=list)   # what makes the verdict mean less than it says

    @property
    def regressed(self) -> bool:
        return any(r.verdict == REGRESSION for r in self.rows)

    def fails(self, scope: str = "all") -> bool:
        """Whether to exit 1: any regression ('all'), or only an exact-gate one ('deterministic')."""
        if scope not in FAIL_SCOPES:
            raise CompareError(f"--fail-on must be one of {', '.join(FAIL_SCOPES)}, got {scope!r}")
        kinds = {"all": ("deterministic", "timing"), "deterministic": ("deterministic",)}[scope]
        return any(r.verdict == REGRESSION and r.kind in kinds for r in self.rows)


@dataclass
class CompareSettings:
    baseline: str
    candidate: str = "worktree"
    results_dir: Path = Path("results")
    trials: int = 48                # sequential: rounds at the last look; pooled: trials per side
    reps: int = 32
    floor: float = SEQUENTIAL_FLOOR
    alpha: float = SEQUENTIAL_ALPHA
    design: str = "sequential"      # sequential (paired, alpha-spending looks) | pooled (the earlier gate)
    clock: str = "cpu"              # the gated clock: cpu (thread CPU time) | wall | both
    looks: int = 3                  # sequential: looks at trials/4, trials/2, trials (for 3)
    error_growth: float = DEFAULT_ERROR_GROWTH
    timing: bool = True
    deterministic: bool = True
    rerun: bool = False
    commands: list[str] = field(default_factory=lambda: list(DETERMINISTIC_COMMANDS))
    timing_model: str = "tiny-gqa"
    timing_layers: int | None = None
    threads: int = 1
    store: bool = True


def probe_args(settings: CompareSettings) -> list[str]:
    args = ["--model", settings.timing_model, "--threads", str(settings.threads)]
    if settings.timing_layers:
        args += ["--layers", str(settings.timing_layers)]
    return args


def sequential_plan(settings: CompareSettings) -> stats.SequentialPlan:
    """Looks at trials / 2**(looks-1-i): 12, 24, 48 for 48 trials and 3 looks."""
    looks = tuple(sorted({max(1, round(settings.trials / 2 ** (settings.looks - 1 - i)))
                          for i in range(settings.looks)}))
    return stats.SequentialPlan(looks=looks, alpha=settings.alpha)


def gated_metrics(clock: str) -> tuple[str, ...]:
    return {"cpu": ab.CPU_METRICS, "wall": ab.WALL_METRICS, "both": ab.TIMED_METRICS}[clock]


def check_timing_settings(settings: CompareSettings) -> None:
    if settings.design not in DESIGNS:
        raise CompareError(f"--design must be one of {', '.join(DESIGNS)}, got {settings.design!r}")
    if settings.clock not in stats.CLOCKS:
        raise CompareError(f"--clock must be one of {', '.join(stats.CLOCKS)}, got {settings.clock!r}")
    if settings.trials < stats.MIN_TRIALS:
        raise CompareError(f"--trials must be at least {stats.MIN_TRIALS} (interleaved trials per side)")
    if not 1 <= settings.reps <= MAX_REPS:
        raise CompareError(f"--reps must be between 1 and {MAX_REPS} (decode steps per trial)")
    if not 0 < settings.alpha < 1:
        raise CompareError("--alpha must be between 0 and 1")
    if settings.design == "sequential":
        if settings.looks < 1:
            raise CompareError("--looks must be at least 1")
        if settings.trials / 2 ** (settings.looks - 1) < stats.MIN_TRIALS:
            raise CompareError(f"--trials {settings.trials} with --looks {settings.looks} puts the first look under "
                               f"{stats.MIN_TRIALS} rounds: raise --trials or lower --looks")


def sequential_stop(settings: CompareSettings, plan: stats.SequentialPlan, metrics: tuple[str, ...] | None = None):
    """The live gate's stopping rule: at each look, stop when the look decides (on `metrics`, default: the gated
    clock's decode step and prefill)."""
    metrics = metrics or gated_metrics(settings.clock)

    def stop(per_trial, rounds: int) -> bool:
        look = plan.look_index(rounds)
        if look is None:
            return False
        decision, _ = stats.sequential_look({m: per_trial[m] for m in metrics}, plan, look, settings.floor)
        return decision != stats.CONTINUE
    return stop


def judge_timings(settings: CompareSettings, result: ab.ABResult, setup: str) -> list[Row]:
    """The gate's verdicts on the recorded trials (the same rule the live stop applied), other clocks reported."""
    if settings.design == "pooled":
        tests = stats.gate_timings({m: result.per_trial[m] for m in ab.WALL_METRICS}, settings.floor,
                                   settings.alpha)
        detail = f"{result.trials}+{result.trials} trials, median of {result.reps} reps each, pooled Mann-Whitney"
        return timing_rows(result, tests, setup, detail)
    plan = sequential_plan(settings)
    metrics = gated_metrics(settings.clock)
    look = plan.look_index(result.trials)
    if look is None:
        raise CompareError(f"the trials ended after {result.trials} rounds, which is no look of {plan.looks}")
    decision, tests = stats.sequential_look({m: result.per_trial[m] for m in metrics}, plan, look, settings.floor)
    others = [m for m in ab.TIMED_METRICS if m not in metrics]
    reported = stats.judge_paired({m: result.per_trial[m] for m in others}, settings.floor, plan.alpha_at(look))
    detail = (f"{result.trials} paired rounds (looks {'/'.join(map(str, plan.looks))}, alpha {plan.alpha_at(look):.2g} "
              f"at this look), median of {result.reps} reps each")
    return timing_rows(result, tests, setup, detail, reported)


def run_compare(settings: CompareSettings, console=None, progress=None) -> Comparison:
    """Resolve both sides, gate their deterministic results and (both being code) their timings; store it."""
    check_timing_settings(settings)
    store = ResultStore(settings.results_dir)
    repo = ab.repo_root(Path.cwd()) or ab.repo_root()
    notes: list[str] = []
    rows: list[Row] = []
    result = None
    with contextlib.ExitStack() as stack:
        baseline = resolve_side(settings.baseline, store, repo, stack)
        candidate = resolve_side(settings.candidate, store, repo, stack)
        if settings.deterministic:
            for side in (baseline, candidate):
                notes += deterministic_rows(side, store, settings.commands, settings.rerun, console)
            rows += compare_deterministic(baseline.frames, candidate.frames, settings.error_growth)
            if not baseline.frames and not candidate.frames:
                notes.append("no deterministic results on either side")
        if settings.timing and baseline.tree is not None and candidate.tree is not None:
            setup = f"{settings.timing_model}{f' l{settings.timing_layers}' if settings.timing_layers else ''} " \
                    f"b1 fp32 cpu t{settings.threads}"
            stop = (sequential_stop(settings, sequential_plan(settings)) if settings.design == "sequential"
                    else None)
            try:
                result = ab.run_interleaved(baseline.tree, candidate.tree, trials=settings.trials,
                                            reps=settings.reps, probe_args=probe_args(settings), on_trial=progress,
                                            stop=stop)
                rows += judge_timings(settings, result, setup)
            except ab.TreeError as err:
                if err.tree is not baseline.tree:
                    raise CompareError(str(err)) from None
                # An older baseline may predate the runner interface the probe drives: say so, do not fail.
                notes.append(f"timings not compared: the baseline tree cannot be timed ({str(err).splitlines()[0]})")
        elif settings.timing:
            notes.append("timings not compared: stored runs were not measured side by side; pass git refs "
                         "(e.g. --baseline HEAD~1 --candidate worktree) to gate timings")
    settings_record = asdict(settings) | {"results_dir": str(settings.results_dir)}
    comparison = Comparison(baseline, candidate, rows, notes, settings_record, result,
                            side_warnings(baseline, candidate))
    if settings.store:
        comparison.settings["stored_as"] = str(store_comparison(store, comparison) or "")
    return comparison


def side_warnings(baseline: Side, candidate: Side) -> list[str]:
    """A run compared with itself, or parity runs judged under different tolerance profiles."""
    found = []
    if baseline.run_ids and sorted(baseline.run_ids) == sorted(candidate.run_ids):
        found.append(f"baseline and candidate are the same run ({', '.join(baseline.run_ids)}): this compares it "
                     f"with itself, so no regression can show")
    elif baseline.tree is not None and candidate.tree is not None and baseline.tree.sha == candidate.tree.sha \
            and baseline.tree.sha != "unknown" and not (baseline.tree.dirty or candidate.tree.dirty):
        found.append(f"baseline and candidate are the same commit ({baseline.tree.sha[:10]}): this compares it with "
                     f"itself")
    profiles = [tolerance_profiles(side.frames.get("parity_summary")) for side in (baseline, candidate)]
    if all(profiles) and profiles[0] != profiles[1]:
        found.append(f"the parity runs used different tolerance profiles (baseline: {', '.join(profiles[0])}; "
                     f"candidate: {', '.join(profiles[1])}): their verdicts were judged against different "
                     f"tolerances, so a changed verdict may be the profile, not the code")
    return found


def tolerance_profiles(frame) -> list[str]:
    """Names of the tolerance profiles a parity_summary frame's runs used (from their stored config)."""
    import json
    if frame is None or "config_json" not in frame.columns:
        return []
    names = set()
    for text in frame["config_json"].dropna().unique():
        try:
            names.add(str(json.loads(text)["profile"]["name"]))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(names)


__all__ = ["CompareError", "CompareSettings", "Comparison", "Row", "compare_deterministic", "judge_value", "render",
           "run_compare", "to_json"]
