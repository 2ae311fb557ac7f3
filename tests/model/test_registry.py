"""The architecture registry is plain data: importable without torch, every entry resolvable, and its shape and
divisibility rules refuse what the implementation cannot build in one line."""

import subprocess
import sys

import pytest

from granite_bench.model import registry


def test_registry_imports_without_torch_or_transformers():
    code = ("import sys; import granite_bench.model.registry as r; r.architecture('granitemoe'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("model_type", registry.supported())
def test_every_entry_resolves_to_a_model_a_converter_and_an_hf_class(model_type):
    import transformers

    from granite_bench.model.auto import resolve
    arch = registry.architecture(model_type)
    assert callable(resolve(arch.model_class)) and callable(resolve(arch.converter))
    assert hasattr(transformers, arch.hf_class) and hasattr(transformers, arch.hf_config_class)


def test_unknown_model_type_is_refused_naming_the_supported_ones():
    with pytest.raises(registry.UnsupportedArchitecture) as refused:
        registry.architecture("llama")
    assert str(refused.value).endswith(", ".join(registry.supported()))
    assert {"granite", "granitemoe", "granitemoeshared"} <= set(registry.supported())


def test_moe_tensor_templates_accept_both_expert_layouts_and_skip_an_absent_shared_mlp():
    config = {"model_type": "granitemoeshared", "hidden_size": 64, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_local_experts": 3, "shared_intermediate_size": 0}
    shapes = registry.expected_layer_tensors(registry.architecture("granitemoeshared"), config)
    names = {name for alternatives in shapes for name in alternatives}
    assert {"model.layers.0.block_sparse_moe.input_linear.weight",
            "model.layers.0.block_sparse_moe.experts.gate_up_proj"} <= names
    assert shapes[("model.layers.0.block_sparse_moe.input_linear.weight",
                   "model.layers.0.block_sparse_moe.experts.gate_up_proj")] == (3, 32, 64)
    assert not any("shared_mlp" in name for name in names)


@pytest.mark.parametrize("change, problem", [
    ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 must be between 1 and num_local_experts 4"),
    ({"num_local_experts": 0}, "num_local_experts 0 must be at least 1"),
    ({"vocab_size": 1}, "vocab_size 1 must be at least 2"),
    ({"hidden_size": 66}, "hidden_size 66 is not divisible by num_attention_heads 4"),
])
def test_configs_the_implementation_cannot_build_are_named(change, problem):
    config = {"model_type": "granitemoe", "hidden_size": 64, "num_attention_heads": 4, "num_local_experts": 4,
              "num_experts_per_tok": 2, "vocab_size": 100, **change}
    assert registry.config_problems(registry.architecture("granitemoe"), config) == [problem]


def test_expert_parallelism_splits_the_intermediate_size_over_the_ranks_of_a_group_only():
    arch = registry.architecture("granitemoe")
    config = {"hidden_size": 64, "intermediate_size": 20, "num_local_experts": 8}
    assert registry.parallel_problems(arch, config, tp=4, ep=2) == []          # 20 over 2 ranks per group
    assert registry.parallel_problems(arch, config, tp=8, ep=1) == [
        "--tp 8 does not divide intermediate_size 20: choose a TP degree that divides it"]
    assert registry.parallel_problems(registry.architecture("granite"), config, tp=2, ep=2)[0].startswith(
        "--moe-ep 2 applies to MoE models only")
