"""granite-bench command line: argument parsing and wiring only.

Every command checks all of its options first, with light imports only (typer, rich, yaml, json and
granite_bench.preflight), and imports torch/transformers and loads models only after: bad input is answered in
about a second, with one line and exit code 2, and nothing written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from . import preflight
from .output import FORMATS, ReportConsole, console_width
from .preflight import BadInput

from .resources import suites_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parity, performance and accuracy harness for a Neuron-style IBM Granite implementation.")
# Without a terminal (CI logs, pipes) nothing is cut to a width; in one, wide tables fold (output.py).
# Under torchrun only rank 0 reports (the other ranks serve it); errors are printed by every rank.
QUIET = os.environ.get("RANK", "0") != "0"
console = ReportConsole(quiet=QUIET)
err_console = Console(stderr=True, width=console_width(sys.stderr))
FORMAT_HELP = "How tables are printed: table (for people), csv or json (tables alone on stdout, the rest on stderr)."

SUITES = suites_dir()
# A user's runs go under the directory the command runs in, never into the package or among the committed
# baselines in the repository's results/ (which CI and the dashboard read with --results-dir).
DEFAULT_RESULTS = Path("granite-bench-results")
RESULTS_HELP = "Where the parquet results go (default: ./granite-bench-results)."
INTERRUPTED = 130


@app.callback()
def granite_bench():
    """Parity, performance and accuracy harness for a Neuron-style IBM Granite implementation."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_transformers() -> None:
    """After the options are checked: silence transformers' logging and progress bars (imports it)."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def bad_input_types() -> tuple:
    from .model.config import NeuronConfigError
    from .model.backend.head_sharding import TPDegreeError
    from .parity.prompts import PromptError
    from .reference.presets import PresetError
    from .model.backend.checkpoint import CheckpointError
    from .model.registry import UnsupportedArchitecture
    from .reference.goldens import GoldenError
    from .reference.hf_reference import MemoryBudgetError
    from .runtime.runner import InputError
    return (BadInput, NeuronConfigError, TPDegreeError, PromptError, PresetError, InputError, GoldenError,
            MemoryBudgetError, CheckpointError, UnsupportedArchitecture)


def run_failure_types() -> tuple:
    """Errors that end a run (a TP rank died or hung, a static graph recompiled or broke): one line, exit 1."""
    from .runtime.tp_worker import TPRankError
    from .runtime.graphs import GraphBreakError, RecompilationError
    return TPRankError, RecompilationError, GraphBreakError


def one_line(message) -> str:
    """An error as one line: its text (paths, exception messages) with newlines folded."""
    text = str(message).strip() or type(message).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(message, code: int = 2):
    """Print `error: <message>` as plain text (never parsed as rich markup) and exit with code."""
    err_console.print(Text.assemble(("error: ", "bold red"), one_line(message)), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message) -> None:
    err_console.print(Text.assemble(("warning: ", "yellow"), one_line(message)), highlight=False, soft_wrap=True)


def interrupted(what: str, kept: str = "nothing was written"):
    fail(f"{what} interrupted (Ctrl-C): {kept}", code=INTERRUPTED)


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
    return preflight.suite_file(path)


def progress_bar(out: Console | None = None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=out or console, transient=False)


def report_console(table_format: str) -> ReportConsole:
    """The console a command reports through: the shared one for tables, one that writes csv/json otherwise."""
    if table_format not in FORMATS:
        raise BadInput(f"--format takes {', '.join(FORMATS)}, got {table_format!r}")
    return console if table_format == "table" else ReportConsole(table_format, quiet=QUIET)


def flags_show_no_type() -> None:
    """Typer's help prints a type beside every option, `<bool>` beside flags too (--save, --help), which take no
    value: show none for them."""
    from typer.core import TyperOption
    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)
    TyperOption.display_type_rich = display_type_rich


flags_show_no_type()


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
    moe_ep: int = typer.Option(1, "--moe-ep", help="Expert-parallel degree among the TP ranks (MoE models): each "
                                                  "rank group holds num_experts / N experts."),
    device: str = typer.Option("cpu", help="cpu | cuda | neuron."),
    compile: bool = typer.Option(False, "--compile/--eager", help="torch.compile each (phase, bucket) graph."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
    suite: Path = typer.Option(SUITES / "parity" / "default.yaml", help="Suite file giving the defaults."),
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help=RESULTS_HELP),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results to the parquet store."),
    goldens: Optional[Path] = typer.Option(None, help="Goldens dir from `granite-bench reference --out`: the HF "
                                                      "reference model is not loaded."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget of the HF reference, e.g. 8GiB (layers "
                                                         "beyond it stream from disk)."),
    ssm_state_dtype: str = typer.Option("float32", "--ssm-state-dtype", help="dtype the Mamba SSM state is kept in "
                                                                           "between steps (hybrid models)."),
    endpoint: Optional[str] = typer.Option(None, help="Judge what an OpenAI-compatible server at this URL serves "
                                                      "(vLLM's prompt_logprobs/logprobs) instead of the implementation."),
    top_k: int = typer.Option(20, help="With --endpoint: log-probabilities asked per position."),
    served_model_name: Optional[str] = typer.Option(None, help="With --endpoint: the model name to send."),
    table_format: str = typer.Option("table", "--format", help=FORMAT_HELP),
):
    """Logits and greedy tokens of the implementation against the HF Transformers CPU reference."""
    try:
        out = report_console(table_format)
        args = parity_args(model, dtype, batch_size, seq_len, buckets, num_tokens, prompts, tolerance, tp, device,
                           compile, layers, suite, results_dir if save else None, goldens, max_memory, moe_ep,
                           ssm_state_dtype)
        if endpoint is not None:
            from .serve.command import endpoint_parity_args
            endpoint_args = endpoint_parity_args(args, endpoint, top_k, served_model_name)
    except BadInput as err:
        fail(err)
    quiet_transformers()
    if endpoint is not None:
        from .serve.load_command import EndpointError
        from .serve.parity_command import run_endpoint_parity
        try:
            passed = run_endpoint_parity(endpoint_args, console)
        except KeyboardInterrupt:
            interrupted("parity")
        except (EndpointError, *bad_input_types()) as err:
            fail(err)
        raise typer.Exit(0 if passed else 1)
    try:
        from .parity.command import ParityArgs, run_parity_command
        passed = run_parity_command(ParityArgs(**args), out, lambda: progress_bar(out))
    except KeyboardInterrupt:
        interrupted("parity")
    except bad_input_types() as err:
        fail(err)
    except run_failure_types() as err:
        fail(f"{err} (nothing was written)", code=1)
    except OSError as err:
        fail(os_error_message(err, args["results_dir"]), code=1)
    raise typer.Exit(0 if passed else 1)


def os_error_message(err: OSError, results_dir: Path | None) -> str:
    """One line for a file error that ended a run: results it could not write, or a file it could not read."""
    name = getattr(err, "filename", None)
    reason = err.strerror or str(err)
    if results_dir is not None and name and Path(results_dir).resolve() in Path(name).resolve().parents:
        return f"could not write the results to {results_dir}: {reason} (nothing of this run was stored)"
    return f"{reason}: {name}" if name else f"{type(err).__name__}: {err}"


def parity_args(model, dtype, batch_size, seq_len, buckets, num_tokens, prompts, tolerance, tp, device, compile,
                layers, suite, results_dir, goldens=None, max_memory=None, moe_ep=1, ssm_state_dtype="float32"):
    """ParityArgs' fields, every option checked (suite values too) with light imports only; BadInput names what to
    change."""
    from .parity.tolerances import profile_for
    preflight.option_ranges("parity", batch_size=batch_size, seq_len=seq_len, num_tokens=num_tokens, tp=tp,
                            moe_ep=moe_ep, layers=layers)
    spec = preflight.parity_suite(suite)

    def pick(value, key, default):
        return value if value is not None else spec.get(key, default)

    model = pick(model, "model", "tiny-gqa")
    dtype = preflight.dtype_name(pick(dtype, "dtype", "float32"))
    batch_size, seq_len, num_tokens = pick(batch_size, "batch_size", 4), pick(seq_len, "seq_len", 256), \
        pick(num_tokens, "num_tokens", 16)
    bucket_list = parse_int_list(buckets, "--buckets") or spec.get("buckets")
    if bucket_list and max(bucket_list) > seq_len:
        raise BadInput(f"bucket {max(bucket_list)} is longer than --seq-len {seq_len}: lower --buckets or raise "
                       f"--seq-len")
    preflight.device_name(device)
    preflight.device_here(device, tp)
    config, folder = preflight.model_config(model, layers)
    preflight.model_shape(config, folder / "config.json" if folder is not None else f"model {model}")
    dims = preflight.check_model(config, tp, where=str(folder or model), ep=moe_ep)
    ssm_state_dtype = preflight.ssm_state_dtype(ssm_state_dtype, config)
    if folder is not None:
        preflight.check_weights(folder, config)
    preflight.check_memory(dims, dtype, batch_size, seq_len, device)
    preflight.memory_budget(max_memory, config)
    try:
        profile_for(dtype, tolerance)
    except ValueError as err:
        raise BadInput(str(err)) from None
    raw = preflight.prompts_file(prompts) if prompts is not None else spec.get("prompts")
    if not raw:
        raise BadInput("no prompts: pass --prompts FILE or give 'prompts' in the suite")
    # about 0.5 kB per stored position row; every prompt holds at most seq_len positions
    preflight.results_dir(results_dir, need_bytes=len(raw) * seq_len * 512)
    preflight.prompts_fit(preflight.known_prompt_lengths(raw, model, folder), max(bucket_list or [seq_len]),
                          seq_len, num_tokens)
    if goldens is not None and not Path(goldens).is_dir():
        raise BadInput(f"--goldens {goldens} does not exist or is not a directory: pass the folder that "
                       f"`granite-bench reference --out` wrote")
    if goldens is not None:  # corrupt goldens are refused before torch loads (standard library only)
        from .reference.golden_files import GoldenError, verify_golden_set
        try:
            verify_golden_set(goldens)
        except GoldenError as err:
            raise BadInput(str(err)) from None
    preflight.goldens_match(goldens, len(raw), num_tokens, folder)
    return dict(model=model, dtype=dtype, batch_size=batch_size, seq_len=seq_len, buckets=bucket_list,
                num_tokens=num_tokens, prompts=None, suite_prompts=raw, tolerance=tolerance, tp=tp, device=device,
                compile=compile, layers=layers, results_dir=results_dir, suite=str(Path(suite).stem),
                goldens=goldens, max_memory=max_memory, moe_ep=moe_ep, ssm_state_dtype=ssm_state_dtype)


@app.command()
def reference(
    model: Optional[str] = typer.Option(None, help="Preset name (suites/models) or local HF Granite checkpoint dir."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts file: .txt (one per line), .yaml/.json list."),
    num_tokens: Optional[int] = typer.Option(None, help="Greedy tokens per prompt."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget for the fp32 reference, e.g. 8GiB."),
    out: Optional[Path] = typer.Option(None, help="Goldens directory (default: the golden cache parity reuses)."),
    framework_dtype: Optional[str] = typer.Option(None, help="Also run HF's own model in this dtype (bfloat16, "
                                                  "float16) on the goldens: parity in that dtype is judged against it."),
    force: bool = typer.Option(False, "--force", help="Recompute goldens that are already there and match."),
    suite: Path = typer.Option(SUITES / "parity" / "default.yaml", help="Suite file giving the defaults."),
):
    """Run the HF fp32 reference once and store its goldens for `parity` (reused automatically, or --goldens)."""
    try:  # every option checked with light imports, before torch and transformers load
        preflight.option_ranges("reference", num_tokens=num_tokens, layers=layers)
        spec = preflight.parity_suite(suite)
        model = model or spec.get("model", "tiny-gqa")
        num_tokens = num_tokens if num_tokens is not None else spec.get("num_tokens", 16)
        config, folder = preflight.model_config(model, layers)
        preflight.model_shape(config, folder / "config.json" if folder is not None else f"model {model}")
        dims = preflight.check_model(config, None, where=str(folder or model))
        if folder is not None:
            preflight.check_weights(folder, config)
        preflight.memory_budget(max_memory, config)
        raw = preflight.prompts_file(prompts) if prompts is not None else spec.get("prompts")
        if not raw:
            raise BadInput("no prompts: pass --prompts FILE or give 'prompts' in the suite")
        if out is not None:
            preflight.output_dir(out)
            from .reference.golden_files import GoldenError, check_goldens_target  # standard library only
            try:
                check_goldens_target(out)
            except GoldenError as err:
                raise BadInput(str(err)) from None
        if framework_dtype is not None and preflight.dtype_name(framework_dtype, "--framework-dtype") == "float32":
            raise BadInput("--framework-dtype float32 is the reference itself: give bfloat16 or float16")
    except BadInput as err:
        fail(err)
    quiet_transformers()
    try:
        from .reference.command import ReferenceArgs, run_reference_command
        run_reference_command(ReferenceArgs(model=model, layers=layers, prompts=None, suite_prompts=raw,
                                            num_tokens=num_tokens, max_memory=max_memory, out=out,
                                            framework_dtype=framework_dtype, force=force), console)
    except KeyboardInterrupt:
        interrupted("reference", "no goldens were written")
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
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help=RESULTS_HELP),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results (and resume from them)."),
    fresh: bool = typer.Option(False, "--fresh", help="Measure points again even if stored for this commit."),
    table_format: str = typer.Option("table", "--format", help=FORMAT_HELP),
):
    """Latency, throughput and roofline over a tp x batch x bucket grid, with HF Transformers side by side."""
    from .perf.command import PerfArgs, build_spec, parse_names  # light: rich and the grid only
    from .perf.grid import GridError, parse_shard, shard_points
    try:
        try:
            out = report_console(table_format)
            preflight.option_ranges("perf", threads=threads, layers=layers, seq_len=seq_len, new_tokens=new_tokens,
                                    rounds=rounds, warmup=warmup)
            spec = build_spec(preflight.perf_suite(suite), model=model, layers=layers,
                              dtypes=[preflight.dtype_name(d) for d in parse_names(dtype)] if dtype else None,
                              device=device, tp=parse_int_list(tp, "--tp"),
                              batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
                              buckets=parse_int_list(buckets, "--buckets"), new_tokens=new_tokens, seq_len=seq_len,
                              compile=None if compile is None else [compile], rounds=rounds, warmup=warmup,
                              baselines=parse_names(baselines), threads=threads)
            preflight.positive(spec.threads, "threads")
            preflight.device_name(spec.device)
            preflight.device_here(spec.device, max(spec.tp))
            config, folder = preflight.model_config(spec.model, spec.layers)
            preflight.model_shape(config, folder / "config.json" if folder is not None else f"model {spec.model}")
            for degree in spec.tp:
                dims = preflight.check_model(config, degree, where=str(folder or spec.model))
            if folder is not None:
                preflight.check_weights(folder, config)
            for dtype_ in spec.dtypes:
                preflight.check_memory(dims, dtype_, max(spec.batch_sizes), spec.cache_length(), spec.device)
            index, count = parse_shard(shard)
            grid = spec.points()
            if not shard_points(grid, index, count):
                raise BadInput(f"shard {index}/{count} of this grid has no points (the grid has {len(grid)}): "
                               f"use --shard i/n with n <= {len(grid)}")
            preflight.results_dir(results_dir if save else None, need_bytes=len(grid) * (1 << 20))
        except GridError as err:
            raise BadInput(str(err)) from None
    except BadInput as err:
        fail(err)
    quiet_transformers()
    try:
        from .perf.command import run_perf_command
        run_perf_command(PerfArgs(spec, suite=suite.stem, shard=shard, results_dir=results_dir if save else None,
                                  fresh=fresh), out, lambda: progress_bar(out))
    except KeyboardInterrupt:
        interrupted("perf", "every point that finished before it is stored; run the same command again to resume")
    except bad_input_types() as err:
        fail(err)
    except run_failure_types() as err:
        fail(f"{err} (every point finished before it is stored)", code=1)
    except OSError as err:
        fail(os_error_message(err, results_dir if save else None), code=1)


@app.command()
def results(
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help="The parquet store to read (default: "
                                                            "./granite-bench-results)."),
    table: Optional[str] = typer.Option(None, help="Print one table, e.g. parity_summary (default: the runs)."),
    sql: Optional[str] = typer.Option(None, help="DuckDB SQL over the store; each table is a view of its name."),
    all_columns: bool = typer.Option(False, "--all-columns", help="With --table: keep the run metadata columns."),
    limit: int = typer.Option(50, help="Rows shown (the last N); 0 shows all."),
    csv: Optional[Path] = typer.Option(None, help="Also write the rows to this CSV file."),
    table_format: str = typer.Option("table", "--format", help=FORMAT_HELP),
):
    """List runs (id, time, git sha, suite, device, verdicts), or print a table or a query result."""
    try:
        out = report_console(table_format)
        preflight.non_negative(limit, "--limit")
        if csv is not None:
            preflight.output_file(csv, "--csv")
        if not results_dir.is_dir():
            raise BadInput(f"no results store at {results_dir}: run a command first or pass --results-dir")
    except BadInput as err:
        fail(err)
    from .results.listing import run_results_command
    from .results.store import ResultStore
    try:
        run_results_command(ResultStore(results_dir), out, err_console, table=table, sql=sql,
                            all_columns=all_columns, limit=limit, csv=csv)
    except ValueError as err:  # an unknown table, a writing or malformed query: one line, exit 2
        fail(err)


@app.command()
def compare(
    baseline: str = typer.Option(..., help="Stored run id(s) (comma-separated, prefixes ok) or a git ref (HEAD~1)."),
    candidate: str = typer.Option("worktree", help="Run id(s), a git ref (HEAD), or 'worktree' (files as they are)."),
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help="The parquet store (read, and written unless "
                                                            "--no-save; default: ./granite-bench-results)."),
    trials: int = typer.Option(48, help="Sequential design: paired rounds at the last look; pooled: trials per "
                                        "side (at least 6)."),
    reps: int = typer.Option(32, help="Decode steps per trial; a trial's value is their median."),
    floor: float = typer.Option(0.03, help="Practical floor: slowdowns below it never fail (0.03 = 3%)."),
    alpha: float = typer.Option(0.01, help="False-alarm bound: spent over the looks (sequential), after Holm "
                                           "correction across the gated metrics."),
    design: str = typer.Option("sequential", help="Timing gate: 'sequential' (paired rounds, looks at trials/4, "
                                                  "/2, /1, stops early when clear) or 'pooled' (the earlier gate)."),
    clock: str = typer.Option("cpu", help="Gated clock: 'cpu' (trial thread CPU time; wall time is reported "
                                          "beside it), 'wall', or 'both'."),
    looks: int = typer.Option(3, help="Sequential design: number of looks (halving back from --trials)."),
    error_growth: float = typer.Option(2.0, help="An error metric fails when it grows past this factor."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Interleaved A/B timing when both are code."),
    deterministic: bool = typer.Option(True, "--deterministic/--no-deterministic", help="Gate parity/eval rows."),
    rerun: bool = typer.Option(False, "--rerun", help="Run the deterministic commands in code trees even when the "
                                                      "store has results of that commit."),
    det_command: Optional[list[str]] = typer.Option(None, "--det-command", help="Deterministic command run in a "
                                                    "code tree (repeatable; default: parity, eval)."),
    timing_model: str = typer.Option("tiny-gqa", help="Preset whose decode step is timed."),
    timing_layers: Optional[int] = typer.Option(None, help="Only the first N layers of the timing preset."),
    threads: int = typer.Option(1, help="torch threads in each timing trial."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the comparison (table 'comparisons')."),
    fail_on: str = typer.Option("all", help="Exit 1 on any regression ('all') or only on parity/eval ones "
                                            "('deterministic'; timings still measured and shown)."),
    table_format: str = typer.Option("table", "--format", help=FORMAT_HELP),
):
    """Candidate against baseline: parity/eval results gate exactly, timings statistically (exit 1 on regression)."""
    from .gate.sides import check_stored_specs   # no torch: stored runs are checked before transformers loads
    from .gate.verdict import CompareError as StoredRunError
    from .results.store import ResultStore
    try:
        out = report_console(table_format)
        preflight.option_ranges("compare", trials=trials, reps=reps, floor=floor, alpha=alpha, looks=looks,
                                error_growth=error_growth, timing_layers=timing_layers, threads=threads)
        if fail_on not in ("all", "deterministic"):
            raise BadInput(f"--fail-on takes 'all' or 'deterministic', got {fail_on!r}")
        check_stored_specs(ResultStore(results_dir), [baseline, candidate])
    except (BadInput, StoredRunError) as err:
        fail(err)
    quiet_transformers()
    from .gate.ab import TreeError
    from .gate.compare import CompareError, CompareSettings, check_timing_settings, render, run_compare
    settings = CompareSettings(baseline=baseline, candidate=candidate, results_dir=results_dir, trials=trials,
                               reps=reps, floor=floor, alpha=alpha, design=design, clock=clock, looks=looks,
                               error_growth=error_growth, timing=timing,
                               deterministic=deterministic, rerun=rerun,
                               commands=list(det_command) if det_command else ["parity", "eval"],
                               timing_model=timing_model, timing_layers=timing_layers, threads=threads, store=save)
    try:
        check_timing_settings(settings)
        preflight.results_dir(results_dir if save else None)
    except (CompareError, BadInput) as err:
        fail(err)
    try:
        with progress_bar(out) as progress:
            task = progress.add_task("timing trials", total=None, visible=False)

            def on_trial(done: int, total: int):
                progress.update(task, total=total, completed=done, visible=True)
            comparison = run_compare(settings, out, on_trial)
    except KeyboardInterrupt:
        interrupted("compare", "no comparison was stored")
    except (CompareError, TreeError) as err:
        fail(err)
    render(out, comparison)
    for message in comparison.warnings:
        warn(message)
    raise typer.Exit(1 if comparison.fails(fail_on) else 0)


@app.command("gate-power")
def gate_power(
    null: int = typer.Option(30, "--null", help="Unchanged comparisons (level 0: every flag is a false alarm)."),
    per_level: int = typer.Option(10, help="Comparisons per slowdown level above 0 and for the prefill-only tree."),
    levels: str = typer.Option("0,0.05,0.1,0.2,0.3", help="Decode slowdowns, fractions of a decode step."),
    prefill_level: float = typer.Option(0.2, help="Prefill-only slowdown (fraction of a prefill call); 0: none."),
    gate: str = typer.Option("default", help="A label for the gate under test, stored with every row."),
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help="The parquet store (table gate_power)."),
    summary_only: bool = typer.Option(False, "--summary-only", help="Only summarise the stored comparisons of "
                                                                   "--gate (power table and A/A false alarms)."),
    resamples: int = typer.Option(2000, help="A/A comparisons resampled from the recorded null comparisons."),
    save_summary: bool = typer.Option(True, "--save-summary/--no-save-summary", help="Store the A/A summary as a "
                                                                                     "gate_power row."),
    trials: int = typer.Option(48, help="The gate's --trials (as for compare)."),
    reps: int = typer.Option(32, help="The gate's --reps."),
    floor: float = typer.Option(0.03, help="The gate's --floor."),
    alpha: float = typer.Option(0.01, help="The gate's --alpha."),
    design: str = typer.Option("sequential", help="The gate's --design: sequential or pooled."),
    clock: str = typer.Option("cpu", help="The gate's --clock: cpu, wall or both."),
    looks: int = typer.Option(3, help="The gate's --looks."),
    timing_model: str = typer.Option("tiny-gqa", help="The gate's --timing-model."),
    path: str = typer.Option("copies", "--path", help="'copies': folder copies with busy work wrapped around the "
                                                      "runner; 'compare': the user's path, `compare --baseline HEAD "
                                                      "--candidate worktree` in a scratch clone whose decode forward "
                                                      "carries the work as an uncommitted edit (no prefill arm)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the power table to this markdown "
                                                                     "file."),
):
    """The timing gate's power, measured: the real gate on code with a known synthetic slowdown."""
    try:
        if path not in ("copies", "compare"):
            raise BadInput(f"--path takes 'copies' or 'compare', got {path!r}")
        if markdown is not None and not markdown.parent.is_dir():
            raise BadInput(f"--markdown {markdown}: its folder does not exist; create it or pass another file")
        try:
            level_values = [float(v) for v in levels.split(",") if v.strip()]
        except ValueError:
            raise BadInput(f"--levels takes comma-separated fractions such as 0,0.05,0.1, got {levels!r}") from None
        preflight.option_ranges("gate-power", null=null, per_level=per_level, levels=level_values,
                                prefill_level=prefill_level, resamples=resamples, trials=trials, reps=reps,
                                floor=floor, alpha=alpha, looks=looks)
    except BadInput as err:
        fail(err)
    import pandas as pd

    from .gate.calibrate import (CalibrationError, CalibrationSettings, aa_summary, check_settings, design_table,
                                 power_table, read_campaigns, run_calibration, store_aa_summary)
    from .gate.compare import CompareError, CompareSettings, check_timing_settings
    level_values = tuple(level_values)
    compare_options = {"trials": trials, "reps": reps, "floor": floor, "alpha": alpha, "design": design,
                       "clock": clock, "looks": looks, "timing_model": timing_model}
    settings = CalibrationSettings(gate=gate, null_comparisons=null, per_level=per_level, levels=level_values,
                                   prefill_level=prefill_level or None, results_dir=results_dir,
                                   compare=compare_options)
    try:
        if not summary_only:
            check_settings(settings)
            check_timing_settings(CompareSettings(baseline="", **compare_options))
            preflight.results_dir(results_dir)
            if path == "compare":
                from .gate.calibrate_path import run_path_campaign
                run_path_campaign(settings, console)
            else:
                run_calibration(settings, console)
        frame = read_campaigns(results_dir, gate)
        table = power_table(frame)
    except (CalibrationError, CompareError, BadInput) as err:
        fail(err)
    except KeyboardInterrupt:
        interrupted("gate-power", "the comparisons finished so far are stored")
    aa, aa_missing = None, None
    try:   # the power table stands without it: too few null rounds only skip the A/A resampling
        aa = aa_summary(frame, resamples) if (frame["kind"] == "null").any() else None
        if aa is not None and save_summary:
            store_aa_summary(results_dir, frame, aa)
    except CalibrationError as err:
        aa_missing = str(err)
    except KeyboardInterrupt:
        interrupted("gate-power", "the comparisons finished so far are stored")
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if markdown is not None:
        from .gate.calibrate_path import markdown_table
        markdown.write_text(markdown_table(table))
    recorded = frame.loc[frame["kind"] != "aa_resampled", "rounds"] if "rounds" in frame.columns else []
    rounds = int(min(12, min(recorded))) if len(recorded) else 0
    designs = design_table(frame, rounds) if rounds >= 6 else pd.DataFrame()
    if len(designs) and (designs.drop(columns=["kind", "level"]) != "0/0").any().any():
        console.print(f"the designs on the same recorded trials (first {rounds} rounds, floor 3%, alpha 0.01), "
                      f"detected/n:")
        console.print(designs.to_string(index=False))
    if aa_missing is not None:
        console.print(f"A/A resampling skipped: {aa_missing}", markup=False)
    if aa is not None:
        console.print(f"A/A resampled from the {aa['pooled_rounds']} rounds of {aa['sources']} null comparisons "
                      f"({aa['rounds']} rounds each, sides swapped at random): "
                      f"{aa['aa_false_alarms']}/{aa['aa_resamples']} flagged = {aa['rate']:.4f} "
                      f"(95% CI {aa['ci_low']:.4f}-{aa['ci_high']:.4f})")


