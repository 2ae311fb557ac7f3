import math

import pytest
import torch

from granite_bench.parity import metrics as M
from granite_bench.parity.metrics import (
    divergence_gap,
    greedy_comparison,
    position_errors,
    position_metrics,
    remove_constant_shift,
    verdict,
)
from granite_bench.parity.tolerances import ToleranceProfile, profile_for

N, V = 12, 4096


def logits(n=N, v=V, seed=0):
    """Logits with a realistic spread: std 2, a few clear leaders per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g) * 2
    x[:, :3] += torch.tensor([9.0, 7.0, 6.0])
    return x


def relative_noise(expected, rel, seed=1):
    """Uniform noise in [-rel, rel] * max|expected| of each row."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(expected.shape, generator=g) * 2 - 1
    return expected + u * rel * expected.abs().amax(-1, keepdim=True)


def profile(tol_map, div=0.1):
    return ToleranceProfile("test", tol_map, divergence_tolerance=div, localisation_rtol=1e-3)


def test_identical_logits_pass_with_zero_error():
    e = logits()
    m = position_metrics(e, e.clone(), profile_for("float32"))
    assert m["passed"].all()
    for key in ["max_abs_err", "mean_abs_err", "max_rel_err"] + [f"err_{k}" for k in m["tol_keys"]]:
        assert torch.all(m[key] == 0), key
    assert torch.allclose(m["kl_ref_impl"], torch.zeros(N), atol=1e-7)
    assert m["top1_match"].all() and torch.all(m["topk_overlap"] == 1)
    assert verdict(m).passed


def test_constant_shift_per_row_is_removed():
    e = logits()
    shifts = torch.linspace(-30, 30, N)[:, None]
    a = e + shifts
    assert torch.allclose(remove_constant_shift(e, a), e, atol=1e-4)
    p = profile_for("float32")
    assert position_metrics(e, a, p)["passed"].all()
    assert not position_metrics(e, a, p, remove_shift=False)["passed"].any()


def test_shift_removal_keeps_a_slope_error_visible():
    e = logits()
    a = e * 1.05 + 3.0  # 5 % scale error: only the shift is subtracted
    m = position_metrics(e, a, profile({None: (1e-5, 0.01)}))
    assert not m["passed"].any()


def test_noise_1e6_passes_fp32_and_1e2_fails_fp32_but_passes_bf16():
    e = logits()
    fp32, bf16 = profile_for("float32"), profile_for("bfloat16")
    assert position_metrics(e, relative_noise(e, 1e-6), fp32)["passed"].all()
    noisy = relative_noise(e, 1e-2)
    assert not position_metrics(e, noisy, fp32)["passed"].any()
    assert position_metrics(e, noisy, bf16)["passed"].all()


def test_perturbed_top5_logit_fails_top5_while_far_perturbation_only_fails_all():
    e = logits()
    tol = {5: (1e-5, 0.005), None: (1e-5, 0.005)}
    bump = 0.05 * e.abs().max()
    top = e[0].topk(5).indices[2]
    bottom = e[0].argmin()

    near = e.clone()
    near[0, top] += bump
    err = position_errors(e, near, tol)
    assert not err["pass_top5"][0] and not err["pass_all"][0]
    assert err["pass_top5"][1:].all()

    far = e.clone()
    far[0, bottom] += bump
    err = position_errors(e, far, tol)
    assert err["pass_top5"].all() and err["err_top5"][0] == 0
    assert not err["pass_all"][0]


def test_neg_inf_entries_are_dropped_not_nan():
    e, a = logits(), relative_noise(logits(), 1e-3)
    e[:, -50:] = float("-inf")  # vocabulary padding masked on both sides
    a[:, -50:] = float("-inf")
    e[:, 100] = float("-inf")  # the reference masked a token the implementation did not
    a[:, 200] = float("-inf")  # and the other way round
    m = position_metrics(e, a, profile_for("bfloat16"))
    for key in ["max_abs_err", "mean_abs_err", "max_rel_err", "kl_ref_impl", "err_top50"]:
        assert torch.isfinite(m[key]).all(), key
    assert m["passed"].all()
    assert torch.all(m["n_compared"] == V - 52)
    shifted = remove_constant_shift(e, a)
    assert torch.isneginf(shifted[:, -50:]).all() and torch.isfinite(shifted[:, :100]).all()


def test_nan_or_pos_inf_in_actual_fails_the_position():
    e = logits()
    a = e.clone()
    a[3, 7] = float("nan")
    a[5, 9] = float("inf")  # e.g. a float16 overflow
    a[6, 9] = float("-inf")  # a mask: dropped, not a failure
    m = position_metrics(e, a, profile_for("float32"))
    assert m["invalid_count"][3] == 1 and m["invalid_count"][5] == 1 and m["invalid_count"][6] == 0
    assert not m["passed"][3] and not m["passed"][5]
    assert m["passed"][[0, 1, 2, 4, 6]].all()


def test_row_with_nothing_comparable_fails():
    e = logits(n=2)
    a = e.clone()
    a[1] = float("nan")
    err = position_errors(e, a, {None: (1e-5, 0.05)})
    assert err["pass_all"][0] and not err["pass_all"][1]
    assert math.isinf(err["err_all"][1])


def test_kl_matches_hand_computation_on_three_tokens():
    e = torch.tensor([[1.0, 2.0, 3.0]])
    a = torch.tensor([[3.0, 2.0, 1.0]])
    p = [math.exp(x) for x in (1.0, 2.0, 3.0)]
    p = [x / sum(p) for x in p]
    q = list(reversed(p))
    expected_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    m = position_metrics(e, a, profile({None: (0.0, 1.0)}), remove_shift=False)
    assert m["kl_ref_impl"][0].item() == pytest.approx(expected_kl, rel=1e-5)
    assert not m["top1_match"][0]
    assert m["expected_top1_prob"][0].item() == pytest.approx(p[2], rel=1e-6)


