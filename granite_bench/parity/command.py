"""`granite-bench parity` end to end: build runner and reference on the same files, check, store, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..runtime.runner import InputError, build_neuron_config
from ..runtime.select import build_runner
from .check import ParityOutcome, batches, run_parity_on_goldens
from .prompts import encode_prompts, read_prompts_file
from .tolerances import profile_for


@dataclass
class ParityArgs:
    model: str
    dtype: str
    batch_size: int
    seq_len: int
    buckets: list[int] | None
    num_tokens: int
    prompts: Path | None
    suite_prompts: list | None
    tolerance: str | None
    tp: int
    device: str
    compile: bool
    layers: int | None
    results_dir: Path | None
    suite: str = "default"
    seed: int = 0
    goldens: Path | None = None        # a golden directory (`granite-bench reference --out`): no reference model
    max_memory: str | None = None      # memory budget of the HF reference when it has to run (accelerate offload)
    moe_ep: int = 1                    # expert-parallel degree among the TP ranks (MoE models)
    ssm_state_dtype: str = "float32"   # the Mamba SSM state's dtype between steps (hybrid models)


def check_lengths(prompts: list[list[int]], neuron_config, num_tokens: int) -> None:
    """Refuse inputs the static shapes cannot hold before any work is done."""
    largest = neuron_config.context_encoding_buckets[-1]
    for i, ids in enumerate(prompts):
        if len(ids) > largest:
            raise InputError(f"prompt {i} has {len(ids)} tokens, more than the largest bucket ({largest}): "
                             f"raise --buckets/--seq-len or shorten it")
        if len(ids) + num_tokens > neuron_config.sequence_length:
            raise InputError(f"prompt {i} ({len(ids)} tokens) + {num_tokens} new tokens exceeds --seq-len "
                             f"{neuron_config.sequence_length}: raise --seq-len or lower --num-tokens")


def run_parity_command(args: ParityArgs, console, progress_bar) -> bool:
    try:
        profile = profile_for(args.dtype, args.tolerance)
    except ValueError as err:
        raise InputError(str(err)) from None
    raw = read_prompts_file(args.prompts) if args.prompts else args.suite_prompts
    if not raw:
        raise InputError("no prompts: pass --prompts FILE or give 'prompts' in the suite")
    console.print(f"[bold]parity[/] {escape(str(args.model))} · {args.dtype} · tp {args.tp} · {args.device}"
                  f"{' · compiled' if args.compile else ''} · profile {profile.name}")
    from ..reference.goldens import obtain_goldens
    from ..reference.weights import load_hf_config, resolve_model_dir
    from ..runtime.devices import resolve_device
    resolve_device(args.device)  # a bad or absent device is refused before weights or goldens are made
    model_dir = resolve_model_dir(args.model, num_layers=args.layers)
    hf_config = load_hf_config(model_dir)
    from ..model.auto import parallel_plan
    parallel_plan(hf_config, args.tp, args.moe_ep)  # a bad TP degree is refused before any reference work
    prompts = encode_prompts(raw, model_dir, hf_config.vocab_size)
    check_lengths(prompts, build_neuron_config(args.batch_size, args.seq_len, args.buckets, args.tp, args.dtype),
                  args.num_tokens)
    # The reference (if it has to run at all) is done and released before the implementation is built, so the
    # peak memory is the larger of the two, not their sum.
    goldens = obtain_goldens(args.model, model_dir, prompts, args.num_tokens, console.print, args.goldens,
                             args.max_memory)
    profile, framework = calibrate_on_framework(profile, goldens, args.dtype, args.tolerance, console.print)
    # the folder resolved above (a preset already cut to --layers): the same files the goldens describe
    runner = build_runner(str(model_dir), dtype=args.dtype, device=args.device, tp_degree=args.tp,
                          batch_size=args.batch_size, seq_len=args.seq_len, buckets=args.buckets, compile=args.compile,
                          moe_ep_degree=args.moe_ep, ssm_state_dtype=args.ssm_state_dtype)
    try:
        with progress_bar() as progress:
            task = progress.add_task("prompts", total=len(prompts))
            outcome = run_parity_on_goldens(runner, goldens, profile, advance=lambda n: progress.advance(task, n))
        compile_info = compile_summary(runner)
        if args.tp > 1:
            compile_info["tp_vs_tp1_max_abs_diff"] = tp_vs_single_process(runner, prompts, outcome)
            console.print(f"TP-{args.tp} vs TP-1 max |Δlogit| over every teacher-forced position: "
                          f"{compile_info['tp_vs_tp1_max_abs_diff']:.2e}")
    finally:
        runner.close()
    add_framework_columns(outcome, profile, framework)
    render(console, outcome, profile)
    if not outcome.passed and framework is None and profile.framework_factor is not None and args.tolerance is None:
        console.print(f"note: {args.dtype} error grows with depth; to judge it against HF's own {args.dtype} model on "
                      f"these goldens, run `granite-bench reference --framework-dtype {args.dtype}` with the same "
                      f"--model/--prompts/--num-tokens, then parity again")
    if args.results_dir is not None:
        paths = store(args, runner, profile, outcome, compile_info)
        console.print(f"results: {', '.join(str(p) for p in paths)}", markup=False)
    return outcome.passed


def calibrate_on_framework(profile, goldens, dtype: str, override: str | None, say):
    """(profile, framework error doc or None): the dtype's own profile judged against HF's own error in that dtype
    on these goldens when they carry it (`granite-bench reference --framework-dtype`), else the profile as it is.
    An explicit --tolerance is taken as given."""
    from ..reference.framework_error import framework_file, load_framework_error
    from ..reference.goldens import GoldenError, read_golden_index
    from .metrics import tol_key_name
    from .tolerances import calibrated, canonical_dtype
    if override is not None or profile.framework_factor is None or goldens[0].file is None:
        return profile, None
    directory = goldens[0].file.parent
    framework = load_framework_error(directory, canonical_dtype(dtype), read_golden_index(directory)["key"])
    if framework is None:
        return profile, None
    try:
        judged = calibrated(profile, framework["worst"])
    except KeyError as err:
        raise GoldenError(f"{framework_file(directory, canonical_dtype(dtype))} lacks {err.args[0]} of profile "
                          f"{profile.name}: re-create it with `granite-bench reference --framework-dtype "
                          f"{canonical_dtype(dtype)}`") from None
    changes = ", ".join(f"{tol_key_name(k)} rtol {profile.tol_map[k][1]:g} -> {judged.tol_map[k][1]:.3g} "
                        f"({profile.framework_factor:g} x HF's {framework['worst'][f'err_{tol_key_name(k)}']:.3g})"
                        for k in profile.tol_map)
    changes += (f", greedy divergence tolerance {profile.divergence_tolerance:g} -> {judged.divergence_tolerance:.3g} "
                f"({profile.framework_factor:g} x the most HF's own error moved a top-50 logit gap, "
                f"{framework['worst']['gap_err']:.3g})")
    say(f"HF's own {framework['dtype']} on these goldens ({framework_file(directory, framework['dtype']).name}): "
        f"{changes}; profile {judged.name}")
    return judged, framework


def add_framework_columns(outcome: ParityOutcome, profile, framework: dict | None) -> None:
    """Per prompt: the rtol each top-k was judged with and, when calibrated, HF's own worst error in this dtype."""
    from .metrics import tol_key_name
    for i, row in enumerate(outcome.prompts):
        for k, (_, rtol) in profile.tol_map.items():
            name = tol_key_name(k)
            row[f"rtol_{name}"] = rtol
            if framework is not None:
                row[f"framework_worst_err_{name}"] = max(framework["prompts"][i][f"err_{name}"])
        row["divergence_tolerance"] = profile.divergence_tolerance
        if framework is not None:
            row["framework_divergence_gap"] = framework["prompts"][i]["divergence_gap"]


