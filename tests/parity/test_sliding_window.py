"""Parity of the sliding-window Granites end to end (prompts several windows long, decode across ring wraps), the
seeded sliding-window bugs (each FAILs and is localised to a layer's attention), and refusal of bad window configs
before torch loads."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from granite_bench.accuracy.seeded_bugs_swa import SWA_SEEDED_BUGS
from granite_bench.cli import app
from granite_bench.model.registry import architecture, config_problems, expected_layer_tensors
from granite_bench.resources import suite_path

# tiny-swa: window 16; layers full NoPE, sliding 1e4, sliding 1e6, full 5e5, sliding 2e3
FAST = ["--model", "tiny-swa", "--batch-size", "2", "--seq-len", "96", "--buckets", "16,64", "--num-tokens", "24",
        "--no-save"]
FIRST_FAILING = re.compile(r"first out of tolerance: layer (\d+) (\w+)")

# where each bug must be named: the first layer it changes
EXPECTED_LAYER = {"window_off_by_one": 1, "sinks_dropped": 0, "sinks_added_after_normalisation": 0,
                  "ring_index_not_mod_w": 1, "nope_layer_rotated": 0, "one_theta_for_all_layers": 1,
                  "sliding_layer_full_attention": 1}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """A prompt of 60 tokens (nearly four windows) and one of 9 (under a window); 24 decode steps wrap the rings."""
    gen = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("swa") / "prompts.json"
    path.write_text(json.dumps([torch.randint(3, 2048, (n,), generator=gen).tolist() for n in (60, 9)]))
    return path


def parity(*args: str):
    return CliRunner().invoke(app, ["parity", *args])


def test_tiny_swa_passes_fp32_parity_over_prompts_many_windows_long(prompts):
    result = parity(*FAST, "--prompts", str(prompts))
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


@pytest.mark.parametrize("name", sorted(SWA_SEEDED_BUGS))
def test_seeded_sliding_window_bug_fails_parity_and_is_localised_to_attention(name, prompts):
    with SWA_SEEDED_BUGS[name].patch():
        result = parity(*FAST, "--prompts", str(prompts))
    assert result.exit_code == 1, result.output
    named = FIRST_FAILING.search(result.output)
    assert named, result.output
    assert (int(named.group(1)), named.group(2)) == (EXPECTED_LAYER[name], "attention"), result.output
    told_sinks = "the attention sinks" in result.output     # one scale factor per head: only a sink bug does that
    assert told_sinks == name.startswith("sinks_"), result.output
    phase = "context_encoding" if SWA_SEEDED_BUGS[name].in_context_encoding else "token_generation"
    assert f"({phase})" in result.output, result.output


def test_tiny_moe_swa_passes_fp32_parity_at_tp2_with_sinks_sharded_by_head(prompts):
    """4 query heads over 1 KV head on 2 ranks: the KV head is replicated, each rank keeps two heads' sinks."""
    result = parity(*FAST[2:], "--model", "tiny-moe-swa", "--tp", "2", "--prompts", str(prompts))
    assert result.exit_code == 0, result.output


def test_tiny_moe_swa_passes_bf16_parity_on_the_shipped_suite_judged_against_hf_own_bf16():
    """The sliding-window suite (prompts of 300/117/11 tokens, 40 decode steps, window 16) in bf16: HF's own bf16
    flips random-weight routing near-ties, and so may the implementation at other positions; such a flip passes only
    as a routing near-tie (printed), anything else fails."""
    suite = str(suite_path("parity/sliding-window.yaml"))
    made = CliRunner().invoke(app, ["reference", "--suite", suite, "--model", "tiny-moe-swa",
                                    "--framework-dtype", "bfloat16"])
    assert made.exit_code == 0, made.output
    result = parity("--suite", suite, "--model", "tiny-moe-swa", "--dtype", "bfloat16", "--no-save")
    assert result.exit_code == 0, result.output
    assert "HF's own bfloat16 on these goldens" in result.output and "PASS" in result.output
    for line in result.output.splitlines():
        if line.startswith("accepted (a routing near-tie)"):
            assert "router chose experts" in line and "within 2 x the router-logit error" in line, line


@pytest.mark.parametrize("tp", [2, 4])
def test_each_heads_attention_output_under_tp_is_gathered_in_hf_head_order(tp):
    """tiny-moe-swa: 4 query heads over 1 KV head, replicated to every rank (at TP 4 one query head per rank): the
    per-head outputs localisation compares equal the single process's, in context encoding and token generation."""
    from granite_bench.parity.localise import PER_HEAD
    from granite_bench.parity.teacher_forcing import hidden_states_at
    from granite_bench.runtime.select import build_runner
    prompts, forced = [list(range(3, 40))], [[5, 6, 7]]
    single = build_runner("tiny-moe-swa", seq_len=64, buckets=[64])
    sharded = build_runner("tiny-moe-swa", tp_degree=tp, seq_len=64, buckets=[64])
    try:
        for position in (20, 38):                  # a prompt position, then the second decode step
            want = {(l, s): t for l, s, t in hidden_states_at(single, prompts, forced, 0, position) if s == PER_HEAD}
            got = {(l, s): t for l, s, t in hidden_states_at(sharded, prompts, forced, 0, position) if s == PER_HEAD}
            assert want.keys() == got.keys() and len(want) == single.hf_config.num_hidden_layers
            for key, tensor in want.items():
                torch.testing.assert_close(got[key], tensor, rtol=1e-4, atol=1e-5)
    finally:
        sharded.close()