def test_kl_is_zero_for_equal_and_positive_otherwise():
    e = logits()
    same = position_metrics(e, e.clone(), profile_for("bfloat16"))
    other = position_metrics(e, relative_noise(e, 1e-2), profile_for("bfloat16"))
    assert torch.all(same["kl_ref_impl"].abs() < 1e-7)
    assert torch.all(other["kl_ref_impl"] > 0)


def test_top1_swap_is_seen_by_top1_match_and_topk_overlap():
    e = logits()
    a = e.clone()
    leader, far = e[0].argmax(), e[0].argmin()
    a[0, leader], a[0, far] = e[0, far], e[0, leader]
    m = position_metrics(e, a, profile_for("bfloat16"))
    assert not m["top1_match"][0] and m["top1_match"][1:].all()
    assert m["topk_overlap"][0].item() == pytest.approx(0.8)


def test_chunked_computation_matches_one_chunk(monkeypatch):
    e, a = logits(n=10), relative_noise(logits(n=10), 1e-2)
    e[4, -10:] = float("-inf")  # one chunk masked, the others on the unmasked path
    a[4, -10:] = float("-inf")
    p = profile_for("float16")
    whole = position_metrics(e, a + 2.0, p)
    monkeypatch.setattr(M, "ROWS_PER_CHUNK", 3)
    chunked = position_metrics(e, a + 2.0, p)
    for key, value in whole.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(chunked[key], value, rtol=1e-5, atol=1e-5, msg=key)


def test_accepts_bf16_and_3d_inputs():
    e = logits(n=6).reshape(2, 3, V)
    m = position_metrics(e, e.to(torch.bfloat16), profile_for("bfloat16"))
    assert m["max_abs_err"].shape == (6,) and m["max_abs_err"].dtype == torch.float32
    assert m["passed"].all()


def test_shape_mismatch_and_empty_input_raise():
    with pytest.raises(ValueError):
        position_metrics(logits(n=2), logits(n=3), profile_for("float32"))
    with pytest.raises(ValueError):
        position_errors(torch.zeros(0, V), torch.zeros(0, V), {None: (0.0, 0.1)})


def test_divergence_gap_is_the_reference_gap_between_the_two_tokens():
    row = torch.tensor([0.0, 5.0, 4.9, 1.0, float("-inf")])
    assert divergence_gap(row, 1, 2) == pytest.approx(0.1, abs=1e-6)
    assert divergence_gap(row, 2, 1) == pytest.approx(0.1, abs=1e-6)
    assert math.isinf(divergence_gap(row, 1, 4))


def greedy_case(gap):
    """Two rows of 6 greedy steps; row 1 picks token 2 instead of 1 at step 3, where the reference
    preferred token 1 by `gap`."""
    steps, vocab = 6, 8
    expected_logits = torch.zeros(2, steps, vocab)
    expected_logits[:, :, 1] = 5.0
    expected_logits[1, 3, 2] = 5.0 - gap
    expected_tokens = expected_logits.argmax(-1)
    actual_tokens = expected_tokens.clone()
    actual_tokens[1, 3:] = 2
    return expected_tokens, actual_tokens, expected_logits


def test_greedy_comparison_finds_first_divergence_and_judges_it_by_the_gap():
    small = greedy_comparison(*greedy_case(gap=0.05), divergence_tolerance=0.13)
    assert small[0]["first_divergence"] is None and small[0]["match_rate"] == 1.0
    assert small[0]["divergence_acceptable"]
    assert small[1]["first_divergence"] == 3
    assert small[1]["match_rate"] == pytest.approx(0.5)
    assert small[1]["divergence_gap"] == pytest.approx(0.05, abs=1e-6)
    assert small[1]["divergence_acceptable"]

    large = greedy_comparison(*greedy_case(gap=0.5), divergence_tolerance=0.13)
    assert large[1]["first_divergence"] == 3 and not large[1]["divergence_acceptable"]


def test_greedy_comparison_uses_common_length():
    e_tok, a_tok, e_log = greedy_case(gap=0.05)
    rows = greedy_comparison(e_tok, a_tok[:, :3], e_log, divergence_tolerance=0.13)
    assert rows[1]["steps"] == 3 and rows[1]["first_divergence"] is None


def test_verdict_reports_failures_and_unacceptable_divergences():
    e = logits()
    a = e.clone()
    a[5] = relative_noise(e[5:6], 0.2)[0]
    a[9] = relative_noise(e[9:10], 0.2)[0]
    m = position_metrics(e, a, profile_for("bfloat16"))
    v = verdict(m)
    assert not v.passed and v.n_failed == 2 and v.first_failed == 5 and v.n_positions == N
    assert v.worst["err_top50"]["position"] in (5, 9)
    summary = v.summary()
    assert summary["worst_err_top50"] == v.worst["err_top50"]["value"]
    assert all(isinstance(x, (bool, int, float, type(None))) for x in summary.values())

    clean = position_metrics(e, e.clone(), profile_for("bfloat16"))
    assert verdict(clean, greedy_comparison(*greedy_case(0.05), 0.13)).passed
    bad_greedy = verdict(clean, greedy_comparison(*greedy_case(0.5), 0.13))
    assert not bad_greedy.passed and bad_greedy.n_unacceptable_divergences == 1 and bad_greedy.n_failed == 0