@app.command()
def bisect(
    good: str = typer.Option(..., help="A commit without the regression (an ancestor of --bad)."),
    bad: str = typer.Option(..., help="A commit with it."),
    metric: Optional[str] = typer.Option(None, help="Timing metric to bisect: decode_step_ms (default) or "
                                                    "prefill_ms."),
    parity: bool = typer.Option(False, "--parity", help="Bisect where `granite-bench parity` started to fail."),
    trials: int = typer.Option(48, help="Paired A/B rounds per step at the last look (as compare's --trials)."),
    reps: int = typer.Option(32, help="Decode steps per trial."),
    floor: float = typer.Option(0.03, help="Slowdowns below this fraction count as good."),
    alpha: float = typer.Option(0.01, help="False-alarm bound of a step's timing test, spent over its looks."),
    looks: int = typer.Option(3, help="Sequential looks per step (as compare's --looks)."),
    clock: str = typer.Option("cpu", help="Timed clock: 'cpu' (trial thread CPU time) or 'wall'."),
    model: str = typer.Option("tiny-gqa", help="Preset timed (or checked for parity) at each commit."),
    layers: Optional[int] = typer.Option(None, help="Only the first N layers of the preset."),
    threads: int = typer.Option(1, help="torch threads in each timing trial."),
    parity_args: str = typer.Option("--num-tokens 8", help="Extra options of each commit's parity run."),
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help=RESULTS_HELP),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the steps (table 'bisect_steps')."),
):
    """First commit between --good and --bad where a timing regressed or parity failed (like git bisect run)."""
    from .gate.bisect import (PARITY, TIMING_METRICS, BisectError, BisectSettings, check_range, final_lines,
                              run_bisect, step_line, timing_gate)  # light: standard library only
    from .gate.ab import repo_root
    repo = repo_root(Path.cwd())
    try:
        if parity and metric is not None:
            raise BadInput("pass --metric or --parity, not both")
        mode = PARITY if parity else (metric or "decode_step_ms")
        if mode != PARITY and mode not in TIMING_METRICS:
            raise BadInput(f"--metric must be one of {', '.join(TIMING_METRICS)}, got {metric!r}")
        preflight.option_ranges("bisect", trials=trials, reps=reps, floor=floor, alpha=alpha, looks=looks,
                                layers=layers, threads=threads)
        if clock not in ("cpu", "wall"):
            raise BadInput(f"--clock must be cpu or wall, got {clock!r}")
        preflight.results_dir(results_dir if save else None)
        check_range(repo, good, bad)
        settings = BisectSettings(good=good, bad=bad, repo=repo, mode=mode, trials=trials, reps=reps, floor=floor,
                                  alpha=alpha, looks=looks, clock=clock, model=model, layers=layers, threads=threads,
                                  parity_args=parity_args.split(), results_dir=results_dir if save else None)
        if mode != PARITY:
            timing_gate(settings)    # the trials, looks and alpha make a sequential test
    except (BadInput, BisectError) as err:
        fail(err)
    console.print(f"bisecting {mode} from {good} (good) to {bad} (bad) in {repo}")
    try:
        result = run_bisect(settings, on_step=lambda step: console.print(Text(step_line(step))))
    except KeyboardInterrupt:
        interrupted("bisect", "no steps were stored")
    except BisectError as err:
        fail(err)
    for line in final_lines(result):
        console.print(Text(line))
    raise typer.Exit(0 if result.first_bad and result.confirmed is not False else 1)


