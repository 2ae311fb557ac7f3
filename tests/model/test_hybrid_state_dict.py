"""Every hybrid preset, tiny and real-shaped, at every TP degree it can be sharded over: the converter's output has
exactly the names and shapes of the Neuron-style model's state dict on each rank (meta tensors: nothing is
allocated, so full-depth granite-4.0-h-small is checked too), and the KV cache is kept for attention layers only."""

import pytest
import torch

from granite_bench.model.backend import parallel_state as ps
from granite_bench.model.backend.head_sharding import TPDegreeError
from granite_bench.model.config import NeuronConfig
from granite_bench.model.modeling_granitemoehybrid import (NeuronGraniteMoeHybridForCausalLM, convert_hf_state_dict,
                                                         layer_kinds)
from granite_bench.reference.presets import load_preset
from granite_bench.reference.weights import preset_config

PRESETS = ["tiny-hybrid", "tiny-hybrid-dense", "granite-4.0-micro", "granite-4.0-h-micro", "granite-4.0-h-tiny",
           "granite-4.0-h-small"]


def hf_meta_state(config) -> dict[str, torch.Tensor]:
    import transformers
    with torch.device("meta"):
        model = transformers.GraniteMoeHybridForCausalLM(config)
    return dict(model.state_dict())


@pytest.mark.parametrize("name", PRESETS)
def test_converted_shards_match_the_model_on_every_rank(name):
    config = preset_config(load_preset(name))
    hf = hf_meta_state(config)
    checked = 0
    for tp in (1, 2, 4):
        for rank in (0, tp - 1):
            ps.set_model_parallel_state(tp, rank)
            try:
                with torch.device("meta"):
                    model = NeuronGraniteMoeHybridForCausalLM(config, NeuronConfig(sequence_length=16))
            except TPDegreeError:
                continue
            finally:
                ps.set_model_parallel_state(1, 0)
            ps.set_model_parallel_state(tp, rank)
            try:
                out = convert_hf_state_dict(hf, config, rank, tp, torch.bfloat16)
            finally:
                ps.set_model_parallel_state(1, 0)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            assert {k: tuple(v.shape) for k, v in out.items()} == expected, (tp, rank)
            checked += 1
    assert checked >= 2   # TP 1 and at least one sharded degree


@pytest.mark.parametrize("name", PRESETS)
def test_kv_cache_only_for_attention_layers_and_state_only_for_mamba_layers(name):
    config = preset_config(load_preset(name))
    with torch.device("meta"):
        model = NeuronGraniteMoeHybridForCausalLM(config, NeuronConfig(sequence_length=16))
    kinds = layer_kinds(config)
    buffers = {n.rsplit("_", 1)[0] + ":" + n.rsplit("_", 1)[1] for n, _ in model.kv_cache.named_buffers()}
    for i, kind in enumerate(kinds):
        assert (f"k_cache:{i}" in buffers) == (kind == "attention")
        assert (f"ssm_state:{i}" in buffers) == (kind == "mamba")
