"""The timing gate's power on the user's path: `compare --baseline HEAD --candidate worktree` in a git checkout whose
model code carries planted busy work as an uncommitted edit.

gate/calibrate.py measures the gate on folder copies that wrap the runner; this campaign takes the path a user
takes instead. A scratch `git clone` of the repository is made once; for every scheduled comparison the decode step's
cost is measured here (CPU time, as calibrate.measure_costs does), a pure-Python loop worth `level` of that step is
written into the checkout's model code, at the top of the decode forward (PLANT_FUNCTION in PLANT_FILE), and the gate
runs exactly as `granite-bench compare --baseline HEAD --candidate worktree --no-deterministic` does from inside the
checkout (run_compare): HEAD becomes a detached git worktree in a temp folder, the candidate is the checkout itself.
The edit is then reverted with git. Level 0 is the unchanged checkout (nothing edited): every flag is a false alarm.
Each comparison is stored as it finishes (table gate_power, path 'compare', with the load average before and after
it and its per-round timings), so calibrate.power_table and the A/A resampling read it like the copies' campaign.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from . import ab
from .calibrate import (NULL, TABLE, CalibrationError, CalibrationSettings, arm_counts, check_settings,
                        comparison_row, iterations_for, measure_costs, schedule)

PATH_COPIES, PATH_COMPARE = "copies", "compare"
PATHS = (PATH_COPIES, PATH_COMPARE)
PLANT_FILE = Path("granite_bench") / "model" / "backend" / "decoder.py"
PLANT_FUNCTION = "token_generation"        # the model's decode forward: one call per decode step
PLANT_MARK = "# planted by granite_bench.gate.calibrate_path"


def plant_busy_work(checkout: Path, iterations: int, relative: Path = PLANT_FILE,
                    function: str = PLANT_FUNCTION) -> Path:
    """Write a loop of `iterations` pure-Python additions at the top of `function`'s body (after its docstring) in
    checkout/relative; the edited file. CalibrationError when the file or the function is not there."""
    path = checkout / relative
    if not path.is_file():
        raise CalibrationError(f"{path} is missing: the planted work goes into the model's decode forward there")
    text = path.read_text()
    found = [node for node in ast.walk(ast.parse(text))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function]
    if not found:
        raise CalibrationError(f"{path} defines no {function}(): plant the work in the model's decode forward")
    body = found[0].body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_docstring and len(body) == 1:
        line, indent = body[0].end_lineno, body[0].col_offset      # insert after a lone docstring
    else:
        anchor = body[1] if has_docstring else body[0]
        line, indent = anchor.lineno - 1, anchor.col_offset         # insert before the first statement
    pad = " " * indent
    loop = [f"{pad}_planted_total = 0  {PLANT_MARK}: {int(iterations)} iterations\n",
            f"{pad}for _planted_i in range({int(iterations)}):\n",
            f"{pad}    _planted_total += _planted_i\n"]
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:line] + loop + lines[line:]))
    return path


def scratch_checkout(repo: Path, dest: Path) -> Path:
    """A fresh `git clone` of repo at dest: its HEAD is repo's HEAD, its files are committed code only."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ab.git(dest.parent, "clone", "--quiet", str(repo), str(dest))
    return dest


def revert(checkout: Path) -> None:
    """Undo every edit of tracked files (the planted work): the checkout is its HEAD again, or CalibrationError."""
    ab.git(checkout, "checkout", "--", ".")
    if ab.git(checkout, "status", "--porcelain", "--untracked-files=no"):
        raise CalibrationError(f"{checkout} still differs from its HEAD after reverting the planted work")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def path_row(row: dict, load_before: tuple[float, float, float], step_s: float) -> dict:
    """The calibration row of a comparison on the user's path: which path, the loads around it, the step planted
    against."""
    return row | {"path": PATH_COMPARE, "load1_before": load_before[0], "load5_before": load_before[1],
                  "planted_step_ms": 1e3 * step_s}


def run_path_campaign(settings: CalibrationSettings, console=None, repo: Path | None = None,
                      log=None) -> pd.DataFrame:
    """Clone the repository, then for each scheduled comparison plant the level's work in the checkout's decode
    forward, run `compare --baseline HEAD --candidate worktree` (timings) in it, revert, store the row."""
    from ..results.metadata import collect_run_metadata, new_run_id, require_directions
    from ..results.store import ResultStore
    from .compare import CompareSettings, run_compare
    settings = replace(settings, prefill_level=None)  # the planted work sits in the decode step only
    check_settings(settings)
    repo = repo or ab.repo_root()
    if repo is None:
        raise CalibrationError("--path compare needs the package's git repository: run from a checkout of it")
    store = ResultStore(settings.results_dir)
    work = Path(settings.work_dir or tempfile.mkdtemp(prefix="granite-bench-power-path-"))
    checkout = scratch_checkout(repo, work / "checkout")
    base_compare = replace(CompareSettings(baseline="HEAD", candidate=ab.WORKTREE, deterministic=False, store=False,
                                           results_dir=work / "compare-store"), **settings.compare)
    campaign = new_run_id()
    config = {"calibration": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
              "path": PATH_COMPARE, "repo": str(repo), "head": ab.git(checkout, "rev-parse", "HEAD"),
              "compare": {k: str(v) for k, v in asdict(base_compare).items()}}
    rows = []
    try:
        for arm, index in schedule(arm_counts(settings)):
            costs = measure_costs(base_compare.timing_model, base_compare.timing_layers, base_compare.threads,
                                  steps=32, rounds=3)
            iterations = iterations_for(arm, costs)
            if arm.kind != NULL:
                plant_busy_work(checkout, iterations[0])
            load_before = load_average()
            start = time.perf_counter()
            try:
                with contextlib.chdir(checkout):
                    comparison = run_compare(base_compare)
            finally:
                revert(checkout)
            seconds = time.perf_counter() - start
            row = path_row(comparison_row(arm, index, comparison, seconds, iterations, settings, campaign),
                           load_before, costs["decode_step_s"])
            row["costs_json"] = json.dumps(costs)
            meta = collect_run_metadata(suite="gate-power", device="cpu", dtype="float32", config=config,
                                        seed=index)
            store.write_run(meta, {TABLE: require_directions(TABLE, [row])})
            rows.append(row)
            line = (f"{arm.name} #{index}: detected={row['detected']} decode cpu x{row['decode_cpu_ratio']:.3f} "
                    f"(wall x{row['decode_ratio']:.3f}) prefill cpu x{row['prefill_cpu_ratio']:.3f} "
                    f"rounds {row['rounds']} {seconds:.0f}s step {row['planted_step_ms']:.2f} ms "
                    f"iterations {iterations[0]} load {load_before[0]:.2f}->{row['load1']:.2f} "
                    f"{row['flagged_metrics']}")
            for sink in (console.print if console is not None else None, log):
                if sink is not None:
                    sink(line)
    finally:
        if settings.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A power table as a GitHub markdown table (floats to `digits` places)."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"
