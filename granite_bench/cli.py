"""granite-bench command line: argument parsing and wiring only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parity, performance and accuracy harness for a Neuron-style IBM Granite implementation.")
# Rich falls back to 80 columns without a terminal (CI logs): give tables room there.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

SUITES = Path(__file__).resolve().parents[1] / "suites"


@app.callback()
def granite_bench():
    """Parity, performance and accuracy harness for a Neuron-style IBM Granite implementation."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class BadInput(Exception):
    """Raised for input the user must change; printed as one line, exit code 2."""


def bad_input_types() -> tuple:
    from .model.config import NeuronConfigError
    from .model.head_sharding import TPDegreeError
    from .parity.prompts import PromptError
    from .reference.presets import PresetError
    from .model.state_dict import CheckpointError
    from .reference.goldens import GoldenError
    from .reference.hf_reference import MemoryBudgetError
    from .runtime.runner import InputError
    return (BadInput, NeuronConfigError, TPDegreeError, PromptError, PresetError, InputError, GoldenError,
            MemoryBudgetError, CheckpointError)


def run_failure_types() -> tuple:
    """Errors that end a run (a TP rank died or hung, a static graph recompiled or broke): one line, exit 1."""
    from .runtime.distributed import TPRankError
    from .runtime.graphs import GraphBreakError, RecompilationError
    return TPRankError, RecompilationError, GraphBreakError


def fail(message: str, code: int = 2):
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{option} takes comma-separated integers, e.g. {option} 32,64,128") from None
    if not values or any(v < 1 for v in values):
        raise BadInput(f"{option} takes positive integers, e.g. {option} 32,64,128")
    return values


def load_suite(path: Path) -> dict:
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"suite file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise BadInput(f"suite file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInput(f"suite file {path} must be a mapping of options")
    return data


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