def tp_vs_single_process(runner, prompts: list[list[int]], outcome: ParityOutcome) -> float:
    """max |logit(TP-N) - logit(TP-1)| on the same teacher-forced inputs (the reference's greedy tokens)."""
    from ..runtime.select import single_process_twin
    from .metrics import max_logit_difference
    from .teacher_forcing import teacher_forced_logits
    forced = outcome.reference_tokens
    twin = single_process_twin(runner)
    try:
        diffs = []
        for start, batch in batches(prompts, runner.neuron_config.batch_size):
            tokens = forced[start:start + len(batch)]
            diffs.append(max_logit_difference(teacher_forced_logits(runner, batch, tokens),
                                              teacher_forced_logits(twin, batch, tokens)))
        return max(diffs)
    finally:
        twin.close()


def compile_summary(runner) -> dict:
    seconds = runner.graphs.compile_seconds  # every runner (single process, TP, Neuron) keeps its graph bookkeeping
    return {"compiled_graphs": len(seconds), "compile_seconds_total": float(sum(seconds.values()))}


def render(console, outcome: ParityOutcome, profile) -> None:
    from .routing import near_tie_line
    table = Table(title="parity against the HF reference (fp32, CPU)", title_justify="left")
    for column in ("prompt", "len", "positions", "failed", "max |Δ|", "worst top-k err", "max KL",
                   "greedy match", "verdict", "greedy divergence"):
        table.add_column(column, justify="left" if column == "greedy divergence" else "right")
    for s in outcome.prompts:
        topk = [(k, v) for k, v in s.items() if k.startswith("worst_err_") and not k.endswith("_position")]
        worst_k = max(topk, key=lambda kv: kv[1]) if topk else ("-", None)
        framework = s.get(f"framework_{worst_k[0]}")  # HF's own error in this dtype on the same prompt
        failed = str(s["n_failed"]) + (f" ({s['n_routing_near_ties']} near-tie)" if s["n_routing_near_ties"] else "")
        table.add_row(str(s["prompt"]), str(s["prompt_len"]), str(s["n_positions"]), failed,
                      f"{s.get('worst_max_abs_err', float('nan')):.2e}",
                      (f"{worst_k[1]:.2e} ({worst_k[0][len('worst_err_'):]})"
                       + (f" HF {framework:.2e}" if framework is not None else "")) if worst_k[1] is not None else "-",
                      f"{s.get('worst_kl_ref_impl', float('nan')):.2e}", f"{s['greedy_match_rate']:.0%}",
                      "[green]pass[/]" if s["passed"] else "[red]FAIL[/]", divergence_note(s, profile))
    console.print(table)
    for tie in outcome.routing_ties:
        console.print(f"accepted (a routing near-tie): {escape(near_tie_line(tie))}")
    if outcome.passed:
        ties = f" (or a routing near-tie, {len(outcome.routing_ties)} above)" if outcome.routing_ties else ""
        console.print(f"[bold green]PASS[/] every position within profile '{profile.name}'{ties} "
                      f"and greedy tokens agree (or part only where the reference's own gap is within the divergence tolerance)")
        return
    where = outcome.localisation or {}
    if where.get("layer") is not None:
        block = (f"layer {where['layer']} {where['sub_block']} (rel err {where['rel_err']:.2e} > "
                 f"{profile.localisation_rtol:g})")
        if where.get("cause") == "sinks":
            block += ("; every head's output is the reference's times one factor per head: the attention sinks "
                      "(a sink only rescales its head)")
    elif "generated_token" in where:
        block = (f"no layer's residual stream left tolerance ({profile.localisation_rtol:g}) at that position: the "
                 f"logits agree within the profile there, only the near-tie between the two tokens flipped")
    else:
        block = (f"no layer's residual stream left tolerance ({profile.localisation_rtol:g}): the error enters at "
                 f"the final norm / LM head")
    if "generated_token" in where:
        console.print(f"[bold red]FAIL[/] {escape(greedy_failure_line(where))}; first out of tolerance: {block}")
    else:
        console.print(f"[bold red]FAIL[/] first failing: prompt {where.get('prompt')} position {where.get('position')} "
                      f"({where.get('phase')}); first out of tolerance: {block}")
    blocks = Table(title="per-layer residual stream at that position", title_justify="left")
    for column in ("layer", "sub-block", "max |Δ|", "rel err"):
        blocks.add_column(column, justify="right")
    for e in outcome.block_errors:
        blocks.add_row(str(e["layer"]), e["sub_block"], f"{e['max_abs_err']:.2e}", f"{e['rel_err']:.2e}")
    console.print(blocks)


