"""Bad hybrid input is refused in one line with exit 2 before any model work: unknown layer_types, a TP degree that
splits a Mamba group, a checkpoint whose conv/SSM tensors do not match its config.json; and the registry's shape
templates name every tensor of a hybrid checkpoint HF writes."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app
from granite_bench.model.registry import architecture, config_problems, expected_layer_tensors, parallel_problems

FAST = ["--batch-size", "2", "--seq-len", "96", "--buckets", "16,32,64", "--num-tokens", "4", "--no-save"]


@pytest.fixture(scope="module")
def hybrid_dir():
    from granite_bench.reference.weights import resolve_model_dir
    return resolve_model_dir("tiny-hybrid")


def edited_copy(source, target, **changes):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def one_line_refusal(argv, message):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_unknown_layer_type_is_refused_in_one_line(hybrid_dir, tmp_path):
    bad = edited_copy(hybrid_dir, tmp_path / "bad", layer_types=["mamba", "attention", "mamba2", "mamba"])
    one_line_refusal(["parity", *FAST, "--model", str(bad)], "layer_types has 'mamba2': each layer must be")


def test_layer_types_of_the_wrong_length_are_refused(hybrid_dir, tmp_path):
    bad = edited_copy(hybrid_dir, tmp_path / "short", layer_types=["mamba", "attention"])
    one_line_refusal(["parity", *FAST, "--model", str(bad)], "layer_types lists 2 layers but num_hidden_layers is 4")


def test_a_tp_degree_that_splits_a_mamba_group_is_refused(hybrid_dir, tmp_path):
    """12 heads in 3 groups over 2 ranks: rank 0 would hold heads of groups 0 and 1."""
    bad = edited_copy(hybrid_dir, tmp_path / "groups", mamba_n_heads=12, mamba_n_groups=3, mamba_expand=3)
    one_line_refusal(["parity", *FAST, "--model", str(bad), "--tp", "2"],
                     "--tp 2 splits the Mamba groups (mamba_n_groups 3)")


def test_a_tp_degree_that_does_not_divide_the_mamba_heads_is_refused(hybrid_dir, tmp_path):
    bad = edited_copy(hybrid_dir, tmp_path / "heads", mamba_n_heads=2, mamba_n_groups=1, mamba_d_head=64)
    one_line_refusal(["parity", *FAST, "--model", str(bad), "--tp", "4"], "--tp 4 does not divide mamba_n_heads 2")


def test_a_checkpoint_whose_conv_tensor_does_not_match_its_config_is_refused(hybrid_dir, tmp_path):
    bad = edited_copy(hybrid_dir, tmp_path / "conv", mamba_d_conv=5)
    one_line_refusal(["parity", *FAST, "--model", str(bad)],
                     "tensor model.layers.0.mamba.conv1d.weight in")


def test_a_checkpoint_whose_ssm_heads_do_not_match_its_config_is_refused_before_torch_loads(hybrid_dir, tmp_path):
    bad = edited_copy(hybrid_dir, tmp_path / "heads", mamba_n_heads=4, mamba_d_head=32)
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from granite_bench.cli import app
        result = CliRunner().invoke(app, {["parity", *FAST, "--model", str(bad)]!r})
        print(result.exit_code, result.output.strip())
        print("heavy:", sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("2 error: tensor model.layers.0.mamba.in_proj.weight"), done.stdout + done.stderr
    assert "heavy: []" in done.stdout


def test_registry_shapes_name_every_tensor_hf_writes_for_a_hybrid(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    config = GraniteMoeHybridConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=16, shared_intermediate_size=24,
                                    num_local_experts=4, num_experts_per_tok=2, mamba_n_heads=8, mamba_n_groups=2,
                                    mamba_d_state=8, mamba_chunk_size=8, layer_types=["mamba", "attention", "mamba"])
    torch.manual_seed(0)
    GraniteMoeHybridForCausalLM(config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        written = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("model.layers.")}
    expected = {}
    for names, shape in expected_layer_tensors(architecture("granitemoehybrid"), data).items():
        name = next(n for n in names if n in written)
        expected[name] = shape
    biases = {k for k in written if k.endswith("conv1d.bias")}   # optional (mamba_conv_bias): not templated
    assert {k: written[k] for k in written if k not in biases} == expected
    assert config_problems(architecture("granitemoehybrid"), data) == []
    assert parallel_problems(architecture("granitemoehybrid"), data, 2) == []
    assert parallel_problems(architecture("granitemoehybrid"), data, 4) == []      # 2 ranks per group
    assert any("mamba_n_heads 8" in p for p in parallel_problems(architecture("granitemoehybrid"), data, 16))


def test_layers_cut_a_hybrid_presets_layer_types_with_its_layers():
    from granite_bench import preflight
    from granite_bench.reference.presets import load_preset
    from granite_bench.reference.weights import preset_config

    config, _ = preflight.model_config("granite-4.0-h-tiny", 6)
    assert config["layer_types"] == ["mamba"] * 5 + ["attention"]
    preflight.check_model(config, 1, where="granite-4.0-h-tiny")      # no "lists 40 layers" refusal
    assert preset_config(load_preset("granite-4.0-h-tiny"), 6).layer_types == ["linear_attention"] * 5 + [
        "full_attention"]