# -- bad configs: refused in one line by the registry (preflight), before torch loads -------------------------------

GOOD = {"model_type": "granite_swa", "num_hidden_layers": 3, "sliding_window": 16,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
        "layer_rope_theta": [0, 10000.0, 500.0], "hidden_size": 64, "num_attention_heads": 4}


@pytest.mark.parametrize("change, says", [
    ({"sliding_window": 0}, "sliding_window 0 must be a positive integer"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types must list one kind per layer (3), got 2"),
    ({"layer_types": ["full_attention", "sliding", "sliding_attention"]}, "layer_types has unknown kind 'sliding'"),
    ({"layer_rope_theta": [0, 10000.0]}, "layer_rope_theta must list one RoPE base per layer (3), got 2"),
    ({"layer_rope_theta": [0, -1.0, 500.0]}, "layer_rope_theta has -1.0"),
])
def test_bad_window_config_is_named_in_one_line(change, says):
    arch = architecture("granite_swa")
    assert config_problems(arch, GOOD) == []
    problems = config_problems(arch, {**GOOD, **change})
    assert len(problems) == 1 and says in problems[0], problems


def test_sinks_shape_template_is_one_per_attention_head():
    shapes = expected_layer_tensors(architecture("granitemoe_swa"), {**GOOD, "model_type": "granitemoe_swa"})
    assert shapes[("model.layers.2.self_attn.sinks",)] == (4,)


def test_parity_refuses_a_checkpoint_with_a_bad_window_before_loading(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**GOOD, "sliding_window": -3}))
    result = parity("--model", str(tmp_path), "--no-save")
    assert result.exit_code == 2, result.output
    assert "sliding_window -3 must be a positive integer" in result.output


def test_parity_refuses_sinks_whose_shape_disagrees_with_the_heads(tmp_path):
    """A checkpoint written by HF whose layer-1 sinks hold 3 values for 4 heads: one line, exit 2."""
    from safetensors.torch import load_file, save_file
    from transformers import GraniteSWAConfig, GraniteSWAForCausalLM

    config = GraniteSWAConfig(**{k: v for k, v in GOOD.items() if k != "model_type"}, intermediate_size=32,
                              num_key_value_heads=2, vocab_size=64, bos_token_id=1, eos_token_id=2)
    GraniteSWAForCausalLM(config).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.1.self_attn.sinks"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    result = parity("--model", str(tmp_path), "--no-save")
    assert result.exit_code == 2, result.output
    assert "tensor model.layers.1.self_attn.sinks" in result.output and "[3]" in result.output, result.output


def test_reference_of_a_sliding_window_checkpoint_is_eager_even_for_long_prompts():
    """HF supports only eager attention for these models: the goldens' key says so past the SDPA threshold, and the
    reference loads eager whatever it is asked."""
    from granite_bench.reference.goldens import golden_request
    from granite_bench.reference.hf_reference import LONG_CONTEXT_TOKENS, load_reference
    from granite_bench.reference.weights import resolve_model_dir

    model_dir = resolve_model_dir("tiny-swa")
    _, key = golden_request(model_dir, [[5] * (LONG_CONTEXT_TOKENS + 100)], 4)
    assert key["attn_implementation"] == "eager"
    assert load_reference(model_dir, attn_implementation="sdpa").config._attn_implementation == "eager"


def test_a_long_sequence_of_an_eager_only_reference_runs_in_chunks_with_the_same_logits_tokens_and_streams(
        monkeypatch):
    """Chunks of 16 through HF's own cache (sliding layers keep their window across chunks) against one forward."""
    from granite_bench.reference import hf_reference
    from granite_bench.reference.weights import resolve_model_dir

    model = hf_reference.load_reference(resolve_model_dir("tiny-swa"))
    tokens = torch.randint(3, 2048, (70,), generator=torch.Generator().manual_seed(5)).tolist()
    whole_logits, whole_streams = hf_reference.forward_with_hidden_states(model, tokens)
    whole_greedy = hf_reference.greedy_tokens(model, tokens[:50], 8)
    monkeypatch.setattr(hf_reference, "LONG_CONTEXT_TOKENS", 20)
    monkeypatch.setattr(hf_reference, "EAGER_CHUNK_TOKENS", 16)
    assert hf_reference.reference_chunk(model, 70) == 16
    logits, streams = hf_reference.forward_with_hidden_states(model, tokens)
    torch.testing.assert_close(logits, whole_logits, atol=2e-5, rtol=0)
    assert [(l, n) for l, n, _ in streams] == [(l, n) for l, n, _ in whole_streams]
    for (_, _, chunked), (_, _, whole) in zip(streams, whole_streams):
        assert chunked.shape == whole.shape == (70, 128)
        torch.testing.assert_close(chunked, whole, atol=2e-5, rtol=1e-5)
    assert hf_reference.greedy_tokens(model, tokens[:50], 8) == whole_greedy
