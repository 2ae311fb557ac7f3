"""Parity end to end on the tiny presets, and the oracle catching deliberately broken implementations."""

import math
import types

import pytest
import torch

from granite_bench.model.backend.attention import grouped_attention
from granite_bench.parity.check import run_parity
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference.hf_reference import load_reference
from granite_bench.runtime.select import build_runner

PRESETS = ["tiny-gqa", "tiny-mqa", "tiny-llama3-rope", "tiny-untied"]


def mixed_prompts(count=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [5, 23, 41][:count]
    return [torch.randint(3, 4000, (n,), generator=gen).tolist() for n in lengths]


def build(preset, dtype="float32", batch_size=3):
    runner = build_runner(preset, dtype=dtype, batch_size=batch_size, seq_len=96, buckets=[16, 32, 64])
    return runner, load_reference(runner.model_dir)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_parity_passes_on_tiny_preset_with_mixed_length_batch(preset, dtype):
    runner, reference = build(preset, dtype)
    outcome = run_parity(runner, reference, mixed_prompts(), num_tokens=8, profile=profile_for(dtype))
    assert outcome.passed, outcome.prompts
    # every prompt position (context encoding) and every forced token (token generation) was compared
    assert len(outcome.positions) == sum(len(p) + 8 for p in mixed_prompts())
    assert {row["phase"] for row in outcome.positions} == {"context_encoding", "token_generation"}


@pytest.fixture(scope="module")
def gqa():
    return build("tiny-gqa")


def assert_localised(outcome, layer, sub_block, phase):
    assert not outcome.passed
    where = outcome.localisation
    assert (where["layer"], where["sub_block"], where["phase"]) == (layer, sub_block, phase), where


def test_decode_path_ignoring_attention_multiplier_is_caught_and_localised(gqa):
    runner, reference = gqa
    attn = runner.model.layers[2].self_attn
    wrong_scale = 1 / math.sqrt(attn.layout.head_dim)
    attn.decode_attention = types.MethodType(
        lambda self, q, k, v, mask: grouped_attention(q, k, v, mask, wrong_scale), attn)
    try:
        outcome = run_parity(runner, reference, mixed_prompts(2), num_tokens=6, profile=profile_for("float32"))
    finally:
        del attn.decode_attention
    assert_localised(outcome, 2, "attention", "token_generation")
    # context encoding used the right scale: only decode positions fail
    failing = {row["phase"] for row in outcome.positions if not row["passed"]}
    assert failing == {"token_generation"}


def test_missing_residual_multiplier_on_mlp_branch_is_localised_to_that_mlp(gqa):
    runner, reference = gqa
    layer = runner.model.layers[1]
    mlp_forward = layer.mlp.forward
    layer.mlp.forward = lambda x: mlp_forward(x) / layer.residual_multiplier  # branch added unscaled
    try:
        outcome = run_parity(runner, reference, mixed_prompts(2), num_tokens=4, profile=profile_for("float32"))
    finally:
        del layer.mlp.forward
    assert_localised(outcome, 1, "mlp", "context_encoding")


def test_missing_residual_multiplier_on_whole_layer_is_localised_to_its_attention(gqa):
    runner, reference = gqa
    layer = runner.model.layers[3]
    layer.residual_multiplier = 1.0
    try:
        outcome = run_parity(runner, reference, mixed_prompts(2), num_tokens=4, profile=profile_for("float32"))
    finally:
        layer.residual_multiplier = float(runner.hf_config.residual_multiplier)
    assert_localised(outcome, 3, "attention", "context_encoding")


def test_kv_cache_written_one_position_off_is_caught_in_decode_at_the_first_layer(gqa):
    runner, reference = gqa
    cache = runner.model.kv_cache
    update = cache.update_token_generation
    cache.update_token_generation = lambda layer_idx, k, v, positions: update(layer_idx, k, v, positions + 1)
    try:
        outcome = run_parity(runner, reference, mixed_prompts(2), num_tokens=6, profile=profile_for("float32"))
    finally:
        del cache.update_token_generation
    assert_localised(outcome, 0, "attention", "token_generation")


def test_unbroken_runner_passes_after_the_broken_variants(gqa):
    runner, reference = gqa
    outcome = run_parity(runner, reference, mixed_prompts(2), num_tokens=4, profile=profile_for("float32"))
    assert outcome.passed
    assert outcome.localisation is None


def test_greedy_only_failure_names_the_generated_token_its_position_gap_and_tolerance(gqa):
    """Only the free-running greedy check fails (teacher-forced logits are right): the failure names the generated
    token that diverged, the position whose logits chose it, the reference gap and the tolerance it broke."""
    from rich.console import Console

    from granite_bench.parity.command import render
    runner, reference = gqa
    real_generate = runner.generate

    def one_wrong_token(prompts, max_new_tokens, *args, **kwargs):
        result = real_generate(prompts, max_new_tokens, *args, **kwargs)
        result.tokens[1][3] = (result.tokens[1][3] + 1) % 4096  # prompt 1 diverges at its generated token 3
        return result
    runner.generate = one_wrong_token
    try:
        prompts = mixed_prompts(2)
        profile = profile_for("float32")
        outcome = run_parity(runner, reference, prompts, num_tokens=6, profile=profile)
    finally:
        del runner.generate
    where = outcome.localisation
    assert not outcome.passed and outcome.prompts[1]["n_failed"] == 0
    assert (where["prompt"], where["generated_token"]) == (1, 3)
    assert (where["position"], where["phase"]) == (len(prompts[1]) - 1 + 3, "token_generation")
    console = Console(record=True, width=400)
    render(console, outcome, profile)
    text = console.export_text()
    assert (f"prompt 1: greedy diverged at generated token 3 (chosen by the logits of position "
            f"{len(prompts[1]) + 2}, token_generation): reference gap {where['divergence_gap']:.3g} > divergence "
            f"tolerance 0.001") in text


def test_an_accepted_divergence_says_why_it_passes():
    from granite_bench.parity.command import divergence_note
    profile = profile_for("bfloat16")
    accepted = {"first_divergence": 0, "divergence_gap": 0.05, "divergence_acceptable": True, "prompt_len": 5}
    refused = {"first_divergence": 8, "divergence_gap": 0.83, "divergence_acceptable": False, "prompt_len": 33}
    assert divergence_note(accepted, profile) == "at token 0: gap 0.05 < tolerance 0.3, accepted (a near-tie)"
    assert divergence_note(refused, profile) == "at token 8 (position 40): gap 0.83 > tolerance 0.3"
    assert divergence_note({"first_divergence": None}, profile) == ""
