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
    from .runtime.runner import InputError
    return BadInput, NeuronConfigError, TPDegreeError, PromptError, PresetError, InputError


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
            compile=compile, layers=layers, results_dir=results_dir if save else None, suite=str(suite.stem))
        passed = run_parity_command(args, console, progress_bar)
    except bad_input_types() as err:
        fail(str(err))
    raise typer.Exit(0 if passed else 1)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
