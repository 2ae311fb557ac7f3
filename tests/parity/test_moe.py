"""Granite MoE parity end to end: HF-written checkpoints (either expert layout) pass at every TP / expert-parallel
layout, and each seeded MoE bug fails parity and is localised to its layer's router, experts or shared MLP."""

import json
import re

import pytest
import torch
import transformers
from typer.testing import CliRunner

from granite_bench.accuracy.seeded_bugs import MOE_SEEDED_BUGS
from granite_bench.cli import app

FAST = ["--batch-size", "2", "--seq-len", "64", "--buckets", "16,32", "--num-tokens", "4", "--no-save"]
PROMPTS = "[[5, 6, 7, 8, 9, 10, 11, 12, 40, 41, 77], [20, 21, 22, 300, 301]]"


def write_hf_checkpoint(folder, model_type: str, renamed_layout: bool = False, **config):
    """A checkpoint written by HF itself (save_pretrained) from a config nobody tuned the implementation for, with
    weights scaled so the logits spread; `renamed_layout` stores the experts under transformers 5's in-memory names
    (router.weight, experts.gate_up_proj, experts.down_proj) instead of the fused checkpoint names."""
    config_class = {"granitemoe": transformers.GraniteMoeConfig,
                    "granitemoeshared": transformers.GraniteMoeSharedConfig}[model_type]
    model_class = {"granitemoe": transformers.GraniteMoeForCausalLM,
                   "granitemoeshared": transformers.GraniteMoeSharedForCausalLM}[model_type]
    torch.manual_seed(7)
    model = model_class(config_class(**config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embed" not in name:
                param.normal_(0, 1.5 / param.shape[-1] ** 0.5)
        model.model.norm.weight.fill_(30.0)
    model.save_pretrained(folder)
    if renamed_layout:
        from safetensors.torch import load_file, save_file
        state = load_file(str(folder / "model.safetensors"))
        renames = {"router.layer.weight": "router.weight", "input_linear.weight": "experts.gate_up_proj",
                   "output_linear.weight": "experts.down_proj"}
        moved = {}
        for key, value in state.items():
            for old, new in renames.items():
                if ".block_sparse_moe." in key and key.endswith(old):
                    key = key[:-len(old)] + new
            moved[key] = value
        save_file(moved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


UNTUNED = {
    "granitemoe": dict(vocab_size=1500, hidden_size=96, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=4, num_local_experts=12, num_experts_per_tok=3,
                       attention_multiplier=0.09, embedding_multiplier=7.0, residual_multiplier=0.4,
                       logits_scaling=3.0, tie_word_embeddings=False, pad_token_id=0),
    "granitemoeshared": dict(vocab_size=2100, hidden_size=64, intermediate_size=32, shared_intermediate_size=80,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                             num_experts_per_tok=4, attention_multiplier=0.11, embedding_multiplier=3.0,
                             residual_multiplier=0.5, logits_scaling=2.0, tie_word_embeddings=True, pad_token_id=0),
}


@pytest.mark.parametrize("model_type, renamed, tp, ep", [
    ("granitemoe", False, 1, 1), ("granitemoe", True, 2, 1), ("granitemoe", False, 4, 2),
    ("granitemoeshared", False, 2, 2), ("granitemoeshared", True, 4, 1),
])
def test_hf_written_moe_checkpoint_passes_fp32_parity_at_every_parallel_layout(tmp_path, model_type, renamed, tp,
                                                                              ep):
    folder = write_hf_checkpoint(tmp_path / model_type, model_type, renamed, **UNTUNED[model_type])
    prompts = tmp_path / "p.json"
    prompts.write_text(PROMPTS)
    result = CliRunner().invoke(app, ["parity", "--model", str(folder), *FAST, "--prompts", str(prompts),
                                      "--tp", str(tp), "--moe-ep", str(ep)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


@pytest.mark.parametrize("name", list(MOE_SEEDED_BUGS))
def test_seeded_moe_bug_fails_parity_and_is_localised_to_its_sub_block(name, tmp_path):
    bug = MOE_SEEDED_BUGS[name]
    prompts = tmp_path / "p.json"
    prompts.write_text(PROMPTS)
    with bug.patch():
        result = CliRunner().invoke(app, ["parity", "--model", "tiny-moe-shared", *FAST, "--prompts", str(prompts)])
    assert result.exit_code == 1, result.output
    named = re.search(r"first out of tolerance: layer (\d+) (\w+)", result.output)
    assert named, result.output
    assert (named.group(1), named.group(2)) == ("0", bug.sub_block), result.output


@pytest.mark.parametrize("change, tensor, shape", [
    ({"num_local_experts": 10}, "block_sparse_moe.router.layer.weight", "[10, 96]"),
    ({"intermediate_size": 40}, "block_sparse_moe.input_linear.weight", "[12, 80, 96]"),
])
def test_moe_checkpoint_whose_experts_disagree_with_its_config_is_refused_naming_the_tensor(tmp_path, change, tensor,
                                                                                           shape):
    folder = write_hf_checkpoint(tmp_path / "moe", "granitemoe", **UNTUNED["granitemoe"])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    result = CliRunner().invoke(app, ["parity", "--model", str(folder), *FAST])
    assert result.exit_code == 2
    assert tensor in result.output and f"config.json asks for {shape}" in result.output, result.output


@pytest.mark.parametrize("options, message", [
    (["--tp", "2", "--moe-ep", "3"], "--moe-ep 3 does not divide --tp 2"),
    (["--tp", "4", "--moe-ep", "4"], "--moe-ep 4 does not divide the 6 experts"),
    (["--tp", "3"], "--tp 3 does not divide intermediate_size 32"),
])
def test_moe_parallel_degrees_that_cannot_shard_the_experts_are_refused_in_one_line(options, message):
    result = CliRunner().invoke(app, ["parity", "--model", "tiny-moe-shared", *FAST, *options])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("model_type, tp", [("granitemoe", 1), ("granitemoeshared", 1)])
def test_hf_written_moe_checkpoint_passes_bf16_parity_judged_against_hf_own_bf16(tmp_path, model_type, tp):
    """bf16 routing near-ties flip in HF's own bf16 model too: the goldens carry HF's bf16 error first
    (`reference --framework-dtype bfloat16`), and the implementation must stay within 1.25x of it; a flip of its own
    passes only as a routing near-tie. (Which positions flip depends on the host's bf16 kernels: at TP 2 the
    granitemoe case flipped one expert choice on the AMD host at the previous stop and none at this one; HF's own bf16
    never flips there, so the tolerance stays tight and the positions after a flip, which read its keys, would fail
    on a host where it flips: not a per-commit test.)"""
    folder = write_hf_checkpoint(tmp_path / model_type, model_type, **UNTUNED[model_type])
    prompts = tmp_path / "p.json"
    prompts.write_text(PROMPTS)
    made = CliRunner().invoke(app, ["reference", "--model", str(folder), "--prompts", str(prompts),
                                    "--num-tokens", "4", "--framework-dtype", "bfloat16"])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(app, ["parity", "--model", str(folder), *FAST, "--prompts", str(prompts),
                                      "--dtype", "bfloat16", "--tp", str(tp)])
    assert result.exit_code == 0, result.output
    assert "HF's own bfloat16 on these goldens" in result.output and "PASS" in result.output
