"""lm-eval through the implementation on a Granite MoE: the trained canary sparsely upcycled into a
GraniteMoeSharedForCausalLM (every expert a perturbed copy of its MLP, a random router, a shared MLP of a quarter of
its MLP), written by HF and evaluated sample by sample against HF's own MoE model."""

import json
import logging
import shutil

import pytest
import torch
import transformers

from granite_bench.accuracy.run import run_eval
from granite_bench.reference.weights import resolve_model_dir

logging.getLogger("lm_eval").setLevel(logging.ERROR)
EXPERTS, TOP_K = 4, 2


def upcycle_canary(out):
    """The canary's MLPs copied into EXPERTS experts (each perturbed by 2 % noise, so the router's choice matters)
    plus a shared MLP holding the same MLP scaled by 0.25 and the experts by 0.75: the MoE computes nearly the
    canary's function, so its accuracy is far above chance."""
    dense_dir = resolve_model_dir("canary")
    dense = transformers.GraniteForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    config = {k: v for k, v in json.loads((dense_dir / "config.json").read_text()).items()
              if k not in ("architectures", "model_type", "transformers_version")}
    moe_config = transformers.GraniteMoeSharedConfig(**config, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K,
                                                     shared_intermediate_size=config["intermediate_size"])
    torch.manual_seed(3)
    moe = transformers.GraniteMoeSharedForCausalLM(moe_config)
    with torch.no_grad():
        state = dense.state_dict()
        for name, value in moe.state_dict().items():
            if name in state:
                value.copy_(state[name])
        for i, layer in enumerate(moe.model.layers):
            mlp = dense.model.layers[i].mlp
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])          # [2I, H]
            for e in range(EXPERTS):
                layer.block_sparse_moe.experts.gate_up_proj[e] = gate_up * (1 + 0.02 * torch.randn_like(gate_up))
                layer.block_sparse_moe.experts.down_proj[e] = 0.75 * mlp.down_proj.weight
            layer.block_sparse_moe.router.weight.normal_(0, 0.5)
            layer.shared_mlp.input_linear.weight.copy_(gate_up)
            layer.shared_mlp.output_linear.weight.copy_(0.25 * mlp.down_proj.weight)
    moe.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(dense_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    model_dir = upcycle_canary(tmp_path_factory.mktemp("canary-moe"))
    return run_eval(str(model_dir), ["canary_recall", "canary_copy"], dtype="float32", limit=16, batch_size=8,
                    seq_len=128)


def test_moe_eval_agrees_with_hf_moe_sample_by_sample(outcome):
    summary = outcome.summary.set_index("task")
    assert outcome.passed, summary["failures"].to_dict()
    assert summary.loc["canary_recall", "argmax_agreement"] == 1.0
    assert summary.loc["canary_copy", "generation_agreement"] == 1.0
    assert summary["max_abs_delta_loglik"].max() < 1e-4


def test_upcycled_moe_scores_far_above_chance_on_both_sides(outcome):
    summary = outcome.summary.set_index("task")
    for side in ("impl_value", "ref_value"):
        assert summary.loc["canary_recall", side] >= 0.8       # 10 choices: chance is 0.1
        assert summary.loc["canary_copy", side] >= 0.5         # chance is ~0
