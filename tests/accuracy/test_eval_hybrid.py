"""lm-eval through the implementation on a Granite 4.0 hybrid: the trained canary rebuilt as a
GraniteMoeHybridForCausalLM (its 4 attention layers, with their MLPs as the shared MLP, and two Mamba2 layers of
2 groups and chunk 8 inserted between them, whose random mixers write a small update into the residual stream),
written by HF and evaluated sample by sample against HF's own hybrid model."""

import json
import logging
import shutil

import torch
import transformers

from granite_bench.accuracy.run import run_eval
from granite_bench.reference.weights import resolve_model_dir

logging.getLogger("lm_eval").setLevel(logging.ERROR)
LAYERS = ["attention", "mamba", "attention", "mamba", "attention", "attention"]


def hybrid_canary(out):
    """Attention layer j of the hybrid is canary layer j (attention, norms, MLP as the shared MLP); each Mamba layer
    adds a random mixer's output scaled down (out_proj std 0.02 / sqrt(inner)) and no MLP, so the hybrid computes
    nearly the canary's function and its accuracy stays far above chance, while the Mamba state is on the path."""
    dense_dir = resolve_model_dir("canary")
    dense = transformers.GraniteForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    config = {k: v for k, v in json.loads((dense_dir / "config.json").read_text()).items()
              if k not in ("architectures", "model_type", "transformers_version", "num_hidden_layers", "mlp_bias")}
    hybrid_config = transformers.GraniteMoeHybridConfig(
        **config, num_hidden_layers=len(LAYERS), layer_types=LAYERS, position_embedding_type="rope",
        num_local_experts=0, num_experts_per_tok=0, shared_intermediate_size=config["intermediate_size"],
        mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=8)
    torch.manual_seed(5)
    hybrid = transformers.GraniteMoeHybridForCausalLM(hybrid_config)
    attention_layers = iter(dense.model.layers)
    with torch.no_grad():
        for name in ("model.embed_tokens.weight", "model.norm.weight"):
            hybrid.get_parameter(name).copy_(dense.get_parameter(name))
        for layer in hybrid.model.layers:
            if layer.mamba is None:
                source = next(attention_layers)
                layer.self_attn.load_state_dict(source.self_attn.state_dict())
                layer.input_layernorm.load_state_dict(source.input_layernorm.state_dict())
                layer.post_attention_layernorm.load_state_dict(source.post_attention_layernorm.state_dict())
                mlp = source.mlp
                layer.shared_mlp.input_linear.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
                layer.shared_mlp.output_linear.weight.copy_(mlp.down_proj.weight)
            else:
                mixer = layer.mamba
                for weight in (mixer.in_proj.weight, mixer.conv1d.weight):
                    weight.normal_(0, 1 / weight.shape[-1] ** 0.5)
                mixer.out_proj.weight.normal_(0, 0.02 / mixer.out_proj.weight.shape[-1] ** 0.5)
                mixer.dt_bias.uniform_(-2, 1)
                layer.shared_mlp.output_linear.weight.zero_()
    hybrid.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(dense_dir / name, out / name)
    return out


def test_hybrid_eval_agrees_with_hf_sample_by_sample_far_above_chance(tmp_path):
    """Every sample's log-likelihood and generation agree with HF's hybrid; both sides score far above chance
    (recall: 10 choices, chance 0.1; copy: chance ~0)."""
    result = run_eval(str(hybrid_canary(tmp_path)), ["canary_recall", "canary_copy"], dtype="float32", limit=16,
                      batch_size=8, seq_len=128)
    summary = result.summary.set_index("task")
    assert result.passed, summary["failures"].to_dict()
    assert summary["max_abs_delta_loglik"].max() < 1e-4
    agreement = {"canary_recall": "argmax_agreement", "canary_copy": "generation_agreement"}
    floors = {"canary_recall": 0.8, "canary_copy": 0.5}
    for task, column in agreement.items():
        assert summary.loc[task, column] == 1.0, task
        assert min(summary.loc[task, "impl_value"], summary.loc[task, "ref_value"]) >= floors[task], task