@app.command()
def parity(
    model: Optional[str] = typer.Option(None, help="Preset name (suites/models) or local HF Granite checkpoint dir."),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 for the implementation."),
    batch_size: Optional[int] = typer.Option(None, help="Compiled batch size (prompts run in batches of it)."),
    seq_len: Optional[int] = typer.Option(None, help="Static KV-cache length (prompt + new tokens)."),
    buckets: Optional[str] = typer.Option(None, help="Context-encoding buckets, e.g. 32,64,128."),
    num_tokens: Optional[int] = typer.Option(None, help="Greedy tokens generated and teacher-forced per prompt."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts file: .txt (one per line), .yaml/.json list."),
    tolerance: Optional[str] = typer.Option(None, help="Profile name or map, e.g. '50:1e-5:0.04;div=0.13'."),
    tp: int = typer.Option(1, help="Tensor-parallel degree."),
    device: str = typer.Option("cpu", help="cpu | cuda | neuron."),
    compile: bool = typer.Option(False, "--compile/--eager", help="torch.compile each (phase, bucket) graph."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
    suite: Path = typer.Option(SUITES / "parity" / "default.yaml", help="Suite file giving the defaults."),
    results_dir: Path = typer.Option(Path("results"), help="Where the parquet results go."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results to the parquet store."),
    goldens: Optional[Path] = typer.Option(None, help="Goldens dir from `granite-bench reference --out`: the HF "
                                                      "reference model is not loaded."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget of the HF reference, e.g. 8GiB (layers "
                                                         "beyond it stream from disk)."),
):
    """Logits and greedy tokens of the implementation against the HF Transformers CPU reference."""
    try:
        from .parity.command import ParityArgs, run_parity_command
        spec = load_suite(suite)
        args = ParityArgs(
            model=model or spec.get("model", "tiny-gqa"),
            dtype=dtype or spec.get("dtype", "float32"),
            batch_size=batch_size or spec.get("batch_size", 4),
            seq_len=seq_len or spec.get("seq_len", 256),
            buckets=parse_int_list(buckets, "--buckets") or spec.get("buckets"),
            num_tokens=num_tokens if num_tokens is not None else spec.get("num_tokens", 16),
            prompts=prompts, suite_prompts=spec.get("prompts"), tolerance=tolerance, tp=tp, device=device,
            compile=compile, layers=layers, results_dir=results_dir if save else None, suite=str(suite.stem),
            goldens=goldens, max_memory=max_memory)
        passed = run_parity_command(args, console, progress_bar)
    except bad_input_types() as err:
        fail(str(err))
    except run_failure_types() as err:
        fail(str(err), code=1)
    raise typer.Exit(0 if passed else 1)


@app.command()
def reference(
    model: Optional[str] = typer.Option(None, help="Preset name (suites/models) or local HF Granite checkpoint dir."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts file: .txt (one per line), .yaml/.json list."),
    num_tokens: Optional[int] = typer.Option(None, help="Greedy tokens per prompt."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget for the fp32 reference, e.g. 8GiB."),
    out: Optional[Path] = typer.Option(None, help="Goldens directory (default: the golden cache parity reuses)."),
    suite: Path = typer.Option(SUITES / "parity" / "default.yaml", help="Suite file giving the defaults."),
):
    """Run the HF fp32 reference once and store its goldens for `parity` (reused automatically, or --goldens)."""
    try:
        from .reference.command import ReferenceArgs, run_reference_command
        spec = load_suite(suite)
        run_reference_command(ReferenceArgs(
            model=model or spec.get("model", "tiny-gqa"), layers=layers, prompts=prompts,
            suite_prompts=spec.get("prompts"), num_tokens=num_tokens if num_tokens is not None
            else spec.get("num_tokens", 16), max_memory=max_memory, out=out), console)
    except bad_input_types() as err:
        fail(str(err))


@app.command()
def perf(
    model: Optional[str] = typer.Option(None, help="Preset name (suites/models) or local HF Granite checkpoint dir."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
    dtype: Optional[str] = typer.Option(None, help="Grid of dtypes, e.g. float32,bfloat16."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | neuron."),
    tp: Optional[str] = typer.Option(None, help="Grid of tensor-parallel degrees, e.g. 1,2,4,8."),
    batch_sizes: Optional[str] = typer.Option(None, help="Grid of compiled batch sizes, e.g. 1,4."),
    buckets: Optional[str] = typer.Option(None, help="Grid of context-encoding buckets, e.g. 32,128."),
    new_tokens: Optional[int] = typer.Option(None, help="Fixed output length per prompt (no early stop)."),
    seq_len: Optional[int] = typer.Option(None, help="Static KV-cache length (default: next power of two that "
                                                      "holds the largest bucket + new tokens)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--eager", help="torch.compile each graph (default: "
                                                                         "the suite's list)."),
    rounds: Optional[int] = typer.Option(None, help="Timed generations per implementation and point."),
    warmup: Optional[int] = typer.Option(None, help="Untimed generations first (compilation happens there)."),
    baselines: Optional[str] = typer.Option(None, help="HF baselines: hf_eager,hf_static, or none."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: the cores available)."),
    shard: Optional[str] = typer.Option(None, help="Run slice i of n of the grid, e.g. 2/4."),
    suite: Path = typer.Option(SUITES / "perf" / "default.yaml", help="Suite file giving the grid."),
    results_dir: Path = typer.Option(Path("results"), help="Where the parquet results go."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results (and resume from them)."),
    fresh: bool = typer.Option(False, "--fresh", help="Measure points again even if stored for this commit."),
):
    """Latency, throughput and roofline over a tp x batch x bucket grid, with HF Transformers side by side."""
    try:
        from .perf.command import PerfArgs, build_spec, parse_names, run_perf_command
        from .perf.grid import GridError
        try:
            spec = build_spec(load_suite(suite), model=model, layers=layers, dtypes=parse_names(dtype),
                              device=device, tp=parse_int_list(tp, "--tp"),
                              batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
                              buckets=parse_int_list(buckets, "--buckets"), new_tokens=new_tokens, seq_len=seq_len,
                              compile=None if compile is None else [compile], rounds=rounds, warmup=warmup,
                              baselines=parse_names(baselines), threads=threads)
            run_perf_command(PerfArgs(spec, suite=suite.stem, shard=shard, results_dir=results_dir if save else None,
                                      fresh=fresh), console, progress_bar)
        except GridError as err:
            raise BadInput(str(err)) from None
    except bad_input_types() as err:
        fail(str(err))
    except run_failure_types() as err:
        fail(str(err), code=1)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command()
def results(
    results_dir: Path = typer.Option(Path("results"), help="The parquet store to read."),
    table: Optional[str] = typer.Option(None, help="Print one table, e.g. parity_summary (default: the runs)."),
    sql: Optional[str] = typer.Option(None, help="DuckDB SQL over the store; each table is a view of its name."),
    all_columns: bool = typer.Option(False, "--all-columns", help="With --table: keep the run metadata columns."),
    limit: int = typer.Option(50, help="Rows shown (the last N); 0 shows all."),
    csv: Optional[Path] = typer.Option(None, help="Also write the rows to this CSV file."),
):
    """List runs (id, time, git sha, suite, device, verdicts), or print a table or a query result."""
    from .results.listing import run_results_command
    from .results.store import ResultStore
    try:
        run_results_command(ResultStore(results_dir), console, err_console, table=table, sql=sql,
                            all_columns=all_columns, limit=limit, csv=csv)
    except ValueError as err:  # an unknown table, or SQL DuckDB refuses: one line, exit 2
        fail(str(err))


@app.command()
def compare(
    baseline: str = typer.Option(..., help="Stored run id(s) (comma-separated, prefixes ok) or a git ref (HEAD~1)."),
    candidate: str = typer.Option("worktree", help="Run id(s), a git ref (HEAD), or 'worktree' (files as they are)."),
    results_dir: Path = typer.Option(Path("results"), help="The parquet store (read, and written unless --no-save)."),
    trials: int = typer.Option(8, help="Interleaved timing trials per side (at least 6)."),
    reps: int = typer.Option(32, help="Decode steps per trial; a trial's value is their median."),
    floor: float = typer.Option(0.10, help="Practical floor: slowdowns below it never fail (0.10 = 10%)."),
    alpha: float = typer.Option(0.05, help="Significance level after Holm correction across the gated metrics."),
    error_growth: float = typer.Option(2.0, help="An error metric fails when it grows past this factor."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Interleaved A/B timing when both are code."),
    deterministic: bool = typer.Option(True, "--deterministic/--no-deterministic", help="Gate parity/eval rows."),
    rerun: bool = typer.Option(False, "--rerun", help="Run the deterministic commands in code trees even when the "
                                                      "store has results of that commit."),
    det_command: Optional[list[str]] = typer.Option(None, "--det-command", help="Deterministic command run in a "
                                                    "code tree (repeatable; default: parity, eval)."),
    timing_model: str = typer.Option("tiny-gqa", help="Preset whose decode step is timed."),
    timing_layers: Optional[int] = typer.Option(None, help="Only the first N layers of the timing preset."),
    threads: int = typer.Option(1, help="torch threads in each timing worker."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the comparison (table 'comparisons')."),
    fail_on: str = typer.Option("all", help="Exit 1 on any regression ('all') or only on parity/eval ones "
                                            "('deterministic'; timings still measured and shown)."),
):
    """Candidate against baseline: parity/eval results gate exactly, timings statistically (exit 1 on regression)."""
    from .results.ab import TreeError
    from .results.compare import CompareError, CompareSettings, render, run_compare
    settings = CompareSettings(baseline=baseline, candidate=candidate, results_dir=results_dir, trials=trials,
                               reps=reps, floor=floor, alpha=alpha, error_growth=error_growth, timing=timing,
                               deterministic=deterministic, rerun=rerun,
                               commands=list(det_command) if det_command else ["parity", "eval"],
                               timing_model=timing_model, timing_layers=timing_layers, threads=threads, store=save)
    if fail_on not in ("all", "deterministic"):
        fail(f"--fail-on takes 'all' or 'deterministic', got {fail_on!r}")
    try:
        with progress_bar() as progress:
            task = progress.add_task("timing trials", total=None, visible=False)

            def on_trial(done: int, total: int):
                progress.update(task, total=total, completed=done, visible=True)
            comparison = run_compare(settings, console, on_trial)
    except (CompareError, TreeError) as err:
        fail(str(err))
    render(console, comparison)
    raise typer.Exit(1 if comparison.fails(fail_on) else 0)


@app.command()
def dashboard(
    results_dir: Path = typer.Option(Path("results"), help="The parquet store to draw."),
    out: Path = typer.Option(Path("dashboard"), help="Folder for index.html and assets/."),
):
    """Static HTML dashboard of the store (no network needed to view it)."""
    from .results.dashboard import build_dashboard
    from .results.store import ResultStore
    page = build_dashboard(ResultStore(results_dir), out)
    console.print(f"dashboard: {page}")


@app.command("eval")
def eval_(
    model: str = typer.Option("canary", help="Preset name or local HF Granite checkpoint dir (needs a tokenizer)."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated lm-eval tasks (default: the canary tasks)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 for the implementation."),
    device: str = typer.Option("cpu", help="cpu | cuda | neuron."),
    tp: int = typer.Option(1, help="Tensor-parallel degree."),
    limit: Optional[float] = typer.Option(None, help="Documents per task (or a fraction below 1)."),
    num_fewshot: Optional[int] = typer.Option(None, help="Few-shot examples per prompt."),
    batch_size: int = typer.Option(8, help="Compiled batch size the requests are packed into."),
    seq_len: int = typer.Option(256, help="Static KV-cache length (the longest request the runner takes)."),
    results_dir: Path = typer.Option(Path("results"), help="Where the parquet results go."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results to the parquet store."),
):
    """lm-eval accuracy through the implementation and the HF reference, compared sample by sample."""
    try:
        from .accuracy.command import EvalArgs, run_eval_command
        from .accuracy.tasks import TaskError
        try:
            args = EvalArgs(model, [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None, dtype,
                            device, tp, limit, num_fewshot, batch_size, seq_len, results_dir if save else None)
            passed = run_eval_command(args, console)
        except TaskError as err:
            raise BadInput(str(err)) from None
    except bad_input_types() as err:
        fail(str(err))
    except run_failure_types() as err:
        fail(str(err), code=1)
    raise typer.Exit(0 if passed else 1)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
