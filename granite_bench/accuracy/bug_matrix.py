"""The seeded-bug matrix: every seeded bug (`seeded_bugs.SEEDED_BUGS`) against every canary task, as a benchmark.

Each cell is the task's own lm-eval metric, through the implementation (runner + lm-eval adapter), with the bug
patched in, next to the clean implementation's value. A bug is *caught by accuracy* when some accuracy task falls
far below the clean canary (FAR_BELOW); perplexity is recorded too. A temperature-only bug such as a logits
scaling mistake moves no argmax: recall (single-token choices) and copy (greedy) cannot see it, canary_lists (summed
log-likelihoods over choices of different token counts) can.

    python -m granite_bench.accuracy.bug_matrix --results-dir results      # stores table "bug_matrix"

Rows go to the result store's table `bug_matrix` (schema version in results.metadata.SCHEMA_VERSION) with the
run's metadata; the dashboard shows the latest run's matrix.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from .seeded_bugs import SEEDED_BUGS
from .tasks import DEFAULT_TASKS, load_tasks, task_manager

TABLE = "bug_matrix"
# task -> (lm-eval metric key, higher is better)
TASK_METRICS = {"canary_recall": ("acc,none", True), "canary_lists": ("acc,none", True),
                "canary_copy": ("exact_match,strip", True),
                "canary_text": ("word_perplexity,none", False)}
FAR_BELOW = 0.3             # an accuracy at least this much (absolute) under the clean canary's
PERPLEXITY_FACTOR = 2.0     # a perplexity at least this many times the clean canary's
DEFAULT_LIMIT = 40


def score_tasks(runner, tasks: list[str], limit: int | None) -> dict[str, float]:
    """{task: its main metric} from one lm-eval run through the implementation (tasks loaded fresh)."""
    import lm_eval

    from .lm_adapter import GraniteRunnerLM

    runner.reset()
    results = lm_eval.simple_evaluate(model=GraniteRunnerLM(runner), tasks=load_tasks(tasks).tasks,
                                      task_manager=task_manager(), limit=limit, bootstrap_iters=0,
                                      log_samples=False)["results"]
    return {task: float(results[task][TASK_METRICS[task][0]]) for task in tasks}


def is_far_worse(task: str, value: float, clean: float) -> bool:
    higher_is_better = TASK_METRICS[task][1]
    if higher_is_better:
        return value <= clean - FAR_BELOW
    return value >= PERPLEXITY_FACTOR * clean


def matrix_rows(clean: dict[str, float], scored: dict[str, dict[str, float]], seconds: dict[str, float]
                ) -> list[dict]:
    """One row per (bug, task), the clean implementation first as bug "none"."""
    rows = []
    for bug_name, values in {"none": clean, **scored}.items():
        bug = SEEDED_BUGS.get(bug_name)
        for task, value in values.items():
            metric, higher_is_better = TASK_METRICS[task]
            rows.append({
                "bug": bug_name, "bug_class": bug.bug_class if bug else "none",
                "in_context_encoding": bug.in_context_encoding if bug else None,
                "task": task, "metric": metric.split(",")[0], "is_accuracy": higher_is_better,
                "value": value, "clean_value": clean[task], "change": value - clean[task],
                "far_worse": bug is not None and is_far_worse(task, value, clean[task]),
                "seconds": seconds[bug_name],
            })
    return rows


def run_bug_matrix(model: str = "canary", bugs: list[str] | None = None, tasks: list[str] | None = None,
                   limit: int | None = DEFAULT_LIMIT, batch_size: int = 8, seq_len: int = 128,
                   log=print) -> pd.DataFrame:
    """Clean scores, then each bug's, on one runner (fp32, CPU); a frame of `matrix_rows`."""
    from ..runtime.select import build_runner

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tasks = list(tasks or DEFAULT_TASKS)
    names = list(bugs or SEEDED_BUGS)
    unknown = [b for b in names if b not in SEEDED_BUGS]
    if unknown:
        raise ValueError(f"unknown bug(s) {', '.join(unknown)}: use some of {', '.join(SEEDED_BUGS)}")
    runner = build_runner(model, dtype="float32", batch_size=batch_size, seq_len=seq_len)
    seconds, scored = {}, {}
    try:
        start = time.perf_counter()
        clean = score_tasks(runner, tasks, limit)
        seconds["none"] = time.perf_counter() - start
        log(f"clean: {clean}")
        for name in names:
            start = time.perf_counter()
            with SEEDED_BUGS[name].patch():
                scored[name] = score_tasks(runner, tasks, limit)
            seconds[name] = time.perf_counter() - start
            log(f"{name}: {scored[name]}")
    finally:
        runner.close()
    return pd.DataFrame(matrix_rows(clean, scored, seconds))


def bug_verdicts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per bug: whether some accuracy task is far below the clean canary, and whether any task is far worse."""
    bugs = frame[frame["bug"] != "none"]
    return bugs.groupby("bug", sort=False).apply(lambda part: pd.Series({
        "bug_class": part["bug_class"].iloc[0],
        "caught_by_accuracy": bool((part["far_worse"] & part["is_accuracy"]).any()),
        "caught_by_any_task": bool(part["far_worse"].any()),
    }), include_groups=False).reset_index()


def store_matrix(frame: pd.DataFrame, results_dir: Path | str, settings: dict) -> Path:
    from ..results import ResultStore, collect_run_metadata

    from ..results.metadata import require_directions

    meta = collect_run_metadata(suite="eval/bug-matrix", device="cpu", dtype="float32", config=settings, seed=0)
    rows = require_directions(TABLE, frame.assign(model=settings["model"], limit=settings["limit"]))
    return ResultStore(results_dir).write_run(meta, {TABLE: rows})[0]


def pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """bug x task table of values (the clean row first)."""
    table = frame.pivot_table(index="bug", columns="task", values="value", sort=False)
    return table.reindex(list(dict.fromkeys(frame["bug"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="canary")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="documents per task")
    parser.add_argument("--bugs", nargs="*", help=f"some of {', '.join(SEEDED_BUGS)} (default: all)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    frame = run_bug_matrix(args.model, args.bugs, limit=args.limit)
    settings = {"model": args.model, "limit": args.limit, "bugs": args.bugs or list(SEEDED_BUGS),
                "tasks": list(DEFAULT_TASKS), "far_below": FAR_BELOW, "perplexity_factor": PERPLEXITY_FACTOR}
    path = store_matrix(frame, args.results_dir, settings)
    print(pivot(frame).to_string(float_format=lambda v: f"{v:.3f}"))
    print(bug_verdicts(frame).to_string(index=False))
    print(f"stored {path} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
