"""`granite-bench parity --endpoint` end to end: goldens (reused or made as `parity` makes them), the endpoint
checked against them, the verdict stored like a parity run (device `endpoint`) and printed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .endpoint_parity import EndpointOutcome, check_endpoint, probe_endpoint
from .load_command import served_model


@dataclass
class EndpointParityArgs:
    endpoint: str
    model: str
    dtype: str
    num_tokens: int
    suite_prompts: list
    tolerance: str | None
    top_k: int = 20
    served_model_name: str | None = None
    layers: int | None = None
    goldens: Path | None = None
    max_memory: str | None = None
    results_dir: Path | None = None
    timeout_s: float = 300.0
    seed: int = 0


def run_endpoint_parity(args: EndpointParityArgs, console) -> bool:
    from ..parity.command import calibrate_on_framework
    from ..parity.prompts import encode_prompts
    from ..parity.tolerances import profile_for
    from ..reference.goldens import obtain_goldens
    from ..reference.weights import load_hf_config, resolve_model_dir
    from ..runtime.errors import InputError
    try:
        profile = profile_for(args.dtype, args.tolerance)
    except ValueError as err:
        raise InputError(str(err)) from None
    name = served_model(args.endpoint, args.served_model_name)   # unreachable: refused before any reference work
    console.print(f"[bold]parity[/] {escape(args.model)} against {escape(args.endpoint)} (served as "
                  f"{escape(name)}) · {args.dtype} · top-{args.top_k} log-probabilities · profile {profile.name}")
    model_dir = resolve_model_dir(args.model, num_layers=args.layers)
    hf_config = load_hf_config(model_dir)
    prompts = encode_prompts(args.suite_prompts, model_dir, hf_config.vocab_size)
    probe_endpoint(args.endpoint, name, prompts[0], args.top_k)      # what it cannot answer: said before the goldens
    goldens = obtain_goldens(args.model, model_dir, prompts, args.num_tokens, console.print, args.goldens,
                             args.max_memory)
    profile, _ = calibrate_on_framework(profile, goldens, args.dtype, args.tolerance, console.print)
    outcome = check_endpoint(args.endpoint, name, goldens, profile, args.top_k, args.timeout_s)
    render(console, outcome, profile, args.top_k)
    if args.results_dir is not None:
        paths = store(args, name, hf_config, profile, outcome, model_dir)
        console.print(f"results: {', '.join(str(p) for p in paths)}", markup=False)
    return outcome.passed


def render(console, outcome: EndpointOutcome, profile, k: int) -> None:
    from ..parity.metrics import tol_key_name
    table = Table(title=f"served top-{k} log-probabilities against the HF reference (fp32, CPU)", title_justify="left")
    errs = [f"err_{tol_key_name(key)}" for key in outcome.judged]
    for column in ["prompt", "len", "positions", "failed", "max |Δ logprob|"] + errs + ["greedy match", "verdict"]:
        table.add_column(column, justify="right")
    for s in outcome.prompts:
        table.add_row(str(s["prompt"]), str(s["prompt_len"]), str(s["n_positions"]), str(s["n_failed"]),
                      f"{s['worst_logprob_err']:.2e}", *[f"{s[f'worst_{e}']:.2e}" for e in errs],
                      f"{s['greedy_match_rate']:.0%}", "[green]pass[/]" if s["passed"] else "[red]FAIL[/]")
    console.print(table)
    judged = ", ".join(f"{tol_key_name(key)} rtol {rtol:g}" for key, (_, rtol) in outcome.judged.items())
    if outcome.passed:
        console.print(f"[bold green]PASS[/] every judged position within profile '{profile.name}' ({judged}) and "
                      f"greedy tokens agree (or part only where the reference's own gap is within tolerance)")
        return
    first = next(s for s in outcome.prompts if not s["passed"])
    where = (f"position {first['first_failed']}" if first["first_failed"] is not None
             else f"greedy divergence at step {first['first_divergence']} (reference gap {first['divergence_gap']:.3g}"
                  f" > {profile.divergence_tolerance:g})")
    console.print(f"[bold red]FAIL[/] first failing: prompt {first['prompt']} {where} ({judged})")


def store(args: EndpointParityArgs, name: str, hf_config, profile, outcome: EndpointOutcome, model_dir) -> list[Path]:
    from ..results import ResultStore, collect_run_metadata
    from ..results.metadata import require_directions
    config = {"endpoint": args.endpoint, "served_model": name, "model": args.model, "model_dir": str(model_dir),
              "num_tokens": args.num_tokens, "top_k": args.top_k,
              "goldens": str(args.goldens) if args.goldens else "cache-or-computed",
              "profile": {"name": profile.name, "tol_map": {str(k): v for k, v in profile.tol_map.items()},
                          "divergence_tolerance": profile.divergence_tolerance}}
    meta = collect_run_metadata(suite="parity/endpoint", device="endpoint", dtype=args.dtype, config=config,
                                seed=args.seed)
    common = {"model": args.model, "served_model": name, "endpoint": args.endpoint, "top_k": args.top_k,
              "num_layers": hf_config.num_hidden_layers}
    summary = [{**common, **s, "run_passed": outcome.passed,
                "divergence_tolerance": profile.divergence_tolerance} for s in outcome.prompts]
    positions = [{**common, **r} for r in outcome.positions]
    return ResultStore(args.results_dir).write_run(meta, {
        "parity_positions": require_directions("parity_positions", positions),
        "parity_summary": require_directions("parity_summary", summary)})