@app.command()
def dashboard(
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help="The parquet store to draw (default: "
                                                            "./granite-bench-results)."),
    out: Path = typer.Option(Path("dashboard"), help="Folder for index.html and assets/."),
):
    """Static HTML dashboard of the store (no network needed to view it)."""
    try:
        preflight.output_dir(out, "--out")
    except BadInput as err:
        fail(err)
    from .results.dashboard import build_dashboard
    from .results.listing import uncommitted_messages
    from .results.store import ResultStore
    store = ResultStore(results_dir)
    if not results_dir.is_dir():
        warn(f"no results store at {results_dir}: the dashboard is empty (pass --results-dir)")
    try:
        page = build_dashboard(store, out)
    except OSError as err:
        fail(os_error_message(err, None), code=1)
    for message in [f"skipping {e}" for e in store.unreadable_files()] + uncommitted_messages(store):
        warn(f"{message} (left out of the dashboard)")
    console.print(Text(f"dashboard: {page}"))


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
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help=RESULTS_HELP),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results to the parquet store."),
):
    """lm-eval accuracy through the implementation and the HF reference, compared sample by sample."""
    try:
        preflight.option_ranges("eval", tp=tp, batch_size=batch_size, seq_len=seq_len, num_fewshot=num_fewshot,
                                limit=limit)
        dtype = preflight.dtype_name(dtype)
        preflight.device_name(device)
        preflight.device_here(device, tp)
        task_names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
        preflight.eval_tasks(task_names)
        config, folder = preflight.model_config(model)
        preflight.model_shape(config, folder / "config.json" if folder is not None else f"model {model}")
        dims = preflight.check_model(config, tp, where=str(folder or model))
        if folder is not None:
            preflight.check_weights(folder, config)
        preflight.check_memory(dims, dtype, batch_size, seq_len, device)
        preflight.results_dir(results_dir if save else None, need_bytes=16 << 20)
    except BadInput as err:
        fail(err)
    quiet_transformers()
    try:
        from .accuracy.command import EvalArgs, run_eval_command
        from .accuracy.tasks import TaskError
        try:
            args = EvalArgs(model, task_names, dtype, device, tp, limit, num_fewshot, batch_size, seq_len,
                            results_dir if save else None)
            passed = run_eval_command(args, console)
        except TaskError as err:
            raise BadInput(str(err)) from None
    except KeyboardInterrupt:
        interrupted("eval")
    except bad_input_types() as err:
        fail(err)
    except run_failure_types() as err:
        fail(f"{err} (nothing was written)", code=1)
    except OSError as err:
        fail(os_error_message(err, results_dir if save else None), code=1)
    raise typer.Exit(0 if passed else 1)


