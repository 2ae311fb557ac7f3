"""Served top-K log-probabilities judged against reference logits (parity.topk_logprobs), on synthetic tensors."""

from __future__ import annotations

import math

import torch

from granite_bench.parity.topk_logprobs import judged_keys, position_row

FP32_TOL = {5: (1e-5, 2e-5)}


def served_of(logits: torch.Tensor, k: int, token: int) -> dict[int, float]:
    """What a correct server returns: the top-k of log_softmax(logits) plus the position's own token."""
    lp = torch.log_softmax(logits, -1)
    top = lp.topk(k).indices.tolist()
    return {t: float(lp[t]) for t in top + [token]}


def reference_row(seed: int = 0, vocab: int = 300) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 3.5


def test_the_references_own_log_softmax_passes_with_no_error():
    logits = reference_row()
    row = position_row(logits, served_of(logits, 20, 7), 7, 20, FP32_TOL)
    assert row["passed"] and row["ref_top1_in_served"] and row["served_top1_rank"] == 1
    assert row["logprob_err"] < 1e-5 and row["token_logprob_err"] < 1e-5 and row["err_top5"] == 0.0
    assert row["topk_overlap"] == 1.0


def test_a_served_distribution_off_by_a_temperature_fails_the_top5_error():
    logits = reference_row()
    row = position_row(logits, served_of(logits / 2, 20, 7), 7, 20, FP32_TOL)   # logits_scaling applied twice
    assert not row["passed"] and row["err_top5"] > 0.1 and row["logprob_err"] > 0.1


def test_a_reference_top5_token_the_endpoint_left_out_fails_the_position():
    logits = reference_row()
    served = served_of(logits, 20, 7)
    del served[int(logits.argmax())]
    row = position_row(logits, served, 7, 20, FP32_TOL)
    assert not row["passed"] and math.isinf(row["err_top5"]) and not row["ref_top1_in_served"]


def test_a_served_top1_that_the_reference_ranks_lower_is_reported_with_its_rank():
    logits = reference_row()
    second = int(logits.topk(2).indices[1])
    swapped = logits.clone()
    swapped[second] = logits.max() + 1.0
    row = position_row(logits, served_of(swapped, 20, 7), 7, 20, FP32_TOL)
    assert row["served_top1_rank"] == 2 and not row["passed"]


def test_profile_keys_are_capped_at_half_of_k_and_the_whole_vocabulary_is_not_judged():
    tol_map = {None: (1e-5, 1e-4), 1000: (1e-5, 0.03), 50: (1e-5, 0.02), 5: (1e-5, 0.01)}
    assert judged_keys(tol_map, 20) == {10: (1e-5, 0.02), 5: (1e-5, 0.01)}
    assert judged_keys(tol_map, 6) == {3: (1e-5, 0.01)}
    assert judged_keys({None: (0, 1)}, 20) == {}
