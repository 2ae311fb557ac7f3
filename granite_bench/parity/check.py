"""`granite-bench parity`: the implementation against the HF reference, per position, then where it fails.

Orchestration only: numbers come from the pure functions in `metrics`, inputs from the runner and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..reference.goldens import PromptGolden, compute_goldens
from .localise import first_failing_block, sink_scaled_heads, sub_block_errors
from .metrics import ParityVerdict, greedy_comparison, position_metrics, verdict
from .routing import MAX_EXAMINED, ROUTER_LOGITS, near_tie_at
from .teacher_forcing import hidden_states_at, teacher_forced_logits
from .tolerances import ToleranceProfile

POSITION_COLUMNS = ("max_abs_err", "mean_abs_err", "max_rel_err", "kl_ref_impl", "top1_match", "topk_overlap",
                    "expected_top1_prob", "passed")


@dataclass
class ParityOutcome:
    positions: list[dict]                 # one row per (prompt, position)
    prompts: list[dict]                   # one row per prompt: verdict summary + greedy comparison
    passed: bool
    localisation: dict | None = None      # first failing sub-block and the error of every sub-block
    block_errors: list[dict] = field(default_factory=list)
    reference_tokens: list[list[int]] = field(default_factory=list)  # the reference's greedy tokens per prompt
    routing_ties: list[dict] = field(default_factory=list)  # failing positions accepted as router near-ties


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def check_batch(runner, goldens: list[PromptGolden]):
    """Teacher-forced (the reference's greedy tokens) and free-running implementation runs for one batch."""
    prompts = [g.prompt for g in goldens]
    actual = teacher_forced_logits(runner, prompts, [g.tokens for g in goldens])
    free = runner.generate(prompts, len(goldens[0].tokens))
    return actual, free


def prompt_rows(index: int, prompt: list[int], expected: torch.Tensor, actual: torch.Tensor,
                ref_tokens: list[int], impl_tokens: list[int], profile: ToleranceProfile):
    metrics = position_metrics(expected, actual, profile)
    length = len(prompt)
    step_logits = expected[length - 1:length - 1 + len(ref_tokens)]  # logits that chose each reference token
    greedy = greedy_comparison(torch.tensor([ref_tokens]), torch.tensor([impl_tokens]), step_logits[None],
                               profile.divergence_tolerance)[0]
    result = verdict(metrics, [greedy])
    columns = list(POSITION_COLUMNS) + [f"err_{k}" for k in metrics["tol_keys"]]
    rows = []
    for pos in range(expected.shape[0]):
        row = {"prompt": index, "position": pos,
               "phase": "context_encoding" if pos < length else "token_generation"}
        row.update({name: _scalar(metrics[name][pos]) for name in columns})
        row["routing_near_tie"] = False
        rows.append(row)
    summary = {"prompt": index, "prompt_len": length, "num_tokens": len(ref_tokens), **result.summary(),
               "greedy_match_rate": greedy["match_rate"], "first_divergence": greedy["first_divergence"],
               "divergence_gap": greedy["divergence_gap"], "divergence_acceptable": greedy["divergence_acceptable"],
               "n_routing_near_ties": 0}
    return rows, summary, result


def run_parity(runner, reference, prompts: list[list[int]], num_tokens: int, profile: ToleranceProfile,
               advance: Callable[[int], None] | None = None) -> ParityOutcome:
    """Parity against an HF reference model in this process (computes its goldens first)."""
    return run_parity_on_goldens(runner, compute_goldens(reference, prompts, num_tokens), profile, advance)


def run_parity_on_goldens(runner, goldens: list[PromptGolden], profile: ToleranceProfile,
                          advance: Callable[[int], None] | None = None) -> ParityOutcome:
    """Parity against stored or freshly computed goldens: no reference model is needed here."""
    positions, summaries, failure, reference_tokens, outcome_ties = [], [], None, [], []
    for start, batch in batches(goldens, runner.neuron_config.batch_size):
        actual, free = check_batch(runner, batch)
        for b, golden in enumerate(batch):
            reference_tokens.append(golden.tokens)
            rows, summary, result = prompt_rows(start + b, golden.prompt, golden.logits, actual[b], golden.tokens,
                                                free.tokens[b], profile)
            if not result.passed and result.n_failed and has_routers(runner):
                ties = routing_near_ties(runner, profile, batch, b, rows)
                result = accept_near_ties(result, rows, summary, ties)
                outcome_ties += ties
            positions += rows
            summaries.append(summary)
            if failure is None and not result.passed:
                failure = (batch, b, start + b, result, summary)
        if advance:
            advance(len(batch))
    outcome = ParityOutcome(positions, summaries, passed=failure is None, reference_tokens=reference_tokens,
                            routing_ties=outcome_ties)
    if failure is not None:
        outcome.localisation, outcome.block_errors = localise_failure(runner, profile, *failure)
    return outcome


def has_routers(runner) -> bool:
    """Whether the runner's architecture records MoE router logits (the registry's sub-blocks say)."""
    from ..model.registry import architecture
    return any(sub.name == ROUTER_LOGITS for sub in architecture(runner.hf_config.model_type).sub_blocks)


def routing_near_ties(runner, profile, batch: list[PromptGolden], row: int, rows: list[dict]) -> list[dict]:
    """The failing positions of one prompt (rows) that are router near-ties (see `routing`), each examined as
    localisation does; [] as soon as one is not, or when more than MAX_EXAMINED positions fail (a bug, not rounding)."""
    failing = [r for r in rows if not r["passed"]]
    if len(failing) > MAX_EXAMINED:
        return []
    ties = []
    for r in failing:
        expected, actual, errors = streams_at(runner, batch, row, r["position"])
        tie = near_tie_at(expected, actual, first_failing_block(errors, profile.localisation_rtol))
        if tie is None or not tie["accepted"]:
            return []
        ties.append({"prompt": r["prompt"], "position": r["position"], "phase": r["phase"], **tie})
    return ties


def accept_near_ties(result: ParityVerdict, rows: list[dict], summary: dict, ties: list[dict]) -> ParityVerdict:
    """Mark the accepted near-ties in the position rows and the prompt's summary; the verdict passes when they were
    its only failures and no greedy divergence was unacceptable."""
    if not ties:
        return result
    tied = {t["position"] for t in ties}
    for r in rows:
        r["routing_near_tie"] = r["position"] in tied
    result = replace(result, passed=result.n_unacceptable_divergences == 0, first_failed=None)
    summary.update(passed=result.passed, first_failed=None, n_routing_near_ties=len(tied))
    return result


def streams_at(runner, batch: list[PromptGolden], row: int, position: int):
    """(the reference's, the implementation's per-layer streams, their sub-block errors) of `row` at `position`, on
    the goldens' teacher-forced inputs."""
    actual = hidden_states_at(runner, [g.prompt for g in batch], [g.tokens for g in batch], row, position)
    expected = batch[row].residual_streams_at(position)
    return expected, actual, sub_block_errors(expected, actual)


def localise_failure(runner, profile, batch: list[PromptGolden], row, prompt_index, result, summary: dict):
    """Compare per-layer hidden states at the first failing position or, when only the free-running greedy check
    failed, at the position whose logits chose the first diverging token (prompt length - 1 + its step)."""
    prompt_len = len(batch[row].prompt)
    position, greedy = result.first_failed, {}
    if position is None:  # only the free-running greedy failed: look where it diverged
        step = summary["first_divergence"]
        position = prompt_len - 1 + step
        greedy = {"generated_token": step, "divergence_gap": summary["divergence_gap"],
                  "divergence_tolerance": profile.divergence_tolerance}
    expected_at, actual_hidden, errors = streams_at(runner, batch, row, position)
    first = first_failing_block(errors, profile.localisation_rtol)
    phase = "context_encoding" if position < prompt_len else "token_generation"
    if first is None:  # every residual stream within tolerance: the error enters after the last layer
        first = {"layer": None, "sub_block": "final_norm/lm_head", "rel_err": None}
    where = {"prompt": prompt_index, "position": position, "phase": phase, "layer": first["layer"],
             "sub_block": first["sub_block"], "rel_err": first["rel_err"], **greedy}
    if first["sub_block"] == "attention" and sink_scaled_heads(expected_at, actual_hidden, first["layer"],
                                                               runner.hf_config.num_attention_heads,
                                                               profile.localisation_rtol):
        where["cause"] = "sinks"
    return where, [{"prompt": prompt_index, "position": position, **e} for e in errors]


def _scalar(value):
    value = value.item() if isinstance(value, torch.Tensor) else value
    return value
