"""Granite 4.0 hybrid (granitemoehybrid) end to end: parity against HF's own GraniteMoeHybridForCausalLM on the tiny
presets (2 Mamba groups, prompts crossing chunk boundaries, right padding in the batch, decode after it), at TP 1
and 2; and every seeded hybrid bug fails parity and is localised to the layer and sub-block it lives in."""

import pytest
import torch

from granite_bench.accuracy.hybrid_bugs import HYBRID_SEEDED_BUGS
from granite_bench.model.config import NeuronConfig
from granite_bench.parity.check import run_parity_on_goldens
from granite_bench.parity.tolerances import profile_for
from granite_bench.reference.goldens import compute_goldens
from granite_bench.reference.hf_reference import load_reference
from granite_bench.reference.weights import resolve_model_dir
from granite_bench.runtime.select import build_runner

NUM_TOKENS = 4


def neuron_config(tp: int = 1) -> NeuronConfig:
    return NeuronConfig(batch_size=2, sequence_length=96, tp_degree=tp, max_context_length=64,
                        context_encoding_buckets=[16, 32, 64], token_generation_buckets=[32, 64, 96])


@pytest.fixture(scope="module")
def goldens():
    """Per preset, computed once: model dir and HF goldens of a 40-token prompt (3 chunks of 16) beside an 11-token
    one (padded in the same bucket)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            model_dir = resolve_model_dir(name)
            reference = load_reference(model_dir)
            gen = torch.Generator().manual_seed(7)
            prompts = [torch.randint(3, reference.config.vocab_size, (n,), generator=gen).tolist() for n in (40, 11)]
            cache[name] = (model_dir, compute_goldens(reference, prompts, NUM_TOKENS))
        return cache[name]
    return get


def parity(model_dir, golden, tp: int = 1):
    runner = build_runner(str(model_dir), neuron_config=neuron_config(tp))
    try:
        return run_parity_on_goldens(runner, golden, profile_for("float32"))
    finally:
        runner.close()


@pytest.mark.parametrize("name, tp", [("tiny-hybrid", 1), ("tiny-hybrid-dense", 1), ("tiny-hybrid", 2),
                                      ("tiny-hybrid-dense", 2)])
def test_hybrid_parity_passes_in_fp32(goldens, name, tp):
    """tiny-hybrid at TP 2: a whole group per rank; tiny-hybrid-dense at TP 2: both ranks share its one group (B/C
    copied, the gated norm's mean square all-reduced)."""
    model_dir, golden = goldens(name)
    outcome = parity(model_dir, golden, tp)
    assert outcome.passed, (outcome.localisation, [s for s in outcome.prompts if not s["passed"]])
    assert all(s["greedy_match_rate"] == 1.0 for s in outcome.prompts)


@pytest.mark.parametrize("bug", sorted(HYBRID_SEEDED_BUGS))
def test_seeded_hybrid_bug_fails_parity_and_is_localised_to_its_sub_block(goldens, bug):
    """tiny-hybrid's layers are mamba, attention, mamba, mamba: Mamba bugs show first in layer 0's mixer (its gated
    norm output), the RoPE bug in layer 1's attention."""
    model_dir, golden = goldens("tiny-hybrid")
    seeded = HYBRID_SEEDED_BUGS[bug]
    with seeded.bug.patch():
        outcome = parity(model_dir, golden)
    assert not outcome.passed
    where = outcome.localisation
    expected_layer = 0 if seeded.sub_block == "gated_norm" else 1
    assert (where["layer"], where["sub_block"]) == (expected_layer, seeded.sub_block), where
    failed = [row for row in outcome.positions if not row["passed"]]
    phases = {row["phase"] for row in failed}
    if not seeded.bug.in_context_encoding:   # a state bug: prefill is right, the decode after it is not
        assert phases == {"token_generation"}, phases


@pytest.fixture(scope="module")
def hf_written_checkpoint(tmp_path_factory):
    """A hybrid HF writes itself (save_pretrained) from a config no preset uses: transformers 5's layer-type names,
    RoPE attention first, 5 heads per group, chunk 7, d_conv 2, in/out_proj biases, no conv bias, top-1 of 3
    experts; random weights of a realistic spread."""
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    config = GraniteMoeHybridConfig(
        vocab_size=300, hidden_size=40, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=16, shared_intermediate_size=20, num_local_experts=3, num_experts_per_tok=1,
        layer_types=["full_attention", "linear_attention", "linear_attention"], position_embedding_type="rope",
        mamba_n_heads=10, mamba_n_groups=2, mamba_d_state=6, mamba_d_conv=2, mamba_chunk_size=7,
        mamba_proj_bias=True, mamba_conv_bias=False, attention_multiplier=0.1, embedding_multiplier=4.0,
        residual_multiplier=0.4, logits_scaling=2.0, tie_word_embeddings=True, max_position_embeddings=256)
    torch.manual_seed(11)
    model = GraniteMoeHybridForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape) * 7 + 1))
            elif name.endswith(("norm.weight", ".D")):
                p.copy_(1 + 0.3 * torch.randn(p.shape))
            elif name.endswith(("bias", "embed_tokens.weight")):
                p.copy_(0.5 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5)
    folder = tmp_path_factory.mktemp("hf-hybrid")
    model.save_pretrained(folder)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (30, 9)]
    return folder, compute_goldens(model.eval(), prompts, NUM_TOKENS)