@app.command()
def serve(
    model: str = typer.Option("tiny-gqa", help="Preset name (suites/models) or local HF Granite checkpoint dir."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
    batch_size: int = typer.Option(8, help="Compiled batch size: concurrent requests are batched up to it."),
    seq_len: int = typer.Option(256, help="Static KV-cache length (prompt + max_tokens of a request)."),
    buckets: Optional[str] = typer.Option(None, help="Context-encoding buckets, e.g. 32,64,128."),
    tp: int = typer.Option(1, help="Tensor-parallel degree."),
    device: str = typer.Option("cpu", help="cpu | cuda | neuron."),
    compile: bool = typer.Option(False, "--compile/--eager", help="torch.compile each (phase, bucket) graph."),
    gather_ms: float = typer.Option(5.0, help="How long a batch waits for more requests before it starts."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients send (default: --model)."),
    layers: Optional[int] = typer.Option(None, help="Use only the first N layers of a preset's shape."),
):
    """The implementation behind an OpenAI-compatible API (completions, chat, logprobs, prompt_logprobs): greedy,
    static batching; what `load` and `parity --endpoint` can be pointed at. Not a vLLM replacement."""
    try:
        from .serve.command import serve_args
        args = serve_args(model, host, port, dtype, batch_size, seq_len, parse_int_list(buckets, "--buckets"), tp,
                          device, compile, gather_ms, served_model_name, layers)
    except BadInput as err:
        fail(err)
    quiet_transformers()
    try:
        from .serve.server import build_app, run_server
        server_app, runner = build_app(args)
    except bad_input_types() as err:
        fail(err)
    try:
        console.print(f"serving {args.served_model_name or args.model} on http://{args.host}:{args.port} "
                      f"(batch {args.batch_size}, seq_len {args.seq_len}, {args.dtype}, {args.device})", markup=False)
        run_server(server_app, args.host, args.port)
    finally:
        runner.close()


@app.command()
def load(
    endpoint: str = typer.Option(..., help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000."),
    model: Optional[str] = typer.Option(None, help="Local preset or checkpoint of the served model: token-id "
                                                   "prompts from its vocabulary, its tokenizer to count tokens."),
    served_model_name: Optional[str] = typer.Option(None, help="Model name to send (default: /v1/models' first)."),
    api: str = typer.Option("completions", help="completions | chat."),
    concurrency: Optional[str] = typer.Option(None, help="Closed-loop levels: requests in flight, e.g. 1,4,16."),
    rates: Optional[str] = typer.Option(None, help="Open-loop levels: requests per second, e.g. 1,2,4,inf."),
    requests: Optional[int] = typer.Option(None, help="Requests per level (default 4 x concurrency, >= 16; 32)."),
    duration: Optional[float] = typer.Option(None, help="Seconds per level instead of a request count."),
    input_len: int = typer.Option(32, help="Prompt tokens (words for text prompts)."),
    output_len: int = typer.Option(16, help="Tokens generated per request (ignore_eos)."),
    slo: Optional[str] = typer.Option(None, help="Goodput SLOs in ms, e.g. ttft=500,tpot=50 (also itl, e2e)."),
    burstiness: float = typer.Option(1.0, help="Gamma shape of the arrival gaps (1 = Poisson, < 1 burstier)."),
    seed: int = typer.Option(0, help="Seed of prompts and arrival times."),
    timeout: float = typer.Option(120.0, help="Seconds a request may take before it counts as failed."),
    stop_at_saturation: bool = typer.Option(True, "--stop-at-saturation/--full-sweep",
                                            help="Stop once throughput stops growing while latency climbs."),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--stop-at-eos", help="Ask for exactly --output-len tokens."),
    results_dir: Path = typer.Option(DEFAULT_RESULTS, help=RESULTS_HELP),
    save: bool = typer.Option(True, "--save/--no-save", help="Write results to the parquet store."),
):
    """Load sweep against an OpenAI-compatible endpoint: TTFT, ITL, TPOT, E2E percentiles and throughput per level."""
    try:
        from .serve.command import load_args
        args = load_args(endpoint, model, served_model_name, api, parse_int_list(concurrency, "--concurrency"),
                         rates, requests, duration, input_len, output_len, slo, burstiness, seed,
                         results_dir if save else None, timeout, stop_at_saturation, ignore_eos)
    except BadInput as err:
        fail(err)
    from .serve.load_command import EndpointError, LoadInterrupted, render, run_load
    try:
        rows, paths = run_load(args, progress_bar, lambda text: console.print(text, markup=False))
    except EndpointError as err:
        fail(err)
    except LoadInterrupted as stopped:
        render(console, stopped.kept, args.slo)
        interrupted("load", f"{len(stopped.kept)} finished level(s) stored in {', '.join(map(str, stopped.paths))}"
                    if stopped.paths else "no level had finished; nothing was written")
    render(console, rows, args.slo)
    if paths:
        console.print(f"results: {', '.join(str(p) for p in paths)}", markup=False)
    if any(row["requests_ok"] == 0 for row in rows):
        fail(f"every request of a level failed: {rows[-1]['first_error']}", code=1)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
