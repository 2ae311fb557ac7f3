"""`granite-bench eval` end to end: lm-eval tasks through the implementation and the reference, stored, reported."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .run import EvalOutcome, run_eval


@dataclass
class EvalArgs:
    model: str
    tasks: list[str] | None
    dtype: str
    device: str
    tp: int
    limit: float | None
    num_fewshot: int | None
    batch_size: int
    seq_len: int
    results_dir: Path | None
    seed: int = 0


def run_eval_command(args: EvalArgs, console) -> bool:
    console.print(f"[bold]eval[/] {escape(str(args.model))} · {args.dtype} · tp {args.tp} · {args.device} · "
                  f"tasks {', '.join(args.tasks) if args.tasks else 'canary defaults'}"
                  f"{f' · limit {args.limit:g}' if args.limit else ''}")
    with console.status("running the tasks through the implementation, then through the HF reference"):
        outcome = run_eval(args.model, args.tasks, dtype=args.dtype, device=args.device, tp_degree=args.tp,
                           limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                           seq_len=args.seq_len)
    for line in outcome.skipped:
        console.print(f"[yellow]skipped:[/] {line}")
    render(console, outcome)
    if args.results_dir is not None:
        paths = store(args, outcome)
        console.print(f"results: {', '.join(str(p) for p in paths)}", markup=False)
    return outcome.passed


def cell(value, fmt: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def render(console, outcome: EvalOutcome) -> None:
    table = Table(title="lm-eval through the implementation vs the HF reference (same weights)", title_justify="left")
    for column in ("task", "metric", "impl", "± stderr", "reference", "Δ", "argmax agree", "gen agree",
                   "max |Δ loglik|", "mean |Δ loglik|", "truncated", "verdict"):
        table.add_column(column, justify="right")
    for row in outcome.summary.to_dict("records"):
        table.add_row(row["task"], row["metric"], cell(row["impl_value"]), cell(row["impl_stderr"]),
                      cell(row["ref_value"]), cell(row["difference"], "+.3f"), cell(row["argmax_agreement"], ".1%"),
                      cell(row["generation_agreement"], ".1%"), cell(row["max_abs_delta_loglik"], ".2e"),
                      cell(row["mean_abs_delta_loglik"], ".2e"), str(row["truncated_requests"]),
                      "[green]pass[/]" if row["passed"] else f"[red]FAIL[/] {row['failures']}")
    console.print(table)
    if outcome.passed:
        console.print("[bold green]PASS[/] every task within the thresholds of suites/eval/thresholds.yaml")
        return
    worst = outcome.worst_samples(3)
    console.print("[bold red]FAIL[/] worst samples:")
    console.print(worst.to_string(index=False, max_colwidth=60))


def store(args: EvalArgs, outcome: EvalOutcome) -> list[Path]:
    from ..results import ResultStore, collect_run_metadata
    from ..results.metadata import require_directions
    meta = collect_run_metadata(suite="eval", device=args.device, dtype=args.dtype, config=outcome.settings,
                                seed=args.seed)
    common = {"model": args.model, "tp_degree": args.tp}
    samples = outcome.samples.assign(**common)
    summary = outcome.summary.drop(columns=["dtype"], errors="ignore").assign(**common)
    return ResultStore(args.results_dir).write_run(meta, {"eval_samples": require_directions("eval_samples", samples),
                                                          "eval_summary": require_directions("eval_summary", summary)})