@pytest.mark.parametrize("tp", [1, 2])
def test_parity_passes_on_a_checkpoint_hf_wrote_from_an_untuned_config(hf_written_checkpoint, tp):
    folder, golden = hf_written_checkpoint
    spread = torch.cat([g.logits for g in golden]).std()
    assert spread > 1.0                                       # not near-uniform logits, where parity is trivial
    outcome = parity(folder, golden, tp)
    assert outcome.passed, (outcome.localisation, [s for s in outcome.prompts if not s["passed"]])


FAST = ["--batch-size", "2", "--seq-len", "96", "--buckets", "16,32,64", "--num-tokens", "4", "--no-save"]


def test_ssm_state_dtype_bfloat16_shows_in_fp32_parity_at_decode_and_names_the_first_mamba_layer(tmp_path):
    from typer.testing import CliRunner

    from granite_bench.cli import app
    prompts = tmp_path / "p.json"
    prompts.write_text("[[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [30, 31, 32]]")
    argv = ["parity", *FAST, "--model", "tiny-hybrid", "--prompts", str(prompts)]
    clean = CliRunner().invoke(app, argv)
    assert clean.exit_code == 0, clean.output
    bf16_state = CliRunner().invoke(app, [*argv, "--ssm-state-dtype", "bfloat16"])
    assert bf16_state.exit_code == 1, bf16_state.output
    assert "(token_generation); first out of tolerance: layer 0 gated_norm" in bf16_state.output


def test_ssm_state_dtype_is_refused_for_a_model_without_ssm_state():
    from typer.testing import CliRunner

    from granite_bench.cli import app
    result = CliRunner().invoke(app, ["parity", *FAST, "--model", "tiny-gqa", "--ssm-state-dtype", "bfloat16"])
    assert result.exit_code == 2
    assert "--ssm-state-dtype applies to hybrid (Mamba) models only" in result.output


def test_tp2_localisation_captures_match_tp1_including_the_gathered_gated_norm(goldens):
    """At TP 2 each rank holds half of a Mamba layer's channels: the gated norm capture is gathered, so every
    sub-block localisation compares has the reference's width and the single-process values."""
    model_dir, golden = goldens("tiny-hybrid")
    prompts = [g.prompt for g in golden]
    captured = {}
    for tp in (1, 2):
        runner = build_runner(str(model_dir), neuron_config=neuron_config(tp))
        try:
            _, captured[tp] = runner.context_encode(prompts, capture_hidden=True, capture_position=7)
        finally:
            runner.close()
    names = [(layer, sub) for layer, sub, _ in captured[1]]
    assert names == [(layer, sub) for layer, sub, _ in captured[2]]
    assert (0, "gated_norm") in names and (1, "attention") in names and (0, "mamba") in names
    for (layer, sub, one), (_, _, two) in zip(captured[1], captured[2]):
        assert one.shape == two.shape, (layer, sub)
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4 * float(one.abs().max()))
    width = {sub: hidden.shape[-1] for layer, sub, hidden in captured[2] if layer == 0}
    assert width["gated_norm"] == 2 * width["mamba"]       # mamba_expand 2: every rank's channels


def test_parity_runs_on_a_cut_with_mamba_layers_only(tmp_path):
    """tiny-hybrid's first layer alone: HF's generate cannot keep its cache without an attention layer, so the
    reference generates without one; parity passes and the run ends normally (no traceback)."""
    from typer.testing import CliRunner

    from granite_bench.cli import app
    prompts = tmp_path / "p.json"
    prompts.write_text("[[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], [30, 31, 32]]")
    result = CliRunner().invoke(app, ["parity", *FAST, "--model", "tiny-hybrid", "--layers", "1", "--prompts",
                                      str(prompts)])
    assert result.exit_code == 0 and "PASS" in result.output, result.output


@pytest.mark.slow
def test_long_hybrid_suite_passes_and_catches_padding_leaking_into_the_shorter_rows_state(monkeypatch):
    """suites/parity/hybrid-long.yaml: 4,500 tokens (282 chunks) beside 1,000 padded to the same bucket, 64 decode
    steps. Clean: PASS. With the padding written into the state (both rows are padded: 108 and 3,608 positions) the
    decode after the prompt fails, from its first step, in layer 0's Mamba mixer."""
    from pathlib import Path

    from typer.testing import CliRunner

    from granite_bench.cli import app
    suite = Path(__file__).resolve().parents[2] / "suites" / "parity" / "hybrid-long.yaml"
    clean = CliRunner().invoke(app, ["parity", "--suite", str(suite), "--no-save"])
    assert clean.exit_code == 0 and "PASS" in clean.output, clean.output
    with HYBRID_SEEDED_BUGS["padding_written_into_state"].bug.patch():
        leaky = CliRunner().invoke(app, ["parity", "--suite", str(suite), "--no-save"])
    assert leaky.exit_code == 1, leaky.output
    assert ("first failing: prompt 0 position 4500 (token_generation); first out of tolerance: layer 0 gated_norm"
            in leaky.output), leaky.output