def greedy_failure_line(where: dict) -> str:
    """Where a free-running greedy divergence past the tolerance happened, and by how much."""
    return (f"prompt {where['prompt']}: greedy diverged at generated token {where['generated_token']} (chosen by the "
            f"logits of position {where['position']}, {where['phase']}): reference gap "
            f"{where['divergence_gap']:.3g} > divergence tolerance {where['divergence_tolerance']:g}")


def divergence_note(row: dict, profile) -> str:
    """A prompt's free-running greedy divergence in words: where, the reference's own gap, and whether it was
    accepted (a gap within the divergence tolerance is a near-tie the dtype may flip), or '' when none."""
    step = row.get("first_divergence")
    if step is None or (isinstance(step, float) and step != step):
        return ""
    gap, tolerance = row["divergence_gap"], profile.divergence_tolerance
    if row["divergence_acceptable"]:
        return f"at token {int(step)}: gap {gap:.3g} < tolerance {tolerance:g}, accepted (a near-tie)"
    return f"at token {int(step)} (position {row['prompt_len'] - 1 + int(step)}): gap {gap:.3g} > tolerance {tolerance:g}"


def store(args: ParityArgs, runner, profile, outcome: ParityOutcome, compile_info: dict) -> list[Path]:
    from ..results import ResultStore, collect_run_metadata
    from ..results.metadata import require_directions
    config = {"model": args.model, "model_dir": str(runner.model_dir), "init": runner.init,
              "neuron_config": runner.neuron_config.to_dict(), "tp_degree": args.tp, "compile": args.compile,
              "num_tokens": args.num_tokens, "goldens": str(args.goldens) if args.goldens else "cache-or-computed",
              "profile": {"name": profile.name,
                                                         "tol_map": {str(k): v for k, v in profile.tol_map.items()},
                                                         "divergence_tolerance": profile.divergence_tolerance}}
    meta = collect_run_metadata(suite=f"parity/{args.suite}", device=args.device, dtype=args.dtype, config=config,
                                seed=args.seed)
    # the model and settings exactly as checked (a preset cut to --layers says so in every row)
    common = {"model": args.model, "num_layers": runner.hf_config.num_hidden_layers, "tp_degree": args.tp,
              "compiled": args.compile, "batch_size": runner.neuron_config.batch_size,
              "seq_len": runner.neuron_config.sequence_length}
    summary = [{**common, **s} for s in outcome.prompts]
    loc = outcome.localisation or {}
    for row in summary:
        row.update({"run_passed": outcome.passed, "fail_layer": loc.get("layer"), "fail_sub_block": loc.get("sub_block"),
                    "fail_cause": loc.get("cause", ""), "reduce_dtype": "float32", **compile_info})
    positions = require_directions("parity_positions", [{**common, **r} for r in outcome.positions])
    summary = require_directions("parity_summary", summary)
    return ResultStore(args.results_dir).write_run(meta, {"parity_positions": positions, "parity_summary": summary})
