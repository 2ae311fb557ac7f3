"""`granite-bench compare`: a candidate against a baseline; deterministic results gate exactly, timings statistically.

A side is stored runs (run ids, or unique prefixes, comma-separated) or code: a git ref, HEAD, `worktree` (the files
as they are) or a folder holding granite_bench/.

- Deterministic results (parity_summary, eval_summary): for code, the store's runs of that commit when the tree is
  clean and the store has them, else the deterministic commands run in that tree into a scratch store. Rows are
  matched by their key columns; a worse verdict, a lower greedy match or accuracy, or an error metric grown past
  `error_growth` times the baseline fails.
- Timings: only when both sides are code, measured side by side (ab.py), gated by stats.gate_timings. Timings of
  stored runs were not measured side by side and are not compared.

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
    trials: int = 8
    reps: int = 32
    floor: float = stats.DEFAULT_FLOOR
    alpha: float = stats.DEFAULT_ALPHA
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


def run_compare(settings: CompareSettings, console=None, progress=None) -> Comparison:
    """Resolve both sides, gate their deterministic results and (both being code) their timings; store it."""
    if settings.trials < stats.MIN_TRIALS:
        raise CompareError(f"--trials must be at least {stats.MIN_TRIALS} (interleaved trials per side)")
    if not 1 <= settings.reps <= MAX_REPS:
        raise CompareError(f"--reps must be between 1 and {MAX_REPS} (decode steps per trial)")
    store = ResultStore(settings.results_dir)
    repo = ab.repo_root(Path.cwd()) or ab.repo_root()
    notes: list[str] = []
    rows: list[Row] = []
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
            try:
                result = ab.run_interleaved(baseline.tree, candidate.tree, trials=settings.trials,
                                            reps=settings.reps, probe_args=probe_args(settings), on_trial=progress)
                rows += timing_rows(result, settings.floor, settings.alpha, setup)
            except ab.TreeError as err:
                if err.tree is not baseline.tree:
                    raise CompareError(str(err)) from None
                # An older baseline may predate the runner interface the probe drives: say so, do not fail.
                notes.append(f"timings not compared: the baseline tree cannot be timed ({str(err).splitlines()[0]})")
        elif settings.timing:
            notes.append("timings not compared: stored runs were not measured side by side; pass git refs "
                         "(e.g. --baseline HEAD~1 --candidate worktree) to gate timings")
    settings_record = asdict(settings) | {"results_dir": str(settings.results_dir)}
    comparison = Comparison(baseline, candidate, rows, notes, settings_record)
    if settings.store:
        comparison.settings["stored_as"] = str(store_comparison(store, comparison) or "")
    return comparison


__all__ = ["CompareError", "CompareSettings", "Comparison", "Row", "compare_deterministic", "judge_value", "render",
           "run_compare", "to_json"]
